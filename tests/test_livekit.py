"""voicecore on a real LiveKit server, with the real models, heard by a real client participant.

A `Caller` is a person: it joins with the livekit SDK, speaks through its own rtc.AudioSource in
real time (silence between utterances, like a live microphone), and records what it receives:
the agent's audio, `lk.transcription` text streams and `lk.agent.state`.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from helpers import transcribe, words
from livekit import api, rtc
from livekit_fixtures import ROOT, LiveKitServer

from voicecore import AudioFrame, Config, ConfigError, Models, load_config
from voicecore.rtc import AgentRoom, Credentials, DispatchWorker, agent_token, credentials, user_token
from voicecore.rtc.transcription import ATTR_FINAL, ATTR_SEGMENT, ATTR_TRACK, TOPIC

RATE = 16_000
FRAME = RATE // 50  # 20 ms
LOUD = 300  # int16 peak above which a received frame counts as agent speech (Opus noise is ~0)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]


@pytest.fixture(scope="session")
def lk_config(config: Config) -> Config:
    """The test config, with LiveKit settings of its own (the shared one stays untouched)."""
    return copy.deepcopy(config)


@pytest.fixture(scope="session")
async def warm(models: Models, config: Config) -> Models:
    await models.warm_up(config.llm.system_prompt)
    return models


# -- a person in a room ----------------------------------------------------------------------------
@dataclass
class Transcript:
    sender: str
    attributes: dict[str, str]
    text: str
    at: float

    @property
    def final(self) -> bool:
        return self.attributes.get(ATTR_FINAL) == "true"


@dataclass
class Caller:
    identity: str
    room: rtc.Room = field(default_factory=rtc.Room)
    received: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, 16 kHz)
    transcripts: list[Transcript] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    mic_sid: str = ""
    source: rtc.AudioSource | None = None
    _speech: deque[np.ndarray] = field(default_factory=deque)
    _sent: list[float] = field(default_factory=list)  # when each utterance's first sample went out
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(self, creds: Credentials, room: str) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.register_text_stream_handler(TOPIC, self._on_text)
        await self.room.connect(creds.ws_url, user_token(creds, room, self.identity))
        for participant in self.room.remote_participants.values():
            if state := participant.attributes.get("lk.agent.state"):
                self.states.append((time.monotonic(), state))
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=40)  # a browser mic buffers ~10 ms
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.mic_sid = (await self.room.local_participant.publish_track(track, options)).sid
        self._tasks.append(asyncio.create_task(self._microphone()))

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()

    # speaking: a live microphone sends 20 ms frames in real time, silence between utterances
    def say(self, audio: AudioFrame) -> None:
        assert audio.sample_rate == RATE
        samples = audio.samples
        samples = np.concatenate([samples, np.zeros(-len(samples) % FRAME, np.int16)])
        self._speech.append(samples)

    async def _microphone(self) -> None:
        assert self.source is not None
        next_frame = time.monotonic()
        current: np.ndarray | None = None
        offset = 0
        while True:
            if current is None and self._speech:
                current, offset = self._speech.popleft(), 0
                # it leaves the microphone after what is already queued there
                self._sent.append(time.monotonic() + self.source.queued_duration)
            if current is not None:
                frame = current[offset : offset + FRAME]
                offset += FRAME
                if offset >= len(current):
                    current = None
            else:
                frame = np.zeros(FRAME, np.int16)
            await self.source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, FRAME))
            # real time; after a stall, go on from now rather than bursting to catch up
            next_frame = max(next_frame + 0.02, time.monotonic() - 0.02)
            await asyncio.sleep(max(0.0, next_frame - time.monotonic()))

    async def speak(self, audio: AudioFrame) -> tuple[float, float]:
        """Say `audio`, wait until it is out; returns when the speech in it began and ended, on
        the client's clock (Piper's leading and trailing silence excluded)."""
        n = len(self._sent)
        self.say(audio)
        await poll(lambda: len(self._sent) > n, 5)
        loud = np.flatnonzero(np.abs(audio.samples) > LOUD)
        start, end = self._sent[n] + loud[0] / RATE, self._sent[n] + loud[-1] / RATE
        await asyncio.sleep(max(0.0, self._sent[n] + audio.duration - time.monotonic()))
        return start, end

    # hearing
    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        # Only the agent's voice: another person's microphone in the room is not what is "heard"
        # from the agent (and mixed in, it would confuse the Whisper check).
        if track.kind == rtc.TrackKind.KIND_AUDIO and who.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=RATE, num_channels=1)
        try:
            async for event in stream:
                samples = np.frombuffer(event.frame.data, np.int16).copy()
                self.received.append((time.monotonic(), samples))
        finally:
            await stream.aclose()

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if "lk.agent.state" in changed:
            self.states.append((time.monotonic(), changed["lk.agent.state"]))

    def _on_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            attributes = dict(reader.info.attributes or {})
            self.transcripts.append(Transcript(sender, attributes, text, time.monotonic()))

        self._tasks.append(asyncio.create_task(read()))

    # what was heard
    def heard(self, since: float = 0.0, until: float = float("inf")) -> AudioFrame:
        parts = [s for t, s in self.received if since <= t <= until]
        return AudioFrame(np.concatenate(parts) if parts else np.zeros(0, np.int16), RATE)

    def loud_times(self, since: float = 0.0) -> list[float]:
        return [t for t, s in self.received if t >= since and len(s) and np.abs(s).max() > LOUD]

    def agent_finals(self) -> list[Transcript]:
        agents = {p.identity for p in self.room.remote_participants.values()
                  if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT}  # fmt: skip
        return [t for t in self.transcripts if t.sender in agents and t.final]

    def state_path(self) -> list[str]:
        path: list[str] = []
        for _, state in self.states:
            if not path or path[-1] != state:
                path.append(state)
        return path


async def poll(condition: Callable[[], object], within: float, step: float = 0.05) -> None:
    """Wait until `condition()` is true; TimeoutError after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)


@pytest.fixture
async def caller_factory() -> AsyncIterator[Callable[[str], Caller]]:
    callers: list[Caller] = []

    def make(identity: str) -> Caller:
        callers.append(Caller(identity))
        return callers[-1]

    yield make
    for caller in callers:
        await caller.leave()


def _room_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")


def _listening(caller: Caller) -> bool:
    return caller.state_path()[-1:] == ["listening"]


async def _reply_done(caller: Caller, finals: int, within: float = 40.0) -> None:
    """Until the agent published `finals` final transcripts and is listening again."""
    await poll(
        lambda: (
            len(caller.agent_finals()) >= finals and caller.states and caller.states[-1][1] == "listening"
        ),
        within,
    )


# -- tests ----------------------------------------------------------------------------------------
def test_credentials_come_from_config_then_livekit_env_and_hide_the_secret():
    env = {"LIVEKIT_URL": "wss://lk.example", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s3cr3t"}
    config = load_config(env={"VOICECORE_LIVEKIT_API_KEY": "mine", "VOICECORE_LIVEKIT_MAX_JOBS": "3"})
    assert config.livekit.max_jobs == 3
    creds = credentials(config.livekit, env)
    assert (creds.url, creds.api_key, creds.api_secret) == ("wss://lk.example", "mine", "s3cr3t")
    assert creds.http_url == "https://lk.example"
    assert "s3cr3t" not in repr(creds)
    assert "s3cr3t" not in repr(load_config(env={"VOICECORE_LIVEKIT_API_SECRET": "s3cr3t"}))
    with pytest.raises(ConfigError, match="url"):
        credentials(load_config(env={}).livekit, {"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s"})


async def test_question_answered_with_transcripts_and_state(
    livekit_server: LiveKitServer, warm: Models, lk_config: Config, say, caller_factory, request
):
    room = _room_name(request)
    creds = livekit_server.creds
    token = agent_token(creds, room, "voicecore-agent")
    agent = await asyncio.wait_for(AgentRoom.join(warm, lk_config, creds.ws_url, token), 15)
    try:
        caller = caller_factory("alice")
        await asyncio.wait_for(caller.join(creds, room), 15)
        await poll(partial(_listening, caller), 10)
        await asyncio.sleep(0.5)
        question = say("What is the capital of France?")
        _, speech_end = await caller.speak(question)
        await _reply_done(caller, finals=1)
        await asyncio.sleep(0.3)

        reply_audio = caller.heard(since=speech_end)
        heard = await transcribe(warm, reply_audio)
        assert "paris" in words(heard), heard
        first_audio = caller.loud_times(since=speech_end)[0]
        print(f"\nvoice-to-voice at the client: {(first_audio - speech_end) * 1000:.0f} ms")

        mine = [t for t in caller.transcripts if t.sender == "alice"]
        final_user = [t for t in mine if t.final]
        assert len(final_user) == 1, mine
        assert {"capital", "france"} <= set(words(final_user[0].text))
        assert final_user[0].attributes[ATTR_TRACK] == caller.mic_sid
        assert final_user[0].attributes[ATTR_SEGMENT]

        agent_lines = [t for t in caller.transcripts if t.sender == agent.identity]
        assert agent_lines and "paris" in words(caller.agent_finals()[-1].text)
        agent_track = agent.voice.track_sid
        assert all(t.attributes.get(ATTR_TRACK) == agent_track for t in agent_lines)
        assert len({t.attributes[ATTR_SEGMENT] for t in agent_lines}) == 1  # one reply, one segment

        path = caller.state_path()
        assert path[-1] == "listening", path
        i = path.index("thinking")
        assert path[i : i + 3] == ["thinking", "speaking", "listening"], path
    finally:
        await agent.aclose()
    assert not agent.room.isconnected()


async def test_interruption_over_the_network(
    livekit_server: LiveKitServer, warm: Models, lk_config: Config, say, caller_factory, request
):
    # The 300 ms budget, measured at the client: ~60 ms uplink (mic buffer, Opus, jitter buffer),
    # the speech the agent waits for before it yields (turn.min_interruption, 0.1 s by default),
    # ~50 ms of its audio already on the way down.
    config = lk_config
    room = _room_name(request)
    creds = livekit_server.creds
    token = agent_token(creds, room, "voicecore-agent")
    agent = await asyncio.wait_for(AgentRoom.join(warm, config, creds.ws_url, token), 15)
    try:
        caller = caller_factory("bob")
        await asyncio.wait_for(caller.join(creds, room), 15)
        await poll(partial(_listening, caller), 10)
        await asyncio.sleep(0.5)
        question = say("Tell me a long story about a cat.")
        barge_in = say("Stop. Wait a moment, please.")  # Piper blocks: synthesise before the call
        _, speech_end = await caller.speak(question)
        await poll(lambda: caller.loud_times(since=speech_end), 20)
        reply_start = caller.loud_times(since=speech_end)[0]
        await asyncio.sleep(reply_start + 1.2 - time.monotonic())  # let it speak for a while
        await poll(lambda: caller.loud_times(since=time.monotonic() - 0.03), 5)

        barge, _ = await caller.speak(barge_in)  # over the agent, mid-word
        stop = _audio_stop(caller, barge)
        print(f"\nagent audio stopped {(stop - barge) * 1000:.0f} ms after the caller began")
        assert stop - barge < 0.3

        await poll(lambda: caller.agent_finals(), 20)
        cut = caller.agent_finals()[0]
        segment = cut.attributes[ATTR_SEGMENT]
        full = max((t.text for t in caller.transcripts if t.attributes.get(ATTR_SEGMENT) == segment), key=len)
        heard = await transcribe(warm, caller.heard(since=reply_start - 0.1, until=stop + 0.05))
        said, shown = words(heard), words(cut.text)
        print(f"heard: {heard!r}\ntranscript: {cut.text!r}\nfull text: {full!r}")
        assert len(shown) < len(words(full))  # the transcript was cut...
        assert shown == words(full)[: len(shown)]  # ...keeping its beginning
        assert abs(len(shown) - len(said)) <= max(3, len(said) // 4)  # ...where the audio stopped
    finally:
        await agent.aclose()


def _audio_stop(caller: Caller, after: float, silence: float = 0.6) -> float:
    """When the agent's audio stopped after `after`: its last loud frame before a long silence
    (longer than the pauses between its words; its answer to the interruption comes later)."""
    last = max([t for t in caller.loud_times(since=after - 1.0) if t <= after], default=after)
    for t in caller.loud_times(since=after):
        if t - last > silence:
            break
        last = t
    return last


async def test_greeting_when_a_person_joins(
    livekit_server: LiveKitServer, warm: Models, lk_config: Config, caller_factory, request
):
    config = copy.deepcopy(lk_config)
    config.livekit.greeting = "Hello, I am your voice agent."
    room = _room_name(request)
    creds = livekit_server.creds
    token = agent_token(creds, room, "voicecore-agent")
    agent = await asyncio.wait_for(AgentRoom.join(warm, config, creds.ws_url, token), 15)
    try:
        caller = caller_factory("carol")
        await asyncio.wait_for(caller.join(creds, room), 15)
        await _reply_done(caller, finals=1, within=20)
        assert caller.agent_finals()[0].text == config.livekit.greeting
        heard = words(await transcribe(warm, caller.heard()))
        assert {"hello", "voice", "agent"} <= set(heard), heard
        assert "speaking" in caller.state_path()
        history = agent.conversations["carol"].session.history.turns
        assert [m.content for m in history] == [config.livekit.greeting]
    finally:
        await agent.aclose()


async def test_two_people_in_one_room_each_get_their_own_answer(
    livekit_server: LiveKitServer, warm: Models, lk_config: Config, say, caller_factory, request
):
    """One Session per person: their words never meet; the replies take turns on one voice."""
    room = _room_name(request)
    creds = livekit_server.creds
    token = agent_token(creds, room, "voicecore-agent")
    agent = await asyncio.wait_for(AgentRoom.join(warm, lk_config, creds.ws_url, token), 15)
    try:
        ann, ben = caller_factory("ann"), caller_factory("ben")
        for caller in (ann, ben):
            await asyncio.wait_for(caller.join(creds, room), 15)
        await poll(partial(_listening, ann), 10)
        france, japan = say("What is the capital of France?"), say("What is the capital of Japan?")
        await asyncio.sleep(0.5)
        ann.say(france)
        await asyncio.sleep(1.0)  # Ben starts while Ann is still talking
        await ben.speak(japan)
        await _reply_done(ann, finals=2)
        await asyncio.sleep(0.3)

        assert set(agent.conversations) == {"ann", "ben"}
        finals = {who: [t.text for t in ann.transcripts if t.sender == who and t.final]
                  for who in ("ann", "ben")}  # fmt: skip
        assert len(finals["ann"]) == 1 and len(finals["ben"]) == 1, finals
        assert "france" in words(finals["ann"][0]) and "japan" not in words(finals["ann"][0])
        assert "japan" in words(finals["ben"][0]) and "france" not in words(finals["ben"][0])
        replies = [words(t.text) for t in ann.agent_finals()]
        assert "paris" in replies[0] and "tokyo" in replies[1], replies  # Ann finished first
        heard = words(await transcribe(warm, ann.heard()))
        assert "paris" in heard and "tokyo" in heard, heard  # both replies whole, one at a time
        assert heard.index("paris") < heard.index("tokyo")
    finally:
        await agent.aclose()


# -- dispatch --------------------------------------------------------------------------------------
@pytest.fixture
async def worker(
    livekit_server: LiveKitServer, warm: Models, lk_config: Config, request
) -> AsyncIterator[DispatchWorker]:
    config = copy.deepcopy(lk_config)
    config.livekit.agent_name = f"vc-{_room_name(request)}"[:40]
    config.livekit.max_conversations = 4  # two rooms at once even on a one-core machine
    worker = DispatchWorker(warm, config, livekit_server.creds)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.registered.wait(), 10)
    yield worker
    await asyncio.wait_for(worker.aclose(), 15)
    await asyncio.wait_for(running, 10)


async def _dispatch(server: LiveKitServer, agent_name: str, room: str) -> None:
    lkapi = server.api()
    try:
        request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
        await lkapi.agent_dispatch.create_dispatch(request)
    finally:
        await lkapi.aclose()


async def _agents_in(server: LiveKitServer, room: str) -> list[str]:
    lkapi = server.api()
    try:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    finally:
        await lkapi.aclose()
    agent_kind = api.ParticipantInfo.Kind.AGENT
    return [p.identity for p in listing.participants if p.kind == agent_kind]


async def test_two_rooms_at_once_through_dispatch(
    livekit_server: LiveKitServer, worker: DispatchWorker, warm: Models, say, caller_factory, request
):
    base = _room_name(request)
    questions = {f"{base}-a": ("What is the capital of France?", "paris"),
                 f"{base}-b": ("What is the capital of Japan?", "tokyo")}  # fmt: skip
    callers: dict[str, Caller] = {}
    for room in questions:
        await _dispatch(livekit_server, worker.agent_name, room)
        callers[room] = caller_factory(f"person-{room[-1]}")
        await asyncio.wait_for(callers[room].join(livekit_server.creds, room), 15)
    for room, caller in callers.items():
        await poll(partial(_listening, caller), 15)
        assert len(await _agents_in(livekit_server, room)) == 1
    assert {job.room for job in worker.jobs.values()} == set(questions)

    async def ask(room: str) -> str:
        caller = callers[room]
        question = say(questions[room][0])
        _, speech_end = await caller.speak(question)
        await _reply_done(caller, finals=1)
        await asyncio.sleep(0.3)
        return await transcribe(warm, caller.heard(since=speech_end))

    answers = await asyncio.gather(*(ask(room) for room in questions))
    for (room, (_, expected)), answer in zip(questions.items(), answers, strict=True):
        assert expected in words(answer), (room, answer)

    # the job ends when everyone has left
    await callers[f"{base}-a"].leave()
    await poll(lambda: len(worker.jobs) == 1, 10)


async def test_worker_registers_again_after_a_server_restart(
    livekit_server: LiveKitServer, worker: DispatchWorker, caller_factory, request
):
    assert worker.registrations == 1
    await asyncio.to_thread(livekit_server.stop)
    await poll(lambda: not worker.registered.is_set(), 10)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(livekit_server.start)
    await asyncio.wait_for(worker.registered.wait(), 30)
    assert worker.registrations == 2

    room = _room_name(request)
    await _dispatch(livekit_server, worker.agent_name, room)
    caller = caller_factory("dave")
    await asyncio.wait_for(caller.join(livekit_server.creds, room), 15)
    await poll(partial(_listening, caller), 15)
    assert len(await _agents_in(livekit_server, room)) == 1


async def test_two_worker_processes_share_six_rooms(livekit_server: LiveKitServer, tmp_path: Path):
    """Every room gets exactly one agent; both processes get rooms; Ctrl-C leaves them cleanly."""
    agent_name = "vc-scale"
    env = {
        **os.environ,
        "LIVEKIT_URL": livekit_server.creds.ws_url,
        "LIVEKIT_API_KEY": livekit_server.creds.api_key,
        "LIVEKIT_API_SECRET": livekit_server.creds.api_secret,
        "VOICECORE_LIVEKIT_AGENT_NAME": agent_name,
        "VOICECORE_LIVEKIT_MAX_JOBS": "3",  # six rooms fill both: each must take three
        "VOICECORE_LIVEKIT_MAX_CONVERSATIONS": "3",  # (the default, the CPU cores, may be fewer)
        "VOICECORE_LLM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = []
    for log in logs:
        with log.open("wb") as out:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "voicecore",
                    "serve",
                    "--dev",  # devkey/secret: refused without it
                    "--no-http",  # two processes, one machine: no port 8080 for both
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=ROOT,
                )  # fmt: skip
            )

    def output(i: int) -> str:
        return logs[i].read_text()

    rooms = [f"scale-{i}" for i in range(6)]
    joined: list[set[str]] = [set(), set()]
    try:
        try:
            await poll(lambda: all("registered as" in output(i) for i in range(2)), 90, 0.2)
        except TimeoutError:
            raise AssertionError([output(i)[-3000:] for i in range(2)]) from None
        for room in rooms:
            await _dispatch(livekit_server, agent_name, room)
        await poll(lambda: sum(output(i).count("joined room") for i in range(2)) == 6, 30, 0.2)
        agents = [await _agents_in(livekit_server, room) for room in rooms]
        assert all(len(a) == 1 for a in agents), agents
        joined = [set(re.findall(r"joined room (\S+)", output(i))) for i in range(2)]
        assert joined[0] and joined[1], joined
        assert joined[0] | joined[1] == set(rooms) and not joined[0] & joined[1]
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        codes = []
        for proc in procs:
            try:
                codes.append(await asyncio.wait_for(proc.wait(), 30))
            except TimeoutError:
                proc.kill()
                codes.append(await proc.wait())
    assert codes == [0, 0], [output(i)[-2000:] for i in range(2)]
    for i, mine in enumerate(joined):
        assert set(re.findall(r"left room (\S+)", output(i))) == mine, output(i)[-2000:]
