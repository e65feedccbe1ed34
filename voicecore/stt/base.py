"""The STT stage: 16 kHz float audio of one utterance in, its words out."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Transcript:
    text: str
    final: bool
    audio_seconds: float  # how much audio it covers
    compute_seconds: float  # wall time of the recognition


class STT(Protocol):
    async def transcribe(self, audio: np.ndarray, *, final: bool, owner: Hashable = None) -> Transcript:
        """Transcribe a whole utterance. `final=False` is background work (an interim result)
        and yields to final transcripts of any session. Cancelling the await abandons it.
        `owner` (the conversation): conversations take turns on the model."""
        ...

    @property
    def last_progress(self) -> float:
        """time.monotonic() of the last finished transcription, any session's: stage timeouts
        restart from it (waiting in line is not a hang)."""
        ...

    def close(self) -> None: ...
