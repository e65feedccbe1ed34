"""Sample-rate conversion with soxr: streaming for live input, one-shot for whole chunks."""

from __future__ import annotations

import numpy as np
import soxr

from voicecore.audio.frames import AudioFrame


def resample(audio: AudioFrame, sample_rate: int) -> AudioFrame:
    """Resample a complete block (a file, a synthesised sentence)."""
    if audio.sample_rate == sample_rate:
        return audio
    out = soxr.resample(audio.samples, audio.sample_rate, sample_rate, quality="HQ")
    return AudioFrame(np.asarray(out, dtype=np.int16), sample_rate)


def resample_float(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return samples.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(samples.astype(np.float32), from_rate, to_rate), np.float32)


class StreamResampler:
    """Resamples a live stream frame by frame, keeping filter state between frames.

    The input rate is taken from the first frame; a frame at another rate restarts the stream
    (a participant may republish a track at a different rate).
    """

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._input_rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def push(self, frame: AudioFrame) -> AudioFrame:
        if frame.sample_rate == self.sample_rate:
            return frame
        if frame.sample_rate != self._input_rate or self._stream is None:
            self._input_rate = frame.sample_rate
            self._stream = soxr.ResampleStream(
                frame.sample_rate, self.sample_rate, 1, dtype="int16", quality="LQ"
            )
        out = self._stream.resample_chunk(frame.samples)
        return AudioFrame(np.asarray(out, dtype=np.int16).reshape(-1), self.sample_rate)
