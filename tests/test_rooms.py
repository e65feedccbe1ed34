"""The agent in a room while the room changes under it: the LiveKit server restarts, people leave
mid-reply, rejoin as themselves, arrive together, or publish two microphones.

Everything is real: livekit-server, the SDK callers of livekit_fixtures.py, the bundled models.
What a user cares about is checked: the agent is back and answering, no one is left unanswered,
and no task or thread outlives the people it served.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import logging
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers import transcribe, words
from livekit import api, rtc
from livekit_fixtures import Caller, LiveKitServer, livekit_binary, poll

from voicecore import AudioFrame, Config, Models
from voicecore.metrics import TurnRecord
from voicecore.rtc import AgentRoom, Observer, agent_token, serve_room, user_token

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

BACK_WITHIN = 5.0  # the bound: agent in the room and answering after the server returns
OUTAGE = 30.0  # down longer than the SDK retries for (14-25 s): a real restart, not a blip


@pytest.fixture(scope="module")
async def warm(models: Models, config: Config) -> Models:
    await models.warm_up(config.llm.system_prompt)
    return models


@pytest.fixture
def room_config(config: Config) -> Config:
    return copy.deepcopy(config)


@pytest.fixture
async def agent_in(livekit_server: LiveKitServer, warm: Models, room_config: Config):
    """agent_in(room) -> AgentRoom joined to `room` (fixed-room mode); closed at the end."""
    agents: list[AgentRoom] = []

    async def join(room: str) -> AgentRoom:
        creds = livekit_server.creds
        token = agent_token(creds, room, "voicecore-agent")
        agents.append(
            await asyncio.wait_for(AgentRoom.join(warm, room_config, creds.ws_url, token, creds=creds), 15)
        )
        return agents[-1]

    yield join
    for agent in agents:
        await agent.aclose()


# -- what the agent is doing -------------------------------------------------------------------------
def agent_state(caller: Caller) -> str | None:
    """`lk.agent.state` of the agent in the caller's room, as the caller sees it now."""
    for participant in caller.room.remote_participants.values():
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return participant.attributes.get("lk.agent.state")
    return None


def hears(agent: AgentRoom, caller: Caller, track_sid: str | None = None) -> bool:
    """The agent listens to this caller (this session of theirs) on `track_sid` (their mic)."""
    conversation = agent.conversations.get(caller.identity)
    return (
        conversation is not None
        and conversation.participant_sid == caller.room.local_participant.sid
        and conversation.track_sid == (track_sid or caller.mic_sid)
    )


def tracks_heard_from(agent: AgentRoom, identity: str) -> int:
    """How many voice tracks of this person's the agent knows (one of them is listened to)."""
    conversation = agent.conversations.get(identity)
    return len(conversation.tracks) if conversation is not None else 0


async def ask(agent: AgentRoom, caller: Caller, question: AudioFrame, heard: str | None = None) -> TurnRecord:
    """`caller` asks `question` and hears the whole answer; the agent's record of that turn.
    With `heard`, a question misheard (Whisper tiny, after Opus, once took "France" for
    "friends") is asked once more, as a person would, and must then be heard."""
    session = agent.conversations[caller.identity].session
    for _ in range(2 if heard else 1):
        turns = len(session.records)
        await caller.speak(question)
        await poll(lambda turns=turns: len(session.records) > turns and not session.busy, 40)
        if heard is None or heard in words(session.records[-1].user_text):
            break
    record = session.records[-1]
    assert heard is None or heard in words(record.user_text), record
    return record


def tasks_and_threads() -> tuple[list[str], list[str]]:
    """Names of the running asyncio tasks and Python threads. Apart: the default executor's
    workers (it keeps up to `max_workers` idle, bounded by design, checked in `back_to`) and
    "Dummy" threads, native threads of the SDK that once called into Python: Python never
    learns when those end, so they stay listed whatever happens; and tqdm's monitor, one per
    process for good, started by the first (disabled) progress bar faster-whisper makes in its
    full-window decode, which a test's conversation may be the first to need."""
    tasks = sorted(
        f"{t.get_name()} ({t.get_coro().__qualname__})" for t in asyncio.all_tasks() if not t.done()
    )
    threads = sorted(
        t.name
        for t in threading.enumerate()
        if not t.name.startswith("asyncio_")
        and not isinstance(t, threading._DummyThread)
        and t.name != "tqdm_monitor"
    )
    return tasks, threads


async def back_to(baseline: tuple[list[str], list[str]], within: float = 10.0) -> None:
    """Until no more tasks and threads are running than at `baseline` (an assertion naming the
    extra ones otherwise)."""
    try:
        await poll(
            lambda: all(
                len(now) <= len(then) for now, then in zip(tasks_and_threads(), baseline, strict=True)
            ),
            within,
        )
    except TimeoutError:
        tasks, threads = tasks_and_threads()
        extra_tasks = sorted(set(tasks) - set(baseline[0])) or tasks
        extra_threads = sorted(set(threads) - set(baseline[1])) or threads
        raise AssertionError(f"leaked: tasks {extra_tasks}, threads {extra_threads}") from None
    executor = asyncio.get_running_loop()._default_executor  # type: ignore[attr-defined]
    idle = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
    assert executor is None or len(idle) <= executor._max_workers


async def agent_listed(server: LiveKitServer, room: str) -> float:
    """When the server next lists an agent participant in `room` (polling every 0.1 s)."""
    lkapi = server.api()
    try:
        while True:
            with contextlib.suppress(Exception):  # no such room until someone turns it
                listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
                if any(p.kind == api.ParticipantInfo.Kind.AGENT for p in listing.participants):
                    return time.monotonic()
            await asyncio.sleep(0.1)
    finally:
        await lkapi.aclose()


# -- tests ------------------------------------------------------------------------------------------
class Turns(Observer):
    """The agent's turns, whichever AgentRoom `serve_room` has at the time."""

    def __init__(self) -> None:
        self.turns: list[TurnRecord] = []

    def on_turn(self, room: str, identity: str, record: TurnRecord) -> None:
        self.turns.append(record)


async def test_fixed_room_agent_is_back_and_answering_within_5_s_of_a_server_restart(
    warm: Models, room_config: Config, say, callers, tmp_path: Path
):
    binary = livekit_binary()
    if binary is None:
        pytest.skip("livekit-server not found (bin/setup builds it)")
    server = LiveKitServer(binary, tmp_path)  # a server of its own: this one goes down
    server.start()
    stop, seen, notes = asyncio.Event(), Turns(), []
    # Whisper tiny hears Piper's "Tokyo" through Opus as "Tokivo" or "Tokido" in about one run of
    # three, and "Paris" reliably: the answer heard after the restart is Paris.
    japan, france = say("What is the capital of Japan?"), say("What is the capital of France?")
    serving = asyncio.create_task(
        serve_room(warm, room_config, server.creds, "restart", stop, notes.append, seen)
    )
    try:
        erin = callers("erin")
        await asyncio.wait_for(erin.join(server.creds, "restart"), 15)
        await poll(lambda: agent_state(erin) == "listening", 15)
        await asyncio.sleep(0.5)
        await erin.speak(japan)
        await poll(lambda: len(seen.turns) == 1, 40)
        assert "tokyo" in words(seen.turns[0].agent_text), seen.turns[0]

        await asyncio.to_thread(server.stop)
        await asyncio.wait_for(erin.leave(), 10)  # the page gave up on this connection
        await asyncio.sleep(OUTAGE)
        await asyncio.to_thread(server.start)
        back = time.monotonic()
        agent_back = asyncio.create_task(agent_listed(server, "restart"))

        # the person's page connects again (a fresh connection, as livekit-client's does)
        again = callers("erin")
        await asyncio.wait_for(again.join(server.creds, "restart"), 15)
        await poll(lambda: agent_state(again) == "listening", 15)
        listening = time.monotonic() - back
        present = await asyncio.wait_for(agent_back, 1) - back
        await asyncio.sleep(0.5)
        _, speech_end = await again.speak(france)
        await poll(lambda: again.loud_times(since=speech_end), 20)
        answered = again.loud_times(since=speech_end)[0]
        await poll(lambda: len(seen.turns) == 2, 40)
        print(
            f"\nafter the server's return: agent in the room {present:.2f} s, listening to the "
            f"person {listening:.2f} s, question asked {speech_end - back:.2f} s, answer heard "
            f"{answered - back:.2f} s ({answered - speech_end:.2f} s after the question)"
        )
        # The agent's part of the bound: back in the room, ready to answer. How long the answer
        # itself takes is the models' (test_livekit.py measures it), and the page's reconnect
        # is the person's.
        assert present < BACK_WITHIN, notes
        assert "paris" in words(seen.turns[1].agent_text), seen.turns[1]
        assert "paris" in words(await transcribe(warm, again.heard(since=speech_end)))
        await asyncio.wait_for(again.leave(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(serving, 30)
        server.stop()
    # What the failed joins and the abandoned connection left behind can be collected: the SDK
    # hung or crashed here when a never-published agent track was (see voice.AgentVoice).
    await asyncio.wait_for(asyncio.to_thread(gc.collect), 10)


async def test_leaving_mid_reply_rejoining_and_taking_over_leave_nothing_behind(
    livekit_server: LiveKitServer, agent_in, warm: Models, say, callers
):
    creds = livekit_server.creds
    agent = await agent_in("leave-rejoin")
    baseline = tasks_and_threads()

    # leaves while the agent is answering: the reply stops, the conversation is closed
    alice = callers("alice")
    await asyncio.wait_for(alice.join(creds, "leave-rejoin"), 15)
    await poll(partial(hears, agent, alice), 10)
    conversation = agent.conversations["alice"]
    _, speech_end = await alice.speak(say("Tell me a long story about a cat."))
    await poll(lambda: alice.loud_times(since=speech_end), 20)
    assert agent.voice.speaking is not None
    await asyncio.wait_for(alice.leave(), 10)
    await poll(lambda: "alice" not in agent.conversations and agent.voice.speaking is None, 5)
    reply = conversation.session._reply
    await poll(lambda: (reply is None or reply.done()) and agent.state.value == "listening", 5)
    assert agent.voice.source.queued_duration == 0

    # rejoins as herself: a new conversation, answered
    alice = callers("alice")
    await asyncio.wait_for(alice.join(creds, "leave-rejoin"), 15)
    await poll(partial(hears, agent, alice), 10)
    assert agent.conversations["alice"] is not conversation
    record = await ask(agent, alice, say("What is the capital of France?"), heard="france")
    assert "paris" in words(record.agent_text), record

    # a reloaded page: the same identity turns again before the old connection says goodbye
    old = alice
    alice = callers("alice")
    await asyncio.wait_for(alice.join(creds, "leave-rejoin"), 15)
    await poll(partial(hears, agent, alice), 10)
    assert list(agent.conversations) == ["alice"]
    await poll(lambda: not old.room.isconnected(), 10)  # the server threw the old one out
    await old.leave()  # (stops its microphone)
    record = await ask(agent, alice, say("What is the capital of Japan?"), heard="japan")
    assert "tokyo" in words(record.agent_text), record

    await asyncio.wait_for(alice.leave(), 10)
    await poll(lambda: not agent.conversations, 20)  # a departure is slow to arrive on a busy CPU
    await back_to(baseline)


async def test_two_people_joining_at_the_same_instant_are_both_answered(
    livekit_server: LiveKitServer, agent_in, warm: Models, say, callers
):
    creds = livekit_server.creds
    agent = await agent_in("together")
    baseline = tasks_and_threads()
    ann, ben = callers("ann"), callers("ben")
    await asyncio.wait_for(asyncio.gather(ann.join(creds, "together"), ben.join(creds, "together")), 15)
    await poll(lambda: hears(agent, ann) and hears(agent, ben), 10)
    france, japan = say("What is the capital of France?"), say("What is the capital of Japan?")
    records = await asyncio.gather(
        ask(agent, ann, france, heard="france"), ask(agent, ben, japan, heard="japan")
    )
    assert "paris" in words(records[0].agent_text), records[0]
    assert "tokyo" in words(records[1].agent_text), records[1]

    await asyncio.wait_for(asyncio.gather(ann.leave(), ben.leave()), 10)
    await poll(lambda: not agent.conversations, 20)  # a departure is slow to arrive on a busy CPU
    await back_to(baseline)


async def test_a_person_with_two_microphones_is_heard_through_one(
    livekit_server: LiveKitServer, agent_in, warm: Models, say, callers, caplog
):
    caplog.set_level(logging.INFO, logger="voicecore.rtc")  # the room and its conversations
    creds = livekit_server.creds
    agent = await agent_in("two-mics")
    baseline = tasks_and_threads()
    cleo = callers("cleo")
    await asyncio.wait_for(cleo.join(creds, "two-mics"), 15)
    await poll(lambda: hears(agent, cleo), 10)  # (two published at once reach the agent in any order)
    noisy = await cleo.add_microphone("mic-2", hiss=2000)  # a second microphone, hissing
    await poll(lambda: tracks_heard_from(agent, "cleo") == 2, 10)
    assert hears(agent, cleo)  # the first microphone; the second is ignored
    await poll(lambda: "second voice track" in caplog.text, 5)  # once the server said which came first

    record = await ask(agent, cleo, say("What is the capital of France?"), heard="france")
    assert "paris" in words(record.agent_text), record

    # the microphone listened to goes away: the other one takes over
    await cleo.room.local_participant.unpublish_track(cleo.mic_sid)
    await poll(lambda: hears(agent, cleo, noisy.sid), 10)
    session = agent.conversations["cleo"].session
    turns = len(session.records)
    noisy.hiss = 0  # it speaks, and is quiet after
    await noisy.speak(say("What is the capital of Japan?"))
    await poll(lambda: len(session.records) > turns and not session.busy, 40)
    assert "tokyo" in words(session.records[-1].agent_text), session.records[-1]

    await asyncio.wait_for(cleo.leave(), 10)
    await poll(lambda: not agent.conversations, 20)  # a departure is slow to arrive on a busy CPU
    await back_to(baseline)


RATE, FRAME = 16_000, 320  # 20 ms frames


class Microphones:
    """A person who publishes microphones one after another, each sending silence in real time."""

    def __init__(self, server: LiveKitServer, room: str, identity: str) -> None:
        self.server, self.room_name, self.identity = server, room, identity
        self.room = rtc.Room()
        self.sids: list[str] = []
        self._sources: list[rtc.AudioSource] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def join(self) -> None:
        creds = self.server.creds
        await self.room.connect(creds.ws_url, user_token(creds, self.room_name, self.identity))

    async def publish(self, name: str) -> None:
        source = rtc.AudioSource(RATE, 1, queue_size_ms=40)
        track = rtc.LocalAudioTrack.create_audio_track(name, source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.sids.append((await self.room.local_participant.publish_track(track, options)).sid)
        self._sources.append(source)
        self._tasks.append(asyncio.create_task(self._silence(source)))

    async def listed(self) -> bool:
        """The server lists every track published so far."""
        lkapi = self.server.api()
        try:
            info = await lkapi.room.get_participant(
                api.RoomParticipantIdentity(room=self.room_name, identity=self.identity)
            )
        finally:
            await lkapi.aclose()
        return {t.sid for t in info.tracks} >= set(self.sids)

    @staticmethod
    async def _silence(source: rtc.AudioSource) -> None:
        silence = rtc.AudioFrame(bytes(FRAME * 2), RATE, 1, FRAME)
        while True:
            await source.capture_frame(silence)
            await asyncio.sleep(0.02)

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()
        for source in self._sources:
            await source.aclose()


async def poll_async(condition, within: float, step: float = 0.05) -> None:
    """`poll` for an async condition."""
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)


ORDERS = [("mic-a", "mic-b"), ("mic-b", "mic-a")]  # each name first in turn: not chosen by name
RUNS = 4  # per order, with the agent in the room; the old choice was wrong in 2 of 6 such runs


async def test_the_first_microphone_published_is_heard_every_time(
    livekit_server: LiveKitServer, agent_in, warm: Models, caplog
):
    """A person publishes two microphones one after the other: the agent hears the first, every
    time, and says once that it ignores the other. With the agent in the room (the issue's case)
    their subscriptions complete in any order; an agent that comes after finds both in a snapshot
    the server lists in any order."""
    caplog.set_level(logging.INFO, logger="voicecore.rtc")
    runs = [(names, True) for _ in range(RUNS) for names in ORDERS] + [(names, False) for names in ORDERS]
    chosen: list[tuple[str, bool, bool]] = []
    for run, (names, agent_first) in enumerate(runs):
        room = f"first-mic-{run}"
        person = Microphones(livekit_server, room, "dana")
        agent: AgentRoom | None = None
        try:
            if agent_first:
                agent = await agent_in(room)
            await asyncio.wait_for(person.join(), 15)
            for name in names:
                await person.publish(name)
            first, second = person.sids
            if agent is None:
                await poll_async(person.listed, 10)
                agent = await agent_in(room)
            await poll(lambda agent=agent: tracks_heard_from(agent, "dana") == 2, 10)
            ignored = f"a second voice track ({second}) is ignored"
            with contextlib.suppress(TimeoutError):  # the log line comes once the choice is made
                await poll(lambda ignored=ignored: ignored in caplog.text, 5)
            chosen.append((names[0], agent_first, agent.conversations["dana"].track_sid == first))
            assert caplog.text.count(ignored) == 1, caplog.text  # said once
            assert f"voice track ({first}) is ignored" not in caplog.text
        finally:
            if agent is not None:
                await agent.aclose()
            await person.leave()
    assert all(right for _, _, right in chosen), chosen


def back_to_back(sentence: AudioFrame, seconds: float) -> AudioFrame:
    """`sentence` said over and over for `seconds`, with no pause between (its own leading and
    trailing silence cut off): a monologue the VAD never hears end."""
    loud = np.flatnonzero(np.abs(sentence.samples) > 300)
    once = sentence.samples[loud[0] : loud[-1] + 1]
    times = int(seconds * RATE / len(once)) + 1
    return AudioFrame(np.tile(once, times), RATE)


async def test_a_monologue_in_one_room_does_not_hold_up_a_question_in_another(
    livekit_server: LiveKitServer, agent_in, warm: Models, room_config: Config, say, callers, caplog
):
    """One person talks for 40 s without a pause; a second, in another room, asks a question
    just after the first one's speech was cut at `turn.max_utterance` (28 s) and sent to Whisper.
    Repeated speech compresses well, which made faster-whisper decode the cut monologue again at
    five higher temperatures (~19 s on the shared worker): the second person got the apology.
    Now each decode is bounded, and both are answered."""
    caplog.set_level(logging.INFO, logger="voicecore")
    creds = livekit_server.creds
    talking, asking = await agent_in("monologue"), await agent_in("question")
    talker, asker = callers("talker"), callers("asker")
    await asyncio.wait_for(asyncio.gather(talker.join(creds, "monologue"), asker.join(creds, "question")), 15)
    await poll(lambda: hears(talking, talker) and hears(asking, asker), 10)
    question = say("What is the capital of France?")
    talker.say(back_to_back(question, 40.0))
    await poll(lambda: talker.microphone._sent, 5)
    cut = talker.microphone._sent[0] + room_config.turn.max_utterance
    await asyncio.sleep(cut + 1.0 - time.monotonic())  # the case: asked 29 s in

    # Asked again if misheard ("It's..." once, on a loaded machine), as a person would; but no
    # turn of theirs may have failed.
    record = await ask(asking, asker, question, heard="france")
    if not record.agent_text:
        # Seen once in 6 runs: SmolLM2 answered nothing at all (no token, no error) while the
        # other room's reply had just been written: not this issue's; asked again, as a person would.
        print(f"\nan empty answer: {record}")
        record = await ask(asking, asker, question, heard="france")
    asked = asking.conversations["asker"].session.records
    assert not [r for r in asked if "failed" in r.extra], caplog.text[-3000:]
    assert "paris" in words(record.agent_text), record

    monologue = talking.conversations["talker"].session
    await poll(lambda: monologue.records, 30)
    first = monologue.records[0]  # the cut monologue was answered too, not timed out
    assert "failed" not in first.extra, caplog.text[-3000:]
    assert first.speech_end < cut + 0.5, first  # (it was the monologue, cut)
    assert {"capital", "france"} <= set(words(first.user_text)), first
    assert "timed out" not in caplog.text
