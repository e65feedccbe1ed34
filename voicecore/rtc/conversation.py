"""One person in a room: their microphone in, the agent's answers to them out.

    track_subscribed(mic) -> rtc.AudioStream (16 kHz mono, 20 ms) -> from_rtc -> Session.push_audio
    the Session's reply   -> this person's VoiceLane of the agent's voice
    SessionHooks          -> lk.transcription text streams, the room's lk.agent.state, metrics

A Conversation sees its room only through a `RoomContext`. A person with two microphones is
heard through one: the first microphone they published, as the server says (`tracks.py`; an
unlabelled audio track when they have none); another is ignored with one log line and takes over
if the first goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from livekit import rtc

from voicecore.agent import Agent, with_tools
from voicecore.audio.frames import FRAME_MS, RECOGNITION_RATE
from voicecore.config import Config
from voicecore.metrics import TurnLog, TurnRecord
from voicecore.pipeline import Models
from voicecore.rtc.observer import Observer
from voicecore.rtc.token import Credentials
from voicecore.rtc.tracks import VoiceTracks, publication_stamps
from voicecore.rtc.transcription import Outbox, TranscriptStream, post_turn_metrics
from voicecore.rtc.voice import AgentVoice, from_rtc
from voicecore.session import Session, SessionHooks
from voicecore.tools import Tool
from voicecore.turn.state import AgentState

log = logging.getLogger(__name__)

AUDIO_BACKLOG = 50  # 20 ms frames a stalled loop may owe one person before the oldest drop
GREETING_WAIT = 5.0  # seconds to wait for the person to subscribe to the agent before greeting
ORDER_TIMEOUT = 5.0  # asking the server which of someone's microphones came first


@dataclass
class RoomContext:
    """What a Conversation may use of its room."""

    name: str
    models: Models
    config: Config
    local: rtc.LocalParticipant
    voice: AgentVoice
    outbox: Outbox
    observer: Observer
    turn_log: TurnLog | None
    spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]]
    update_state: Callable[[], None]  # a conversation's state changed
    present: Callable[[str], bool]  # a participant session (sid) is still in the room
    creds: Credentials | None = None  # the server's API key: which microphone came first (tracks.py)
    tools: Sequence[Tool] = ()  # the agent's besides its own (an MCP server's)


class Conversation(SessionHooks):
    """One person in the room: their Session, their lane of the agent's voice, their transcripts."""

    def __init__(self, room: RoomContext, participant: rtc.RemoteParticipant) -> None:
        self.room = room
        self.identity = participant.identity
        self.participant_sid = participant.sid
        self.track_sid = ""  # the track listened to
        self.tracks = VoiceTracks()  # all their voice tracks
        self._asking = 0  # questions to the server about their tracks' order, under way
        self._ignored: set[str] = set()  # tracks logged as ignored
        self._deaf = False
        self.state = AgentState.INITIALIZING
        local = room.local
        self.user_transcript = TranscriptStream(room.outbox, local, self.identity, lambda: self.track_sid)
        self.agent_transcript = TranscriptStream(
            room.outbox, local, local.identity, lambda: room.voice.track_sid
        )
        self._reply: list[str] = []
        self.lane = room.voice.lane(self.identity)
        label = f"room {room.name}, {self.identity}"
        agent = with_tools(Agent(), room.tools)
        self.session = Session(
            room.models, room.config, self.lane, hooks=self, room=room.name, label=label, agent=agent
        )
        self._pump: asyncio.Task[None] | None = None
        self._greet: asyncio.Task[None] | None = None
        self._closed = False
        room.observer.on_conversation_started(room.name, self.identity)

    # -- SessionHooks: called synchronously by the Session, so they only post sends ------------
    def on_state(self, state: AgentState) -> None:
        self.state = state
        self.room.update_state()

    def on_user_transcript(self, text: str, final: bool) -> None:
        if final:
            self.user_transcript.final(text)
        else:
            self.user_transcript.interim(text)

    def on_agent_text(self, text: str) -> None:
        self._reply.append(text)
        self.agent_transcript.interim(" ".join(self._reply))

    def on_agent_said(self, text: str) -> None:
        if self.agent_transcript.open:
            self.agent_transcript.final(text)  # as heard: cut at a barge-in
        self._reply = []

    def on_turn(self, record: TurnRecord) -> None:
        self.room.observer.on_turn(self.room.name, self.identity, record)
        if self.room.turn_log is not None:
            self.room.turn_log.write(record, room=self.room.name, participant=self.identity)
        if self.room.config.livekit.turn_metrics:
            post_turn_metrics(
                self.room.outbox,
                self.room.local,
                self.identity,
                record,
                lambda: self.room.present(self.participant_sid),
            )
        latency = record.latencies_ms()
        log.info(
            "room %s, %s: turn %d%s, voice-to-voice %s ms",
            self.room.name, self.identity, record.turn,
            " (interrupted)" if record.interrupted else "", latency["voice_to_voice"],
        )  # fmt: skip
        log.debug("room %s, %s: %r -> %r", self.room.name, self.identity,
                  record.user_text, record.agent_text)  # fmt: skip

    def on_error(self, stage: str, error: BaseException) -> None:
        self.room.observer.on_error(stage)

    # -- audio in ---------------------------------------------------------------------------------
    def add_track(self, track: rtc.Track, publication: rtc.TrackPublication) -> None:
        """A voice track of this person's: listened to if it is the first they published."""
        if publication.sid in self.tracks:
            return  # in the join snapshot and then subscribed: once is enough
        self.tracks.add(track, publication)
        if len(self.tracks) > 1 and self.room.creds is not None:
            self._asking += 1
            self.room.spawn(self._ask_order(self.room.creds), f"tracks-{self.identity}")
        self._choose()

    async def _ask_order(self, creds: Credentials) -> None:
        """Which track came first, as the server stamped them (tracks.py); then choose again."""
        try:
            async with asyncio.timeout(ORDER_TIMEOUT):
                stamps = await publication_stamps(creds, self.room.name, self.identity)
            self.tracks.published(stamps)
        except Exception as e:
            log.warning("room %s, %s: the server did not say which microphone came first (%r); "
                        "listening to the first one heard of", self.room.name, self.identity, e)  # fmt: skip
        finally:
            self._asking -= 1
        self._choose()

    def _choose(self) -> None:
        """Listen to the best track; once the server has answered, say which ones are ignored."""
        if self._deaf or self._closed or not len(self.tracks):
            return
        best = self.tracks.best()
        if best != self.track_sid:
            if self.track_sid:
                log.info("room %s, %s: listening to track %s instead of %s",
                         self.room.name, self.identity, best, self.track_sid)  # fmt: skip
            self._listen_to(best)
        if self._asking:
            return
        for sid in self.tracks.sids():
            if sid != best and sid not in self._ignored:
                self._ignored.add(sid)
                log.info("room %s, %s: a second voice track (%s) is ignored; listening to %s",
                         self.room.name, self.identity, sid, best)  # fmt: skip

    def remove_track(self, track_sid: str) -> None:
        """A track went away; if it was the one listened to, the next best takes over."""
        if not self.tracks.remove(track_sid) or track_sid != self.track_sid:
            return
        self._stop_pump()
        self.track_sid = ""
        if len(self.tracks) and not self._deaf:
            best = self.tracks.best()
            log.info("room %s, %s: track %s gone, listening to %s",
                     self.room.name, self.identity, track_sid, best)  # fmt: skip
            self._listen_to(best)

    def stop_listening(self, track_sid: str) -> None:
        """Hear no more from this person (a draining agent), if `track_sid` is the one heard."""
        if track_sid == self.track_sid:
            self._deaf = True
            self._stop_pump()

    def _listen_to(self, track_sid: str) -> None:
        self._stop_pump()
        self.track_sid = track_sid
        track = self.tracks.track(track_sid)
        self._pump = self.room.spawn(self._listen(track), f"listen-{self.identity}")

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=RECOGNITION_RATE, num_channels=1, frame_size_ms=FRAME_MS,
            capacity=AUDIO_BACKLOG,
        )  # fmt: skip
        try:
            async for event in stream:
                self.session.push_audio(from_rtc(event.frame))
        finally:
            await stream.aclose()

    # -- greeting ---------------------------------------------------------------------------------
    def greet(self, text: str) -> None:
        self._greet = self.room.spawn(self._say_greeting(text), f"greet-{self.identity}")

    async def _say_greeting(self, text: str) -> None:
        """Say `text` to this person once they can hear the agent (unless they speak first)."""
        publication = self.room.voice.publication
        if publication is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GREETING_WAIT):
                    await publication.wait_for_subscription()
        await self.session.say(text)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._greet, self._pump):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.session.aclose()
        self.room.observer.on_conversation_ended(self.room.name, self.identity)
