"""A model stage that raises or hangs: the turn ends with a spoken apology in bounded time, the
conversation goes on, other conversations are untouched. The faults are injected with small
wrappers around the real models (the one place a fake is allowed: real models don't fail on
demand)."""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import replace

from helpers import join, transcribe, words
from test_pipeline import Recorder, feed

from voicecore import AgentState, AudioFrame, Models, RealtimeSink, Session, SessionHooks
from voicecore.tts.chunker import MAX_CHUNK_WORDS


class Faulty:
    """Wraps a stage; while `mode` is "raise" or "hang", its next call fails that way."""

    def __init__(self, stage, method: str) -> None:
        self._stage = stage
        self._method = method
        self.mode = "ok"

    def __getattr__(self, name):
        target = getattr(self._stage, name)
        if name != self._method:
            return target
        if self._method == "stream":
            return self._stream
        return self._call

    async def _fail(self) -> None:
        if self.mode == "raise":
            raise RuntimeError("injected fault")
        if self.mode == "hang":
            await asyncio.sleep(3600)

    async def _call(self, *args, **kwargs):
        await self._fail()
        return await getattr(self._stage, self._method)(*args, **kwargs)

    async def _stream(self, *args, **kwargs):
        await self._fail()
        async for piece in self._stage.stream(*args, **kwargs):
            yield piece


class Errors(SessionHooks):
    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_error(self, stage: str, error: BaseException) -> None:
        self.errors.append(stage)


async def stage_timeout_for_now(models: Models) -> float:
    """A stage timeout that holds on this machine as loaded now: three times what Piper takes for
    the longest chunk a reply is cut into (30 words), and at least 1.5 s. A fixed guess made the
    healthy stages of these tests time out whenever other programs shared the CPU."""
    longest = " ".join(
        ["Once upon a time, in a kingdom far away, there lived a very old and wise dragon"] * 2
    )
    started = time.monotonic()
    await models.tts.synthesize(" ".join(longest.split()[:30]), first=False)
    return max(1.5, 3 * (time.monotonic() - started))


async def converse(models: Models, config, audio: AudioFrame, hooks: SessionHooks):
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(models, config, sink, hooks)
    started = time.monotonic()
    try:
        await feed(session, audio, until=lambda: bool(session.records) and not session.busy, max_seconds=25)
    finally:
        await session.aclose()
    return session, sink, time.monotonic() - started


async def test_llm_hang_and_stt_error_end_with_an_apology_others_untouched(models, config, say):
    config = copy.deepcopy(config)
    config.turn.stage_timeout = await stage_timeout_for_now(models)
    llm, stt = Faulty(models.llm, "stream"), Faulty(models.stt, "transcribe")
    faulty = replace(models, llm=llm, stt=stt)
    question = join(0.3, say("What is the capital of France?"))
    llm.mode = "hang"
    hooks, healthy_hooks = Errors(), Errors()
    (session, sink, took), (other, other_sink, _) = await asyncio.gather(
        converse(faulty, config, question, hooks),
        converse(models, config, question, healthy_hooks),
    )
    assert hooks.errors == ["llm"]
    assert "sorry" in words(await transcribe(models, sink.played()))
    # the hang was noticed in time: what is left once the apology has played in real time
    assert took - sink.played().duration < question.duration + config.turn.stage_timeout + 6
    assert "Paris" in other.records[0].agent_text and healthy_hooks.errors == []
    assert "Paris" in await transcribe(models, other_sink.played())

    # the same conversation goes on: an STT fault, then a healthy turn
    stt.mode, llm.mode = "raise", "ok"
    session2, sink2, _ = await converse(faulty, config, question, hooks)
    assert hooks.errors == ["llm", "stt"]
    assert "sorry" in words(await transcribe(models, sink2.played()))
    stt.mode = "ok"
    session3, _, _ = await converse(faulty, config, question, hooks)
    assert "Paris" in session3.records[0].agent_text


async def test_tts_error_ends_the_turn_silently_and_the_next_turn_works(models, config, say):
    config = copy.deepcopy(config)
    config.turn.stage_timeout = await stage_timeout_for_now(models)
    tts = Faulty(models.tts, "synthesize")
    tts.mode = "raise"
    faulty = replace(models, tts=tts)
    hooks = Errors()
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(faulty, config, sink, hooks)
    first = join(0.3, say("What is the capital of France?"), 3.0)
    try:
        await feed(session, first, until=lambda: False, max_seconds=first.duration)
        assert session.records and not session.busy
        tts.mode = "ok"
        await feed(
            session,
            join(0.3, say("What is the capital of France?")),
            until=lambda: len(session.records) == 2 and not session.busy,
            max_seconds=20,
        )
    finally:
        await session.aclose()
    assert "tts" in hooks.errors
    assert "Paris" in session.records[1].agent_text


class Scripted:
    """The real LLM's interface, saying `reply` instead (garbage on demand is a fault)."""

    def __init__(self, llm) -> None:
        self._llm = llm
        self.reply = ""

    def __getattr__(self, name):
        return getattr(self._llm, name)

    async def stream(self, messages):
        for i in range(0, len(self.reply), 3):  # LLM-sized pieces
            await asyncio.sleep(0.01)
            yield self.reply[i : i + 3]


async def test_garbage_from_the_llm_is_skipped_or_spoken_cleanly(models, config, say):
    llm = Scripted(models.llm)
    hooks = Recorder()
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(replace(models, llm=llm), config, sink, hooks)
    question = join(0.3, say("What is the capital of France?"))

    async def ask(reply: str, until) -> None:
        llm.reply = reply
        await feed(session, question, until=until, max_seconds=20)

    try:
        for n, nothing in enumerate(["", " ... ?! ", "<think>Nothing to say.</think>"], start=1):
            await ask(nothing, until=lambda n=n: len(session.records) == n and not session.busy)
            assert session.records[-1].agent_text == "" and session.state is AgentState.LISTENING
        assert sink.played().duration == 0 and hooks.spoken == []
        assert all(m.content.strip() for m in session.history.messages())  # no empty reply kept

        await ask(
            "<think>The user asks about France.</think>The **capital** of France is _Paris_."
            "\n```\nprint('x')\n```",
            until=lambda: len(session.records) == 4 and not session.busy,
        )
        assert session.records[-1].agent_text == "The capital of France is Paris."
        heard = words(await transcribe(models, sink.played()))
        assert {"capital", "paris"} & set(heard) and not {"user", "asks", "print"} & set(heard)

        # a run-on reply: the first words are heard soon, in a piece Piper says quickly
        before = len(hooks.spoken)
        await ask(" ".join(["and then the cat sat down"] * 40), until=lambda: len(hooks.spoken) >= before + 2)
        assert len(hooks.spoken[before + 1].split()) <= MAX_CHUNK_WORDS
        assert session.state is AgentState.SPEAKING
    finally:
        await session.aclose()


async def test_a_reply_cut_short_while_speech_waits_for_playout_leaves_no_task(models, config, say):
    """TTS runs ahead of playout; barging in or closing then must not wait on a listener that is
    gone (it once did, forever: a hung `aclose`, two leaked tasks per interrupted long reply)."""
    llm = Scripted(models.llm)
    llm.reply = " ".join(["and then the cat sat down on the mat"] * 30)
    hooks = Recorder()
    sink = RealtimeSink(config.audio.output_sample_rate)
    before = {t for t in asyncio.all_tasks() if not t.done()}
    session = Session(replace(models, llm=llm), config, sink, hooks)
    try:
        await feed(session, join(0.3, say("Tell me a story.")), until=lambda: len(hooks.spoken) >= 1)
        # the first chunk plays for seconds; meanwhile the next ones are made and wait their turn
        await feed(session, AudioFrame.silence(2.0, 16000), until=lambda: False, max_seconds=2.0)
        assert session.state is AgentState.SPEAKING
        llm.reply = "Four."
        await feed(
            session,
            join(0.1, say("Stop. What is two plus two?")),
            until=lambda: len(session.records) == 2 and not session.busy,
            max_seconds=20,
        )
        assert session.records[0].interrupted and session.records[1].agent_text == "Four."
        left = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
        assert not left, left

        llm.reply = " ".join(["and then the cat sat down on the mat"] * 30)
        await feed(session, join(0.3, say("Tell me a story.")), until=lambda: len(hooks.spoken) >= 3)
        await feed(session, AudioFrame.silence(2.0, 16000), until=lambda: False, max_seconds=2.0)
    finally:
        await asyncio.wait_for(session.aclose(), 2.0)
    left = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not left, left


async def test_waiting_behind_other_conversations_is_not_a_hang(models, config, say):
    """One llama.cpp thread serves every conversation, a reply at a time. A turn queued behind
    another conversation's long reply waits longer than the stage timeout for its first token,
    yet the LLM is busy, not stuck: no apology, an answer."""
    config = copy.deepcopy(config)
    config.turn.stage_timeout = await stage_timeout_for_now(models)
    story = say("Tell me a long story about a dragon.")
    question = say("What is the capital of France?")
    storyteller, asker = Errors(), Errors()
    # the question ends just after the story request: its first token waits for the whole story,
    # 640 tokens (~10 s on this CPU), so that the wait is well over the timeout (which grows with
    # the load: Piper's measured speed) on a faster CPU and on a busy one too
    lead = 0.3 + story.duration - question.duration + 0.2
    shared = models.llm.config
    models.llm.config = replace(shared, max_tokens=640)
    try:
        (_, _, _), (session, _, _) = await asyncio.gather(
            converse(models, config, join(0.3, story), storyteller),
            converse(models, config, join(lead, question), asker),
        )
    finally:
        models.llm.config = shared
    turn = session.records[0]
    assert storyteller.errors == [] and asker.errors == []
    assert turn.llm_first_token - turn.stt_final > 2 * config.turn.stage_timeout  # it did wait that long
    assert "Paris" in turn.agent_text


async def test_a_failed_stage_is_logged_with_whose_turn_it_was(models, config, say, caplog):
    """With many rooms, "turn 1: stt failed" alone points nowhere: the line names the
    conversation (a room's say which room and which person)."""
    stt = Faulty(models.stt, "transcribe")
    stt.mode = "raise"
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(replace(models, stt=stt), config, sink, Errors(), label="room lobby, alice")
    try:
        await feed(
            session,
            join(0.3, say("What is the capital of France?")),
            until=lambda: bool(session.records) and not session.busy,
            max_seconds=25,
        )
    finally:
        await session.aclose()
    assert "room lobby, alice: turn 1: stt failed: RuntimeError('injected fault')" in caplog.text
