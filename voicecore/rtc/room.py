"""voicecore in one LiveKit room: joins, publishes the agent's voice, serves every person.

    participant joins      -> a Conversation (conversation.py: their Session, transcripts, lane)
    track_subscribed(mic)  -> that Conversation listens
    each Conversation's reply -> its VoiceLane -> AgentVoice (one rtc.AudioSource) -> the agent's track

Several people in a room: one `Conversation` (its own Session: VAD, turn state, history) per
person, so two people's words never meet in one transcript or one prompt. The agent answers
whoever finished a turn; replies take turns on the agent's single voice (see `voice.py`), and
only the person being answered can interrupt that answer. `lk.agent.state` shows the busiest
conversation: speaking > thinking > listening.

People come and go: a Conversation belongs to one participant session (its sid), not just to an
identity, so a person who rejoins as themselves (a reloaded page) gets a fresh Conversation even
when LiveKit reports the new arrival before the old one's departure. A dispatched agent
(`leave_when_empty`) stays in a room everyone has left for as long as LiveKit keeps it (its
`departure_timeout`), or `livekit.rejoin_wait`: a dropped person who comes back is answered.

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
from collections.abc import Coroutine, Sequence
from typing import Any

from livekit import rtc

from voicecore.config import Config
from voicecore.metrics import TurnLog
from voicecore.pipeline import Models
from voicecore.rtc.conversation import Conversation, RoomContext
from voicecore.rtc.observer import Observer
from voicecore.rtc.tasks import Backoff, server_answers
from voicecore.rtc.token import Credentials
from voicecore.rtc.tracks import is_voice
from voicecore.rtc.transcription import Outbox
from voicecore.rtc.voice import AgentVoice
from voicecore.tools import Tool
from voicecore.turn.state import AgentState

log = logging.getLogger(__name__)

ATTR_STATE = "lk.agent.state"
# While the connection is lost: how often to ask the server whether it is back (jittered, bounded:
# a refused TCP connection a second costs nothing), and how long to leave a server that never
# refused (a proxy in front answers for it) to the SDK's own retries before rejoining anyway.
PROBE_MIN = 0.25
PROBE_MAX = 1.0
SDK_GRACE = 5.0
REJOIN_MAX = 2.0  # the longest wait between two failed joins of a fixed room
LEAVE_TIMEOUT = 5.0  # room.disconnect() on a dead connection must not hold up a rejoin
DEPARTURE_TIMEOUT = 20.0  # livekit-server's default room departure_timeout, if the room says none
# Past the room's departure timeout the server closes it (and so disconnects the agent); the agent
# leaves on its own this much later, in case the server does not (someone not a person stays).
DEPARTURE_MARGIN = 5.0
STATE_ORDER = [AgentState.INITIALIZING, AgentState.IDLE, AgentState.LISTENING,
               AgentState.THINKING, AgentState.SPEAKING]  # fmt: skip


NOT_PEOPLE = (rtc.ParticipantKind.PARTICIPANT_KIND_AGENT, rtc.ParticipantKind.PARTICIPANT_KIND_EGRESS)


def is_person(participant: rtc.RemoteParticipant) -> bool:
    """Agents (ourselves in another job, other bots) and recorders are not talked to; people
    on a phone (SIP) or through ingress are."""
    return participant.kind not in NOT_PEOPLE


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
        creds: Credentials | None = None,
        tools: Sequence[Tool] = (),
    ) -> None:
        self.creds = creds  # to ask the server what the SDK does not say (tracks.py)
        self.tools = tools  # the agent's besides its own (an MCP server's)
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
        self._empty: asyncio.TimerHandle | None = None  # everyone left: leave when it fires
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
        creds: Credentials | None = None,
        tools: Sequence[Tool] = (),
    ) -> AgentRoom:
        """Join the room at `url` with `token`. `rejoin`: see `rejoin_wanted` (module docstring).
        `creds`: the server's API key pair, to tell which of someone's microphones came first.
        `tools`: the agent's besides its own (an MCP server's)."""
        agent = cls(
            models, config, leave_when_empty=leave_when_empty, observer=observer, rejoin=rejoin,
            creds=creds, tools=tools,
        )  # fmt: skip
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
                if publication.track is not None and is_voice(publication):
                    conversation.add_track(publication.track, publication)
        self.update_state()

    @property
    def identity(self) -> str:
        return self.room.local_participant.identity

    # -- room events (synchronous callbacks on the loop) ----------------------------------------
    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if is_person(participant):
            if self._empty is not None:
                log.info("room %s: %s came back", self.name, participant.identity)
                self._empty.cancel()
                self._empty = None
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
        if self.leave_when_empty and is_person(participant) and not people and self._empty is None:
            wait = self.config.livekit.rejoin_wait
            if wait is None:  # until the server closes the room
                wait = (self.room.departure_timeout or DEPARTURE_TIMEOUT) + DEPARTURE_MARGIN
            log.info("room %s: everyone left; leaving in %g s unless someone comes back", self.name, wait)
            self._empty = asyncio.get_running_loop().call_later(wait, self._everyone_gone)

    def _everyone_gone(self) -> None:
        log.info("room %s: everyone left", self.name)
        self._left.set()

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if is_person(participant) and is_voice(publication):
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
            conversation = Conversation(self._context(), participant)
            self.conversations[participant.identity] = conversation
            if self.config.livekit.greeting:
                conversation.greet(self.config.livekit.greeting)
            self.update_state()
        return conversation

    def _context(self) -> RoomContext:
        return RoomContext(
            name=self.name, models=self.models, config=self.config, local=self.room.local_participant,
            voice=self.voice, outbox=self.outbox, observer=self.observer, turn_log=self.turn_log,
            spawn=self.spawn, update_state=self.update_state, present=self._present, creds=self.creds,
            tools=self.tools,
        )  # fmt: skip

    def _present(self, participant_sid: str) -> bool:
        """A send addressed to someone who left gets no answer."""
        return any(p.sid == participant_sid for p in self.room.remote_participants.values())

    def _end(self, conversation: Conversation) -> None:
        """This person's session is over: close their Conversation."""
        if self.conversations.get(conversation.identity) is conversation:
            del self.conversations[conversation.identity]
        self.spawn(conversation.aclose(), f"close-{conversation.identity}")
        self.update_state()

    def update_state(self, state: AgentState | None = None) -> None:
        """Publish `lk.agent.state`: `state`, or the busiest conversation's (listening if none)."""
        if state is None:
            states = [c.state for c in self.conversations.values()]
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
        finishing = {c: len(c.session.records) for c in self.conversations.values() if c.session.busy}
        while True:
            present = list(self.conversations.values())
            finishing = {c: n for c, n in finishing.items() if c in present}  # gone: nothing to wait for
            for conversation in present:
                session = conversation.session
                done = finishing.get(conversation)
                in_turn = session.busy and len(session.records) == done
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
        if self._empty is not None:
            self._empty.cancel()
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
