"""A simulated person in a LiveKit room, for the tests, the benchmarks and anyone checking a
deployment: a client written with the `livekit` SDK, the way a browser joins.

    caller = Caller("alice")
    await caller.join(creds, "room-1")           # after dispatch(creds, "voicecore", "room-1")
    await caller.wait_for_agent(15)
    spoken = await caller.speak(audio)           # 16 kHz; returns once it has left the microphone
    first = await caller.wait_for_audio(spoken.speech_end, 15)
    print(first - spoken.speech_end, caller.agent_text(spoken.speech_start))
    await caller.leave()

It speaks through a `Microphone` of its own in real time (20 ms frames, silence between
utterances, as a live microphone does) and notes, on this machine's monotonic clock: when each
utterance's speech began and ended as it left the microphone, when each loud sample of the
agent's audio arrived (and the audio itself, for a speech check), the agent's `lk.agent.state`,
and the text streams it received (`lk.transcription`, `voicecore.metrics`). An agent on the same
machine reads the same clock, so its own records line up with the caller's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import api, rtc

from voicecore.audio import AudioFrame
from voicecore.rtc.token import Credentials, user_token
from voicecore.rtc.transcription import ATTR_FINAL, METRICS_TOPIC, TOPIC
from voicecore.rtc.voice import close_audio

RATE = 16_000  # the microphone's, and what is heard unless asked otherwise
FRAME = RATE // 50  # 20 ms
LOUD = 300  # int16 peak above which a sample is speech (about -40 dBFS; Opus silence is ~0)
AGENT_KIND = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
DISPATCH_TIMEOUT = 10.0


def speech_bounds(audio: AudioFrame, threshold: int = LOUD) -> tuple[float, float]:
    """Seconds from the start of `audio` to its first and last sample above `threshold`."""
    loud = np.flatnonzero(np.abs(audio.samples.astype(np.int32)) > threshold)
    if len(loud) == 0:
        raise ValueError("no speech in the audio: no sample above the threshold")
    return loud[0] / audio.sample_rate, loud[-1] / audio.sample_rate


async def poll(condition: Callable[[], object], within: float, step: float = 0.05) -> None:
    """Wait until `condition()` is true; TimeoutError after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)


# -- what the server is asked -----------------------------------------------------------------------
async def dispatch(creds: Credentials, agent_name: str, room: str) -> None:
    """Ask the server to send the agent `agent_name` to `room` (explicit dispatch; creates the room)."""
    lkapi = api.LiveKitAPI(creds.http_url, creds.api_key, creds.api_secret)
    try:
        request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
        await asyncio.wait_for(lkapi.agent_dispatch.create_dispatch(request), DISPATCH_TIMEOUT)
    finally:
        await lkapi.aclose()


async def agents_in(creds: Credentials, room: str) -> list[str]:
    """The identities of the agent participants the server lists in `room` now."""
    lkapi = api.LiveKitAPI(creds.http_url, creds.api_key, creds.api_secret)
    try:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    finally:
        await lkapi.aclose()
    return [p.identity for p in listing.participants if p.kind == api.ParticipantInfo.Kind.AGENT]


# -- a microphone -----------------------------------------------------------------------------------
@dataclass
class Spoken:
    """One utterance, on the client's clock, as it left the microphone. Unpacks as
    `speech_start, speech_end`."""

    sent: float  # its first sample
    speech_start: float  # its first sample above LOUD
    speech_end: float  # its last sample above LOUD
    done: float  # its last sample

    def __iter__(self) -> Iterator[float]:
        return iter((self.speech_start, self.speech_end))


class Microphone:
    """A live microphone track: 20 ms frames at 16 kHz in real time, what it is given to say and
    silence (or `hiss`, white noise of that int16 deviation) in between."""

    def __init__(self, hiss: float = 0.0) -> None:
        self.source = rtc.AudioSource(RATE, 1, queue_size_ms=40)  # a browser mic buffers ~10-20 ms
        self.hiss = hiss
        self.sid = ""
        self._track: rtc.LocalAudioTrack | None = None
        self._publication: rtc.LocalTrackPublication | None = None
        self._speech: deque[np.ndarray] = deque()
        self._sent: list[float] = []  # when each utterance's first sample leaves
        self._task: asyncio.Task[None] | None = None

    async def publish(self, room: rtc.Room, name: str = "mic") -> str:
        """Publish it in `room` (as a microphone) and start sending; its track sid."""
        self._track = rtc.LocalAudioTrack.create_audio_track(name, self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self._publication = await room.local_participant.publish_track(self._track, options)
        self.sid = self._publication.sid
        self._task = asyncio.create_task(self._run())
        return self.sid

    async def wait_for_subscription(self, within: float) -> None:
        assert self._publication is not None, "not published"
        await asyncio.wait_for(self._publication.wait_for_subscription(), within)

    def say(self, audio: AudioFrame) -> None:
        """Queue `audio` (16 kHz) after what is queued already; returns at once."""
        if audio.sample_rate != RATE:
            raise ValueError(f"the microphone takes {RATE} Hz audio, not {audio.sample_rate}")
        samples = audio.samples
        self._speech.append(np.concatenate([samples, np.zeros(-len(samples) % FRAME, np.int16)]))

    async def speak(self, audio: AudioFrame) -> Spoken:
        """Say `audio` and return once its last sample left the microphone."""
        start, end = speech_bounds(audio)
        n = len(self._sent)
        self.say(audio)
        await poll(lambda: len(self._sent) > n, 5, step=0.02)
        sent = self._sent[n]
        spoken = Spoken(sent, sent + start, sent + end, sent + audio.duration)
        await asyncio.sleep(max(0.0, spoken.done - time.monotonic()))
        return spoken

    async def _run(self) -> None:
        rng = np.random.default_rng(0)
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
            elif self.hiss:
                frame = rng.normal(0, self.hiss, FRAME).clip(-32768, 32767).astype(np.int16)
            else:
                frame = np.zeros(FRAME, np.int16)
            await self.source.capture_frame(rtc.AudioFrame(frame.tobytes(), RATE, 1, FRAME))
            # real time; after a stall, go on from now rather than bursting to catch up
            next_frame = max(next_frame + 0.02, time.monotonic() - 0.02)
            await asyncio.sleep(max(0.0, next_frame - time.monotonic()))

    async def stop(self) -> None:
        """Stop sending."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def close(self) -> None:
        """Stop sending and free the native source and track (a soak's client makes hundreds)."""
        await self.stop()
        if self._track is not None and self._publication is not None:
            await close_audio(self.source, self._track, self._publication)
            self._track = self._publication = None


# -- a person ---------------------------------------------------------------------------------------
@dataclass
class Text:
    """A text stream received: `lk.transcription` (a transcript) or `voicecore.metrics`."""

    sender: str
    attributes: dict[str, str]
    text: str
    at: float
    topic: str = TOPIC

    @property
    def final(self) -> bool:
        return self.attributes.get(ATTR_FINAL) == "true"


Transcript = Text


@dataclass
class Caller:
    """A person in a room (see the module docstring): `join`, `speak`, then what was heard.

    `hear_rate`: the rate the agent's audio is received at (48 kHz is what it is sent at: no
    resampling on the way); `keep_audio`: keep it for `heard` (False: only when it was loud)."""

    identity: str
    hear_rate: int = RATE
    keep_audio: bool = True
    room: rtc.Room = field(default_factory=rtc.Room)
    microphones: list[Microphone] = field(default_factory=list)  # the first is its own
    received: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, samples)
    loud: list[float] = field(default_factory=list)  # when each loud frame's first loud sample came
    texts: list[Text] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    agent_identity: str = ""  # the first agent seen in the room
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _agent_track: asyncio.Event = field(default_factory=asyncio.Event)
    _loud_frame: asyncio.Event = field(default_factory=asyncio.Event)

    # -- joining and leaving --------------------------------------------------------------------------
    async def join(self, creds: Credentials, room: str) -> None:
        """Join `room` with a token of its own and publish its microphone."""
        await self.join_with(creds.ws_url, user_token(creds, room, self.identity))

    async def join_with(self, url: str, token: str) -> None:
        """Join with a token from elsewhere (a token endpoint, as a browser does)."""
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.on("participant_connected", self._on_participant)
        for topic in (TOPIC, METRICS_TOPIC):
            self.room.register_text_stream_handler(topic, self._on_text)
        await self.room.connect(url, token)
        for participant in self.room.remote_participants.values():
            self._on_participant(participant)
        await self.add_microphone("mic")

    async def add_microphone(self, name: str, hiss: float = 0.0) -> Microphone:
        """Publish another microphone track (the first one `join` publishes is its voice)."""
        microphone = Microphone(hiss)
        self.microphones.append(microphone)
        await microphone.publish(self.room, name)
        return microphone

    @property
    def microphone(self) -> Microphone:
        assert self.microphones, "not joined"
        return self.microphones[0]

    @property
    def mic_sid(self) -> str:
        return self.microphones[0].sid if self.microphones else ""

    async def noticed(self, within: float = 15.0) -> None:
        """Until the agent has subscribed to this caller's microphone: it knows they are here (its
        `listening` state may come from before they joined)."""
        await self.microphone.wait_for_subscription(within)

    async def wait_for_agent(self, within: float) -> float:
        """Until an agent is in the room, its voice reaches us and it listens; when it was."""
        await asyncio.wait_for(self._agent_track.wait(), within)
        await poll(lambda: self.state == "listening", within, step=0.02)
        return time.monotonic()

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *(m.stop() for m in self.microphones), return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), 5)
        for microphone in self.microphones:
            await microphone.close()
        self.microphones.clear()

    # -- speaking -------------------------------------------------------------------------------------
    def say(self, audio: AudioFrame) -> None:
        """Queue `audio` (16 kHz) on the microphone; returns at once."""
        self.microphone.say(audio)

    async def speak(self, audio: AudioFrame) -> Spoken:
        """Say `audio` (16 kHz) and return once it is out: when its speech began and ended, on
        the client's clock (leading and trailing silence excluded)."""
        return await self.microphone.speak(audio)

    # -- hearing --------------------------------------------------------------------------------------
    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == AGENT_KIND and not self.agent_identity:
            self.agent_identity = participant.identity
        if state := participant.attributes.get("lk.agent.state"):
            self.states.append((time.monotonic(), state))

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        # Only the agent's voice: another person's microphone in the room is not what is "heard"
        # from the agent (and mixed in, it would confuse a speech check).
        if track.kind == rtc.TrackKind.KIND_AUDIO and who.kind == AGENT_KIND:
            self.agent_identity = self.agent_identity or who.identity
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=self.hear_rate, num_channels=1)
        self._agent_track.set()
        try:
            async for event in stream:
                arrived = time.monotonic()
                samples = np.frombuffer(event.frame.data, np.int16)
                if self.keep_audio:
                    self.received.append((arrived, samples.copy()))
                loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
                if len(loud):
                    # the frame plays from its arrival: its first loud sample is heard that much later
                    self.loud.append(arrived + loud[0] / self.hear_rate)
                    self._loud_frame.set()
        finally:
            await stream.aclose()

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if "lk.agent.state" in changed:
            self.states.append((time.monotonic(), changed["lk.agent.state"]))

    def _on_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            info = reader.info
            self.texts.append(Text(sender, dict(info.attributes or {}), text, time.monotonic(), info.topic))

        self._tasks.append(asyncio.create_task(read()))

    # -- what was heard -------------------------------------------------------------------------------
    @property
    def transcripts(self) -> list[Text]:
        """Every `lk.transcription` text stream received, interim and final, anyone's."""
        return [t for t in self.texts if t.topic == TOPIC]

    @property
    def state(self) -> str:
        """The agent's latest `lk.agent.state` ("" before it said one)."""
        return self.states[-1][1] if self.states else ""

    def state_path(self) -> list[str]:
        """The agent's states in order, repeats folded."""
        path: list[str] = []
        for _, state in self.states:
            if not path or path[-1] != state:
                path.append(state)
        return path

    def heard(self, since: float = 0.0, until: float = float("inf")) -> AudioFrame:
        """The agent's audio that arrived between `since` and `until` (needs `keep_audio`)."""
        parts = [s for t, s in self.received if since <= t <= until]
        return AudioFrame(np.concatenate(parts) if parts else np.zeros(0, np.int16), self.hear_rate)

    def loud_times(self, since: float = 0.0) -> list[float]:
        return [t for t in self.loud if t >= since]

    def first_loud(self, after: float, before: float = float("inf")) -> float | None:
        return next((t for t in self.loud if after <= t < before), None)

    def last_loud(self, before: float = float("inf")) -> float | None:
        return next((t for t in reversed(self.loud) if t < before), None)

    async def wait_for_audio(self, after: float, within: float) -> float | None:
        """The first loud agent sample heard after `after`, waiting up to `within` seconds."""
        deadline = time.monotonic() + within
        while (heard := self.first_loud(after)) is None and (left := deadline - time.monotonic()) > 0:
            self._loud_frame.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loud_frame.wait(), left)
        return heard

    async def wait_until_quiet(self, quiet: float, within: float, since: float = 0.0) -> float:
        """Until the agent has been silent for `quiet` seconds (and since `since`) and listens
        again, bounded by `within`; returns when its audio stopped."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            last = self.last_loud() or 0.0
            if time.monotonic() - max(last, since) >= quiet and self.state in ("listening", ""):
                return last
            await asyncio.sleep(0.05)
        return self.last_loud() or 0.0

    def agent_finals(self) -> list[Text]:
        """The final transcripts of the agents in the room now."""
        agents = {p.identity for p in self.room.remote_participants.values() if p.kind == AGENT_KIND}
        return [t for t in self.transcripts if t.sender in agents and t.final]

    def agent_text(self, since: float, until: float = float("inf")) -> str:
        """The final transcripts of the first agent, received between `since` and `until`, joined."""
        finals = [
            t.text for t in self.transcripts
            if t.sender == self.agent_identity and t.final and since <= t.at < until
        ]  # fmt: skip
        return " ".join(finals)

    def published_metrics(self) -> list[dict[str, Any]]:
        """Turn records voicecore published to this caller on `voicecore.metrics`, oldest first."""
        out = []
        for t in self.texts:
            if t.topic == METRICS_TOPIC:
                with contextlib.suppress(ValueError):
                    out.append({"received": t.at, **json.loads(t.text)})
        return out
