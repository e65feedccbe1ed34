"""End of turn on real people: the in-process LLM's P(whole message) for the words Whisper heard
sets the endpoint delay. LibriVox readers (Debian pocketsphinx-testdata) pause inside a sentence
and end it; the bundled models decide.

The LLM is not always right on real speech (benchmarks/eot_bench.py measures how often): these
are sentences it reads with a wide margin, so the tests check the mechanism on real audio, not
the model's luck."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import words

from voicecore import AudioFrame, load_config, talk
from voicecore.audio.wav import load_for_recognition
from voicecore.config import TurnConfig
from voicecore.errors import ConfigError
from voicecore.models import bundled_whisper
from voicecore.pipeline import Models
from voicecore.turn.endpoint import endpoint_delay

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
needs_recordings = pytest.mark.skipif(
    not (POCKETSPHINX / "librivox").is_dir(),
    reason="Debian pocketsphinx-testdata is not installed (bin/setup installs it when run as root)",
)
READER = "librivox/sense_and_sensibility_01_austen_64kb-{}.wav"


def recording(name: str) -> np.ndarray:
    return load_for_recognition(POCKETSPHINX / name).to_float()


@pytest.fixture(scope="module")
def word_times():
    """Word start/end times from the bundled Whisper, to cut a sentence between two words."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(bundled_whisper()), device="cpu", compute_type="int8", cpu_threads=1)

    def times(audio: np.ndarray) -> list[tuple[str, float, float]]:
        segments, _ = model.transcribe(audio, language="en", beam_size=1, word_timestamps=True)
        return [(w.word.strip(), w.start, w.end) for s in segments for w in s.words or []]

    return times


def held_after(
    audio: np.ndarray, times: list[tuple[str, float, float]], word: str, pause: float
) -> np.ndarray:
    """The sentence with `pause` seconds of silence inserted after `word`, between two words."""
    i = next(i for i, w in enumerate(times) if w[0].lower().strip(".,") == word)
    cut = int((times[i][2] + times[i + 1][1]) / 2 * 16_000)
    return np.concatenate([audio[:cut], np.zeros(int(pause * 16_000), np.float32), audio[cut:]])


@pytest.mark.parametrize(
    ("fragment", "whole"),
    [  # what Whisper heard of real readers and speakers, before a pause and at the end
        ("He was not an ill-disposed young", "He was not an ill-disposed young man."),
        ("He might even have", "He might even have been made amiable himself."),
        ("What is the capital of", "What is the capital of France?"),
        ("I'm using the", "I'm in New Jersey now, though."),
    ],
)
async def test_the_llm_tells_words_that_go_on_from_a_whole_message(models: Models, fragment, whole):
    cfg = TurnConfig()
    held = endpoint_delay(fragment, cfg, await models.llm.message_end(fragment))  # type: ignore[attr-defined]
    done = endpoint_delay(whole, cfg, await models.llm.message_end(whole))  # type: ignore[attr-defined]
    assert held >= 1.25, f"{fragment!r} would be cut off by a pause of {held:.2f} s"
    assert done <= cfg.min_endpoint_delay + 0.1, f"{whole!r} waits {done:.2f} s"


@needs_recordings
async def test_a_reader_pausing_mid_sentence_gets_one_answer(models, config, word_times):
    """Through a real session: the reader stops for a second after "made" in "He might even have
    been made amiable himself." The turn does not end there (the English word list before took
    "made" for an end after 0.4 s and answered "He might even have been made"), and the LLM's answer and
    its cost are in the turn record (and so in the JSONL turn log)."""
    audio = recording(READER.format("0930"))
    held = held_after(audio, word_times(audio), "made", pause=1.0)
    result = await talk(models, config, AudioFrame.from_float(held, 16_000))
    assert len(result.turns) == 1, [t.user_text for t in result.turns]
    turn = result.turns[0]
    assert "made" in words(turn.user_text) and words(turn.user_text)[-1] == "himself"
    assert 0.0 < turn.extra["end_probability"] <= 1.0
    assert turn.extra["end_judged_ms"] > 0
    # the whole sentence ends the turn within the short delay (decided, not timed: the CPU may be shared)
    assert endpoint_delay(turn.user_text, config.turn, turn.extra["end_probability"]) <= 0.5
    assert turn.agent_text


class _NoAnswer:
    """The bundled LLM, but its end-of-message question fails (a fault the real one does not
    produce on demand)."""

    def __init__(self, llm: object) -> None:
        self._llm = llm

    def __getattr__(self, name: str) -> object:
        return getattr(self._llm, name)

    async def message_end(self, text: str) -> float:
        raise RuntimeError("injected: no answer")


async def test_without_an_answer_the_ceiling_ends_the_turn(models, config, say, caplog):
    faulty = Models(vad=models.vad, stt=models.stt, llm=_NoAnswer(models.llm), tts=models.tts,  # type: ignore[arg-type]
                    scheduler=models.scheduler, config=models.config)  # fmt: skip
    result = await talk(faulty, config, say("What is the capital of France?"))
    assert len(result.turns) == 1 and "paris" in words(result.reply_text)
    turn = result.turns[0]
    assert turn.endpoint is not None
    assert turn.endpoint - turn.speech_end >= config.turn.max_endpoint_delay - 0.05
    assert "end-of-message question failed" in caplog.text


def test_the_probabilities_must_be_in_order() -> None:
    with pytest.raises(ConfigError, match="end_unlikely"):
        load_config(env={"VOICECORE_TURN_END_UNLIKELY": "0.01", "VOICECORE_TURN_END_LIKELY": "0.001"})
