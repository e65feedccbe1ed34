"""Test helpers: building test audio and checking what was said."""

from __future__ import annotations

import re

import numpy as np

from voicecore import AudioFrame, Models
from voicecore.audio.resample import resample


def join(*parts: AudioFrame | float) -> AudioFrame:
    """Concatenate 16 kHz audio and pauses given in seconds."""
    arrays = [
        np.zeros(int(p * 16_000), np.int16) if isinstance(p, (int, float)) else p.samples for p in parts
    ]
    return AudioFrame(np.concatenate(arrays), 16_000)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


async def transcribe(models: Models, audio: AudioFrame) -> str:
    """Whisper, used by tests to check what the agent said."""
    audio16 = resample(audio, 16_000)
    return (await models.stt.transcribe(audio16.to_float(), final=True)).text
