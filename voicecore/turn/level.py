"""Where the sound stopped, from the signal level: beside the VAD model, which hears speech but
is slow to say it is over.

16 ms steps; quiet when 30 dB under the loudest step of the speech. A speech model's
probability decays for a window or more after the last sound, so the level says sooner that the
sound has stopped; it also drops at stop consonants, so what it says is a hint for speculative
work, never the end of a turn.
"""

from __future__ import annotations

from collections import deque

import numpy as np

STEP = 256  # samples (16 ms)
RECENT = 2 * 16_000  # samples of levels kept (`recent`)
QUIET_RATIO = 10 ** (-30 / 20)


class LevelTracker:
    def __init__(self) -> None:
        self.recent: deque[tuple[int, float]] = deque(maxlen=RECENT // STEP)  # (step start, RMS)
        self._pending = np.zeros(0, dtype=np.float32)
        self._at = 0  # samples measured so far
        self._loudest = 0.0  # RMS of the loudest step of the current speech
        self.quiet_from: int | None = None  # where the sound stopped (None while it goes on)

    def push(self, samples: np.ndarray, in_speech: bool) -> list[tuple[str, int]]:
        """Measure `samples`; `in_speech` while the VAD hears (or is starting to hear) speech.
        Returns ("sound_stopped" | "sound_resumed", sample) for each change of `quiet_from`."""
        self._pending = np.concatenate([self._pending, samples])
        steps = len(self._pending) // STEP
        if steps == 0:
            return []
        block = self._pending[: steps * STEP].reshape(steps, STEP)
        self._pending = self._pending[steps * STEP :]
        changes: list[tuple[str, int]] = []
        for rms in np.sqrt(np.mean(block * block, axis=1)):
            start, self._at = self._at, self._at + STEP
            self.recent.append((start, float(rms)))
            if not in_speech:
                self._loudest, self.quiet_from = 0.0, None  # no speech under way: nothing stopped
                continue
            self._loudest = max(self._loudest, float(rms))
            if rms >= self._loudest * QUIET_RATIO:
                if self.quiet_from is not None:
                    changes.append(("sound_resumed", start))
                self.quiet_from = None
            elif self.quiet_from is None:
                self.quiet_from = start
                changes.append(("sound_stopped", start))
        return changes
