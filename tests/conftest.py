"""Shared fixtures: the real bundled models, loaded once, and speech made with Piper."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from voicecore import AudioFrame, Config, Models, load_config, load_models
from voicecore.audio.resample import resample

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(env={})


@pytest.fixture(scope="session")
def models(config: Config) -> Iterator[Models]:
    loaded = load_models(config)
    yield loaded
    loaded.close()


@pytest.fixture(scope="session")
def say(models: Models):
    """say("text") -> 16 kHz AudioFrame of Piper speaking it (cached)."""
    cache: dict[tuple[str, float], AudioFrame] = {}

    def speak(text: str, length_scale: float = 1.0) -> AudioFrame:
        key = (text, length_scale)
        if key not in cache:
            from piper import PiperVoice, SynthesisConfig

            from voicecore.models import bundled_piper_voice

            voice = PiperVoice.load(bundled_piper_voice())
            chunks = voice.synthesize(text, SynthesisConfig(length_scale=length_scale))
            audio = np.concatenate([c.audio_float_array for c in chunks])
            frame = AudioFrame.from_float(audio * 0.7, voice.config.sample_rate)
            cache[key] = resample(frame, 16_000)
        return cache[key]

    return speak


def join(*parts: AudioFrame | float) -> AudioFrame:
    """Concatenate 16 kHz audio and pauses given in seconds."""
    arrays = [
        np.zeros(int(p * 16_000), np.int16) if isinstance(p, (int, float)) else p.samples
        for p in parts
    ]
    return AudioFrame(np.concatenate(arrays), 16_000)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


async def transcribe(models: Models, audio: AudioFrame) -> str:
    """Whisper, used by tests to check what the agent said."""
    audio16 = resample(audio, 16_000)
    return (await models.stt.transcribe(audio16.to_float(), final=True)).text


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
