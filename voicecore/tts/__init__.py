"""Text to speech: the TTS protocol and the sentence chunker; Piper beside them."""

from voicecore.tts.base import TTS
from voicecore.tts.chunker import SentenceChunker

__all__ = ["TTS", "SentenceChunker"]
