"""Audio across the LiveKit boundary: frame conversion, and the agent's one voice in a room.

Every conversation in a room (one per person) speaks through the same `rtc.AudioSource`, the
agent's single microphone track. `VoiceLane` is a conversation's `AudioSink` over that source.
The floor policy: a lane that starts a reply while another lane's reply is playing waits until
that reply has played out (or was cut); replies never mix, and a barge-in only clears the
queue of the reply that is actually playing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from livekit import rtc

from voicecore.audio.frames import AudioFrame

log = logging.getLogger(__name__)

# Audio queued in the source ahead of the network: enough to ride out event-loop jitter on a
# busy CPU, short enough that a chunk's transcript goes out close to its audio.
QUEUE_MS = 200
# A lane holding the floor but silent this long has lost its reply (a failed turn): let others on.
STALE_FLOOR = 3.0
TRACK_NAME = "agent-voice"


def from_rtc(frame: rtc.AudioFrame) -> AudioFrame:
    """rtc.AudioFrame (int16, interleaved) -> voicecore AudioFrame (int16 mono)."""
    samples = np.frombuffer(frame.data, dtype=np.int16)
    if frame.num_channels > 1:
        samples = samples.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
    else:
        samples = samples.copy()  # the rtc buffer is reused by the SDK
    return AudioFrame(samples, frame.sample_rate)


def to_rtc(frame: AudioFrame) -> rtc.AudioFrame:
    samples = np.ascontiguousarray(frame.samples)
    return rtc.AudioFrame(samples.tobytes(), frame.sample_rate, 1, len(samples))


class AgentVoice:
    """The agent's microphone track in one room, shared by all its conversations."""

    def __init__(self, sample_rate: int, queue_ms: int = QUEUE_MS) -> None:
        self.sample_rate = sample_rate
        self.source = rtc.AudioSource(sample_rate, 1, queue_size_ms=queue_ms)
        # Made when published, not before: the SDK (1.2) can crash or hang the process when it
        # garbage-collects a track that was never published (a join that failed).
        self.track: rtc.LocalAudioTrack | None = None
        self.publication: rtc.LocalTrackPublication | None = None
        self._holder: VoiceLane | None = None
        self._floor_freed = asyncio.Event()

    async def publish(self, participant: rtc.LocalParticipant) -> rtc.LocalTrackPublication:
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        self.track = rtc.LocalAudioTrack.create_audio_track(TRACK_NAME, self.source)
        self.publication = await participant.publish_track(self.track, options)
        return self.publication

    def refresh(self, participant: rtc.LocalParticipant) -> None:
        """After the SDK rejoined a restarted server: the track was published again, new sid."""
        for publication in participant.track_publications.values():
            if publication.name == TRACK_NAME:
                self.publication = publication

    @property
    def track_sid(self) -> str:
        return self.publication.sid if self.publication is not None else ""

    def lane(self, name: str) -> VoiceLane:
        return VoiceLane(self, name)

    @property
    def speaking(self) -> VoiceLane | None:
        """The lane whose audio is playing (or about to), if any."""
        return self._holder

    async def _take_floor(self, lane: VoiceLane) -> None:
        while self._holder is not None and self._holder is not lane:
            holder = self._holder
            if time.monotonic() - holder.last_capture > STALE_FLOOR and (self.source.queued_duration == 0):
                log.warning("lane %s held the floor without speaking; releasing it", holder.name)
                self._release(holder)
                break
            self._floor_freed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STALE_FLOOR):
                    await self._floor_freed.wait()
        self._holder = lane

    def _release(self, lane: VoiceLane) -> None:
        if self._holder is lane:
            self._holder = None
            self._floor_freed.set()

    async def aclose(self) -> None:
        """After the room is left: the source, and the track published from it, freed now."""
        self.source.clear_queue()
        published = (self.track, self.publication) if self.publication is not None else ()
        await close_audio(self.source, *published)


async def close_audio(source: rtc.AudioSource, *owners: rtc.Track | rtc.TrackPublication) -> None:
    """Free a native audio source now, with the published `owners` of handles to it (its track,
    its publication). It lives while any of them does, with a capture thread of its own; left to
    Python's garbage collector, which collects reference cycles rarely in a big process, a
    dispatch worker kept one thread and its buffers per room it had served. Not for a track that
    was never published (see AgentVoice.__init__)."""
    await source.aclose()
    for owner in owners:
        owner._ffi_handle.dispose()  # the SDK (1.2) has no public close for either


class VoiceLane:
    """One conversation's `voicecore.session.AudioSink` over the room's shared AudioSource."""

    def __init__(self, voice: AgentVoice, name: str) -> None:
        self.voice = voice
        self.name = name
        self.last_capture = 0.0

    @property
    def holds_floor(self) -> bool:
        return self.voice._holder is self

    async def capture_frame(self, frame: AudioFrame) -> None:
        await self.voice._take_floor(self)
        self.last_capture = time.monotonic()
        if frame.sample_rate != self.voice.sample_rate:
            raise ValueError(
                f"agent voice runs at {self.voice.sample_rate} Hz, got a {frame.sample_rate} Hz frame"
            )
        await self.voice.source.capture_frame(to_rtc(frame))

    def clear_queue(self) -> None:
        if self.holds_floor:
            self.voice.source.clear_queue()
            self.voice._release(self)

    @property
    def queued_duration(self) -> float:
        return self.voice.source.queued_duration if self.holds_floor else 0.0

    async def wait_for_playout(self) -> None:
        if self.holds_floor:
            await self.voice.source.wait_for_playout()
            self.voice._release(self)
