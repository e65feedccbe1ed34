"""Test questions spoken by several synthetic voices: Piper (bundled), espeak-ng and flite
(Debian packages, used when installed). Recordings are 16 kHz mono AudioFrames."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voicecore import AudioFrame, load_for_recognition
from voicecore.audio.resample import resample

QUESTIONS = [
    "What is the capital of France?",
    "How many legs does a spider have?",
    "What color is the sky on a clear day?",
    "Can you name a fruit that is yellow?",
    "What is two plus two?",
    "Who wrote Romeo and Juliet?",
    "What is the largest ocean on Earth?",
    "How many days are there in a week?",
    "What do bees make?",
    "Which planet is closest to the sun?",
]


@dataclass(frozen=True)
class Recording:
    name: str
    text: str
    audio: AudioFrame


def piper(text: str, length_scale: float = 1.0) -> AudioFrame:
    from piper import PiperVoice, SynthesisConfig

    from voicecore.models import bundled_piper_voice

    voice = PiperVoice.load(bundled_piper_voice())
    chunks = voice.synthesize(text, SynthesisConfig(length_scale=length_scale))
    audio = np.concatenate([c.audio_float_array for c in chunks]) * 0.7
    return resample(AudioFrame.from_float(audio, voice.config.sample_rate), 16000)


def _external(command: list[str], text: str) -> AudioFrame | None:
    if shutil.which(command[0]) is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        args = [a.replace("{out}", str(out)).replace("{text}", text) for a in command]
        subprocess.run(args, check=True, capture_output=True, timeout=30)
        return load_for_recognition(out)


def recordings(limit: int | None = None) -> list[Recording]:
    """Every question in every available voice."""
    voices = {
        "piper": lambda t: piper(t),
        "piper-slow": lambda t: piper(t, 1.25),
        "espeak": lambda t: _external(["espeak-ng", "-s", "150", "-w", "{out}", "{text}"], t),
        "flite": lambda t: _external(["flite", "-t", "{text}", "-o", "{out}"], t),
    }
    out: list[Recording] = []
    for voice, speak in voices.items():
        for i, text in enumerate(QUESTIONS):
            audio = speak(text)
            if audio is None:
                break
            out.append(Recording(f"{voice}-{i:02d}", text, audio))
    return out[:limit] if limit else out
