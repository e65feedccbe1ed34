"""voicecore in one LiveKit room: a person's microphone in, the agent's voice out.

    track_subscribed(mic) -> rtc.AudioStream (16 kHz mono, 20 ms) -> from_rtc -> Session.push_audio
    the Session's reply   -> VoiceLane -> AgentVoice (one rtc.AudioSource) -> the agent's mic track
    SessionHooks          -> lk.transcription text streams and the lk.agent.state attribute

Several people in a room: one `Conversation` (its own Session: VAD, turn state, history) per
person, so two people's words never meet in one transcript or one prompt. The agent answers
whoever finished a turn; replies take turns on the agent's single voice (see `voice.py`), and
only the person being answered can interrupt that answer. `lk.agent.state` shows the busiest
conversation: speaking > thinking > listening.

People come and go: a Conversation belongs to one participant session (its sid), not just to an
identity, so a person who rejoins as themselves (a reloaded page) gets a fresh Conversation even
when LiveKit reports the new arrival before the old one's departure. A person with two
microphones is heard through one: the first microphone track (an unlabelled audio track when
they have none); another is ignored with one log line and takes over if the first goes away.

The server restarted: the SDK retries on a schedule that stretches to seconds between attempts,
and a restarted server has forgotten the room, so the SDK can only rejoin, not resume. A room
that stays until told (`rejoin=True`, the fixed room of `serve --room`) probes the server while
the connection is lost and, as soon as it answers again, closes with `rejoin_wanted` set so its
owner joins afresh at once. A dispatched room leaves instead: the server re-dispatches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from livekit import rtc

from voicecore.audio.frames import FRAME_MS, split_frames
from voicecore.audio.resample import resample
from voicecore.config import Config
from voicecore.llm.base import Message
from voicecore.metrics import TurnLog, TurnRecord
from voicecore.pipeline import Models
from voicecore.rtc.observer import Observer
from voicecore.rtc.tasks import Backoff, server_answers
from voicecore.rtc.transcription import Outbox, TranscriptStream, post_turn_metrics
from voicecore.rtc.voice import AgentVoice, from_rtc
from voicecore.session import Session, SessionHooks
from voicecore.turn.state import AgentState
from voicecore.turn.vad import SAMPLE_RATE

log = logging.getLogger(__name__)

ATTR_STATE = "lk.agent.state"
AUDIO_BACKLOG = 50  # 20 ms frames a stalled loop may owe one person before the oldest drop
GREETING_WAIT = 5.0  # seconds to wait for the person to subscribe to the agent before greeting
# While the connection is lost: how often to ask the server whether it is back (jittered, bounded:
# a refused TCP connection a second costs nothing), and how long to leave a server that never
# refused (a proxy in front answers for it) to the SDK's own retries before rejoining anyway.
PROBE_MIN = 0.25
PROBE_MAX = 1.0
SDK_GRACE = 5.0
REJOIN_MAX = 2.0  # the longest wait between two failed joins of a fixed room
LEAVE_TIMEOUT = 5.0  # room.disconnect() on a dead connection must not hold up a rejoin
STATE_ORDER = [AgentState.INITIALIZING, AgentState.IDLE, AgentState.LISTENING,
               AgentState.THINKING, AgentState.SPEAKING]  # fmt: skip


NOT_PEOPLE = (rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS)
# Audio a person speaks into, best first. Screen-share audio is not them talking.
VOICE_SOURCES = (rtc.TrackSource.SOURCE_MICROPHONE, rtc.TrackSource.SOURCE_UNKNOWN)


def is_person(participant: rtc.RemoteParticipant) -> bool:
    """Agents (ourselves in another job, other bots) and recorders are not talked to; people
    on a phone (SIP) or through ingress are."""
    return participant.kind not in NOT_PEOPLE


class Conversation(SessionHooks):
    """One person in the room: their Session, their lane of the agent's voice, their transcripts."""

    def __init__(self, room: AgentRoom, participant: rtc.RemoteParticipant) -> None:
        self.room = room
        self.identity = participant.identity
        self.participant_sid = participant.sid
        self.track_sid = ""  # the track listened to
        self._tracks: dict[str, tuple[rtc.Track, rtc.TrackSource.ValueType]] = {}  # all, by sid
        self._deaf = False
        self.state = AgentState.INITIALIZING
        self.greeting = False
        local = room.room.local_participant
        self.user_transcript = TranscriptStream(room.outbox, local, self.identity, lambda: self.track_sid)
        self.agent_transcript = TranscriptStream(
            room.outbox, local, local.identity, lambda: room.voice.track_sid
        )
        self._reply: list[str] = []
        self.lane = room.voice.lane(self.identity)
        self.session = Session(room.models, room.config, self.lane, hooks=self)
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

    def on_turn(self, record: TurnRecord) -> None:
        if self.agent_transcript.open:
            self.agent_transcript.final(record.agent_text)  # as heard: cut at a barge-in
        self._reply = []
        self.room.observer.on_turn(self.room.name, self.identity, record)
        if self.room.turn_log is not None:
            self.room.turn_log.write(record, room=self.room.name, participant=self.identity)
        if self.room.config.livekit.turn_metrics:
            post_turn_metrics(
                self.room.outbox, self.room.room.local_participant, self.identity, record, self._present
            )
        latency = record.latencies_ms()
        log.info(
            "room %s, %s: turn %d%s, voice-to-voice %s ms",
            self.room.name, self.identity, record.turn,
            " (interrupted)" if record.interrupted else "", latency["voice_to_voice"],
        )  # fmt: skip
        log.debug("room %s, %s: %r -> %r", self.room.name, self.identity,
                  record.user_text, record.agent_text)  # fmt: skip

    def _present(self) -> bool:
        """This person is still in the room (a send addressed to someone who left gets no answer)."""
        return any(p.sid == self.participant_sid for p in self.room.room.remote_participants.values())

    def on_error(self, stage: str, error: BaseException) -> None:
        self.room.observer.on_error(stage)

    @property
    def effective_state(self) -> AgentState:
        return AgentState.SPEAKING if self.greeting else self.state

    # -- audio in ---------------------------------------------------------------------------------
    def add_track(self, track: rtc.Track, publication: rtc.TrackPublication) -> None:
        """A voice track of this person's: listened to if it is the best one they have."""
        self._tracks[publication.sid] = (track, publication.source)
        best = self._best_track()
        if best != self.track_sid and not self._deaf:
            if self.track_sid:
                log.info("room %s, %s: listening to track %s instead of %s",
                         self.room.name, self.identity, best, self.track_sid)  # fmt: skip
            self._listen_to(best)
        elif best != publication.sid:
            log.info(
                "room %s, %s: a second voice track (%s) is ignored; listening to %s",
                self.room.name, self.identity, publication.sid, self.track_sid,
            )  # fmt: skip

    def remove_track(self, track_sid: str) -> None:
        """A track went away; if it was the one listened to, the next best takes over."""
        if self._tracks.pop(track_sid, None) is None or track_sid != self.track_sid:
            return
        self._stop_pump()
        self.track_sid = ""
        if self._tracks and not self._deaf:
            best = self._best_track()
            log.info("room %s, %s: track %s gone, listening to %s",
                     self.room.name, self.identity, track_sid, best)  # fmt: skip
            self._listen_to(best)

    def stop_listening(self, track_sid: str) -> None:
        """Hear no more from this person (a draining agent), if `track_sid` is the one heard."""
        if track_sid == self.track_sid:
            self._deaf = True
            self._stop_pump()

    def _best_track(self) -> str:
        """A microphone before an unlabelled track; among equals, the first that arrived."""
        sids = list(self._tracks)
        return min(sids, key=lambda sid: (VOICE_SOURCES.index(self._tracks[sid][1]), sids.index(sid)))

    def _listen_to(self, track_sid: str) -> None:
        self._stop_pump()
        self.track_sid = track_sid
        track = self._tracks[track_sid][0]
        self._pump = self.room.spawn(self._listen(track), f"listen-{self.identity}")

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            self._pump = None

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(
            track, sample_rate=SAMPLE_RATE, num_channels=1, frame_size_ms=FRAME_MS,
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
        """Say `text` to this person; stop as soon as they start speaking (they have the floor)."""
        publication = self.room.voice.publication
        if publication is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(GREETING_WAIT):
                    await publication.wait_for_subscription()
        audio = resample(await self.room.models.tts.synthesize(text), self.room.voice.sample_rate)
        if self.session.busy:
            return
        self.greeting = True
        self.room.update_state()
        self.agent_transcript.interim(text)
        played = 0.0
        try:
            for frame in split_frames(audio):
                if self.session.busy:
                    played -= self.lane.queued_duration
                    self.lane.clear_queue()
                    break
                await self.lane.capture_frame(frame)
                played += frame.duration
            else:
                await self.lane.wait_for_playout()
        finally:
            words = text.split()
            share = min(1.0, played / audio.duration) if audio.duration else 1.0
            heard = " ".join(words[: int(len(words) * share)])
            self.agent_transcript.final(heard)
            if heard:
                self.session.history.turns.append(Message("assistant", heard))
            self.greeting = False
            self.room.update_state()

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


class AgentRoom:
    """The agent in one room: joins, publishes its voice, serves every person, leaves cleanly."""

    def __init__(
        self,
        models: Models,
        config: Config,
        *,
        leave_when_empty: bool = False,
        observer: Observer | None = None,
        rejoin: bool = False,
    ) -> None:
        self.models = models
        self.config = config
        self.leave_when_empty = leave_when_empty
        self.rejoin = rejoin
        self.rejoin_wanted = False  # closed because the server came back: join again at once
        self.url = ""
        self.observer = observer or Observer()
        self.turn_log = TurnLog(config.metrics.turn_log) if config.metrics.turn_log else None
        self.room = rtc.Room()
        self.name = ""
        self.voice = AgentVoice(config.audio.output_sample_rate)
        self.outbox = Outbox("", on_failure=lambda: self.observer.on_error("send"))
        self._joined = False
        self.conversations: dict[str, Conversation] = {}
        self.state: AgentState | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._left = asyncio.Event()
        self._closing = False
        self.disconnect_reason: int | None = None  # rtc.DisconnectReason, once the server let go
        self.room.on("participant_connected", self._on_participant_connected)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        self.room.on("track_subscribed", self._on_track_subscribed)
        self.room.on("track_unsubscribed", self._on_track_unsubscribed)
        self.room.on("disconnected", self._on_disconnected)
        self.room.on("reconnecting", self._on_reconnecting)
        self.room.on("reconnected", self._on_reconnected)
        self._watch: asyncio.Task[None] | None = None

    @classmethod
    async def join(
        cls,
        models: Models,
        config: Config,
        url: str,
        token: str,
        *,
        leave_when_empty: bool = False,
        observer: Observer | None = None,
        rejoin: bool = False,
    ) -> AgentRoom:
        """Join the room at `url` with `token`. `rejoin`: see `rejoin_wanted` (module docstring)."""
        agent = cls(models, config, leave_when_empty=leave_when_empty, observer=observer, rejoin=rejoin)
        try:
            await agent._connect(url, token)
        except BaseException:
            await agent.aclose()
            raise
        return agent

    async def _connect(self, url: str, token: str) -> None:
        self.url = url
        await self.room.connect(url, token, rtc.RoomOptions(auto_subscribe=True))
        self.name = self.outbox.name = self.room.name
        self._joined = True
        self.observer.on_room_joined(self.name)
        self.update_state(AgentState.INITIALIZING)
        await self.voice.publish(self.room.local_participant)
        for participant in list(self.room.remote_participants.values()):
            if not is_person(participant):
                continue
            conversation = self._add(participant)
            for publication in participant.track_publications.values():
                if conversation is None:
                    break
                if publication.track is not None and _is_voice(publication):
                    conversation.add_track(publication.track, publication)
        self.update_state()

    @property
    def identity(self) -> str:
        return self.room.local_participant.identity

    # -- room events (synchronous callbacks on the loop) ----------------------------------------
    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if is_person(participant):
            self._add(participant)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        conversation = self.conversations.get(participant.identity)
        if conversation is not None and conversation.participant_sid == participant.sid:
            log.info("room %s: %s left", self.name, participant.identity)
            self._end(conversation)
        # (no conversation: replaced by the same person's new session, who is still here, or
        # someone who left before the agent had started one)
        people = [
            p for p in self.room.remote_participants.values()
            if is_person(p) and p.sid != participant.sid
        ]  # fmt: skip
        if self.leave_when_empty and is_person(participant) and not people:
            log.info("room %s: everyone left", self.name)
            self._left.set()

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if is_person(participant) and _is_voice(publication):
            if (conversation := self._add(participant)) is not None:
                conversation.add_track(track, publication)

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        conversation = self.conversations.get(participant.identity)
        if conversation is not None and conversation.participant_sid == participant.sid:
            conversation.remove_track(publication.sid)

    def _on_disconnected(self, reason: int | None = None) -> None:
        log.info("room %s: disconnected (reason %s)", self.name, reason)
        if not self._closing:
            self.disconnect_reason = reason
        self._left.set()

    def _on_reconnecting(self) -> None:
        log.info("room %s: connection to the server lost; reconnecting", self.name)
        if self.rejoin and self._watch is None and not self._closing:
            self._watch = self.spawn(self._rejoin_when_server_returns(), "server-watch")

    def _on_reconnected(self) -> None:
        log.info("room %s: reconnected", self.name)
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self.voice.refresh(self.room.local_participant)  # a restart republishes the track

    async def _rejoin_when_server_returns(self) -> None:
        """While the SDK retries: probe the server, and once it answers after having refused (it
        restarted: the room is gone), or after SDK_GRACE, close so the owner joins afresh."""
        backoff = Backoff(PROBE_MIN, PROBE_MAX)
        lost = time.monotonic()
        refused = False
        while True:
            if not await server_answers(self.url):
                refused = True
            elif refused or time.monotonic() - lost > SDK_GRACE:
                break
            await asyncio.sleep(backoff.next())
        log.info("room %s: the server is back; joining again", self.name)
        self.rejoin_wanted = True
        self._left.set()

    # -- conversations and state ------------------------------------------------------------------
    def _add(self, participant: rtc.RemoteParticipant) -> Conversation | None:
        """This person's Conversation, started if new (None once the agent is leaving)."""
        conversation = self.conversations.get(participant.identity)
        if conversation is not None and conversation.participant_sid != participant.sid:
            log.info("room %s: %s rejoined", self.name, participant.identity)
            self._end(conversation)  # the old session's departure may be reported later
            conversation = None
        if conversation is None and not self._closing:
            log.info("room %s: %s joined", self.name, participant.identity)
            conversation = Conversation(self, participant)
            self.conversations[participant.identity] = conversation
            if self.config.livekit.greeting:
                conversation.greet(self.config.livekit.greeting)
            self.update_state()
        return conversation

    def _end(self, conversation: Conversation) -> None:
        """This person's session is over: close their Conversation."""
        if self.conversations.get(conversation.identity) is conversation:
            del self.conversations[conversation.identity]
        self.spawn(conversation.aclose(), f"close-{conversation.identity}")
        self.update_state()

    def update_state(self, state: AgentState | None = None) -> None:
        """Publish `lk.agent.state`: `state`, or the busiest conversation's (listening if none)."""
        if state is None:
            states = [c.effective_state for c in self.conversations.values()]
            state = max(states, key=STATE_ORDER.index, default=AgentState.LISTENING)
            if state is AgentState.INITIALIZING:
                state = AgentState.LISTENING
        if state is self.state:
            return
        self.state = state
        local = self.room.local_participant
        self.outbox.post(lambda: local.set_attributes({ATTR_STATE: state.value}))

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("room %s: task %s failed", self.name, task.get_name(), exc_info=error)
            self.observer.on_error("room")

    # -- lifecycle --------------------------------------------------------------------------------
    async def wait_closed(self) -> None:
        """Until the room is gone for us: disconnected, or (leave_when_empty) everyone left."""
        await self._left.wait()

    @property
    def closed(self) -> bool:
        return self._left.is_set()

    async def drain(self, grace: float, poll: float = 0.1) -> int:
        """Shutdown, before `aclose`: let the turns in progress finish (a reply being spoken
        plays to its end; a person who was mid-sentence gets their answer) and start no new one:
        whoever is not in a turn, or has finished the turn they were in, is no longer listened
        to. Returns how many turns were still going after `grace` seconds (0: all finished)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # conversation -> turns it had finished when the drain began: one more, and it is done
        finishing = {c: len(c.session.records) for c in self.conversations.values()
                     if c.session.busy or c.greeting}  # fmt: skip
        while True:
            present = list(self.conversations.values())
            finishing = {c: n for c, n in finishing.items() if c in present}  # gone: nothing to wait for
            for conversation in present:
                session = conversation.session
                done = finishing.get(conversation)
                in_turn = conversation.greeting or (session.busy and len(session.records) == done)
                if done is not None and in_turn:
                    continue
                finishing.pop(conversation, None)
                conversation.stop_listening(conversation.track_sid)
            if not finishing or loop.time() >= deadline:
                return len(finishing)
            await asyncio.sleep(poll)

    async def aclose(self) -> None:
        """Leave: stop every conversation, flush the last transcripts, disconnect."""
        if self._closing:
            return
        self._closing = True
        conversations = list(self.conversations.values())
        self.conversations.clear()
        await asyncio.gather(*(c.aclose() for c in conversations), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.outbox.aclose()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(LEAVE_TIMEOUT):
                await self.room.disconnect()
        await self.voice.aclose()
        self._left.set()
        if self._joined:
            self.observer.on_room_left(self.name)


def _is_voice(publication: rtc.TrackPublication) -> bool:
    return publication.kind == rtc.TrackKind.KIND_AUDIO and publication.source in VOICE_SOURCES
