"""A person in a LiveKit room, as the benchmark sees it: a client written with the `livekit` SDK.

It speaks recordings through its own microphone track in real time (20 ms frames, silence
between utterances, as a live microphone does) and notes, on the machine's monotonic clock:
when each utterance's speech began and ended as it left the microphone, every loud frame of the
agent's audio as it arrived (48 kHz, no resampling on the way), the agent's `lk.agent.state`,
and the text streams it received (`lk.transcription`, `voicecore.metrics`). Both agents under
test and this client run on one machine, so their monotonic clocks are the same clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc

from voicecore import AudioFrame
from voicecore.rtc import Credentials, user_token
from voicecore.rtc.voice import close_audio

MIC_RATE = 16_000
MIC_FRAME = MIC_RATE // 50  # 20 ms
HEAR_RATE = 48_000
LOUD = 300  # int16 peak above which a received sample is the agent speaking (Opus silence is ~0)
AGENT_KIND = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@dataclass
class Spoken:
    """One utterance, on the client's clock, as it left the microphone."""

    sent: float  # its first sample
    speech_start: float  # its first sample above the threshold
    speech_end: float  # its last sample above the threshold
    done: float  # its last sample


@dataclass
class Text:
    at: float
    topic: str
    sender: str
    text: str
    attributes: dict[str, str]

    @property
    def final(self) -> bool:
        return self.attributes.get("lk.transcription_final") == "true"


@dataclass
class Caller:
    identity: str
    room: rtc.Room = field(default_factory=rtc.Room)
    loud: list[float] = field(default_factory=list)  # when each loud agent sample was heard
    frames_heard: int = 0
    states: list[tuple[float, str]] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    agent_identity: str = ""
    source: rtc.AudioSource | None = None
    mic: tuple[rtc.LocalAudioTrack, rtc.LocalTrackPublication] | None = None
    _speech: deque[np.ndarray] = field(default_factory=deque)
    _sent: list[float] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _agent_track: asyncio.Event = field(default_factory=asyncio.Event)
    _loud_frame: asyncio.Event = field(default_factory=asyncio.Event)

    # -- joining and leaving ---------------------------------------------------------------------------
    async def join(self, creds: Credentials, room: str) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.on("participant_connected", self._on_participant)
        for topic in ("lk.transcription", "voicecore.metrics"):
            self.room.register_text_stream_handler(topic, self._on_text)
        await self.room.connect(creds.ws_url, user_token(creds, room, self.identity))
        for participant in self.room.remote_participants.values():
            self._on_participant(participant)
        # a browser microphone buffers ~10-20 ms before the encoder
        self.source = rtc.AudioSource(MIC_RATE, 1, queue_size_ms=40)
        track = rtc.LocalAudioTrack.create_audio_track("mic", self.source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.mic = track, await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._microphone()))

    async def wait_for_agent(self, within: float) -> float:
        """Until an agent is in the room, its voice reaches us and it listens; when it was."""
        await asyncio.wait_for(self._agent_track.wait(), within)
        await poll(lambda: self.state == "listening", within)
        return time.monotonic()

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.room.disconnect(), 5)
        if self.source is not None and self.mic is not None:  # a soak's client joins hundreds of rooms
            await close_audio(self.source, *self.mic)
            self.source = self.mic = None

    # -- speaking ---------------------------------------------------------------------------------------
    async def speak(self, audio: AudioFrame, bounds: tuple[float, float]) -> Spoken:
        """Say `audio` (16 kHz) and return once its last sample left the microphone. `bounds`:
        where its speech starts and ends, in seconds from its start."""
        assert audio.sample_rate == MIC_RATE
        n = len(self._sent)
        samples = np.concatenate([audio.samples, np.zeros(-len(audio.samples) % MIC_FRAME, np.int16)])
        self._speech.append(samples)
        await poll(lambda: len(self._sent) > n, 5)
        sent = self._sent[n]
        spoken = Spoken(sent, sent + bounds[0], sent + bounds[1], sent + len(samples) / MIC_RATE)
        await asyncio.sleep(max(0.0, spoken.done - time.monotonic()))
        return spoken

    async def _microphone(self) -> None:
        assert self.source is not None
        next_frame = time.monotonic()
        current: np.ndarray | None = None
        offset = 0
        silence = np.zeros(MIC_FRAME, np.int16)
        while True:
            if current is None and self._speech:
                current, offset = self._speech.popleft(), 0
                # it leaves the microphone after what is already queued there
                self._sent.append(time.monotonic() + self.source.queued_duration)
            if current is not None:
                frame = current[offset : offset + MIC_FRAME]
                offset += MIC_FRAME
                if offset >= len(current):
                    current = None
            else:
                frame = silence
            await self.source.capture_frame(rtc.AudioFrame(frame.tobytes(), MIC_RATE, 1, MIC_FRAME))
            # real time; after a stall go on from now rather than bursting to catch up
            next_frame = max(next_frame + 0.02, time.monotonic() - 0.02)
            await asyncio.sleep(max(0.0, next_frame - time.monotonic()))

    # -- hearing ----------------------------------------------------------------------------------------
    def _on_participant(self, participant: rtc.RemoteParticipant) -> None:
        if participant.kind == AGENT_KIND and not self.agent_identity:
            self.agent_identity = participant.identity
            if state := participant.attributes.get("lk.agent.state"):
                self.states.append((time.monotonic(), state))

    def _on_track(
        self, track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
    ) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and who.kind == AGENT_KIND:
            self._on_participant(who)
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=HEAR_RATE, num_channels=1)
        self._agent_track.set()
        try:
            async for event in stream:
                arrived = time.monotonic()
                samples = np.frombuffer(event.frame.data, np.int16)
                self.frames_heard += 1
                loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
                if len(loud):
                    # the frame plays from its arrival: its first loud sample is heard that much later
                    self.loud.append(arrived + loud[0] / HEAR_RATE)
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
            self.texts.append(Text(time.monotonic(), info.topic, sender, text, dict(info.attributes or {})))

        self._tasks.append(asyncio.create_task(read()))

    # -- what was heard ---------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self.states[-1][1] if self.states else ""

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

    def agent_text(self, since: float, until: float = float("inf")) -> str:
        """The agent's final transcripts received between `since` and `until`, joined."""
        finals = [
            t.text for t in self.texts
            if t.topic == "lk.transcription" and t.sender == self.agent_identity and t.final
            and since <= t.at < until
        ]  # fmt: skip
        return " ".join(finals)

    def published_metrics(self) -> list[dict[str, object]]:
        """Turn records voicecore published to us on `voicecore.metrics`, oldest first."""
        out = []
        for t in self.texts:
            if t.topic == "voicecore.metrics":
                with contextlib.suppress(ValueError):
                    out.append({"received": t.at, **json.loads(t.text)})
        return out


async def poll(condition: Callable[[], object], within: float, step: float = 0.02) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(step)
