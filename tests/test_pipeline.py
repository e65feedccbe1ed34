"""The whole pipeline in real time on the real models: endpointing, speculation, barge-in,
bad input."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import join, transcribe, words

from voicecore import AgentState, AudioFrame, RealtimeSink, Session, SessionHooks, split_frames, talk
from voicecore.audio.wav import load_for_recognition
from voicecore.turn.state import TurnState


async def test_question_gets_paris_with_every_latency_recorded(models, config, say, monkeypatch):
    asked: list[str] = []  # the user's words of each prompt the session had the LLM read ahead
    read_ahead = models.llm.read_ahead
    monkeypatch.setattr(models.llm, "read_ahead", lambda m: (asked.append(m[-1].content), read_ahead(m)))
    result = await talk(models, config, join(0.5, say("What is the capital of France?")))
    assert len(result.turns) == 1
    turn = result.turns[0]
    assert words(turn.user_text) == ["what", "is", "the", "capital", "of", "france"]
    assert "Paris" in turn.agent_text
    assert "Paris" in await transcribe(models, result.reply_audio)
    # no dead air before the first word: Piper's ~40 ms of leading silence is not sent
    level = np.abs(result.reply_audio.samples.astype(np.float32)) / 32768
    assert np.argmax(level > 0.01) / result.reply_audio.sample_rate < 0.015
    latencies = turn.latencies_ms()
    assert all(v is not None for v in latencies.values()), latencies
    # one monotonic clock: the stages happen in order
    assert latencies["stt_final"] <= latencies["llm_first_token"] <= latencies["first_chunk_text"]
    assert latencies["tts_first_audio"] <= latencies["first_frame_out"] == latencies["voice_to_voice"]
    # the reply was prepared during the silence, and its audio held until the endpoint; its
    # transcript was started when the sound stopped, before Silero's first quiet window
    assert turn.speculative and latencies["stt_final"] < latencies["endpoint"]
    assert turn.extra.get("early_transcript") is True
    assert latencies["first_frame_out"] >= latencies["endpoint"]
    assert result.states == ["listening", "thinking", "speaking", "listening"]
    # once the reply is over, the LLM reads the next user's header ahead (interims: test_models)
    assert asked and asked[-1] == "", asked


async def test_pause_mid_sentence_does_not_end_the_turn(models, config, say):
    audio = join(0.3, say("What is the capital of"), 0.7, say("France?"))
    result = await talk(models, config, audio)
    assert len(result.turns) == 1, [t.user_text for t in result.turns]
    assert words(result.turns[0].user_text)[-2:] == ["of", "france"]
    assert "Paris" in result.turns[0].agent_text


class Recorder(SessionHooks):
    def __init__(self) -> None:
        self.states: list[tuple[float, AgentState]] = []
        self.spoken: list[str] = []

    def on_state(self, state: AgentState) -> None:
        self.states.append((time.monotonic(), state))

    def on_agent_text(self, text: str) -> None:
        self.spoken.append(text)


async def feed(session: Session, audio: AudioFrame, until=None, max_seconds: float = 30.0) -> None:
    """Push audio in real-time 20 ms frames, then silence until `until()` or the time limit."""
    start = time.monotonic()
    frames = list(split_frames(audio))
    silence = AudioFrame.silence(0.02, 16000)
    for n in range(int(max_seconds / 0.02)):
        session.push_audio(frames[n] if n < len(frames) else silence)
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
        if n >= len(frames) and until is not None and until():
            return


async def tell_a_story(session: Session, say) -> None:
    """Ask for a long story; back once the agent is telling it."""
    await feed(
        session,
        join(0.3, say("Tell me a long story about a brave little cat.")),
        until=lambda: session.state is AgentState.SPEAKING,
    )


async def test_barge_in_stops_the_agent_and_keeps_only_what_was_heard(models, config, say):
    sink = RealtimeSink(config.audio.output_sample_rate)
    hooks = Recorder()
    session = Session(models, config, sink, hooks)
    try:
        await tell_a_story(session, say)
        assert session.state is AgentState.SPEAKING
        interruption = say("Stop. What is two plus two?")
        await feed(session, AudioFrame.silence(1.0, 16000), until=lambda: False, max_seconds=1.0)
        interrupted_at = time.monotonic()
        await feed(session, interruption, until=lambda: False, max_seconds=2.5)
    finally:
        await session.aclose()
    first = session.records[0]
    assert first.interrupted
    # the agent fell silent within min_interruption (+ VAD windows and frame time, with slack
    # for a busy 2-core box) of the start of the user's speech
    stopped = next(t for t, s in hooks.states if t > interrupted_at and s is AgentState.LISTENING)
    timeline = [(round(t - interrupted_at, 3), s.value) for t, s in hooks.states]
    assert stopped - interrupted_at < config.turn.min_interruption + 0.5, timeline
    assert sink.queued_duration == 0 or session.state is not AgentState.SPEAKING
    # history: the cut reply, a prefix of what was generated, never the unheard rest
    generated = " ".join(hooks.spoken).split()
    heard = first.agent_text.split()
    assert 0 < len(heard) < len(generated)
    assert heard == generated[: len(heard)]
    assistant = [m.content for m in session.history.turns if m.role == "assistant"]
    assert assistant[0] == first.agent_text
    # what reached the speaker is about as long as the words kept (Piper: ~2.5 words/s)
    played = sink.played().duration
    assert 0.5 < played < 2.5 and len(heard) <= played * 5 + 3


CALL = Path(__file__).parent.parent / ".local" / "recordings" / "pyannote" / "sample.wav"


@pytest.mark.skipif(not CALL.is_file(), reason="bin/setup fetches the pyannote-audio sample call")
async def test_a_backchannel_over_the_agent_pauses_it_and_it_goes_on(models, config, say):
    """A real person's "Oh," (Diane in the pyannote call) while the agent speaks: the
    agent falls silent at once, then goes on from where it stopped, and the reply is not cut."""
    call = load_for_recognition(CALL)
    oh = AudioFrame(call.samples[int(17.9 * 16000) : int(18.48 * 16000)], 16000)
    assert set(words(await transcribe(models, join(0.3, oh, 0.3)))) == {"oh"}
    sink = RealtimeSink(config.audio.output_sample_rate)
    hooks = Recorder()
    session = Session(models, config, sink, hooks)
    try:
        await tell_a_story(session, say)
        await feed(session, AudioFrame.silence(1.0, 16000), until=lambda: False, max_seconds=1.0)
        overlap_at = time.monotonic()
        await feed(session, oh, until=lambda: not session.busy, max_seconds=60)
    finally:
        await session.aclose()
    reply = session.records[0]
    assert not reply.interrupted and reply.extra.get("resumed") == 1, reply.extra
    after = [s.value for t, s in hooks.states if t > overlap_at]
    assert after[:3] == ["listening", "speaking", "listening"], after  # paused, resumed, done
    # nothing lost or said twice: what reached the speaker lasts as long as the reply's speech
    full = say(reply.agent_text).duration
    assert 0.85 * full < sink.played().duration < 1.15 * full + 0.5


async def test_going_on_as_the_agent_begins_makes_one_message_of_both_parts(models, config, say):
    """The agent takes the person's pause after "What is the capital of" for the end (a fixed
    0.4 s endpoint makes sure of it) and begins; they go on with "France?". It falls silent,
    answers the whole question, and its false start stays out of the history."""
    config = replace(config, turn=replace(config.turn, max_endpoint_delay=config.turn.min_endpoint_delay))
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(models, config, sink, Recorder())
    try:
        first = join(0.3, say("What is the capital of"))
        await feed(session, first, until=lambda: session.state is AgentState.SPEAKING, max_seconds=15)
        rest = join(0.1, say("France?"))
        await feed(session, rest, until=lambda: len(session.records) >= 2, max_seconds=30)
    finally:
        await session.aclose()
    cut, answer = session.records
    assert cut.interrupted and cut.extra.get("went_on") is True, cut
    assert words(cut.user_text) == ["what", "is", "the", "capital", "of"]
    assert words(answer.user_text) == ["what", "is", "the", "capital", "of", "france"]
    assert "Paris" in answer.agent_text and not answer.interrupted
    history = session.history.turns
    assert [m.role for m in history] == ["user", "assistant"], history
    assert history[0].content == answer.user_text and history[1].content == answer.agent_text


async def test_speculation_is_cancelled_when_the_user_goes_on(models, config, say):
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(models, config, sink, Recorder())
    audio = join(0.3, say("I would like to know about"), 0.6, say("the capital of France."))
    try:
        await feed(session, audio, until=lambda: bool(session.records), max_seconds=20)
    finally:
        await session.aclose()
    assert len(session.records) == 1
    assert words(session.records[0].user_text)[-3:] == ["capital", "of", "france"]
    assert session.records[0].turn == 1  # the speculative reply dropped gave its number back
    assert [m.role for m in session.history.turns] == ["user", "assistant"]


async def test_a_gap_inside_a_question_never_gets_half_of_it_answered(models, config, say):
    """A gap long enough for the level to start the early transcript (48 ms) but too short for
    Silero to end the speech: the transcript of the first half is dropped when the sound comes
    back, and the whole question is answered, once."""
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(models, config, sink, Recorder())
    audio = join(0.3, say("What is the capital of"), 0.12, say("France?"))
    early_started: list[int] = []
    real_transcribe = models.stt.transcribe

    async def transcribe(audio: np.ndarray, *, final: bool, owner=None):
        if final and session._machine.state is TurnState.USER_SPEAKING:  # before Silero's pause
            early_started.append(len(audio))
        return await real_transcribe(audio, final=final, owner=owner)

    models.stt.transcribe = transcribe  # observe the calls; the real model answers them
    try:
        await feed(session, audio, until=lambda: bool(session.records), max_seconds=20)
    finally:
        del models.stt.transcribe
        await session.aclose()
    assert len(early_started) >= 2  # the gap's, dropped, and the end's
    assert len(session.records) == 1
    assert words(session.records[0].user_text) == ["what", "is", "the", "capital", "of", "france"]
    assert "Paris" in session.records[0].agent_text


async def test_ten_minutes_of_noise_no_turn_bounded_memory(models, config):
    """Fed faster than real time (the VAD path is the same); no invented turn, flat memory."""
    rng = np.random.default_rng(1)
    sink = RealtimeSink(config.audio.output_sample_rate)
    session = Session(models, config, sink, Recorder())
    block = AudioFrame.from_float(rng.normal(0, 0.05, 16000 * 10), 16000)
    frames = list(split_frames(block))
    tracemalloc.start()
    try:
        for minute in range(10):
            for _ in range(6):
                for frame in frames:
                    session.push_audio(frame)
            await asyncio.sleep(0)
            if minute == 1:
                baseline = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
        await session.aclose()
    assert session.records == [] and session.state is AgentState.LISTENING
    assert grown < 2_000_000, f"memory grew by {grown} bytes over 8 minutes of noise"


async def test_silence_and_clipping_do_not_crash(models, config, say):
    clipped = AudioFrame(
        np.clip(say("What is the capital of France?").samples.astype(np.int32) * 8, -32768, 32767).astype(
            np.int16
        ),
        16000,
    )
    dc = AudioFrame(np.full(16000 * 3, 8000, np.int16), 16000)
    result = await talk(models, config, join(AudioFrame.silence(5.0, 16000), dc, clipped))
    assert len(result.turns) <= 1
    for turn in result.turns:
        assert turn.user_text  # a turn happens only for words


async def test_session_accepts_48k_and_8k_input(models, config, say):
    from voicecore.audio.resample import resample

    for rate in (48000, 8000):
        audio = resample(join(0.3, say("What is the capital of France?")), rate)
        sink = RealtimeSink(config.audio.output_sample_rate)
        session = Session(models, config, sink, Recorder())
        start = time.monotonic()
        frame_len = rate // 50
        try:
            padded = np.concatenate([audio.samples, np.zeros(rate * 6, np.int16)])
            for n, at in enumerate(range(0, len(padded), frame_len)):
                session.push_audio(AudioFrame(padded[at : at + frame_len], rate))
                await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
                if session.records:
                    break
        finally:
            await session.aclose()
        assert session.records and "Paris" in session.records[0].agent_text, rate


class Transcripts(SessionHooks):
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def on_user_transcript(self, text: str, final: bool) -> None:
        self.seen.append((text, final))


async def test_interim_transcripts_arrive_while_the_user_speaks(models, config, say):
    hooks = Transcripts()
    session = Session(models, config, RealtimeSink(config.audio.output_sample_rate), hooks)
    sentence = say("Please tell me how many people live in the city of Paris these days.")
    assert sentence.duration > 3.0
    try:
        await feed(session, join(0.3, sentence), until=lambda: any(f for _, f in hooks.seen), max_seconds=15)
    finally:
        await session.aclose()
    interims = [t for t, final in hooks.seen if not final]
    finals = [t for t, final in hooks.seen if final]
    assert len(interims) >= 2 and len(finals) == 1
    assert hooks.seen.index((finals[0], True)) > hooks.seen.index((interims[0], False))
    assert words(interims[0])[:2] == words(finals[0])[:2] == ["please", "tell"]


class Instant:
    """A loudspeaker that plays everything at once: a long conversation in seconds, not minutes."""

    queued_duration = 0.0

    async def capture_frame(self, frame: AudioFrame) -> None:
        await asyncio.sleep(0)

    def clear_queue(self) -> None: ...

    async def wait_for_playout(self) -> None: ...


async def test_a_long_conversation_is_trimmed_before_every_prompt(models, config, say):
    """Turn after turn of long replies: the history is trimmed before it is prompted, with the new
    question counted, so every prompt leaves the reply its max_tokens and nothing overflows. A
    384-token window fills within six turns; the prompts built before the trim (the old bug)
    outgrew it from there."""
    import copy

    from voicecore.llm.llamacpp import LlamaCppEngine

    settings = copy.deepcopy(config)
    settings.llm.context_tokens = 384
    settings.llm.system_prompt = "You are a storyteller. Answer every question with a long story."
    llm = LlamaCppEngine(settings.llm, models.scheduler)
    prompt_tokens: list[int] = []
    stream = llm.stream

    def counted(messages):  # the real engine; each prompt measured as its chat template renders it
        rendered = llm._template(messages=[m.as_dict() for m in messages])
        tokens = llm._llama.tokenize(
            rendered.prompt.encode(), add_bos=not rendered.added_special, special=True
        )
        prompt_tokens.append(len(tokens))
        return stream(messages)

    llm.stream = counted
    errors: list[str] = []

    class Errors(SessionHooks):
        def on_error(self, stage: str, error: BaseException) -> None:
            errors.append(f"{stage}: {error!r}")

    session = Session(replace(models, llm=llm), settings, Instant(), Errors())
    topics = ["a dragon", "a cat", "a ship", "a robot", "a garden", "a king"]
    silence = AudioFrame.silence(0.02, 16000)
    try:
        for n in range(12):
            question = join(0.3, say(f"Tell me a long story about {topics[n % len(topics)]}."), 0.2)
            for frame in split_frames(question):
                session.push_audio(frame)
                await asyncio.sleep(0.005)  # 4x real time: the turn machine runs on audio time
            while len(session.records) <= n or session.busy:
                session.push_audio(silence)
                await asyncio.sleep(0.005)
    finally:
        await session.aclose()
        await asyncio.to_thread(llm.close)
    budget = settings.llm.context_tokens - settings.llm.max_tokens
    assert errors == []
    assert len(prompt_tokens) >= 12 and max(prompt_tokens) <= budget, prompt_tokens
    assert all(r.agent_text and settings.turn.apology not in r.agent_text for r in session.records)
    assert sum(len(r.agent_text.split()) for r in session.records) > 12 * 10  # stories, not a word
    assert max(prompt_tokens) > budget - 60  # the window did fill up
