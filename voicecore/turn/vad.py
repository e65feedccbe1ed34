"""The VAD stage: 16 kHz audio in, events about speech out. One shared model (`Vad`), one
stream per person (`VadStream`: its own state); the Silero implementation is in silero.py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from voicecore.config import VadConfig

VadEventKind = Literal["start", "pause", "resume", "end", "sound_stopped", "sound_resumed"]


@dataclass(frozen=True)
class VadEvent:
    """Something changed at `sample` (16 kHz samples from the start of the stream).

    start   speech began (its first speech window)
    pause   the first quiet window: maybe the end, maybe a stop consonant
    resume  speech again after a pause
    end     speech is over
    sound_stopped / sound_resumed   the signal itself went quiet / came back while in speech:
            earlier than the model can say, and not always the end (a hint for speculation)

    For a pause or an end, `sample` is the estimated end of speech (`VadStream.speech_end`), not
    the moment the VAD noticed.
    """

    kind: VadEventKind
    sample: int


class VadStream(Protocol):
    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed float32 samples at 16 kHz; returns the events they complete."""
        ...

    @property
    def samples_seen(self) -> int: ...

    @property
    def speech_end(self) -> int:
        """The estimated end of the latest speech: the endpoint delay is counted from here."""
        ...

    def quietest(self, since: int) -> int:
        """Where the audio since `since` (the last 2 s at most) came closest to a pause: where an
        over-long utterance is cut, between two words rather than in one."""
        ...


class Vad(Protocol):
    def stream(self, config: VadConfig) -> VadStream:
        """A stream for one person, sharing this model."""
        ...
