"""`voicecore serve` as a real process against a real LiveKit server: shutdown and overload.

SIGTERM drains: no new room or turn is taken, the reply being spoken is heard to its end, then the
agent leaves and the process exits 0, even when a turn is still going at the deadline. Above
capacity (conversations, not rooms) the worker refuses rooms instead of serving them late, and a
burst of rooms or people never brings the process down.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from helpers import join, transcribe, words
from livekit import rtc
from livekit_fixtures import (
    Caller,
    LiveKitServer,
    agents_in,
    dispatch,
    free_port,
    heard_by_agent,
    poll,
    reply_done,
)
from serve_process import ServeProcess, ServeProcesses

from voicecore import Models, load_config
from voicecore.rtc.worker import Job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

EXIT_SLACK = 8.0  # after the drain: leave rooms, stop HTTP, free the models, interpreter exit

StartServe = Callable[..., Awaitable[ServeProcess]]


@pytest.fixture
def start_serve(livekit_server: LiveKitServer, serve_processes: ServeProcesses, tmp_path: Path) -> StartServe:
    """start_serve(*args, **env) -> `voicecore serve --dev ARGS`, started, on the session's LiveKit
    server, with VOICECORE_<NAME>=value for each keyword; killed at the end if still running."""
    logs = itertools.count()

    async def start(*args: str, **env: str) -> ServeProcess:
        creds = livekit_server.creds
        environment = {
            "LIVEKIT_URL": creds.ws_url,
            "LIVEKIT_API_KEY": creds.api_key,
            "LIVEKIT_API_SECRET": creds.api_secret,
            **{f"VOICECORE_{k.upper()}": v for k, v in env.items()},
        }
        serve = serve_processes(["--dev", *args], environment, tmp_path / f"serve{next(logs)}.log")
        await serve.start()
        return serve

    return start


def _agent_present(caller: Caller) -> bool:
    agent = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
    return any(p.kind == agent for p in caller.room.remote_participants.values())


def _agent_finals(caller: Caller) -> list[str]:
    """The agent's final transcripts, also once it has left (`Caller.agent_finals` needs it in
    the room to tell it apart)."""
    return [t.text for t in caller.transcripts if t.sender != caller.identity and t.final]


def _clean(output: str) -> None:
    """No exception, no error line, no native crash report (ggml's starts with gdb's "ptrace")."""
    for sign in ("Traceback", " ERROR ", "ptrace", "Aborted"):
        assert sign not in output, output[-4000:]


# -- SIGTERM ---------------------------------------------------------------------------------------
async def test_sigterm_finishes_the_reply_being_spoken_takes_no_new_room_and_exits_0(
    livekit_server: LiveKitServer, start_serve: StartServe, callers, say, models: Models
):
    serve = await start_serve("--no-http", livekit_agent_name="vc-drain")
    await serve.wait_for("registered as")
    await dispatch(livekit_server, "vc-drain", "drain-a")
    caller = callers("alice")
    await asyncio.wait_for(caller.join(livekit_server.creds, "drain-a"), 15)
    await heard_by_agent(caller)
    await asyncio.sleep(0.5)

    _, speech_end = await caller.speak(say("What is the capital of France?"))
    await poll(lambda: caller.loud_times(since=speech_end), 30)  # the answer has begun
    signalled = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)
    await dispatch(livekit_server, "vc-drain", "drain-after")  # a room offered during the drain
    code = await asyncio.wait_for(serve.proc.wait(), 10 + EXIT_SLACK)  # drain_timeout: default 10 s
    exited = time.monotonic()
    output = serve.output()
    assert code == 0, output[-3000:]

    # the whole answer was heard: its final transcript, and audio well after the signal
    await poll(lambda: _agent_finals(caller), 5)
    assert "paris" in words(_agent_finals(caller)[-1]), _agent_finals(caller)
    assert caller.loud_times(since=signalled + 0.5), "the agent went quiet at the signal"
    heard_after = await transcribe(models, caller.heard(since=signalled))
    assert "paris" in words(heard_after), heard_after  # the end of the sentence, after SIGTERM

    # then it left, and took nothing new
    assert "draining: 1 of 1 conversations in a turn" in output, output[-3000:]
    assert "drain: every turn finished" in output
    assert "left room drain-a" in output
    await poll(lambda: not _agent_present(caller), 5)
    assert serve.joined() == ["drain-a"], output[-3000:]
    assert await agents_in(livekit_server, "drain-after") == []
    _clean(output)
    print(f"\nexit {exited - signalled:.1f} s after SIGTERM")


async def test_a_turn_still_going_at_the_deadline_does_not_hold_up_the_exit(
    livekit_server: LiveKitServer, start_serve: StartServe, callers, say
):
    """`serve --room`: a person talking on and on keeps a turn open past the drain deadline."""
    drain = 2.0
    serve = await start_serve("--room", "drain-fixed", "--no-http", livekit_drain_timeout=str(drain))
    caller = callers("bob")
    await serve.wait_for("joined room drain-fixed")
    await asyncio.wait_for(caller.join(livekit_server.creds, "drain-fixed"), 15)
    await heard_by_agent(caller)
    await asyncio.sleep(0.5)
    # One long sentence held open by "and": no endpoint, the turn goes on for ~15 s.
    monologue = say(
        "I went to the market and I bought apples and pears and bread and cheese and then I walked "
        "to the river and I sat on a bench and I watched the boats and the birds and the clouds and"
    )
    caller.say(join(monologue, monologue))
    await asyncio.sleep(3.0)  # well into the monologue
    signalled = time.monotonic()
    code = await serve.stop(signal.SIGTERM, within=drain + EXIT_SLACK)
    took = time.monotonic() - signalled
    output = serve.output()
    assert code == 0, output[-3000:]
    assert took < drain + EXIT_SLACK
    assert "draining: 1 of 1 conversations in a turn" in output, output[-3000:]
    assert "drain: 1 turns unfinished after 2 s; leaving anyway" in output, output[-3000:]
    assert "left room drain-fixed" in output
    await poll(lambda: not _agent_present(caller), 5)
    _clean(output)
    print(f"\nexit {took:.1f} s after SIGTERM (drain deadline {drain:g} s)")


# -- overload --------------------------------------------------------------------------------------
async def test_a_burst_of_rooms_above_capacity_is_refused_and_the_accepted_ones_answer(
    livekit_server: LiveKitServer, start_serve: StartServe, callers, say
):
    port = free_port()
    serve = await start_serve(
        "--http-port", str(port), livekit_agent_name="vc-burst", livekit_max_conversations="2"
    )
    await serve.wait_for("up to 2 conversations")
    rooms = [f"burst-{i}" for i in range(10)]
    await asyncio.gather(*(dispatch(livekit_server, "vc-burst", room) for room in rooms))
    await poll(lambda: len(serve.joined()) >= 2, 30)
    await asyncio.sleep(3.0)  # time for a third room to be (wrongly) taken
    accepted = serve.joined()
    assert len(accepted) == 2, serve.output()[-3000:]
    # The other eight were refused: asked while full ("refusing room" in the log) or, once the
    # server had the WS_FULL status, never offered. Either way no agent went there.
    for room in set(rooms) - set(accepted):
        assert await agents_in(livekit_server, room) == [], room
    assert serve.proc.returncode is None
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as response:
        assert response.status == 200

    questions = {accepted[0]: ("What is the capital of France?", "paris"),
                 accepted[1]: ("What is the capital of Japan?", "tokyo")}  # fmt: skip

    async def ask(room: str) -> list[str]:
        """The answers to the room's question, asked a second time only if the first missed.

        A person asks again when the answer is about something else; so does this test: once in
        ~20 CI runs Whisper tiny, with two conversations on the box, heard "capital of friends".
        Each room must still answer right within two tries: a broken conversation fails both."""
        caller = callers(f"person-{room}")
        await asyncio.wait_for(caller.join(livekit_server.creds, room), 15)
        answers: list[str] = []
        for attempt in (1, 2):
            await heard_by_agent(caller)
            await asyncio.sleep(0.5)
            await caller.speak(say(questions[room][0]))
            await reply_done(caller, finals=attempt, within=60)
            answers.append(caller.agent_finals()[-1].text)
            if questions[room][1] in words(answers[-1]):
                break
        return answers

    for room in accepted:  # one after the other: two at once is the benchmark's business
        answers = await ask(room)
        assert questions[room][1] in words(answers[-1]), (room, answers, serve.output()[-3000:])
    code = await serve.stop(signal.SIGTERM)
    assert code == 0, serve.output()[-3000:]
    _clean(serve.output())


async def test_a_burst_of_people_into_one_room_is_answered_with_a_warning(
    livekit_server: LiveKitServer, start_serve: StartServe, callers, say
):
    serve = await start_serve("--room", "crowd", "--no-http", "--verbose", livekit_max_conversations="2")
    await serve.wait_for("joined room crowd")
    crowd = [callers(f"person-{i}") for i in range(8)]
    await asyncio.gather(*(asyncio.wait_for(c.join(livekit_server.creds, "crowd"), 30) for c in crowd))
    await serve.wait_for("over the capacity of 2", 30)
    last = crowd[-1]  # the eighth person: six beyond capacity, answered all the same
    await heard_by_agent(last)
    await asyncio.sleep(0.5)
    await last.speak(say("What is the capital of France?"))
    try:
        await reply_done(last, finals=1, within=60)
    except TimeoutError:  # once in a CI run, with nothing in the log to say why: keep it all
        pytest.fail(f"no answer within 60 s; the agent's log:\n{serve.output()[-6000:]}")
    # Answered, not apologised to (what it answers is Whisper tiny's and SmolLM2's business:
    # "France" is sometimes heard as "friends").
    mine = [t.text for t in last.transcripts if t.sender == last.identity and t.final]
    assert mine and words(mine[-1]), mine
    reply = last.agent_finals()[-1].text
    assert words(reply) and reply != load_config(env={}).turn.apology, reply  # (SmolLM2 may say "sorry")
    assert serve.proc.returncode is None
    code = await serve.stop(signal.SIGTERM)
    assert code == 0, serve.output()[-3000:]
    _clean(serve.output())


def test_capacity_counts_conversations_from_the_cores_unless_set():
    from voicecore import load_config
    from voicecore.rtc.worker import default_capacity

    cores = len(os.sched_getaffinity(0))
    assert default_capacity(load_config(env={})) == cores
    assert default_capacity(load_config(env={"VOICECORE_LIVEKIT_MAX_CONVERSATIONS": "3"})) == 3
    assert load_config(env={"VOICECORE_LIVEKIT_DRAIN_TIMEOUT": "2.5"}).livekit.drain_timeout == 2.5
    assert load_config(env={}).livekit.drain_timeout == 10.0


async def test_load_counts_conversations_and_a_full_or_draining_worker_says_no(config):
    """The accounting behind the burst test, where the server may never ask a full worker."""
    from livekit.protocol import agent as proto
    from livekit.protocol import models as proto_models

    from voicecore.rtc import Credentials, DispatchWorker
    from voicecore.scheduling import Scheduler

    def offer(job: str, room: str) -> proto.AvailabilityRequest:
        return proto.AvailabilityRequest(job=proto.Job(id=job, room=proto_models.Room(name=room)))

    settings = copy.deepcopy(config)
    settings.livekit.max_conversations = 3
    lines: list[str] = []
    models = SimpleNamespace(scheduler=Scheduler())  # the count lives with the models' scheduler
    worker = DispatchWorker(models, settings, Credentials("ws://127.0.0.1:9", "k", "s"), notify=lines.append)  # type: ignore[arg-type]

    class Person: ...  # stands in for the session of someone in a room

    people: dict[str, Person] = {}

    def joins(room: str, who: str) -> None:
        models.scheduler.conversations.opened(people.setdefault(who, Person()), room)
        worker.conversations.on_conversation_started(room, who)

    def leaves(room: str, who: str) -> None:
        models.scheduler.conversations.closed(people.pop(who))
        worker.conversations.on_conversation_ended(room, who)

    try:
        await worker._on_availability(offer("j1", "one"))  # promised: counts one
        assert (worker.load, worker.full) == (1, False)
        joins("elsewhere", "a")  # a room's people count
        joins("elsewhere", "b")
        worker.jobs["j0"] = Job("j0", "elsewhere")
        assert (worker.load, worker.full) == (3, True)
        await worker._on_availability(offer("j2", "two"))
        assert lines[-1] == "refusing room two (full: 3 of 3 conversations)"
        leaves("elsewhere", "b")
        assert (worker.load, worker.full) == (2, False)
        leaves("elsewhere", "a")  # everyone left: leaving
        assert (worker.load, worker.full) == (1, False)
        # LiveKit sends no job to a worker at its target load (0.7): 2 of 3 must stay below it
        joins("elsewhere", "c")
        assert worker.load == 2 and worker.reported_load < 0.7
        await worker.drain(0.1)  # from the first signal on, nothing more
        await worker._on_availability(offer("j3", "three"))
        assert lines[-1] == "refusing room three (shutting down)"
    finally:
        worker.jobs.clear()
        await worker.aclose()
