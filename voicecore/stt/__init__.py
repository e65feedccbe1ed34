"""Speech to text: the STT protocol; implementations beside it."""

from voicecore.stt.base import STT, Transcript

__all__ = ["STT", "Transcript"]
