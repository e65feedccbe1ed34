"""Each stage on the real bundled models."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
from helpers import join, transcribe, words

from voicecore import AudioFrame, Message, Models, memory
from voicecore.llm.weights import fast_cpu_copy
from voicecore.models import bundled_gguf
from voicecore.scheduling import BACKGROUND, FirstAudioGate
from voicecore.turn.machine import Action, TurnMachine
from voicecore.turn.vad import VadStream


def vad_events(
    models: Models, config, audio: AudioFrame, stream: VadStream | None = None
) -> list[tuple[str, float]]:
    stream = stream or models.vad.stream(config.vad)
    events = []
    samples = audio.to_float()
    for start in range(0, len(samples), 320):  # 20 ms frames, as from a room
        # speech events; the level's sound_stopped/sound_resumed hints are the level tests' business
        events += [
            (e.kind, e.sample / 16000)
            for e in stream.push(samples[start : start + 320])
            if e.kind in ("start", "pause", "resume", "end")
        ]
    return events


def audible_end(audio: AudioFrame) -> float:
    """Seconds to just after the last sample above -40 dBFS, as the benchmark measures."""
    loud = np.flatnonzero(np.abs(audio.samples.astype(np.int32)) > 300)
    return (loud[-1] + 1) / audio.sample_rate


def test_vad_finds_speech_in_a_spoken_clip(models, config, say):
    speech = say("What is the capital of France?")
    events = vad_events(models, config, join(1.0, speech, 1.0))
    turn = [(k, t) for k, t in events if k in ("start", "end")]
    assert [k for k, _ in turn] == ["start", "end"]
    start, end = turn[0][1], turn[1][1]
    assert 0.9 <= start <= 1.2
    assert abs(end - (1.0 + speech.duration)) < 0.3
    # a window before the end, its first quiet window was reported, at the same estimate
    assert events[-2] == ("pause", end)
    # any earlier pause was inside the speech, and speech resumed after it
    inside = [k for k, _ in events[1:-2]]
    assert inside == ["pause", "resume"] * (len(inside) // 2)


def test_the_level_says_the_sound_stopped_before_silero_does(models, config, say):
    """The early final transcript starts on `quiet_from`: it must mark where the sound stopped,
    tens of ms before Silero's first quiet window, and never while the sound goes on."""
    speech = say("What is the capital of France?")
    audio = join(1.0, speech, 1.0)
    sound_end = audible_end(audio)
    stream = models.vad.stream(config.vad)
    samples = audio.to_float()
    quiet_at: list[tuple[float, float]] = []  # (when seen, where the quiet began), while in speech
    pause_seen = None
    for start in range(0, len(samples), 320):
        events = stream.push(samples[start : start + 320])
        now = (start + 320) / 16000
        if stream.speaking and stream.quiet_from is not None and pause_seen is None:
            quiet_at.append((now, stream.quiet_from / 16000))
        if any(e.kind == "pause" for e in events) and now > sound_end and pause_seen is None:
            pause_seen = now
    assert pause_seen is not None
    final_quiet = [(seen, began) for seen, began in quiet_at if began >= sound_end - 0.016]
    assert final_quiet, quiet_at
    began = final_quiet[0][1]
    assert sound_end - 0.016 <= began <= sound_end + 0.032  # within a step or two of the last sound
    seen_48_ms = next(seen for seen, b in final_quiet if seen - b >= 0.048)
    assert seen_48_ms <= pause_seen - 0.03, (seen_48_ms, pause_seen)
    # quiet inside the speech (stop consonants) is short: the sound comes back
    assert all(seen - b < 0.2 for seen, b in quiet_at if b < sound_end - 0.016), quiet_at


def test_the_end_of_speech_is_placed_where_the_sound_stopped(models, config, say):
    """The endpoint delay is counted from the estimated end of speech: where the sound stopped,
    not after Silero's last confident window, which comes tens of ms later (its probability
    decays after the last sound), so the silence before a reply is the configured one. The
    level's quiet is relative (30 dB under the loudest step), so a soft final consonant may fall
    a step or two after the estimate; the benchmark's audible end is a sample above -40 dBFS."""
    later: list[float] = []
    for text in ["What is the capital of France?", "How many legs does a spider have?", "What do bees make?"]:
        audio = join(1.0, say(text), 1.0)
        sound_end = audible_end(audio)
        stream = models.vad.stream(config.vad)
        ends = [t for kind, t in vad_events(models, config, audio, stream) if kind == "end"]
        assert len(ends) == 1, (text, ends)
        assert sound_end - 0.048 <= ends[0] <= sound_end + 0.048, (text, ends[0], sound_end)
        later.append(stream.last_speech_sample / 16000 - ends[0])
    assert min(later) >= 0.03, later  # Silero's own estimate would have added this much silence


def test_an_endless_monologue_is_cut_at_a_pause_not_mid_word(models, config, say):
    """Speech that never stops long enough to end the turn is cut at `turn.max_utterance`, for
    Whisper's 30 s window: where the speaker came closest to a pause in the last 2 s, not at the
    sample the limit fell on (a word cut in two is misheard, and its halves lost)."""
    sentences = [say(text) for text in ("What is the capital of France?", "Tell me about the weather.")]
    parts: list[AudioFrame | float] = [0.5]
    while sum(p.duration if isinstance(p, AudioFrame) else p for p in parts) < 32:
        for sentence in sentences:
            loud = np.flatnonzero(np.abs(sentence.samples) > 300)
            parts += [AudioFrame(sentence.samples[loud[0] : loud[-1] + 1], 16000), 0.03]
    audio = join(*parts)
    vad = models.vad.stream(config.vad)
    machine = TurnMachine(config.turn, quietest=vad.quietest)
    samples, decisions = audio.to_float(), []
    for start in range(0, len(samples), 320):
        events = vad.push(samples[start : start + 320])
        assert "end" not in [e.kind for e in events]  # (a monologue: the VAD never hears it end)
        for event in events:
            decisions += machine.on_vad(event)
        decisions += machine.on_time(vad.samples_seen)
        if any(d.action is Action.COMMIT for d in decisions):
            break
    speculate = [d for d in decisions if d.action is Action.SPECULATE][-1]  # (earlier: at "pause"s)
    commit = next(d for d in decisions if d.action is Action.COMMIT)
    assert commit.sample - machine.utterance_start >= config.turn.max_utterance * 16000
    cut = speculate.audio_end
    assert cut is not None and commit.sample - 2 * 16000 <= cut < commit.sample
    loud = np.sqrt(np.mean(samples[: commit.sample] ** 2))

    def level(at: int) -> float:  # RMS of the 16 ms around `at`, against the speech's
        return float(np.sqrt(np.mean(samples[at - 128 : at + 128] ** 2)) / loud)

    assert level(commit.sample) > 0.1  # (the limit itself fell inside a word here)
    assert level(cut) < 0.1, (level(cut), level(commit.sample))  # 20 dB under the speech: a pause


def test_vad_finds_nothing_in_silence_or_steady_noise(models, config):
    rng = np.random.default_rng(0)
    silence = AudioFrame.silence(10.0, 16000)
    white = AudioFrame.from_float(rng.normal(0, 0.1, 16000 * 10), 16000)
    t = np.arange(16000 * 10) / 16000
    hum = AudioFrame.from_float(0.3 * np.sin(2 * np.pi * 50 * t) + rng.normal(0, 0.02, len(t)), 16000)
    for audio in (silence, white, hum):
        assert vad_events(models, config, audio) == []


async def test_stt_transcribes_the_question(models, say):
    text = await transcribe(models, say("What is the capital of France?"))
    assert words(text) == ["what", "is", "the", "capital", "of", "france"]


async def test_stt_full_window_agrees_with_the_short_context(models, say):
    audio = say("How many legs does a spider have?").to_float()
    models.stt.config.short_context = False
    try:
        full = (await models.stt.transcribe(audio, final=True)).text
    finally:
        models.stt.config.short_context = True
    short = (await models.stt.transcribe(audio, final=True)).text
    # Piper's synthesis is stochastic (noise_scale) and Whisper tiny sometimes hears "the" for
    # "a": allow one word of difference, never a loop or a dropped phrase.
    expected = ["how", "many", "legs", "does", "a", "spider", "have"]
    for heard in (words(full), words(short)):
        assert len(heard) == len(expected), heard
        assert sum(h != e for h, e in zip(heard, expected, strict=True)) <= 1, heard


async def test_stt_final_transcript_does_not_wait_behind_an_interim_one(models, say):
    """Interims run while people speak; the end of speech must not find Whisper busy with one."""
    story = np.tile(say("Tell me a long story about a dragon and a brave knight.").to_float(), 5)
    question = say("What is the capital of France?").to_float()
    interim = asyncio.ensure_future(models.stt.transcribe(story, final=False))  # ~0.5 s of work
    await asyncio.sleep(0.05)  # under way
    final = await models.stt.transcribe(question, final=True)  # ~0.1 s
    assert "capital of france" in final.text.lower()
    assert not interim.done()
    assert "dragon" in (await interim).text.lower()


async def test_stt_of_silence_is_empty(models):
    assert (await models.stt.transcribe(np.zeros(16000, np.float32), final=True)).text == ""


async def test_stt_abandoned_midway_skips_the_slow_full_window_decode(models, say, monkeypatch):
    """An early final transcript is dropped when the speech goes on (a stop consonant): cut
    mid-word, Whisper's quick decode may loop, and the full-window retry (5-10x the work) made the
    real final transcript wait behind a result nobody wanted any more."""
    stt = models.stt
    full_windows: list[int] = []
    full_window, quick = stt._full_window, stt._short_context
    in_quick, go_on = threading.Event(), threading.Event()

    def quick_then_wait(audio):  # the real quick decode, held until the test has cancelled
        text = quick(audio)
        in_quick.set()
        go_on.wait(5)
        return text

    monkeypatch.setattr(
        stt, "_full_window", lambda audio, *a: (full_windows.append(len(audio)), full_window(audio, *a))[1]
    )
    monkeypatch.setattr(stt, "_short_context", quick_then_wait)
    hiss = np.random.default_rng(1).normal(0, 0.001, 16000 * 2).astype(np.float32)  # no words: not trusted
    go_on.set()
    assert (await stt.transcribe(hiss, final=True)).text == ""
    assert len(full_windows) == 1  # waited for: the full window had its look

    go_on.clear()
    in_quick.clear()
    started = asyncio.ensure_future(stt.transcribe(hiss, final=True))
    await asyncio.to_thread(in_quick.wait, 5)  # the quick decode is done, its caller not told yet
    started.cancel()
    await asyncio.sleep(0)
    go_on.set()
    question = await stt.transcribe(say("What is the capital of France?").to_float(), final=True)
    assert "capital of france" in question.text.lower()
    assert len(full_windows) == 1, full_windows  # the abandoned one did not retry


async def test_llm_answers_paris(models, config):
    messages = [
        Message("system", config.llm.system_prompt),
        Message("user", "What is the capital of France?"),
    ]
    reply = "".join([piece async for piece in models.llm.stream(messages)])
    assert "Paris" in reply


async def test_llm_stream_can_be_abandoned_and_the_engine_reused(models, config):
    messages = [
        Message("system", config.llm.system_prompt),
        Message("user", "Tell me a long story about a dragon."),
    ]
    stream = models.llm.stream(messages)
    pieces = []
    async for piece in stream:
        pieces.append(piece)
        if len(pieces) == 3:
            break
    await stream.aclose()
    question = [
        Message("system", config.llm.system_prompt),
        Message("user", "What is the capital of France?"),
    ]
    reply = await asyncio.wait_for(_collect(models.llm.stream(question)), timeout=10)
    assert "Paris" in reply


async def test_llm_conversations_taking_turns_each_get_their_own_context_back(models, config):
    """The engine keeps a conversation's context when another one speaks, and puts it back."""
    system = Message("system", config.llm.system_prompt)
    histories: dict[str, list[Message]] = {"France": [], "Japan": []}
    switches = models.llm._contexts.switches
    for question in ["Tell me about {}.", "What is its most famous food?", "What is the capital of {}?"]:
        for country, history in histories.items():
            history.append(Message("user", question.format(country)))
            reply = await asyncio.wait_for(_collect(models.llm.stream([system, *history])), timeout=30)
            history.append(Message("assistant", reply))
    assert "Paris" in histories["France"][-1].content and "Tokyo" in histories["Japan"][-1].content
    assert models.llm._contexts.switches - switches >= 4  # each turn after the first two went back


async def test_llm_reads_the_prompt_ahead_and_the_reply_reads_only_the_rest(models, config):
    """While the person speaks, the prompt is read as far as the words heard so far (but the last
    one, which may still change): the reply reads only the rest, and answers the same. A wrong
    guess (the interim heard "Spain") costs its tokens, never the answer."""
    llm = models.llm
    llama = llm._llama
    read: list[int] = []  # tokens of each llama.cpp eval
    evaluate = llama.eval

    def counting(tokens):
        read.append(len(tokens))
        return evaluate(tokens)

    async def settled() -> None:  # the read-ahead (posted at background priority) is done
        await llm._worker.run(lambda: None, BACKGROUND)

    history = [Message("system", config.llm.system_prompt), Message("user", "Hello there.")]
    history.append(Message("assistant", await asyncio.wait_for(_collect(llm.stream(history)), 30)))
    question = "What is the capital of France?"
    llama.eval = counting
    try:
        replies = {}
        for heard in (None, "What is the capital of France", "What is the capital of Spain and"):
            llm.read_ahead([*history, Message("user", "")])  # after a reply: the user's header
            if heard is not None:
                llm.read_ahead([*history, Message("user", heard)])
            await settled()
            read.clear()
            replies[heard] = await asyncio.wait_for(
                _collect(llm.stream([*history, Message("user", question)])), 30
            )
            if heard is None:
                assert read[0] >= 12, read  # the whole question and the assistant's header
            else:
                assert read[0] <= 8, read  # " France?" and the header ("Spain" read, undone)
    finally:
        del llama.eval  # the class's own method again
    assert all("Paris" in reply for reply in replies.values()), replies
    assert len(set(replies.values())) == 1, replies  # temperature 0: the same answer every way


def test_llm_reads_the_bundled_q4_1_weights_through_a_q8_0_copy_made_once(models, tmp_path):
    source = bundled_gguf()
    copy = fast_cpu_copy(source, tmp_path)
    assert copy.parent == tmp_path and copy.stat().st_size > source.stat().st_size  # 8 bits, not 4
    made = copy.stat().st_mtime_ns
    assert fast_cpu_copy(source, tmp_path) == copy and copy.stat().st_mtime_ns == made  # once
    assert fast_cpu_copy(copy, tmp_path) == copy  # already Q8_0: used as it is
    assert list(tmp_path.iterdir()) == [copy]  # no half-written file left behind
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert fast_cpu_copy(source, blocked / "cache") == source  # no cache to write: the original
    assert ".q8_0-" in models.llm._llama.model_path  # what the engine (and every test) runs on


async def _collect(stream) -> str:
    return "".join([p async for p in stream])


async def test_llm_takes_every_core_only_for_a_lone_conversation_while_no_other_model_computes(
    models, config, monkeypatch
):
    """ggml's threads spin at barriers: a core shared with Whisper or Piper, or with a second
    conversation whose speech may start them at any moment, made replies slower (2 conversations'
    p90 ~1.2 -> ~1.6 s); a lone conversation's first clause comes sooner on every core."""
    llm = models.llm
    if llm._threads_alone == llm._threads_sharing:
        pytest.skip("one core: nothing to switch")
    # other programs on the machine are the next test's business: here only this process counts
    monkeypatch.setattr("voicecore.llm.llamacpp.CONTENDED_SHARE", 0.0)
    monkeypatch.setattr(llm, "_contended_until", 0.0)
    conversations = models.scheduler.conversations
    monkeypatch.setattr(conversations, "_open", weakref.WeakKeyDictionary())  # sessions other tests left
    system = Message("system", config.llm.system_prompt)

    async def reply(question: str) -> int:
        await asyncio.wait_for(_collect(llm.stream([system, Message("user", question)])), timeout=30)
        return llm._threads

    class Conversation: ...

    one = Conversation()
    conversations.opened(one)
    assert await reply("Count from one to ten.") == llm._threads_alone
    two = Conversation()
    conversations.opened(two)
    assert await reply("Name three colours.") == llm._threads_sharing
    conversations.closed(two)
    assert await reply("Name three animals.") == llm._threads_alone

    other, loop = models.scheduler.worker("other"), asyncio.get_running_loop()
    started, done = asyncio.Event(), threading.Event()

    def compute() -> None:  # another model, busy for as long as the reply takes
        loop.call_soon_threadsafe(started.set)
        done.wait(60)

    busy = asyncio.ensure_future(other.run(compute))
    await started.wait()
    try:
        assert await reply("Name three fruits.") == llm._threads_sharing
    finally:
        done.set()
        await busy
        other.close()


async def test_tts_round_trip(models):
    audio = await models.tts.synthesize("The quick brown fox jumps over the lazy dog.")
    assert audio.sample_rate == 22050 and 1.5 < audio.duration < 5
    heard = words(await transcribe(models, audio))
    expected = "the quick brown fox jumps over the lazy dog".split()
    # Piper's synthesis is stochastic; Whisper tiny may mishear one word ("quit" for "quick")
    assert len(heard) == len(expected) and sum(h != e for h, e in zip(heard, expected, strict=True)) <= 1, (
        heard
    )


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


async def test_tts_gives_back_the_memory_a_long_sentence_took(models):
    """onnxruntime keeps what a call needed unless told to shrink its arena: RSS grew by ~200 MiB
    with the first 30-word chunk (the chunker's longest) and stayed there."""
    await models.tts.synthesize("Hello there.")
    memory.trim()  # measure what is held, not free pages the C heap keeps: earlier tests left some
    before = _rss_mib()
    sentence = " ".join(["the quick brown fox jumps over the lazy dog"] * 4)  # 36 words
    for _ in range(2):
        await models.tts.synthesize(sentence, first=False)
    memory.trim()
    assert _rss_mib() - before < 40, f"RSS {before:.0f} -> {_rss_mib():.0f} MiB"


def _malloc_in_use_mib() -> float:
    """Bytes the C heap has handed out (glibc mallinfo2): native allocations, Python's included."""
    heap = memory.heap_stats()  # through the C library the serving process tunes its heap with
    assert heap is not None, "these memory checks need glibc"
    return (heap.in_use + heap.mapped) / 2**20


async def test_stt_memory_does_not_grow_with_each_new_utterance_length(models, say):
    """oneDNN builds and keeps a convolution for each input shape Whisper's encoder sees (~0.5 MiB
    each, up to 1024): a server's memory grew with every utterance of a length not heard before
    (~1 MiB a room in the soak) until the encoder's input was padded to whole seconds."""
    speech = say("What is the capital of France? Tell me now please.").to_float()
    await models.stt.transcribe(speech, final=True)
    before = _malloc_in_use_mib()
    for n in range(30):  # 30 lengths no other test uses: 1.0 s to 2.45 s, 50 ms apart, odd samples
        await models.stt.transcribe(speech[: 16_000 + n * 800 + 7], final=True)
    grown = _malloc_in_use_mib() - before
    assert grown < 5, f"the C heap grew {grown:.1f} MiB over 30 utterance lengths"


async def test_llm_lets_go_of_the_context_of_a_conversation_that_ended(models, config):
    """Kept contexts (~20 MB each after ten turns) of conversations that had ended stayed until
    the bound (128 MiB) pushed them out: the soak's RSS rose and fell by that much."""
    system = Message("system", config.llm.system_prompt)
    contexts = models.llm._contexts
    ended = [system, Message("user", "What is the capital of Italy?")]
    ended.append(Message("assistant", await asyncio.wait_for(_collect(models.llm.stream(ended)), 30)))
    other = [system, Message("user", "What is the capital of Spain?")]
    await asyncio.wait_for(_collect(models.llm.stream(other)), 30)  # the first is kept aside
    assert any(k.messages[1] == ended[1].as_dict() for k in contexts._kept)

    models.llm.forget(ended)
    await models.llm._worker.run(lambda: None, BACKGROUND)  # in line after the forgetting
    assert not any(k.messages[1] == ended[1].as_dict() for k in contexts._kept)


async def test_no_model_keeps_a_core_busy_after_its_call_returns(models, config, say):
    """On a 2-core box a thread that spins after its work takes the core the next stage needs
    (OpenBLAS's worker spun ~0.1 s after each transcription, slowing the LLM's prompt right
    after it by ~30 ms). Each stage is called, then the process must be all but idle."""
    question = say("What is the capital of France?")

    async def stt() -> None:
        await models.stt.transcribe(question.to_float(), final=True)

    async def llm() -> None:
        async for _ in models.llm.stream(
            [Message("system", config.llm.system_prompt), Message("user", "Hi")]
        ):
            pass

    async def tts() -> None:
        await models.tts.synthesize("The capital of France is Paris.")

    idle_cpu_ms: dict[str, list[int]] = {}
    for stage in (stt, llm, tts):
        for _ in range(3):
            await stage()
            before = time.process_time()
            await asyncio.sleep(0.3)
            idle_cpu_ms.setdefault(stage.__name__, []).append(round((time.process_time() - before) * 1000))
    # CPU time of the whole process in the 300 ms after each call; the least of three tries
    assert all(min(ms) < 20 for ms in idle_cpu_ms.values()), idle_cpu_ms


async def test_llm_gives_up_a_core_while_other_programs_hold_them(models, config, monkeypatch):
    """On a machine other programs keep busy, ggml's threads wait at every barrier for a
    descheduled sibling (a reply took ~20x longer on both cores than on one): the LLM notices
    that its threads do not get their cores and generates on one fewer."""
    llm = models.llm
    if llm._threads_alone == llm._threads_sharing:
        pytest.skip("one core: nothing to switch")
    monkeypatch.setattr(models.scheduler.conversations, "_open", weakref.WeakKeyDictionary())
    monkeypatch.setattr(llm, "_contended_until", 0.0)
    prompt = [Message("system", config.llm.system_prompt), Message("user", "Count from one to ten.")]
    await asyncio.wait_for(_collect(llm.stream(prompt)), timeout=60)  # how fast a token is, idle
    cores = os.cpu_count() or 2
    burners = [  # two busy programs a core
        await asyncio.create_subprocess_exec(sys.executable, "-c", "while True: pass")
        for _ in range(2 * cores)
    ]
    try:
        await asyncio.wait_for(_collect(llm.stream(prompt)), timeout=120)
    finally:
        for burner in burners:
            burner.kill()
            await burner.wait()
    assert llm._threads == llm._threads_sharing  # alone, no other model: only the machine said no
    assert llm._contended_until > time.monotonic()


async def test_the_llm_steps_aside_while_a_reply_s_first_audio_is_made(models, config):
    """Piper and the LLM share the cores; the first audio of a reply is what the person waits
    for, the rest of the reply is not (the first chunk plays for a second or more)."""
    prompt = [
        Message("system", config.llm.system_prompt),
        Message("user", "Tell me a long story about a dragon."),
    ]
    loop = asyncio.get_running_loop()
    arrivals: list[float] = []
    writing = asyncio.Event()

    async def read() -> None:
        async for _ in models.llm.stream(prompt):
            arrivals.append(loop.time())
            if len(arrivals) == 3:
                writing.set()

    reader = asyncio.create_task(read())
    await asyncio.wait_for(writing.wait(), 30)
    started = loop.time()
    with models.scheduler.first_audio.synthesising():  # as a reply hands its first chunk to TTS
        await models.tts.synthesize("Once upon a time, in a kingdom far away, there lived a very old dragon.")
    ended = loop.time()
    await asyncio.sleep(0.3)
    reader.cancel()
    # a token in progress when the synthesis started may still arrive just after; the LLM waits
    # at most MAX_WAIT a token (a synthesis slowed down by a busy machine may take longer)
    during = [t for t in arrivals if started + 0.08 < t < min(ended, started + FirstAudioGate.MAX_WAIT)]
    assert ended - started > 0.2  # long enough for several tokens at ~20-30 ms each
    assert during == [], f"{len(during)} tokens in the {ended - started:.2f} s of synthesis"
    assert any(t > ended for t in arrivals)  # and it goes on afterwards


async def test_the_token_after_a_first_chunk_waits_for_its_audio(models, config):
    """The session hands a reply's first chunk to Piper as soon as the piece that completes it
    arrives. The LLM's next token used to start at once and run beside Piper (~25 ms of CPU in
    its ~140 ms, traced per thread through LiveKit); now each piece is looked at first."""
    prompt = [Message("system", config.llm.system_prompt), Message("user", "What is the capital of France?")]
    async with contextlib.aclosing(models.llm.stream(prompt)) as stream:
        pieces = 0
        async for _ in stream:
            pieces += 1
            if pieces == 3:  # as if it ended the first chunk
                handed = time.monotonic()
                with models.scheduler.first_audio.synthesising():  # as a reply does
                    await models.tts.synthesize("The capital of France", first=True)
                computed_meanwhile = models.llm.last_progress > handed
                break
    assert pieces == 3 and not computed_meanwhile


def test_the_serving_heap_maps_only_blocks_bigger_than_a_models_scratch_buffers():
    """`serve` fixes glibc's mmap threshold so that freed big blocks go back to the OS. Set at
    256 kB, every buffer of Whisper's per-call scratch (hundreds of kB to a few MB) was mapped
    and faulted in afresh each call: final transcripts took 134 ms instead of 83 ms (through
    LiveKit the final came ~40-60 ms later after the end of speech). Scratch-sized blocks come
    from the heap; kept-LLM-context sized ones are still mapped and given back."""
    script = """
import numpy as np
from voicecore import memory
assert memory.limit_arenas(), "glibc expected"
mapped = lambda: memory.heap_stats().mapped
base = mapped()
scratch = np.ones(2 << 20, np.uint8)  # a Whisper attention buffer for a few seconds of speech
assert mapped() == base, ("scratch mapped", mapped() - base)
context = np.ones(48 << 20, np.uint8)  # a kept LLM context
assert mapped() >= base + (48 << 20), ("context not mapped", mapped() - base)
del context
assert mapped() < base + (48 << 20), "context not given back"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
