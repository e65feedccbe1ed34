"""One turn's reply: the person's words -> LLM -> clauses -> TTS, held until the turn is the
agent's, then played.

    Reply.answer(transcript)   started at the first quiet window (speculation)
      -> await the transcript    the person's words (the apology if STT fails)
      -> LLM stream              tokens -> SentenceChunker -> clauses; or a tool call: the tool
                                 runs (a filler is said if it is slow), the LLM reads its result
      -> TTS                     the first clause under the first-audio gate, then the rest,
                                 at most CHUNKS_AHEAD ahead of playout
      -> held until commit()     nothing is heard before the turn is committed
      -> playout                 20 ms frames -> the sink
    Reply.saying(text)         the same from TTS on, for words the agent says on its own
    Reply.generating(instr.)   the same from the LLM on, the agent speaking first

    cancel()     the person went on before the endpoint: nothing of it is heard
    pause()      speech over the agent: silent now, its place kept (a backchannel may follow)
    resume()     it was a backchannel or a cough: on from where the person stopped hearing it
    interrupt()  barge-in: silent now; returns the outcome, with the words that were heard
    outcome      resolves once the reply has played: what the person said, what they heard

A Reply never calls into the session: it reports through its outcome, two callbacks it is
given (the transcript is known, the first frame is out) and the application's SessionHooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from voicecore.agent import Agent
from voicecore.audio.frames import AudioFrame, split_frames, trim_leading_silence
from voicecore.audio.resample import resample
from voicecore.config import Config
from voicecore.hooks import AudioSink, SessionHooks
from voicecore.llm.base import Message
from voicecore.llm.history import ChatHistory
from voicecore.metrics import TurnRecord
from voicecore.pipeline import Models
from voicecore.scheduling import stall_timeout
from voicecore.stt.base import Transcript
from voicecore.tools import Tool, ToolCall, ToolResult, find, unknown
from voicecore.tts.chunker import SentenceChunker

log = logging.getLogger(__name__)

CHUNKS_AHEAD = 2  # synthesised chunks waiting for playout: bounds memory, keeps TTS ahead

Chunks = asyncio.Queue[tuple[str, AudioFrame] | None]  # None: the reply is complete


@dataclass
class ReplyContext:
    """What every reply of one conversation shares."""

    models: Models
    config: Config
    sink: AudioSink
    hooks: SessionHooks
    clock: Callable[[], float]
    label: str = "conversation"  # whose replies, in log lines ("room R, alice")
    agent: Agent = field(default_factory=Agent)


@dataclass
class ReplyOutcome:
    turn: TurnRecord
    user_text: str  # "" for words the agent said on its own, or when no words were heard
    heard: str  # the reply as it reached the person: cut at a barge-in
    interrupted: bool
    said: bool  # words the agent said on its own (`Reply.saying`, `generating`), not an answer
    steps: list[Message] = field(default_factory=list)  # tool calls and results, in order


@dataclass
class _Spoken:
    text: str
    seconds: float


class Reply:
    def __init__(
        self,
        ctx: ReplyContext,
        turn: TurnRecord,
        *,
        transcript: asyncio.Future[Transcript] | None = None,
        history: ChatHistory | None = None,
        said: str | None = None,
        instructions: str | None = None,
        on_transcript: Callable[[str], None] = lambda text: None,
        on_first_frame: Callable[[], None] = lambda: None,
        before: str = "",
    ) -> None:
        self._ctx = ctx
        self.turn = turn
        self.user_text = ""
        self.before = before  # the person's words before they went on over the last reply
        self._transcript = transcript
        self._history = history
        self._said = said
        self._instructions = instructions
        self._steps: list[Message] = []
        self._on_transcript = on_transcript
        self._on_first_frame = on_first_frame
        self._committed = asyncio.Event()
        self._spoken: list[_Spoken] = []
        self._frames: list[AudioFrame] = []  # the reply's audio so far, in playout frames
        self._next = 0  # the next frame for the sink; a pause moves it back to the unheard one
        self._unpaused = asyncio.Event()
        self._unpaused.set()
        self.outcome: asyncio.Future[ReplyOutcome] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(), name=f"reply-{turn.turn}")

    @classmethod
    def answer(
        cls,
        ctx: ReplyContext,
        turn: TurnRecord,
        transcript: asyncio.Future[Transcript],
        history: ChatHistory,
        on_transcript: Callable[[str], None],
        on_first_frame: Callable[[], None],
        before: str = "",
    ) -> Reply:
        """Answer the person's words (`transcript`, started at the end of their speech), after
        `before`: what they said before going on over the reply that answered it too soon."""
        return cls(
            ctx, turn, transcript=transcript, history=history,
            on_transcript=on_transcript, on_first_frame=on_first_frame, before=before,
        )  # fmt: skip

    @classmethod
    def saying(
        cls, ctx: ReplyContext, turn: TurnRecord, text: str, on_first_frame: Callable[[], None]
    ) -> Reply:
        """Say `text` (committed at once: it is the agent's turn already)."""
        reply = cls(ctx, turn, said=text, on_first_frame=on_first_frame)
        reply._committed.set()
        return reply

    @classmethod
    def generating(
        cls,
        ctx: ReplyContext,
        turn: TurnRecord,
        history: ChatHistory,
        instructions: str,
        on_first_frame: Callable[[], None],
    ) -> Reply:
        """Speak first: the LLM's words after the conversation so far and `instructions` (a
        system line for this reply only, e.g. "greet the user and offer help")."""
        reply = cls(ctx, turn, history=history, instructions=instructions, on_first_frame=on_first_frame)
        reply._committed.set()
        return reply

    # -- what the session does with it -----------------------------------------------------------
    def commit(self, endpoint: float) -> None:
        """The turn is the agent's: play the reply (at once if its audio is ready)."""
        self.turn.endpoint = endpoint
        self._committed.set()

    def cancel(self) -> None:
        """Stop working on it; nothing more of it is played. The outcome never comes."""
        self._task.cancel()
        self.outcome.cancel()

    def interrupt(self) -> ReplyOutcome:
        """Barge-in: silence the agent now. The outcome keeps only what was heard."""
        heard = self._heard_text()
        self._ctx.sink.clear_queue()
        self._task.cancel()
        if not self.outcome.done():
            self.turn.interrupted = True
            self._settle(heard, interrupted=True)
        return self.outcome.result()

    def pause(self) -> None:
        """Silence the agent now and keep its place: what was queued and not yet heard is
        played on `resume`."""
        if not self._unpaused.is_set():
            return
        self._unpaused.clear()
        sink = self._ctx.sink
        unheard = sink.queued_duration
        sink.clear_queue()
        if self._frames:
            self._next = max(0, self._next - round(unheard / self._frames[0].duration))
        self.turn.extra["paused"] = self.turn.extra.get("paused", 0) + 1

    def resume(self) -> None:
        """Go on after a pause, from the first frame the person did not hear."""
        if not self._unpaused.is_set():
            self._unpaused.set()
            self.turn.extra["resumed"] = self.turn.extra.get("resumed", 0) + 1

    async def heard(self) -> str:
        """Once it has played: the words heard ("" if it was cancelled before)."""
        try:
            return (await asyncio.shield(self.outcome)).heard
        except asyncio.CancelledError:
            if self.outcome.cancelled() and not _cancelling():
                return ""
            raise

    def done(self) -> bool:
        """Its work has stopped (played, cancelled or interrupted)."""
        return self._task.done()

    async def wait_closed(self) -> None:
        """Until its work has stopped (after `cancel` or `interrupt`, or once played)."""
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    # -- the reply's life --------------------------------------------------------------------------
    async def _run(self) -> None:
        ctx, turn = self._ctx, self.turn
        producer: asyncio.Task[None] | None = None
        try:
            chunks: Chunks = asyncio.Queue(CHUNKS_AHEAD)
            if self._said is not None:
                producer = asyncio.create_task(self._speak_text(self._said, chunks))
            elif self._instructions is not None:
                assert self._history is not None
                prompt = self._history.messages()
                if self._instructions:
                    prompt.append(Message("system", self._instructions))
                producer = asyncio.create_task(self._produce(prompt, chunks))
            else:
                producer = await self._understand(chunks)
            await self._committed.wait()
            turn.speculative = (
                turn.stt_final is not None and turn.endpoint is not None and turn.stt_final <= turn.endpoint
            )
            if self.user_text:
                ctx.hooks.on_user_transcript(self.user_text, True)
            await self._playout(chunks)
            self._settle(" ".join(s.text for s in self._spoken), interrupted=False)
        except Exception:
            # A stage failed: end the turn cleanly, the conversation goes on.
            log.exception("%s: turn %d failed", ctx.label, turn.turn)
            await self._committed.wait()
            self._settle(" ".join(s.text for s in self._spoken), interrupted=False)
        finally:
            if self._transcript is not None:
                self._transcript.cancel()  # not yet started: never will be
            if producer is not None:
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await producer

    async def _understand(self, chunks: Chunks) -> asyncio.Task[None] | None:
        """Wait for the person's words; start making the answer (or the apology)."""
        ctx, turn = self._ctx, self.turn
        assert self._transcript is not None and self._history is not None
        try:
            async with stall_timeout(ctx.config.turn.stage_timeout, lambda: ctx.models.stt.last_progress):
                text = " ".join(filter(None, (self.before, (await self._transcript).text)))
        except Exception as e:  # a failed or hung STT: the reply is the apology
            self._failed("stt", e)
            return asyncio.create_task(self._apologise(chunks))
        turn.stt_final = ctx.clock()
        turn.user_text = self.user_text = text
        self._on_transcript(text)
        if not text:
            chunks.put_nowait(None)  # no words: a cough, a noise; nothing to answer
            return None
        return asyncio.create_task(self._answer(text, chunks))

    async def _answer(self, text: str, chunks: Chunks) -> None:
        """The application sees the words first (`Agent.before_llm`), then the LLM answers."""
        ctx = self._ctx
        assert self._history is not None
        if ctx.agent.before_llm is not None:
            try:
                seen = ctx.agent.before_llm(text)
                text = await seen if inspect.isawaitable(seen) else seen
            except Exception as e:
                self._failed("agent", e)
                await self._apologise(chunks)
                return
        llm = ctx.models.llm
        budget = llm.context_tokens - ctx.config.llm.max_tokens
        prompt = self._history.prompt(text, budget, llm.count_tokens)
        await self._produce(prompt, chunks)

    def _settle(self, heard: str, interrupted: bool) -> None:
        if not self.outcome.done():
            self.turn.agent_text = heard
            said = self._said is not None or self._instructions is not None
            outcome = ReplyOutcome(self.turn, self.user_text, heard, interrupted, said, list(self._steps))
            self.outcome.set_result(outcome)

    async def _produce(self, prompt: list[Message], chunks: Chunks) -> None:
        """LLM tokens -> clauses -> speech, ahead of playout by at most CHUNKS_AHEAD chunks; a
        tool call in between is run, and the LLM asked again with its result."""
        ctx = self._ctx
        chunker = SentenceChunker(ctx.config.tts.first_chunk_min_words, ctx.config.tts.chunk_min_words)
        tools = list(ctx.agent.tools)
        try:
            for calls in range(ctx.config.agent.max_tool_calls + 1):
                offered = tools if calls < ctx.config.agent.max_tool_calls else []
                call = await self._stream(prompt, offered, chunker, chunks)
                if not isinstance(call, ToolCall):
                    if call:
                        for text in chunker.flush():
                            if not await self._speak_chunk(text, chunks):
                                return
                    return
                result = await self._use_tool(call, chunks)
                steps = [Message.calling(call), Message.result(call, result.content)]
                self._steps += steps
                prompt = [*prompt, *steps]
        finally:
            await _end(chunks)

    async def _stream(
        self, prompt: list[Message], tools: list[Tool], chunker: SentenceChunker, chunks: Chunks
    ) -> ToolCall | bool:
        """One LLM request: its words spoken as they come. The tool call it made, if it made
        one; else True once it is over, False if a stage failed (the apology is said)."""
        ctx, turn = self._ctx, self.turn
        # an engine written before tools existed takes the messages alone
        stream = ctx.models.llm.stream(prompt, tools) if tools else ctx.models.llm.stream(prompt)
        try:
            while True:
                try:
                    async with stall_timeout(
                        ctx.config.turn.stage_timeout, lambda: ctx.models.llm.last_progress
                    ):
                        piece = await anext(stream)
                except StopAsyncIteration:
                    return True
                except Exception as e:
                    self._failed("llm", e)
                    await self._apologise(chunks)
                    return False
                if isinstance(piece, ToolCall):
                    return piece
                if turn.llm_first_token is None:
                    turn.llm_first_token = ctx.clock()
                for text in chunker.push(piece):
                    if not await self._speak_chunk(text, chunks):
                        return False
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def _use_tool(self, call: ToolCall, chunks: Chunks) -> ToolResult:
        """Run the tool the model asked for (once the turn is certain, unless the tool only
        reads); a filler is said if it takes longer than `agent.filler_after`."""
        ctx, config = self._ctx, self._ctx.config.agent
        tool = find(ctx.agent.tools, call.name)
        if tool is None:
            result = unknown(call)
        else:
            if not tool.speculative:
                await self._committed.wait()
            # one filler a turn at most
            filler = asyncio.create_task(self._filler(chunks)) if "filler" not in self.turn.extra else None
            try:
                result = await tool(call, config.tool_timeout)
            finally:
                if filler is not None:
                    if "filler" not in self.turn.extra:  # not begun: once begun, said whole
                        filler.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await filler
        self.turn.extra.setdefault("tools", []).append(
            {
                "name": call.name,
                "arguments": call.arguments,
                "seconds": round(result.seconds, 3),
                "error": result.error,
            }
        )
        if result.error is not None:
            log.warning("%s: turn %d: tool %s: %s", ctx.label, self.turn.turn, call.name, result.error)
        ctx.hooks.on_tool(result)
        return result

    async def _filler(self, chunks: Chunks) -> None:
        config = self._ctx.config.agent
        await asyncio.sleep(config.filler_after)
        if config.filler:
            self.turn.extra["filler"] = True  # once begun, it is said whole, before the answer
            await self._speak_chunk(config.filler, chunks)

    async def _speak_text(self, text: str, chunks: Chunks) -> None:
        config = self._ctx.config.tts
        chunker = SentenceChunker(config.first_chunk_min_words, config.chunk_min_words)
        try:
            for clause in [*chunker.push(text), *chunker.flush()]:
                if not await self._speak_chunk(clause, chunks):
                    return
        finally:
            await _end(chunks)

    async def _apologise(self, chunks: Chunks) -> None:
        """Say the configured apology (unless TTS itself is what failed), then end the reply."""
        apology = self._ctx.config.turn.apology
        if apology and "tts" not in self.turn.extra.get("failed", []):
            await self._speak_chunk(apology, chunks, apology=True)
        await chunks.put(None)

    def _failed(self, stage: str, error: BaseException) -> None:
        kind = "timed out" if isinstance(error, TimeoutError) else f"failed: {error!r}"
        log.error("%s: turn %d: %s %s", self._ctx.label, self.turn.turn, stage, kind)
        self.turn.extra.setdefault("failed", []).append(stage)
        self._ctx.hooks.on_error(stage, error)

    async def _speak_chunk(self, text: str, chunks: Chunks, apology: bool = False) -> bool:
        """Synthesise one chunk and queue it for playout; False if TTS failed."""
        ctx, turn = self._ctx, self.turn
        if turn.first_chunk_text is None and not apology:
            turn.first_chunk_text = ctx.clock()
        first = turn.tts_first_audio is None
        # The first audio goes ahead of the rest of the reply: the LLM waits between tokens.
        gate = ctx.models.scheduler.first_audio.synthesising() if first else contextlib.nullcontext()
        try:
            with gate:
                tts = ctx.models.tts_for(ctx.agent.voice)
                async with stall_timeout(ctx.config.turn.stage_timeout, lambda: tts.last_progress):
                    audio = await tts.synthesize(text, first=first)
        except Exception as e:
            self._failed("tts", e)
            return False
        if first:
            audio = trim_leading_silence(audio)  # the first sound out is what latency is
        if turn.tts_first_audio is None and not apology:
            turn.tts_first_audio = ctx.clock()
        await chunks.put((text, resample(audio, ctx.config.audio.output_sample_rate)))
        return True

    async def _playout(self, chunks: Chunks) -> None:
        """Chunks -> frames -> the sink, until all of the reply has played. While paused it
        waits; `pause` has moved `_next` back to the first frame that was not heard."""
        ctx = self._ctx
        complete = False
        while True:
            await self._unpaused.wait()
            if self._next < len(self._frames):
                await ctx.sink.capture_frame(self._frames[self._next])
                self._next += 1
                if not self._unpaused.is_set():  # paused while this frame was on its way
                    ctx.sink.clear_queue()
                    self._next -= 1
            elif not complete:
                item = await chunks.get()
                if item is None:
                    complete = True
                    continue
                text, audio = item
                if self.turn.first_frame_out is None:
                    self.turn.first_frame_out = ctx.clock()
                    self._on_first_frame()
                self._spoken.append(_Spoken(text, audio.duration))
                self._frames += split_frames(audio)
                ctx.hooks.on_agent_text(text)
            else:
                await ctx.sink.wait_for_playout()
                if self._unpaused.is_set():
                    return

    def _heard_text(self) -> str:
        """The words of the reply that reached the person: played chunks, and the played share
        of the chunk in progress (words are spread evenly over its audio)."""
        played = sum(f.duration for f in self._frames[: self._next]) - self._ctx.sink.queued_duration
        words: list[str] = []
        for spoken in self._spoken:
            if played <= 0:
                break
            chunk_words = spoken.text.split()
            share = min(1.0, played / spoken.seconds) if spoken.seconds else 1.0
            words += chunk_words[: int(len(chunk_words) * share + 1e-9)]
            played -= spoken.seconds
        return " ".join(words)


async def _end(chunks: Chunks) -> None:
    """Mark the end for playout, unless cancelled: then playout is gone, and with the queue full
    of speech made ahead, waiting for room would wait forever."""
    if not _cancelling():
        await chunks.put(None)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
