"""faster-whisper STT, with a short-context fast path.

faster-whisper always pads the mel input to Whisper's 30 s window, yet the CTranslate2 encoder
accepts fewer frames: encoding the utterance plus about a second of silence is 5-10x cheaper on
CPU. A shortened context sometimes makes Whisper loop ("What is X? What is X? ...") or stop
early, so the fast path decodes greedily with a bound on the length, trims repeats, and falls
back to the standard full-window decode whenever its output looks suspicious.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from voicecore.config import SttConfig
from voicecore.errors import ConfigError
from voicecore.models import bundled_whisper
from voicecore.scheduling import PriorityWorker
from voicecore.stt.base import Transcript

SAMPLE_RATE = 16_000
PAD_SECONDS = 3.0  # silence appended for the short context: with 0.5-2 s Whisper tiny often
# starts repeating the utterance ("What is X? What is"); 3 s costs ~7 ms more and rarely does
MAX_WORDS_PER_SECOND = 5.0  # fast speech is ~4 words/s: more means a repetition loop
MIN_SPEECH_SECONDS = 0.1


class WhisperSTT:
    def __init__(self, config: SttConfig) -> None:
        from faster_whisper import WhisperModel  # deferred: heavy import, only when used

        model = config.model or str(bundled_whisper())
        if _looks_like_path(model) and not Path(model).exists():
            raise ConfigError(
                f"Whisper model {model} not found; set stt.model to a CTranslate2 model "
                "directory or a hub id such as 'Systran/faster-whisper-small'"
            )
        device = config.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute_type = config.compute_type if device == "cpu" else "float16"
        self.config = config
        self.model_name = model
        self.device = device
        # Two workers: interim transcripts (while people speak) never hold up a final one. A
        # final that waited for an interim still running at the end of speech started 40-115 ms
        # late in 5 of 32 turns through LiveKit. CTranslate2 runs the two calls in parallel.
        self._model = WhisperModel(
            model, device=device, compute_type=compute_type, cpu_threads=config.cpu_threads, num_workers=2
        )
        self._worker = PriorityWorker("stt")  # final transcripts
        self._interim_worker = PriorityWorker("stt-interim")
        # faster-whisper's feature extractor keeps the window length of its last call, which
        # its full-window transcription reads as it goes: one call at a time.
        self._features = threading.Lock()
        self._tokenizer: Any = None

    async def transcribe(self, audio: np.ndarray, *, final: bool) -> Transcript:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        worker = self._worker if final else self._interim_worker
        started = time.monotonic()
        abandoned = threading.Event()
        try:
            text = await worker.run(lambda: self._recognise(audio, abandoned))
        except asyncio.CancelledError:
            abandoned.set()  # if under way, it stops before the full-window decode (below)
            raise
        return Transcript(text, final, len(audio) / SAMPLE_RATE, time.monotonic() - started)

    @property
    def last_progress(self) -> float:
        return self._worker.last_progress

    def close(self) -> None:
        if self._interim_worker.close() & self._worker.close():
            del self._model  # freed now, not during interpreter teardown (ctranslate2 can abort there)

    # -- worker thread --------------------------------------------------------------------------
    def _recognise(self, audio: np.ndarray, abandoned: threading.Event) -> str:
        duration = len(audio) / SAMPLE_RATE
        if duration < MIN_SPEECH_SECONDS or not np.any(audio):
            return ""
        if self.config.short_context and duration < 28.0:
            text = self._short_context(audio)
            if text is not None or abandoned.is_set():
                # Abandoned: typically an early final transcript whose speech went on, cut
                # mid-word, which loops; the full window (5-10x the work) would make the real
                # final wait behind it.
                return text or ""
        return self._full_window(audio)

    def _full_window(self, audio: np.ndarray) -> str:
        with self._features:
            segments, _ = self._model.transcribe(
                audio,
                language=self.config.language,
                beam_size=self.config.beam_size,
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                chunk_length=30,  # the feature extractor keeps the last value: always pass it
            )
            return " ".join(s.text.strip() for s in segments).strip()  # lazy: runs here, in the worker

    def _short_context(self, audio: np.ndarray) -> str | None:
        """Greedy decode on the utterance plus padding. None means: do not trust it."""
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        if self._tokenizer is None:  # two threads may both make one: the same, harmless
            self._tokenizer = Tokenizer(
                model.hf_tokenizer,
                model.model.is_multilingual,
                task="transcribe",
                language=self.config.language or "en",
            )
        tokenizer = self._tokenizer
        # Padded to a whole second: the encoder's input shape is one of ~30, not one per
        # utterance. oneDNN builds and caches a convolution for each shape it sees (~0.5 MiB
        # each, up to 1024 of them): a server's memory grew with every new utterance length.
        seconds = math.ceil(len(audio) / SAMPLE_RATE + PAD_SECONDS)
        padded = np.zeros(seconds * SAMPLE_RATE, np.float32)
        padded[: len(audio)] = audio
        with self._features:
            features = model.feature_extractor(padded, chunk_length=seconds)
        frames = features.shape[-1] - features.shape[-1] % 2  # the encoder's conv has stride 2
        encoder_input = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(features[np.newaxis, :, :frames], dtype=np.float32)
        )
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        max_new = int(8 + duration_tokens(len(audio) / SAMPLE_RATE))
        result = model.model.generate(
            encoder_input,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + max_new,
            no_repeat_ngram_size=0,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < tokenizer.eot]
        text = tokenizer.decode(tokens).strip()
        return trusted(text, len(audio) / SAMPLE_RATE, hit_limit=len(tokens) >= max_new)


def duration_tokens(seconds: float) -> float:
    """Generous token budget for `seconds` of speech (fast speech is ~4 words, ~5 tokens a second)."""
    return seconds * 8.0


_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


def trusted(text: str, seconds: float, *, hit_limit: bool) -> str | None:
    """Return the short-context text if it looks sane, with a repeated sentence trimmed."""
    if hit_limit:
        return None  # ran to the token bound: a loop
    sentences = [s.strip() for s in _SENTENCE.findall(text) if s.strip()]
    kept: list[str] = []
    for sentence in sentences:
        norm = _norm(sentence)
        if kept and any(_norm(k).startswith(norm) for k in kept):
            break  # a loop: "What is the capital of France? What is the capital of"
        kept.append(sentence)
    cleaned = " ".join(kept)
    words = len(cleaned.split())
    if words > MAX_WORDS_PER_SECOND * seconds + 2:
        return None
    if words == 0 and seconds > 1.0:
        return None  # a second of speech but no words: let the full decode have a look
    return cleaned


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _looks_like_path(model: str) -> bool:
    """'tiny.en' and 'Systran/faster-whisper-small' are hub names; '/x' and './x' are paths."""
    return model.startswith(("/", "./", "../", "~"))
