"""The one audio type that travels through the pipeline: int16 mono samples with their rate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

FRAME_MS = 20  # LiveKit's AudioStream hands out 10-20 ms frames; 20 ms is our unit everywhere.
RECOGNITION_RATE = 16_000  # what the VAD, Whisper and the turn machine hear (Silero and Whisper need it)


@dataclass(frozen=True)
class AudioFrame:
    """A block of mono PCM. `samples` is a 1-D int16 array."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        if self.samples.dtype != np.int16 or self.samples.ndim != 1:
            raise ValueError("AudioFrame.samples must be a 1-D int16 array (mono)")
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate

    @classmethod
    def silence(cls, seconds: float, sample_rate: int) -> AudioFrame:
        return cls(np.zeros(round(seconds * sample_rate), dtype=np.int16), sample_rate)

    @classmethod
    def from_float(cls, samples: np.ndarray, sample_rate: int) -> AudioFrame:
        """From float samples in [-1, 1]; values outside are clipped, not wrapped."""
        return cls(float_to_int16(samples), sample_rate)

    def to_float(self) -> np.ndarray:
        return int16_to_float(self.samples)


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    scaled = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0
    return np.round(scaled).astype(np.int16)


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def frame_samples(sample_rate: int, frame_ms: int = FRAME_MS) -> int:
    return sample_rate * frame_ms // 1000


def trim_leading_silence(audio: AudioFrame, threshold: float = 0.01, keep_ms: int = 5) -> AudioFrame:
    """Drop the quiet start of synthesised speech (Piper leads with ~40 ms of near-silence)."""
    loud = np.flatnonzero(np.abs(audio.samples.astype(np.int32)) > threshold * 32768)
    if len(loud) == 0:
        return audio
    start = max(0, int(loud[0]) - audio.sample_rate * keep_ms // 1000)
    return AudioFrame(audio.samples[start:], audio.sample_rate)


def split_frames(audio: AudioFrame, frame_ms: int = FRAME_MS) -> Iterator[AudioFrame]:
    """Cut audio into frames of `frame_ms`; the last one is zero-padded to full length."""
    size = frame_samples(audio.sample_rate, frame_ms)
    samples = audio.samples
    for start in range(0, len(samples), size):
        block = samples[start : start + size]
        if len(block) < size:
            block = np.concatenate([block, np.zeros(size - len(block), dtype=np.int16)])
        yield AudioFrame(block, audio.sample_rate)
