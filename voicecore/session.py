"""One conversation: the journey of an audio frame, top to bottom.

    push_audio(frame)            20 ms of the user's microphone, any sample rate
      -> resample to 16 kHz, keep in the utterance buffer
      -> VadStream               speech start / end events
      -> TurnMachine             decisions: speculate, commit, cancel, interrupt
      -> _reply()                STT final -> LLM tokens -> chunker -> TTS, held until commit
      -> _playout()              20 ms frames -> sink.capture_frame (the agent's microphone)

Models are shared with other sessions; everything here is per conversation. Nothing blocks the
event loop: inference runs on the models' worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from voicecore.audio.frames import AudioFrame, split_frames, trim_leading_silence
from voicecore.audio.resample import StreamResampler, resample
from voicecore.config import Config
from voicecore.llm.base import Message
from voicecore.llm.history import ChatHistory
from voicecore.metrics import TurnRecord
from voicecore.pipeline import Models
from voicecore.scheduling import CONVERSATIONS, stall_timeout
from voicecore.stt.base import Transcript
from voicecore.tts.chunker import SentenceChunker
from voicecore.turn.machine import Action, Decision, TurnMachine
from voicecore.turn.state import AgentState, TurnState
from voicecore.turn.vad import SAMPLE_RATE, VadStream

log = logging.getLogger(__name__)

EARLY_QUIET = 768  # samples (48 ms) of quiet after speech that start the final transcript early
# Silero's confident windows go on for up to ~180 ms after the sound stops (its probability
# decays): one ending later than this after the level's quiet began heard soft speech.
SILERO_DECAY = 3072
KEEP_BEFORE_ONSET = 2.0  # seconds of audio kept outside an utterance (prefix padding, barge-in)
CHUNKS_AHEAD = 2  # synthesised chunks waiting for playout: bounds memory, keeps TTS ahead


class AudioSink(Protocol):
    """Where the agent's voice goes; shaped like `livekit.rtc.AudioSource`."""

    async def capture_frame(self, frame: AudioFrame) -> None:
        """Queue a frame for playout; waits while the queue is full (this paces the reply)."""
        ...

    def clear_queue(self) -> None:
        """Drop everything queued and not yet played (barge-in)."""
        ...

    @property
    def queued_duration(self) -> float:
        """Seconds of audio queued and not yet played."""
        ...

    async def wait_for_playout(self) -> None: ...


class SessionHooks:
    """Side channels: override what you need (transcripts, state, per-turn records)."""

    def on_state(self, state: AgentState) -> None: ...

    def on_user_transcript(self, text: str, final: bool) -> None: ...

    def on_agent_text(self, text: str) -> None:
        """A chunk of the reply, called as its audio starts playing."""

    def on_turn(self, record: TurnRecord) -> None:
        """A turn is over (answered or interrupted)."""

    def on_error(self, stage: str, error: BaseException) -> None:
        """A stage ("stt", "llm" or "tts") failed or timed out; the turn ends with an apology."""


@dataclass
class _Spoken:
    text: str
    seconds: float
    captured: float = 0.0  # seconds of it handed to the sink so far (the rest was never queued)


class Session:
    def __init__(
        self,
        models: Models,
        config: Config,
        sink: AudioSink,
        hooks: SessionHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.models = models
        self.config = config
        self.sink = sink
        self.hooks = hooks or SessionHooks()
        self.clock = clock
        self.history = ChatHistory(config.llm.system_prompt)
        self.records: list[TurnRecord] = []
        self.state = AgentState.INITIALIZING
        self._resampler = StreamResampler(SAMPLE_RATE)
        self._vad = VadStream(models.vad, config.vad)
        self._machine = TurnMachine(config.turn)
        self._buffer = np.zeros(0, np.float32)  # recent 16 kHz audio ...
        self._buffer_start = 0  # ... starting at this stream sample
        self._prefix = int(config.vad.prefix_padding_ms * SAMPLE_RATE / 1000)
        self._reply_task: asyncio.Task[None] | None = None
        self._committed = asyncio.Event()
        self._turn: TurnRecord | None = None
        self._turns = 0
        self._spoken: list[_Spoken] = []  # chunks of the current reply handed to the sink
        self._reply_msg: Message | None = None
        self._user_msg: Message | None = None
        self._interim_task: asyncio.Task[None] | None = None
        self._interim_at = 0
        # a final transcript started when the sound stopped, and where it stopped
        self._early: tuple[int, asyncio.Future[Transcript]] | None = None
        self._closed = False
        CONVERSATIONS.opened(self)
        self._set_state(AgentState.LISTENING)

    # -- input --------------------------------------------------------------------------------
    def push_audio(self, frame: AudioFrame) -> None:
        """Feed the user's audio (mono, any rate, any frame size). Never blocks."""
        if self._closed:
            return
        samples = self._resampler.push(frame).to_float()
        now = self.clock()
        self._buffer = np.concatenate([self._buffer, samples])
        decisions: list[Decision] = []
        for event in self._vad.push(samples):
            decisions += self._machine.on_vad(event)
        decisions += self._machine.on_time(self._vad.samples_seen)
        for decision in decisions:
            self._act(decision, now)
        self._maybe_early_transcript()
        self._maybe_interim()
        self._trim_buffer()

    def _act(self, decision: Decision, now: float) -> None:
        action = decision.action
        log.debug("turn decision %s at sample %d", action.value, decision.sample)
        if action is Action.SPECULATE:
            self._start_reply(self._time_of(decision.sample, now))
        elif action is Action.CANCEL_SPECULATION:
            self._cancel_reply()
        elif action is Action.COMMIT:
            if self._turn is not None:
                self._turn.endpoint = now
            self._committed.set()
            self._set_state(AgentState.THINKING)
        elif action is Action.REOPEN:
            self._cancel_reply()
            self._set_state(AgentState.LISTENING)
        elif action is Action.INTERRUPT:
            self._interrupt()
        elif action is Action.USER_STARTED:
            self._interim_at = decision.sample

    # -- reply ----------------------------------------------------------------------------------
    def _start_reply(self, speech_end: float) -> None:
        self._cancel_reply()
        self._turns += 1
        self._turn = TurnRecord(turn=self._turns, speech_end=speech_end)
        self._committed = asyncio.Event()
        self._spoken = []
        transcript = self._take_early_transcript()
        if transcript is None:
            audio = self._utterance_audio()
            transcript = asyncio.ensure_future(self.models.stt.transcribe(audio, final=True))
        else:
            self._turn.extra["early_transcript"] = True
        self._reply_task = asyncio.create_task(
            self._reply(self._turn, transcript, self._committed), name=f"reply-{self._turns}"
        )

    async def _reply(
        self, turn: TurnRecord, transcript: asyncio.Future[Transcript], committed: asyncio.Event
    ) -> None:
        producer: asyncio.Task[None] | None = None
        try:
            chunks: asyncio.Queue[tuple[str, AudioFrame] | None] = asyncio.Queue(CHUNKS_AHEAD)
            timeout = self.config.turn.stage_timeout
            text = ""
            try:
                async with stall_timeout(timeout, lambda: self.models.stt.last_progress):
                    text = (await transcript).text
            except Exception as e:  # a failed or hung STT: the reply is the apology
                self._stage_failed(turn, "stt", e)
                producer = asyncio.create_task(self._apologise(turn, chunks))
            else:
                turn.stt_final = self.clock()
                turn.user_text = text
                self._machine.on_transcript(text)
                if text:
                    messages = [*self.history.messages(), Message("user", text)]
                    producer = asyncio.create_task(self._produce(turn, messages, chunks))
                else:
                    chunks.put_nowait(None)  # no words: a cough, a noise; nothing to answer
            await committed.wait()
            turn.speculative = (
                turn.stt_final is not None and turn.endpoint is not None and (turn.stt_final <= turn.endpoint)
            )
            if text:
                self.hooks.on_user_transcript(text, True)
                self._user_msg = Message("user", text)
                self._reply_msg = Message("assistant", "")
                self.history.turns += [self._user_msg, self._reply_msg]
            await self._playout(turn, chunks)
            await self.sink.wait_for_playout()
            self._finish_turn(turn)
        except Exception:
            # A stage failed: end the turn cleanly, the conversation goes on.
            log.exception("turn %d failed", turn.turn)
            await committed.wait()
            self._finish_turn(turn)
        finally:
            transcript.cancel()  # not yet started: never will be
            if producer is not None:
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def _produce(
        self,
        turn: TurnRecord,
        messages: list[Message],
        chunks: asyncio.Queue[tuple[str, AudioFrame] | None],
    ) -> None:
        """LLM tokens -> clauses -> speech, ahead of playout by at most CHUNKS_AHEAD chunks."""
        tts = self.config.tts
        chunker = SentenceChunker(tts.first_chunk_min_words, tts.chunk_min_words)
        self.history.trim(
            self.models.llm.context_tokens - self.config.llm.max_tokens, self.models.llm.count_tokens
        )
        timeout = self.config.turn.stage_timeout
        stream = self.models.llm.stream(messages)
        try:
            while True:
                try:
                    async with stall_timeout(timeout, lambda: self.models.llm.last_progress):
                        piece = await anext(stream)
                except StopAsyncIteration:
                    break
                except Exception as e:
                    self._stage_failed(turn, "llm", e)
                    await self._apologise(turn, chunks)
                    return
                if turn.llm_first_token is None:
                    turn.llm_first_token = self.clock()
                for text in chunker.push(piece):
                    if not await self._speak_chunk(turn, text, chunks):
                        return
            for text in chunker.flush():
                if not await self._speak_chunk(turn, text, chunks):
                    return
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]
            # The end mark is for playout. Once cancelled, playout is gone: with the queue full
            # of speech made ahead, waiting for room would wait forever (and so would whoever
            # waits for this task).
            if not _cancelling():
                await chunks.put(None)

    async def _apologise(
        self, turn: TurnRecord, chunks: asyncio.Queue[tuple[str, AudioFrame] | None]
    ) -> None:
        """Say the configured apology (unless TTS itself is what failed), then end the reply."""
        apology = self.config.turn.apology
        if apology and "tts" not in turn.extra.get("failed", []):
            await self._speak_chunk(turn, apology, chunks, apology=True)
        await chunks.put(None)

    def _stage_failed(self, turn: TurnRecord, stage: str, error: BaseException) -> None:
        kind = "timed out" if isinstance(error, TimeoutError) else f"failed: {error!r}"
        log.error("turn %d: %s %s", turn.turn, stage, kind)
        turn.extra.setdefault("failed", []).append(stage)
        self.hooks.on_error(stage, error)

    async def _speak_chunk(
        self,
        turn: TurnRecord,
        text: str,
        chunks: asyncio.Queue[tuple[str, AudioFrame] | None],
        apology: bool = False,
    ) -> bool:
        """Synthesise one chunk and queue it for playout; False if TTS failed."""
        if turn.first_chunk_text is None and not apology:
            turn.first_chunk_text = self.clock()
        first = turn.tts_first_audio is None
        try:
            async with stall_timeout(self.config.turn.stage_timeout, lambda: self.models.tts.last_progress):
                audio = await self.models.tts.synthesize(text, first=first)
        except Exception as e:
            self._stage_failed(turn, "tts", e)
            return False
        if first:
            audio = trim_leading_silence(audio)  # the first sound out is what latency is
        if turn.tts_first_audio is None and not apology:
            turn.tts_first_audio = self.clock()
        await chunks.put((text, resample(audio, self.config.audio.output_sample_rate)))
        return True

    async def _playout(self, turn: TurnRecord, chunks: asyncio.Queue[tuple[str, AudioFrame] | None]) -> None:
        while (item := await chunks.get()) is not None:
            text, audio = item
            if turn.first_frame_out is None:
                turn.first_frame_out = self.clock()
                self._machine.agent_speaking()
                self._set_state(AgentState.SPEAKING)
            spoken = _Spoken(text, audio.duration)
            self._spoken.append(spoken)
            if self._reply_msg is not None:
                self._reply_msg.content = " ".join(s.text for s in self._spoken)
            self.hooks.on_agent_text(text)
            for frame in split_frames(audio):
                await self.sink.capture_frame(frame)
                spoken.captured += frame.duration

    def _finish_turn(self, turn: TurnRecord, heard: str | None = None) -> None:
        turn.agent_text = heard if heard is not None else " ".join(s.text for s in self._spoken)
        if self._reply_msg is not None and not self._reply_msg.content.strip():
            self._remove(self._reply_msg)
        self._reply_msg = self._user_msg = None
        self.records.append(turn)
        self.hooks.on_turn(turn)
        self._turn = None
        self._read_ahead("")  # the user's header after this reply
        for decision in self._machine.agent_done():
            self._act(decision, self.clock())
        if self._machine.state is TurnState.LISTENING:
            self._set_state(AgentState.LISTENING)

    def _interrupt(self) -> None:
        """Barge-in: silence the agent now, keep in the history only what was heard."""
        turn = self._turn
        heard = self._heard_text()
        self.sink.clear_queue()
        self._cancel_reply(keep_history=True)
        if self._reply_msg is not None:
            self._reply_msg.content = heard
        if turn is not None:
            turn.interrupted = True
            self._finish_turn(turn, heard)
        self._set_state(AgentState.LISTENING)

    def _heard_text(self) -> str:
        """The words of the reply that reached the user: played chunks, and the played share
        of the chunk in progress (words are spread evenly over its audio)."""
        played = sum(s.captured for s in self._spoken) - self.sink.queued_duration
        words: list[str] = []
        for spoken in self._spoken:
            if played <= 0:
                break
            chunk_words = spoken.text.split()
            share = min(1.0, played / spoken.seconds) if spoken.seconds else 1.0
            words += chunk_words[: int(len(chunk_words) * share + 1e-9)]
            played -= spoken.seconds
        return " ".join(words)

    def _cancel_reply(self, keep_history: bool = False) -> None:
        """Cancel a speculative or running reply; nothing more of it is played."""
        if self._reply_task is not None and not self._reply_task.done():
            self._reply_task.cancel()
        self._reply_task = None
        if not keep_history:
            for message in (self._reply_msg, self._user_msg):
                if message is not None:
                    self._remove(message)
            self._reply_msg = self._user_msg = None
            self._turn = None

    def _remove(self, message: Message) -> None:
        self.history.turns = [m for m in self.history.turns if m is not message]

    # -- early final transcript -----------------------------------------------------------------
    def _maybe_early_transcript(self) -> None:
        """The sound stopped 48 ms ago while Silero still hears speech: start the final transcript
        now. Dropped if the sound comes back (a stop consonant, a breath) before Silero's first
        quiet window, which takes it over otherwise. Only while this conversation is alone: a
        dropped one costs a core for ~0.1 s, which another conversation's reply may need."""
        quiet_from = self._vad.quiet_from
        if self._early is not None and self._early[0] != quiet_from:
            self._early[1].cancel()
            self._early = None
        if (
            self._early is None
            and quiet_from is not None
            and self._vad.samples_seen - quiet_from >= EARLY_QUIET
            and self._machine.state is TurnState.USER_SPEAKING
            and self.config.turn.early_transcript
            and CONVERSATIONS.count <= 1
        ):
            audio = self._utterance_audio()
            transcript = asyncio.ensure_future(self.models.stt.transcribe(audio, final=True))
            transcript.add_done_callback(_seen)  # a dropped one's error is nobody's to log
            self._early = (quiet_from, transcript)

    def _take_early_transcript(self) -> asyncio.Future[Transcript] | None:
        """The early transcript, if the sound has not come back since it started and Silero did
        not hear speech on well after it (soft speech the level took for quiet)."""
        early, self._early = self._early, None
        if early is None:
            return None
        quiet_from, transcript = early
        if quiet_from != self._vad.quiet_from or self._vad.last_speech_sample > quiet_from + SILERO_DECAY:
            transcript.cancel()
            return None
        return transcript

    # -- interim transcripts --------------------------------------------------------------------
    def _maybe_interim(self) -> None:
        if self._machine.state is not TurnState.USER_SPEAKING:
            return
        if self._interim_task is not None and not self._interim_task.done():
            return  # one at a time per session; a slow model gets fewer interims
        interval = int(self.config.turn.interim_interval * SAMPLE_RATE)
        if self._vad.samples_seen - self._interim_at < interval:
            return
        self._interim_at = self._vad.samples_seen
        self._interim_task = asyncio.create_task(self._interim(self._utterance_audio()))

    async def _interim(self, audio: np.ndarray) -> None:
        try:
            transcript = await self.models.stt.transcribe(audio, final=False)
        except Exception:
            log.exception("interim transcription failed")
            return
        if self._machine.state is TurnState.USER_SPEAKING and transcript.text:
            self._machine.on_transcript(transcript.text)
            self.hooks.on_user_transcript(transcript.text, False)
            if self._early is None:  # else the reply's prompt may be on its way: not behind this
                self._read_ahead(transcript.text)

    def _read_ahead(self, words: str) -> None:
        """Let the LLM read the next prompt as far as it is known (the history, and the words
        heard so far), while this conversation is alone: with several, their contexts would take
        turns in the one llama.cpp context for nothing."""
        if CONVERSATIONS.count <= 1:
            self.models.llm.read_ahead([*self.history.messages(), Message("user", words)])

    # -- buffers and time -----------------------------------------------------------------------
    def _utterance_audio(self) -> np.ndarray:
        start = max(self._machine.utterance_start - self._prefix - self._buffer_start, 0)
        return self._buffer[start:].copy()

    def _trim_buffer(self) -> None:
        if self._machine.state in (TurnState.USER_SPEAKING, TurnState.USER_PAUSED):
            keep_from = self._machine.utterance_start - self._prefix
        else:
            keep_from = self._vad.samples_seen - int(KEEP_BEFORE_ONSET * SAMPLE_RATE)
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop

    def _time_of(self, sample: int, now: float) -> float:
        """Clock time of a stream sample: `now` is when the latest sample arrived."""
        return now - (self._vad.samples_seen - sample) / SAMPLE_RATE

    def _set_state(self, state: AgentState) -> None:
        if state is not self.state:
            self.state = state
            self.hooks.on_state(state)

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a turn is in progress (user speaking, agent thinking or speaking)."""
        return (
            self._machine.state is not TurnState.LISTENING
            or self._reply_task is not None
            and (not self._reply_task.done())
        )

    async def aclose(self) -> None:
        """Stop everything this session started; the shared models stay loaded."""
        self._closed = True
        CONVERSATIONS.closed(self)
        early = self._early[1] if self._early is not None else None
        tasks = [t for t in (self._reply_task, self._interim_task, early) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.sink.clear_queue()
        self.models.llm.forget(self.history.messages())


def _seen(future: asyncio.Future[Transcript]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved; a reply that awaits it still gets the error


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
