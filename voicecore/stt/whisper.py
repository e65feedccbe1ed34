"""faster-whisper STT, with a short-context fast path.

faster-whisper always pads the mel input to Whisper's 30 s window, yet the CTranslate2 encoder
accepts fewer frames: encoding only the utterance plus some silence is several times cheaper on
a CPU. A shortened context sometimes makes Whisper loop ("What is X? What is X? ...") or stop
early, so the fast path decodes greedily with a bound on the length, trims repeats, and falls
back to the standard full-window decode whenever its output looks suspicious.

Every decode is bounded by the audio's length: one temperature (faster-whisper's default fallback
re-decodes up to six times when the text compresses well, which a person repeating themselves
does: 28 s of one question said over and over held the shared worker for ~19 s) and a token
budget from the duration. Interim transcripts never take the full window, and an abandoned
transcription stops at the next step it can.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from voicecore.audio.frames import RECOGNITION_RATE
from voicecore.config import SttConfig
from voicecore.errors import ConfigError
from voicecore.models import bundled_whisper
from voicecore.scheduling import Scheduler
from voicecore.stt.base import Transcript

PAD_SECONDS = 3.0  # silence appended for the short context: with less, Whisper tiny often
# starts repeating the utterance ("What is X? What is")
MAX_WORDS_PER_SECOND = 5.0  # fast speech is ~4 words/s: more means a repetition loop
MIN_SPEECH_SECONDS = 0.1
MAX_NEW_TOKENS = 440  # Whisper's decoder holds 448 positions, the prompt included


class WhisperSTT:
    def __init__(self, config: SttConfig, scheduler: Scheduler | None = None) -> None:
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
        # Two workers: an interim transcript (while people speak) never holds up a final one;
        # CTranslate2 runs the two calls in parallel on the same weights.
        self._model = WhisperModel(
            model, device=device, compute_type=compute_type, cpu_threads=config.cpu_threads, num_workers=2
        )
        scheduler = scheduler or Scheduler()
        self._worker = scheduler.worker("stt")  # final transcripts
        self._interim_worker = scheduler.worker("stt-interim")
        # faster-whisper's feature extractor keeps the window length of its last call, which
        # its full-window transcription reads as it goes: one call at a time.
        self._features = threading.Lock()
        self._tokenizer: Any = None

    async def transcribe(self, audio: np.ndarray, *, final: bool, owner: Hashable = None) -> Transcript:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        worker = self._worker if final else self._interim_worker
        started = time.monotonic()
        abandoned = threading.Event()
        try:
            text = await worker.run(lambda: self._recognise(audio, abandoned, final), owner=owner)
        except asyncio.CancelledError:
            abandoned.set()  # if under way, it stops before the full-window decode (below)
            raise
        return Transcript(text, final, len(audio) / RECOGNITION_RATE, time.monotonic() - started)

    @property
    def last_progress(self) -> float:
        return self._worker.last_progress

    def close(self) -> None:
        if self._interim_worker.close() & self._worker.close():
            del self._model  # freed now, not during interpreter teardown (ctranslate2 can abort there)

    # -- worker thread --------------------------------------------------------------------------
    def _recognise(self, audio: np.ndarray, abandoned: threading.Event, final: bool = True) -> str:
        duration = len(audio) / RECOGNITION_RATE
        if duration < MIN_SPEECH_SECONDS or not np.any(audio):
            return ""
        if self.config.short_context and math.ceil(duration + PAD_SECONDS) <= 30:  # Whisper's window
            text = self._short_context(audio)
            if text is not None or abandoned.is_set() or not final:
                # Abandoned: typically an early final transcript whose speech went on, cut
                # mid-word, which loops; the far costlier full window would make the real final
                # wait behind it. An interim is only a preview: the next one may do better.
                return text or ""
        return self._full_window(audio, abandoned)

    def _full_window(self, audio: np.ndarray, abandoned: threading.Event) -> str:
        texts: list[str] = []
        seconds = min(len(audio) / RECOGNITION_RATE, 30.0)  # per 30 s window
        with self._features:
            segments, _ = self._model.transcribe(
                audio,
                language=self.config.language,
                beam_size=self.config.beam_size,
                temperature=0.0,  # no fallback: one decode (see the module docstring)
                max_new_tokens=min(MAX_NEW_TOKENS, int(8 + duration_tokens(seconds))),
                condition_on_previous_text=False,
                without_timestamps=True,
                vad_filter=False,
                chunk_length=30,  # the feature extractor keeps the last value: always pass it
            )
            for segment in segments:  # lazy: each 30 s window is decoded here, in the worker
                texts.append(segment.text.strip())
                if abandoned.is_set():
                    break  # nobody waits for the rest
        return " ".join(texts).strip()

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
        # Padded to a whole second: oneDNN builds and keeps a convolution for each input shape
        # it sees, so one shape per utterance length would grow a server's memory with each.
        seconds = math.ceil(len(audio) / RECOGNITION_RATE + PAD_SECONDS)
        padded = np.zeros(seconds * RECOGNITION_RATE, np.float32)
        padded[: len(audio)] = audio
        with self._features:
            features = model.feature_extractor(padded, chunk_length=seconds)
        frames = features.shape[-1] - features.shape[-1] % 2  # the encoder's conv has stride 2
        encoder_input = ctranslate2.StorageView.from_array(
            np.ascontiguousarray(features[np.newaxis, :, :frames], dtype=np.float32)
        )
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        max_new = int(8 + duration_tokens(len(audio) / RECOGNITION_RATE))
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
        return trusted(text, len(audio) / RECOGNITION_RATE, hit_limit=len(tokens) >= max_new)


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
