"""One conversation: the journey of an audio frame, top to bottom.

    push_audio(frame)            20 ms of the user's microphone, any sample rate
      -> resample to 16 kHz      kept by Transcribing: the utterance, its interim transcripts
      -> VadStream               speech and sound events
      -> TurnMachine             decisions: speculate, commit, cancel, interrupt, transcribe early
      -> Reply                   STT final -> LLM (and tools) -> chunker -> TTS, held until
                                 commit, played
      -> the outcome             history, the turn record, the floor open again

    push_text(text)              a typed message: a Reply at once, committed, interrupting

The agent state (`lk.agent.state`) follows the turn machine's state; `say(text)` and
`generate_reply(instructions)` speak on the agent's own initiative through the same reply,
transcript and history path. The `Agent` gives the instructions and tools. Models are shared
with other sessions; everything here is per conversation. Nothing blocks the event loop:
inference runs on the models' worker threads.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from functools import partial

from voicecore.agent import Agent
from voicecore.audio.frames import RECOGNITION_RATE, AudioFrame
from voicecore.audio.resample import StreamResampler
from voicecore.config import Config
from voicecore.hooks import AudioSink, SessionHooks
from voicecore.llm.base import Message
from voicecore.llm.history import ChatHistory
from voicecore.metrics import TurnRecord
from voicecore.pipeline import Models
from voicecore.reply import Reply, ReplyContext, ReplyOutcome
from voicecore.stt.base import Transcript
from voicecore.transcribing import Transcribing
from voicecore.turn.judging import EndOfTurnJudge
from voicecore.turn.machine import Action, Decision, TurnMachine
from voicecore.turn.state import AgentState, TurnState, agent_state

__all__ = ["AudioSink", "Session", "SessionHooks"]

log = logging.getLogger(__name__)


class Session:
    def __init__(
        self,
        models: Models,
        config: Config,
        sink: AudioSink,
        hooks: SessionHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        room: str = "",
        label: str = "conversation",
        agent: Agent | None = None,
    ) -> None:
        """`room`: where the conversation takes place, for the process's count of conversations.
        `label`: who this is, in log lines ("room R, alice"). `agent`: its instructions and
        tools (default: the configured system prompt, no tools)."""
        self.models = models
        self.config = config
        self.sink = sink
        self.hooks = hooks or SessionHooks()
        self.clock = clock
        self.agent = agent or Agent()
        models.tts_for(self.agent.voice)  # a voice not loaded: an error now, not at the first reply
        self.history = ChatHistory(self.agent.instructions or config.llm.system_prompt)
        self.records: list[TurnRecord] = []
        self.state = AgentState.INITIALIZING
        self._ctx = ReplyContext(models, config, sink, self.hooks, clock, label, self.agent)
        self._conversations = models.scheduler.conversations
        self._resampler = StreamResampler(RECOGNITION_RATE)
        self._vad = models.vad.stream(config.vad)
        self._machine = TurnMachine(config.turn, quietest=self._vad.quietest)
        self._words = Transcribing(models.stt, config, self._machine, self, self._heard_so_far)
        self._judge = EndOfTurnJudge(self._machine, getattr(models.llm, "message_end", None))
        self._reply: Reply | None = None
        self._went_on_from = ""  # the words a reply answered before the person went on (GO_ON)
        self._turns = 0
        self._idle = asyncio.Event()
        self._background: set[asyncio.Future[None]] = set()  # the application's after_reply hooks
        self._closed = False
        self._conversations.opened(self, room)
        self._update_state()

    # -- input --------------------------------------------------------------------------------
    def push_audio(self, frame: AudioFrame) -> None:
        """Feed the user's audio (mono, any rate, any frame size). Never blocks."""
        if self._closed:
            return
        samples = self._resampler.push(frame).to_float()
        now = self.clock()
        self._words.push(samples)
        decisions: list[Decision] = []
        for event in self._vad.push(samples):
            decisions += self._machine.on_vad(event)
        decisions += self._machine.on_time(self._vad.samples_seen)
        for decision in decisions:
            self._act(decision, now)
        self._words.tick(self._vad.samples_seen)
        self._update_state()

    def _act(self, decision: Decision, now: float) -> None:
        action = decision.action
        log.debug("turn decision %s at sample %d", action.value, decision.sample)
        if action is Action.SPECULATE:
            self._start_reply(self._time_of(decision.sample, now), decision.audio_end)
        elif action is Action.CANCEL_SPECULATION or action is Action.REOPEN:
            self._drop_reply()
        elif action is Action.COMMIT:
            if self._reply is not None:
                self._reply.commit(now)
        elif action is Action.INTERRUPT or action is Action.GO_ON:
            if self._reply is not None:
                outcome = self._reply.interrupt()  # keeps only what was heard
                self._finish(self._reply, outcome, went_on=action is Action.GO_ON)
        elif action is Action.PAUSE or action is Action.RESUME:
            if self._reply is not None:
                (self._reply.pause if action is Action.PAUSE else self._reply.resume)()
        elif action is Action.JUDGE_OVERLAP:
            self._words.overlap(partial(self._overlap_heard, decision.sample))
        elif action is Action.USER_STARTED:
            self._words.utterance_started(decision.sample)
        elif action is Action.TRANSCRIBE_EARLY and self._conversations.alone:
            self._words.start_early()  # alone: a dropped one would cost another's reply a core
        elif action is Action.DROP_EARLY:
            self._words.drop_early()

    # -- replies ----------------------------------------------------------------------------------
    def _start_reply(self, speech_end: float, audio_end: int | None = None) -> None:
        self._drop_reply()
        self._turns += 1
        turn = TurnRecord(turn=self._turns, speech_end=speech_end)
        transcript, early = self._words.final(audio_end)
        if early:
            turn.extra["early_transcript"] = True
        reply = Reply.answer(
            self._ctx, turn, transcript, self.history, before=self._went_on_from,
            on_transcript=partial(self._judge.heard, turn.extra), on_first_frame=self._agent_speaking,
        )  # fmt: skip
        self._follow(reply)

    def push_text(self, text: str) -> None:
        """A typed message from the person: answered now as a spoken turn is, interrupting the
        agent if it is speaking (and dropping a reply made ahead to words they then typed over)."""
        if self._closed or not text.strip():
            return
        now = self.clock()
        for decision in self._machine.user_typed(self._vad.samples_seen):
            self._act(decision, now)
        self._drop_reply()
        self._machine.answer_typed()
        self._turns += 1
        typed: asyncio.Future[Transcript] = asyncio.get_running_loop().create_future()
        typed.set_result(Transcript(text.strip(), True, 0.0, 0.0))
        turn = TurnRecord(turn=self._turns, speech_end=now, extra={"typed": True})
        reply = Reply.answer(
            self._ctx, turn, typed, self.history,
            on_transcript=lambda _: None, on_first_frame=self._agent_speaking,
        )  # fmt: skip
        reply.commit(now)
        self._follow(reply)

    async def say(self, text: str) -> str:
        """Speak `text` on the agent's own initiative (a greeting) as a reply is spoken; the
        person can interrupt it. The words heard ("" at once if a turn is under way)."""
        if self._closed or not self._machine.agent_says():
            return ""
        self._update_state()
        reply = Reply.saying(
            self._ctx, TurnRecord(turn=0, speech_end=self.clock()), text, self._agent_speaking
        )
        self._follow(reply)
        return await reply.heard()

    async def generate_reply(self, instructions: str = "") -> str:
        """Speak first: the LLM's own words after the conversation so far, guided by
        `instructions` for this reply only. The words heard ("" at once if a turn is under way)."""
        if self._closed or not self._machine.agent_says():
            return ""
        self._update_state()
        turn = TurnRecord(turn=0, speech_end=self.clock())
        reply = Reply.generating(self._ctx, turn, self.history, instructions, self._agent_speaking)
        self._follow(reply)
        return await reply.heard()

    def _follow(self, reply: Reply) -> None:
        self._reply = reply
        reply.outcome.add_done_callback(lambda outcome: self._played(reply, outcome))
        self._update_state()

    def _played(self, reply: Reply, outcome: asyncio.Future[ReplyOutcome]) -> None:
        if reply is self._reply and not outcome.cancelled():
            self._finish(reply, outcome.result())

    def _finish(self, reply: Reply, outcome: ReplyOutcome, went_on: bool = False) -> None:
        """A reply is over (played, or interrupted): what was said goes into the history, the
        turn into the records, and the floor is open again. `went_on`: the person went on
        right after it began; its words wait for the rest of theirs, and it stays out of the
        history (a tool it ran keeps it in)."""
        self._reply = None
        self.hooks.on_agent_said(outcome.heard)
        extra = outcome.turn.extra
        acted = outcome.said or "filler" in extra or "tools" in extra
        went_on = went_on and bool(outcome.user_text) and not acted
        if went_on:
            self._went_on_from = outcome.user_text
            extra["went_on"] = True
        elif reply.before:
            self._went_on_from = ""  # answered with the rest of their words
        if outcome.said:
            self.history.add_said(outcome.heard)
        else:
            if outcome.user_text and not went_on:
                self.history.commit(outcome.user_text, outcome.heard, outcome.steps)
                self._after_reply(outcome)
            self.records.append(outcome.turn)
            self.hooks.on_turn(outcome.turn)
        self._read_ahead("")  # the user's header after this reply
        for decision in self._machine.agent_done():
            self._act(decision, self.clock())
        self._update_state()

    def _after_reply(self, outcome: ReplyOutcome) -> None:
        if self.agent.after_reply is None:
            return
        try:
            done = self.agent.after_reply(outcome.user_text, outcome.heard)
        except Exception:
            log.exception("agent after_reply failed")
            return
        if inspect.isawaitable(done):
            task = asyncio.ensure_future(done)
            self._background.add(task)
            task.add_done_callback(_after_reply_done)
            task.add_done_callback(self._background.discard)

    def _drop_reply(self) -> None:
        """Cancel a speculative reply; nothing more of it is played. One that has just finished
        playing (its outcome not yet read) still counts."""
        reply = self._reply
        if reply is None:
            return
        if reply.outcome.done() and not reply.outcome.cancelled():
            self._finish(reply, reply.outcome.result())
        else:
            reply.cancel()
            self._reply = None
            if reply.turn.turn and reply.turn.turn == self._turns:
                self._turns -= 1  # never recorded: its number is the next try's (no gap in the log)

    def _agent_speaking(self) -> None:
        self._machine.agent_speaking(self._vad.samples_seen)
        self._update_state()

    def _overlap_heard(self, sample: int, words: str | None) -> None:
        """The words of speech over the agent (None: not transcribed): go on, or give way."""
        if self._closed:
            return
        log.debug("speech over the agent to sample %d: %r", sample, words)
        for decision in self._machine.on_overlap_words(words, sample):
            self._act(decision, self.clock())
        self._update_state()

    # -- the person's words while they speak ------------------------------------------------------
    def _heard_so_far(self, words: str) -> None:
        self._machine.on_transcript(words)
        self.hooks.on_user_transcript(words, False)
        if self._words.early is None:  # else the reply's prompt may be on its way: not behind this
            self._read_ahead(words)

    def _read_ahead(self, words: str) -> None:
        """Let the LLM read the next prompt as far as it is known, while this conversation is
        alone: with several, their contexts would take turns in the one llama.cpp context."""
        if self._conversations.alone:
            self.models.llm.read_ahead([*self.history.messages(), Message("user", words)])

    # -- time and state ----------------------------------------------------------------------------
    def _time_of(self, sample: int, now: float) -> float:
        """Clock time of a stream sample (`now`: when the latest sample arrived)."""
        return now - (self._vad.samples_seen - sample) / RECOGNITION_RATE

    def _update_state(self) -> None:
        """The one place the agent state changes: it follows the turn machine."""
        state = agent_state(self._machine.state, paused=self._machine.held is not None)
        if state is not self.state:
            self.state = state
            self.hooks.on_state(state)
        (self._idle.clear if self.busy else self._idle.set)()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a turn is in progress (user speaking, agent thinking or speaking)."""
        return self._machine.state is not TurnState.LISTENING or (
            self._reply is not None and not self._reply.done()
        )

    async def wait_for_idle(self) -> None:
        """Until the turn under way is over and its reply played. The endpoint is decided on
        audio time: keep pushing audio (silence too) while you wait, as a microphone does."""
        await self._idle.wait()

    async def aclose(self) -> None:
        """Stop everything this session started; the shared models stay loaded."""
        self._closed = True
        self._conversations.closed(self)
        reply, self._reply = self._reply, None
        if reply is not None:
            reply.cancel()
            await reply.wait_closed()
        await self._words.aclose()
        await self._judge.aclose()
        self.sink.clear_queue()
        self._idle.set()
        self.models.llm.forget(self.history.messages())


def _after_reply_done(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("agent after_reply failed", exc_info=task.exception())
