"""The TTS stage: a sentence or clause of text in, its audio out."""

from __future__ import annotations

from typing import Protocol

from voicecore.audio.frames import AudioFrame


class TTS(Protocol):
    sample_rate: int

    async def synthesize(self, text: str, *, first: bool = True) -> AudioFrame:
        """Speak one chunk of text. `first=False` marks a later chunk of a reply that is already
        playing: it may wait behind another conversation's first chunk. Cancelling the await
        abandons it."""
        ...

    @property
    def last_progress(self) -> float:
        """time.monotonic() of the last finished synthesis, any session's: stage timeouts
        restart from it (waiting in line is not a hang)."""
        ...

    def close(self) -> None: ...
