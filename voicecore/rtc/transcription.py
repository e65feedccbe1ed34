"""Side channels to the room: transcripts as `lk.transcription` text streams, each turn's latency
record on `voicecore.metrics`, and the sends queue.

LiveKit's convention (what `useVoiceAssistant` and the agents playground read): each utterance
is a segment (`lk.segment_id`); every update of a segment is a small text stream carrying the
whole text so far, `lk.transcription_final` "false" until the last one, `lk.transcribed_track_id`
naming the audio track the words belong to. A person's transcript is sent on their behalf
(sender identity = theirs); the agent's own is sent as the agent.

Each update also goes out as a legacy transcription packet (`publish_transcription`, the same
segment id and text), which older frontends read (`useVoiceAssistant().agentTranscriptions`,
`RoomEvent.TranscriptionReceived`): LiveKit Agents 1.x still sends both
(room_io `_ParticipantTranscriptionOutput`), and so does voicecore.

voicecore's own addition: when a turn is over, its `TurnRecord` latencies go as one JSON text on
topic `voicecore.metrics` to the person answered (no one else), for the talk page to show.

SessionHooks are synchronous and called on the event loop's hot path, so nothing here awaits
the network in the caller: sends go to an `Outbox`, a bounded queue drained by one task per room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

from livekit import rtc

from voicecore.metrics import TurnRecord

log = logging.getLogger(__name__)

TOPIC = "lk.transcription"
ATTR_FINAL = "lk.transcription_final"
ATTR_TRACK = "lk.transcribed_track_id"
ATTR_SEGMENT = "lk.segment_id"
METRICS_TOPIC = "voicecore.metrics"

OUTBOX_SIZE = 64  # sends waiting per room
# One send that takes longer is abandoned: the connection is in trouble. Not shorter: a text
# stream waits while the data channel is backed up, and at twice this box's capacity (the soak)
# one transcript took over 5 s to go out, to a person still listening.
SEND_TIMEOUT = 10.0
ADDRESSED_SEND_TIMEOUT = 3.0  # a send to one person: after this, is that person still here?


class Outbox:
    """Network sends for one room: in order, one at a time, never awaited by the caller.

    Bounded: when full, an interim update (`droppable`) is the one that goes, the newest if the
    new one is interim too; a final transcript or a state change only pushes out the oldest send
    when nothing droppable is left.
    """

    def __init__(
        self, name: str, size: int = OUTBOX_SIZE, on_failure: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.size = size
        self.on_failure = on_failure
        self.dropped = 0
        self._items: deque[tuple[Callable[[], Awaitable[object]], bool]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing queued, nothing being sent
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name=f"outbox-{name}")

    def post(self, send: Callable[[], Awaitable[object]], *, droppable: bool = False) -> None:
        if self._task.done():
            return
        if len(self._items) >= self.size:
            self.dropped += 1
            if droppable:
                return
            victim = next((item for item in self._items if item[1]), self._items[0])
            self._items.remove(victim)
        self._items.append((send, droppable))
        self._idle.clear()
        self._wake.set()

    async def _run(self) -> None:
        while True:
            while not self._items:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            send, _ = self._items.popleft()
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await send()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a failed side-channel send must not end the conversation
                why = f"no answer in {SEND_TIMEOUT:g} s" if isinstance(e, TimeoutError) else repr(e)
                log.warning("room %s: send failed: %s", self.name, why)
                if self.on_failure is not None:
                    self.on_failure()

    async def aclose(self, drain: float = 3.0) -> None:
        """Give queued sends up to `drain` seconds, then stop. The last final transcript of a
        reply drained at SIGTERM is among them: beside a CPU burner 1 s was not always enough."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain):
                await self._idle.wait()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class TranscriptStream:
    """One speaker's transcript in a room: segments of interim and final snapshots."""

    def __init__(
        self,
        outbox: Outbox,
        participant: rtc.LocalParticipant,
        sender_identity: str,
        track_sid: Callable[[], str],
    ) -> None:
        self._outbox = outbox
        self._participant = participant
        self._sender = sender_identity
        self._track_sid = track_sid
        self._segment: str | None = None

    def interim(self, text: str) -> None:
        self._publish(text, final=False)

    def final(self, text: str) -> None:
        """Close the current segment with its last text (a new one starts with the next words)."""
        self._publish(text, final=True)
        self._segment = None

    @property
    def open(self) -> bool:
        return self._segment is not None

    def _publish(self, text: str, final: bool) -> None:
        if self._segment is None:
            self._segment = f"SG_{uuid.uuid4().hex[:12]}"
        segment = self._segment
        attributes = {ATTR_FINAL: "true" if final else "false", ATTR_SEGMENT: segment}
        if track_sid := self._track_sid():
            attributes[ATTR_TRACK] = track_sid

        async def send() -> None:
            writer = await self._participant.stream_text(
                topic=TOPIC, sender_identity=self._sender, attributes=attributes
            )
            await writer.write(text)
            await writer.aclose()
            if track_sid:  # a legacy packet names its track; before there is one, none is sent
                legacy = rtc.TranscriptionSegment(
                    id=segment, text=text, start_time=0, end_time=0, language="", final=final
                )
                packet = rtc.Transcription(self._sender, track_sid, [legacy])
                await self._participant.publish_transcription(packet)

        self._outbox.post(send, droppable=not final)


def post_turn_metrics(
    outbox: Outbox,
    participant: rtc.LocalParticipant,
    identity: str,
    record: TurnRecord,
    present: Callable[[], bool],
) -> None:
    """`record`'s latencies (ms after the end of the person's speech) to `identity` only, while
    `present()`. A turn often ends as its listener hangs up, and a send addressed to someone who
    has left gets no answer from the SDK: that is no failure, there is just nobody to tell."""
    payload = json.dumps(
        {
            "turn": record.turn,
            "interrupted": record.interrupted,
            "speculative": record.speculative,
            "latency_ms": record.latencies_ms(),
        }
    )

    async def send() -> None:
        if not present():
            return
        try:
            async with asyncio.timeout(ADDRESSED_SEND_TIMEOUT):
                await participant.send_text(
                    payload, topic=METRICS_TOPIC, destination_identities=[identity], compress=False
                )
        except TimeoutError:
            if present():
                raise

    outbox.post(send, droppable=True)
