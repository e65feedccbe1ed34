"""The recent audio of one stream, addressed by stream sample."""

from __future__ import annotations

import numpy as np


class RecentAudio:
    """Float samples appended as they arrive; the oldest dropped once nobody needs them."""

    def __init__(self) -> None:
        self._samples = np.zeros(0, np.float32)
        self._start = 0  # the stream sample `_samples` starts at

    def append(self, samples: np.ndarray) -> None:
        self._samples = np.concatenate([self._samples, samples])

    def since(self, sample: int, until: int | None = None) -> np.ndarray:
        """A copy of the audio from `sample` on (from the oldest kept, if that is later), up to
        `until` (all there is if None)."""
        start = max(sample - self._start, 0)
        stop = None if until is None else max(until - self._start, start)
        return self._samples[start:stop].copy()

    def keep_from(self, sample: int) -> None:
        drop = sample - self._start
        if drop > 0:
            self._samples = self._samples[drop:]
            self._start += drop
