"""A real LiveKit server and real client participants for tests.

`LiveKitServer` is livekit-server on loopback ports of its own (`--dev`, or a key pair of its own).
A `Caller` is a person: it joins with the livekit SDK, speaks through its own rtc.AudioSource in
real time (silence between utterances, like a live microphone), and records what it receives:
the agent's audio, `lk.transcription` text streams and `lk.agent.state`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from livekit import api, rtc

from voicecore import AudioFrame
from voicecore.rtc import Credentials, user_token
from voicecore.rtc.transcription import ATTR_FINAL, TOPIC
from voicecore.rtc.voice import close_audio

ROOT = Path(__file__).resolve().parent.parent
RATE = 16_000
FRAME = RATE // 50  # 20 ms
LOUD = 300  # int16 peak above which a received frame counts as agent speech (Opus noise is ~0)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def livekit_binary() -> str | None:
    binary = shutil.which("livekit-server") or str(ROOT / ".local" / "bin" / "livekit-server")
    return binary if os.access(binary, os.X_OK) else None


class LiveKitServer:
    """livekit-server on loopback ports of its own; can be stopped and started again.

    `--dev` (devkey/secret) by default; with `keys` (API key -> secret), as in production: those
    key pairs in its config's `keys:` map, no development mode, `creds` with the first pair.
    """

    def __init__(self, binary: str, workdir: Path, keys: dict[str, str] | None = None) -> None:
        if keys is not None and not keys:
            raise ValueError("keys: at least one API key pair")
        self.binary = binary
        self.port = free_port()
        self.config = workdir / "livekit.yaml"
        config = (
            f"port: {self.port}\n"
            "rtc:\n"
            f"  tcp_port: {free_port()}\n"
            f"  udp_port: {free_port(socket.SOCK_DGRAM)}\n"
            "  use_external_ip: false\n"
            "  node_ip: 127.0.0.1\n"
        )
        if keys:
            config += "keys:\n" + "".join(f"  {key}: {secret}\n" for key, secret in keys.items())
        self.config.write_text(config)
        self.dev = keys is None
        self.log = workdir / "livekit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        api_key, api_secret = next(iter(keys.items())) if keys else ("devkey", "secret")
        self.creds = Credentials(f"ws://127.0.0.1:{self.port}", api_key, api_secret)

    def start(self) -> None:
        dev = ["--dev"] if self.dev else []
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *dev, "--bind", "127.0.0.1", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"livekit-server exited; see {self.log}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"livekit-server did not listen on {self.port}; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # graceful: it waits for rooms to empty, a while at most
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.creds.http_url, self.creds.api_key, self.creds.api_secret)


# -- what the server is asked and says -------------------------------------------------------------
async def dispatch(server: LiveKitServer, agent_name: str, room: str) -> None:
    """Ask the server to send the agent `agent_name` to `room` (explicit dispatch)."""
    lkapi = server.api()
    try:
        request = api.CreateAgentDispatchRequest(agent_name=agent_name, room=room)
        await lkapi.agent_dispatch.create_dispatch(request)
    finally:
        await lkapi.aclose()


async def agents_in(server: LiveKitServer, room: str) -> list[str]:
    """The identities of the agent participants the server lists in `room` now."""
    lkapi = server.api()
    try:
        listing = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    finally:
        await lkapi.aclose()
    agent_kind = api.ParticipantInfo.Kind.AGENT
    return [p.identity for p in listing.participants if p.kind == agent_kind]


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
    """A person in a room (see the module docstring): `join`, `speak`, then what was `heard`."""

    identity: str
    room: rtc.Room = field(default_factory=rtc.Room)
    received: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (arrival, 16 kHz)
    transcripts: list[Transcript] = field(default_factory=list)
    states: list[tuple[float, str]] = field(default_factory=list)
    mic_sid: str = ""
    source: rtc.AudioSource | None = None
    mic: tuple[rtc.LocalAudioTrack, rtc.LocalTrackPublication] | None = None
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
        self.mic = track, await self.room.local_participant.publish_track(track, options)
        self.mic_sid = self.mic[1].sid
        self._tasks.append(asyncio.create_task(self._microphone()))

    async def noticed(self, within: float = 15.0) -> None:
        """Until the agent has subscribed to this caller's microphone: it knows they are here (its
        `listening` state may come from before they joined)."""
        assert self.mic is not None
        await asyncio.wait_for(self.mic[1].wait_for_subscription(), within)

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.room.disconnect()
        if self.source is not None and self.mic is not None:
            await close_audio(self.source, *self.mic)
            self.source = self.mic = None

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


def listening(caller: Caller) -> bool:
    """The agent in the caller's room says it is listening (its latest `lk.agent.state`)."""
    return caller.state_path()[-1:] == ["listening"]


async def reply_done(caller: Caller, finals: int, within: float = 40.0) -> None:
    """Until the agent published `finals` final transcripts and is listening again."""
    await poll(
        lambda: (
            len(caller.agent_finals()) >= finals and caller.states and caller.states[-1][1] == "listening"
        ),
        within,
    )
