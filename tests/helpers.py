"""Test helpers: building test audio and checking what was said."""

from __future__ import annotations

import re

import numpy as np

from voicecore import Agent, AudioFrame, Models, tool
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


def weather_agent(cities: list[str]) -> Agent:
    """An agent with two tools: get_weather (a stub: "sunny, 21 degrees"; each city asked for is
    appended to `cities`) and get_time."""

    @tool(speculative=True)
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        cities.append(city)
        return "sunny, 21 degrees"

    @tool
    def get_time() -> str:
        """The current time."""
        return "14:05"

    return Agent(tools=[get_weather, get_time])
