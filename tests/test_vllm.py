"""The vLLM engine (the GPU path) on vLLM's CPU build, through voicecore's own engine protocol and
real Sessions, with the bundled SmolLM2 converted for it. Opt-in: bin/setup-vllm installs vLLM
into .venv-vllm and bin/test-vllm runs this file there (CI does both); elsewhere it is skipped.
One vLLM engine serves every test here (it takes ~1 GiB of KV cache and ~4 GiB besides)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import join, weather_agent, words

from voicecore import (
    AgentState,
    AudioFrame,
    Message,
    RealtimeSink,
    Session,
    SessionHooks,
    load_config,
    load_models,
    split_frames,
    talk,
    write_wav,
)

pytest.importorskip(
    "vllm", reason="vLLM is not installed: bin/setup-vllm puts its CPU build in .venv-vllm; bin/test-vllm"
)
# Starting vLLM took 1-2 minutes on this 2-core box, over 5 under other test runs' load.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[1]


# `config` and `models` stand in for conftest's (the llama.cpp ones) in this file, so that its
# shared fixtures (`say`) run on vLLM too.
@pytest.fixture(scope="session")
def config():
    return load_config(env={}, overrides={"llm.engine": "vllm"})


@pytest.fixture(scope="session")
def models(config):
    loaded = load_models(config)
    yield loaded
    loaded.close()


class Recorder(SessionHooks):
    def __init__(self) -> None:
        self.states: list[AgentState] = []
        self.errors: list[tuple[str, BaseException]] = []

    def on_state(self, state: AgentState) -> None:
        self.states.append(state)

    def on_error(self, stage: str, error: BaseException) -> None:
        self.errors.append((stage, error))


async def feed(
    session: Session, audio: AudioFrame, until=None, max_seconds: float = 30.0, during: bool = False
) -> None:
    """Push audio in real-time 20 ms frames, then silence until `until()` (checked from the first
    frame if `during`, else once the audio is out) or the time limit."""
    start = time.monotonic()
    frames = list(split_frames(audio))
    silence = AudioFrame.silence(0.02, 16000)
    for n in range(int(max_seconds / 0.02)):
        session.push_audio(frames[n] if n < len(frames) else silence)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
        if (during or n >= len(frames)) and until is not None and until():
            return


async def test_a_session_on_vllm_answers_paris(models, config, say):
    result = await talk(models, config, join(0.5, say("What is the capital of France?")))
    assert len(result.turns) == 1
    assert words(result.turns[0].user_text) == ["what", "is", "the", "capital", "of", "france"]
    assert "Paris" in result.turns[0].agent_text
    assert result.turns[0].latencies_ms()["llm_first_token"] is not None


async def test_a_spoken_weather_question_calls_the_tool_through_vllm(models, config, say):
    cities: list[str] = []
    agent = weather_agent(cities)
    result = await talk(models, config, join(0.5, say("What's the weather in Paris?")), agent=agent)
    assert [c.lower() for c in cities] == ["paris"]
    assert {"sunny", "sun", "21"} & set(words(result.turns[0].agent_text)), result.turns[0].agent_text
    # a question no tool answers is answered by the model itself
    result = await talk(models, config, join(0.5, say("What is the capital of France?")), agent=agent)
    assert cities == ["Paris"] and "Paris" in result.turns[0].agent_text
    assert models.llm.active_requests == 0


async def test_pieces_stream_as_they_are_generated(models):
    """The reply arrives in many pieces, not as one block at the end."""
    pieces = [p async for p in models.llm.stream([Message("user", "Count from one to twenty.")])]
    assert len(pieces) > 5, pieces
    assert models.llm.active_requests == 0


async def test_the_end_of_a_message_reads_as_on_llama_cpp(models):
    """The endpoint's question (turn/endpoint.py) on vLLM: words that go on are held for the long
    delay, a whole question gets the short one."""
    from voicecore.config import TurnConfig
    from voicecore.turn.endpoint import endpoint_delay

    cfg = TurnConfig()
    fragment = await models.llm.message_end("What is the capital of")
    whole = await models.llm.message_end("What is the capital of France?")
    assert endpoint_delay("What is the capital of", cfg, fragment) >= 1.25, fragment
    assert endpoint_delay("What is the capital of France?", cfg, whole) == cfg.min_endpoint_delay, whole
    assert await models.llm.message_end("...") is None  # no words: nothing to ask


async def test_barge_in_aborts_the_request_and_frees_its_slot(models, config, say):
    storyteller = dataclasses.replace(
        config, llm=dataclasses.replace(config.llm, system_prompt="You tell long stories.")
    )
    hooks = Recorder()
    session = Session(models, storyteller, RealtimeSink(config.audio.output_sample_rate), hooks)
    aborted = models.llm.aborted
    try:
        await feed(
            session,
            join(0.3, say("Tell me a long story about a brave little cat.")),
            until=lambda: session.state is AgentState.SPEAKING,
        )
        assert session.state is AgentState.SPEAKING
        assert models.llm.active_requests == 1  # the story is still being written
        await feed(
            session,
            say("Stop. What is two plus two?"),
            until=lambda: bool(session.records),  # silenced at once, a barge-in once judged
            during=True,
        )
        assert session.records[0].interrupted
        # The abort takes no model time, only a few turns of the event loop; left to run, the
        # story would go on for seconds, to max_tokens.
        for _ in range(100):
            if models.llm.active_requests == 0:
                break
            await asyncio.sleep(0.01)
        assert models.llm.active_requests == 0
        assert models.llm.aborted > aborted
    finally:
        await session.aclose()
    assert not hooks.errors, hooks.errors
    # and the engine serves the next request
    question = [
        Message("system", config.llm.system_prompt),
        Message("user", "What is the capital of France?"),
    ]
    reply = "".join([p async for p in models.llm.stream(question)])
    assert "Paris" in reply
    assert models.llm.active_requests == 0


async def test_two_conversations_generate_at_the_same_time(models):
    """Continuous batching: the second conversation's first token comes while the first one's
    reply is still being generated (llama.cpp serialises: it would come after the whole reply)."""
    story = [Message("system", "You tell long stories."), Message("user", "Tell me a story about a dragon.")]
    question = [Message("system", "Answer in one short sentence."), Message("user", "What do bees make?")]
    first_reply: list[float] = []
    second_first_token: list[float] = []
    started = asyncio.Event()

    async def first() -> None:
        async for _ in models.llm.stream(story):
            first_reply.append(time.monotonic())
            started.set()

    async def second() -> None:
        await started.wait()
        async for _ in models.llm.stream(question):
            second_first_token.append(time.monotonic())
            break

    await asyncio.gather(first(), second())
    assert len(first_reply) > 20, "the story must be long enough to overlap"
    assert first_reply[0] < second_first_token[0] < first_reply[-1]
    # and the story went on after the second conversation got its answer started
    assert sum(t > second_first_token[0] for t in first_reply) >= 5
    assert models.llm.active_requests == 0


async def test_the_prefix_cache_serves_the_history_turn_after_turn(models, config, say):
    """Each turn's prompt begins with the previous turn's whole prompt (ChatHistory keeps it a
    stable prefix); vLLM reads it from its prefix cache instead of computing it again."""
    llm = models.llm
    per_turn: list[tuple[int, int]] = []  # (prompt tokens, of which cached) of each turn

    class Counts(SessionHooks):
        def __init__(self) -> None:
            self.seen = (llm.prompt_tokens, llm.cached_tokens)

        def on_turn(self, record) -> None:
            now = (llm.prompt_tokens, llm.cached_tokens)
            per_turn.append((now[0] - self.seen[0], now[1] - self.seen[1]))
            self.seen = now

    session = Session(models, config, RealtimeSink(config.audio.output_sample_rate), Counts())
    try:
        questions = ("What is the capital of France?", "What do bees make?", "What color is the sky?")
        for asked, question in enumerate(questions, 1):
            await feed(session, join(0.3, say(question)), until=lambda n=asked: len(session.records) >= n)
    finally:
        await session.aclose()
    assert len(per_turn) == 3, per_turn
    for (previous, _), (prompt, cached) in zip(per_turn, per_turn[1:], strict=False):
        assert prompt > previous
        # all but the last, partly filled KV block (32 tokens on CPU) of the previous prompt
        assert cached >= previous - 32, per_turn


async def test_an_overlong_history_is_trimmed_before_it_reaches_the_engine(models, config, say, monkeypatch):
    # A 512-token window (the engine's is 2,048): filling 2,048 tokens on a CPU reads the whole
    # prompt for seconds, past the stage timeout, which is not what this test is about.
    monkeypatch.setattr(models.llm, "context_tokens", 512)
    hooks = Recorder()
    session = Session(models, config, RealtimeSink(config.audio.output_sample_rate), hooks)
    filler = "We talked about the weather and the garden and the long walk by the river. " * 3
    for n in range(20):  # ~1,000 tokens of history
        session.history.commit(f"Question {n}. {filler}", f"Answer {n}. {filler}")
    prompts: list[int] = []
    stream = models.llm.stream

    def counting(messages: list[Message]):
        prompts.append(sum(models.llm.count_tokens(m.content) for m in messages))
        return stream(messages)

    monkeypatch.setattr(models.llm, "stream", counting)
    try:
        question = join(0.3, say("What is the capital of France?"))
        # ~400 tokens of prompt in float32 on a busy 2-core CPU: give the reply time
        await feed(session, question, until=lambda: bool(session.records), max_seconds=90)
    finally:
        await session.aclose()
    assert not hooks.errors, hooks.errors
    assert prompts and max(prompts) < 512 - config.llm.max_tokens
    assert "Paris" in session.records[0].agent_text
    assert len(session.history.turns) < 40


def test_talk_on_vllm_exits_cleanly_and_leaves_no_process(models, tmp_path, say):
    """`voicecore talk --llm-engine vllm` end to end: "Paris", exit 0 without an error or a
    warning about leaked resources, and no vLLM process left. It closes the shared engine first
    (one engine at a time), so it runs last in this file."""
    import psutil

    models.llm.close()
    wav = tmp_path / "question.wav"
    write_wav(wav, join(0.5, say("What is the capital of France?"), 0.5))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = psutil.Popen(
        [sys.executable, "-m", "voicecore", "talk", str(wav), "--llm-engine", "vllm"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    engine_processes: set[psutil.Process] = set()
    while process.poll() is None:  # the engine core and its worker, while they are up
        try:
            engine_processes |= set(process.children(recursive=True))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.5)
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    assert "Paris" in stdout, stdout
    assert len(engine_processes) >= 2, engine_processes  # vLLM ran in its own processes ...
    assert not [p for p in engine_processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for trouble in ("Traceback", "Exception ignored", "leaked", "force killing"):  # ... nor on the way out
        assert trouble not in stderr, stderr[-3000:]
