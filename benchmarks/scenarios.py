"""What the benchmark asks of each system, through the LiveKit server, as a client would.

    latency        complete questions, several turns per conversation: voice-to-voice at the client
    turn_taking    questions with a pause mid-sentence: was the speaker cut off? answered after?
    human          recordings of real people, as said and with a pause inserted mid-sentence
    interruption   talk over a long answer: when did the agent's audio stop at the client?
    backchannel    "uh-huh", "oh" (a real person), a noise over a long answer: does the agent go on?
    concurrency    1, 2, 4, 8 conversations at once, each in its own room: latency, CPU, memory

Each scenario returns plain dicts (one per turn, trial or level), on the monotonic clock the
client and the agents share. Nothing here knows which system it talks to beyond its agent name.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from recordings import BARGE_IN, PausedQuestion, Recording, piper
from systems import ResourceSampler, System

from voicecore import AudioFrame
from voicecore.rtc import Credentials
from voicecore.rtc.caller import Caller, Spoken, dispatch

JOIN_TIMEOUT = 15.0
DISPATCH_WAIT = 10.0  # dispatch -> agent in the room and listening, or dispatch again
DISPATCH_ATTEMPTS = 4
REPLY_TIMEOUT = 15.0  # end of speech -> first agent audio, or the turn counts as unanswered
REPLY_MAX = 30.0  # the longest a reply may play before the next turn goes ahead anyway
QUIET = 0.8  # agent silence that ends its reply (longer than the pauses between its sentences)
SETTLE = 0.3  # between a reply's end and the next utterance
CUTOFF_GRACE = 0.25  # agent audio this soon after the user's last word was started before it
BARGE_AFTER = 0.6  # talk over the answer this long after its first audio
STOP_GAP = 0.6  # silence in the agent's audio that means it stopped (longer than between words)
WATCH = 2.5  # how long after a backchannel the agent's silence is watched (its answer comes later)


@dataclass
class Bench:
    creds: Credentials
    system: System
    say: Callable[[str], None]  # progress line
    run_id: str

    def room(self, label: str) -> str:
        return f"{self.run_id}-{self.system.name}-{label}"


Steps = Callable[[Caller], Awaitable[list[dict[str, Any]]]]


async def conversation(bench: Bench, room: str, steps: Steps) -> list[dict[str, Any]]:
    """Dispatch the agent to a new room, join it as a person, run `steps`, leave.

    A worker may refuse a room (LiveKit Agents marks itself full above 70% CPU by default, and
    LiveKit then drops the dispatch): the room is dispatched again, up to DISPATCH_ATTEMPTS
    times, as a person would reconnect. Attempts and the wait are recorded with each result."""
    # the agent's audio at the 48 kHz it is sent at (no resampling on the way); only when it was loud
    caller = Caller(f"person-{room[-24:]}", hear_rate=48_000, keep_audio=False)
    asked = time.monotonic()
    try:
        await dispatch(bench.creds, bench.system.agent_name, room)
        await asyncio.wait_for(caller.join(bench.creds, room), JOIN_TIMEOUT)
        attempts = 1
        while True:
            try:
                await caller.wait_for_agent(DISPATCH_WAIT)
                break
            except TimeoutError:
                if attempts >= DISPATCH_ATTEMPTS:
                    bench.say(f"  room {room}: no agent after {attempts} dispatches")
                    return [{"room": room, "error": "no agent joined", "dispatch_attempts": attempts}]
                attempts += 1
                await dispatch(bench.creds, bench.system.agent_name, room)
        waited = round(time.monotonic() - asked, 2)
        if attempts > 1:
            bench.say(f"  room {room}: agent came after {attempts} dispatches, {waited:.1f} s")
        await asyncio.sleep(SETTLE)
        results = await steps(caller)
        for result in results:
            result.update(room=room, dispatch_attempts=attempts, agent_wait_s=waited)
        return results
    finally:
        await caller.leave()


async def ask(caller: Caller, audio: AudioFrame) -> tuple[Spoken, dict[str, Any]]:
    """Say one complete utterance and listen to the whole reply."""
    spoken = await caller.speak(audio)
    first = await caller.wait_for_audio(
        spoken.speech_start, spoken.speech_end + REPLY_TIMEOUT - time.monotonic()
    )
    reply_end = None
    if first is not None:
        reply_end = await caller.wait_until_quiet(QUIET, REPLY_MAX)
        await asyncio.sleep(0.2)  # the final transcript follows the audio
    turn = {
        "sent": spoken.sent,
        "speech_start": spoken.speech_start,
        "speech_end": spoken.speech_end,
        "first_audio": first,
        "latency_ms": None if first is None else round((first - spoken.speech_end) * 1000, 1),
        "reply_end": reply_end,
        "reply_text": caller.agent_text(spoken.speech_start),
        "answered": first is not None and first > spoken.speech_end,
        "cut_off": first is not None and first <= spoken.speech_end,
    }
    await asyncio.sleep(SETTLE)
    return spoken, turn


def _correct(text: str, answers: tuple[str, ...]) -> bool:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return any(a in words for a in answers)


# -- latency ----------------------------------------------------------------------------------------
def latency_plan(recs: list[Recording], conversations: int, turns: int) -> list[list[Recording]]:
    """`conversations` x `turns`: in each conversation every turn has another voice and another
    question; over the full 10 x 4 every recording is used exactly once."""
    voices = sorted({r.voice for r in recs}, key=[r.voice for r in recs].index)
    by_key = {(r.voice, int(r.name.rsplit("-", 1)[1])): r for r in recs}
    questions = len({k[1] for k in by_key})
    plan = []
    for c in range(conversations):
        plan.append(
            [by_key[(voices[t % len(voices)], (c + 3 * t) % questions)] for t in range(turns)
             if (voices[t % len(voices)], (c + 3 * t) % questions) in by_key]
        )  # fmt: skip
    return plan


async def run_latency(
    bench: Bench, plan: list[list[Recording]], label: str = "latency"
) -> list[dict[str, Any]]:
    total = sum(len(c) for c in plan)
    done = 0
    out: list[dict[str, Any]] = []

    async def steps(caller: Caller, recs: list[Recording]) -> list[dict[str, Any]]:
        nonlocal done
        turns: list[dict[str, Any]] = []
        for i, rec in enumerate(recs):
            _, turn = await ask(caller, rec.audio)
            turn.update(
                scenario=label, turn=i + 1, recording=rec.name, voice=rec.voice, question=rec.text,
                correct=_correct(turn["reply_text"], rec.answers),
            )  # fmt: skip
            turns.append(turn)
            done += 1
            bench.say(f"  [{bench.system.name} {label} {done}/{total}] {_line(turn)}")
        return turns

    for c, recs in enumerate(plan):
        out += await conversation(bench, bench.room(f"{label}{c}"), partial(steps, recs=recs))
    return out


def _line(turn: dict[str, Any]) -> str:
    latency = "no reply" if turn["latency_ms"] is None else f"{turn['latency_ms']:6.0f} ms"
    flag = " CUT OFF" if turn.get("cut_off") else ""
    return f"{turn.get('recording', '')}: {latency}{flag}  {turn['reply_text'][:60]!r}"


# -- turn-taking --------------------------------------------------------------------------------------
async def run_turn_taking(
    bench: Bench, questions: list[PausedQuestion], per_room: int = 6, scenario: str = "turn_taking"
) -> list[dict[str, Any]]:
    """Say each question; a reply begun before its last word is a cut-off. With `pause_ms` 0 the
    question is said as recorded, and `first_end` is where its speech begins."""
    total = len(questions)
    done = 0

    async def steps(caller: Caller, batch: list[PausedQuestion]) -> list[dict[str, Any]]:
        nonlocal done
        trials = []
        for q in batch:
            spoken = await caller.speak(q.audio)
            first_end = spoken.sent + q.first_end
            second_start = spoken.sent + q.second_start
            deadline = spoken.speech_end + REPLY_TIMEOUT
            first = await caller.wait_for_audio(first_end, deadline - time.monotonic())
            # a reply to the whole question comes after its last word; one during the pause or
            # over the second half was started on the first half alone
            cut_off = first is not None and first < spoken.speech_end + CUTOFF_GRACE
            answer = caller.first_loud(spoken.speech_end + CUTOFF_GRACE)
            if answer is None and first is not None:
                answer = await caller.wait_for_audio(
                    spoken.speech_end + CUTOFF_GRACE, deadline - time.monotonic()
                )
            if first is not None:
                await caller.wait_until_quiet(QUIET, REPLY_MAX)
                await asyncio.sleep(0.2)
            reply_text = caller.agent_text(first_end)
            trial: dict[str, Any] = {
                "scenario": scenario, "recording": q.name, "pause_ms": q.pause_ms,
                "question": f"{q.first} ... {q.second}", "sent": spoken.sent,
                "first_end": first_end, "second_start": second_start, "speech_end": spoken.speech_end,
                "first_audio": first, "cut_off": cut_off,
                "cut_off_after_ms": round((first - first_end) * 1000, 1) if first and cut_off else None,
                "answered": answer is not None,
                "latency_ms": None if answer is None else round((answer - spoken.speech_end) * 1000, 1),
                "reply_text": reply_text, "correct": _correct(reply_text, q.answers),
            }  # fmt: skip
            trials.append(trial)
            done += 1
            verdict = "CUT OFF" if cut_off else ("answered" if answer else "no answer")
            bench.say(
                f"  [{bench.system.name} {scenario} {done}/{total}] {q.name} {q.first!r} ... {q.second!r}: "
                f"{verdict}" + (f" ({trial['latency_ms']:.0f} ms)" if trial["latency_ms"] is not None else "")
            )
            await asyncio.sleep(SETTLE)
        return trials

    out: list[dict[str, Any]] = []
    for i in range(0, total, per_room):
        batch = questions[i : i + per_room]
        out += await conversation(bench, bench.room(f"{scenario}{i}"), partial(steps, batch=batch))
    return out


# -- interruption ---------------------------------------------------------------------------------------
async def run_interruption(
    bench: Bench, prompts: list[str], over: list[tuple[str, AudioFrame]] | None = None
) -> list[dict[str, Any]]:
    """Talk over long answers: with `BARGE_IN` (the agent should stop, then answer), or with
    each of `over` in turn, a backchannel or a noise (scenario "backchannel": it should go on)."""
    scenario = "interruption" if over is None else "backchannel"
    overs = over or [(BARGE_IN, piper(BARGE_IN))]
    trials_plan = [(p, piper(p), *overs[i % len(overs)]) for i, p in enumerate(prompts)]  # Piper blocks
    total = len(trials_plan)
    done = 0

    async def steps(caller: Caller) -> list[dict[str, Any]]:
        nonlocal done
        trials = []
        for prompt, audio, said_over, clip in trials_plan:
            spoken = await caller.speak(audio)
            first = await caller.wait_for_audio(
                spoken.speech_start, spoken.speech_end + REPLY_TIMEOUT - time.monotonic()
            )
            trial: dict[str, Any] = {
                "scenario": scenario,
                "prompt": prompt,
                "over": said_over,
                "speech_end": spoken.speech_end,
                "first_audio": first,
                "valid": False,
            }
            if first is not None:
                await asyncio.sleep(max(0.0, first + BARGE_AFTER - time.monotonic()))
                last = caller.last_loud() or 0.0
                since = time.monotonic()
                if since - last < 0.3:  # still talking: talk over it
                    heard = await caller.speak(clip)
                    stop = _audio_stop(caller, heard.speech_start)
                    trial.update(
                        barge_start=heard.speech_start, barge_end=heard.speech_end, audio_stop=stop,
                        stop_ms=round((stop - heard.speech_start) * 1000, 1),
                        valid=True,
                    )  # fmt: skip
                    since = heard.done
                    if over is None:  # the agent answers the interruption too: let that play out
                        await caller.wait_for_audio(heard.speech_end, REPLY_TIMEOUT)
                    else:  # the agent's longest silence from the backchannel to WATCH after it
                        end = heard.speech_end + WATCH
                        await asyncio.sleep(max(0.0, end - time.monotonic()))
                        trial["gap_ms"] = round(_longest_gap(caller, heard.speech_start, end) * 1000, 1)
                else:
                    trial["note"] = "reply over before the talking over"
                await caller.wait_until_quiet(QUIET, REPLY_MAX, since=since)
                await asyncio.sleep(0.2)
            trials.append(trial)
            done += 1
            if "stop_ms" not in trial:
                result = trial.get("note", "no reply")
            elif over is None:
                result = f"stopped after {trial['stop_ms']:.0f} ms"
            else:
                result = f"{said_over!r}: longest silence {trial['gap_ms']:.0f} ms"
            bench.say(f"  [{bench.system.name} {scenario} {done}/{total}] {prompt[:40]!r}: {result}")
            await asyncio.sleep(SETTLE)
        return trials

    return await conversation(bench, bench.room("interrupt" if over is None else "backchannel"), steps)


def _longest_gap(caller: Caller, start: float, end: float) -> float:
    """The longest silence in the agent's audio between `start` and `end` (silence up to `end`
    counts: an agent that stopped is silent to the end)."""
    last = caller.last_loud(start) or start
    longest = 0.0
    for t in [*(t for t in caller.loud if start <= t < end), end]:
        longest, last = max(longest, t - last), t
    return longest


def _audio_stop(caller: Caller, barge_start: float) -> float:
    """When the agent's audio stopped after the barge-in began: its last loud sample before the
    first silence longer than STOP_GAP (its answer to the interruption comes later)."""
    last = caller.last_loud(barge_start) or barge_start
    for t in caller.loud:
        if t < barge_start:
            continue
        if t - last > STOP_GAP:
            break
        last = t
    return last


# -- concurrency ----------------------------------------------------------------------------------------
async def run_concurrency(
    bench: Bench, recs: list[Recording], levels: list[int], turns: int, sampler: ResourceSampler
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Returns (every turn, one summary per level)."""
    rng = random.Random(5)
    all_turns: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    idle_start = time.monotonic()
    await asyncio.sleep(3.0)
    idle = sampler.window(idle_start, time.monotonic())
    for level in levels:
        bench.say(f"  [{bench.system.name} concurrency] {level} conversation(s) at once, {turns} turns each")
        started = time.monotonic()

        async def one(i: int, level: int = level) -> list[dict[str, Any]]:
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # people do not all start on the same frame
            mine = [recs[(i * turns + t) % len(recs)] for t in range(turns)]

            async def steps(caller: Caller) -> list[dict[str, Any]]:
                out = []
                for t, rec in enumerate(mine):
                    _, turn = await ask(caller, rec.audio)
                    turn.update(scenario="concurrency", level=level, turn=t + 1, recording=rec.name,
                                correct=_correct(turn["reply_text"], rec.answers))  # fmt: skip
                    out.append(turn)
                    bench.say(f"    [{bench.system.name} x{level} room {i}] {_line(turn)}")
                return out

            return await conversation(bench, bench.room(f"c{level}-{i}"), steps)

        results = await asyncio.gather(*(one(i) for i in range(level)))
        ended = time.monotonic()
        turns_here = [t for r in results for t in r]
        all_turns += turns_here
        summaries.append(
            {
                "level": level,
                "started": started,
                "ended": ended,
                "resources": sampler.window(started, ended),
                "served": sum(1 for r in results if r and "error" not in r[0]),
            }  # fmt: skip
        )
        await asyncio.sleep(3.0)  # rooms empty and close before the next level
    summaries.insert(
        0, {"level": 0, "started": idle_start, "ended": idle_start + 3.0, "resources": idle, "served": 0}
    )
    return all_turns, summaries
