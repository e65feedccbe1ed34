"""Test questions spoken by several synthetic voices: Piper (bundled), espeak-ng and flite
(Debian packages, used when installed). Recordings are 16 kHz mono AudioFrames.

Besides the complete questions: questions with a pause in the middle ("What is the capital of"
... "France?") for turn-taking, and long-answer prompts with a barge-in for interruptions.
Where speech starts and ends in a recording is measured, not assumed: the first and last sample
above `LOUD`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from voicecore import AudioFrame, load_for_recognition
from voicecore.audio.resample import resample
from voicecore.rtc.caller import speech_bounds

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
# Words a correct answer contains (any of them), per question above.
ANSWERS = [
    ("paris",),
    ("eight", "8"),
    ("blue",),
    ("banana", "lemon", "pineapple", "mango", "grapefruit"),
    ("four", "4"),
    ("shakespeare",),
    ("pacific",),
    ("seven", "7"),
    ("honey",),
    ("mercury",),
]
# A pause where people hesitate: before the word that completes the question. The first four
# halves end on a word that promises more ("of", "a", "plus", "to"); the last two on a word that
# could close a sentence, the harder case for any endpointer. The full run uses the first five.
PAUSED = [
    ("What is the capital of", "France?", ("paris",)),
    ("How many legs does a", "spider have?", ("eight", "8")),
    ("What is two plus", "two?", ("four", "4")),
    ("Which planet is the closest to", "the sun?", ("mercury",)),
    ("What do bees", "make?", ("honey",)),
    ("Who wrote the play", "Romeo and Juliet?", ("shakespeare",)),
]
PAUSES_MS = (400, 700, 1000)
# Prompts with answers long enough to talk over, and what the caller says over them.
LONG_ANSWERS = [
    "Tell me a long story about a cat.",
    "Describe the solar system in detail.",
    "Explain how a car engine works, step by step.",
    "Tell me about the history of the Roman empire.",
    "Describe your favourite city and why you like it.",
    "Explain how bread is made, from the wheat to the oven.",
]
BARGE_IN = "Stop. Wait a moment, please."
BACKCHANNELS = ["Uh-huh.", "Yeah.", "Okay."]  # said over a long answer: the agent should go on


def backchannels() -> list[tuple[str, AudioFrame]]:
    """What the backchannel scenario says over the agent: a real person's "Oh," (the pyannote
    call, when bin/setup fetched it) and BACKCHANNELS in Piper's voice."""
    import human_speech

    clips = [(text, piper(text)) for text in BACKCHANNELS]
    if (oh := human_speech.real_backchannel()) is not None:
        clips.insert(0, ("Oh, (a real person)", oh))
    return clips


@dataclass(frozen=True)
class Recording:
    name: str
    text: str
    audio: AudioFrame
    voice: str = ""
    answers: tuple[str, ...] = ()  # words a correct answer contains (any)


@dataclass(frozen=True)
class PausedQuestion:
    """One question said in two parts with `pause_ms` of silence between the speech."""

    name: str
    first: str
    second: str
    pause_ms: int
    audio: AudioFrame
    first_end: float  # seconds into `audio`: the last speech sample of the first part
    second_start: float  # ... and the first of the second part
    answers: tuple[str, ...] = ()


def trim(audio: AudioFrame, margin: float = 0.02) -> AudioFrame:
    """`audio` cut to its speech plus `margin` seconds either side."""
    start, end = speech_bounds(audio)
    first = max(0, int((start - margin) * audio.sample_rate))
    last = min(len(audio.samples), int((end + margin) * audio.sample_rate) + 1)
    return AudioFrame(audio.samples[first:last].copy(), audio.sample_rate)


@cache
def _piper_voice() -> Any:
    from piper import PiperVoice

    from voicecore.models import bundled_piper_voice

    return PiperVoice.load(bundled_piper_voice())


def piper(text: str, length_scale: float = 1.0) -> AudioFrame:
    from piper import SynthesisConfig

    voice = _piper_voice()
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
            out.append(Recording(f"{voice}-{i:02d}", text, audio, voice, ANSWERS[i]))
    return out[:limit] if limit else out


def paused_questions(pauses: tuple[int, ...] = PAUSES_MS, limit: int | None = None) -> list[PausedQuestion]:
    """Each of `PAUSED` (the first `limit`) with each pause, in Piper's voice."""
    out: list[PausedQuestion] = []
    for i, (first, second, answers) in enumerate(PAUSED[:limit]):
        a, b = trim(piper(first)), trim(piper(second))
        a_end = speech_bounds(a)[1]
        b_start = speech_bounds(b)[0]
        for pause_ms in pauses:
            # silence so that exactly pause_ms separate the last speech of `a` and the first of `b`
            gap = int(round(pause_ms / 1000 * 16000)) - (len(a.samples) - 1 - int(a_end * 16000))
            gap -= int(b_start * 16000)
            silence = np.zeros(max(0, gap), np.int16)
            audio = AudioFrame(np.concatenate([a.samples, silence, b.samples]), 16000)
            offset = (len(a.samples) + len(silence)) / 16000
            out.append(
                PausedQuestion(
                    f"pause{pause_ms}-{i:02d}",
                    first,
                    second,
                    pause_ms,
                    audio,
                    first_end=a_end,
                    second_start=offset + b_start,
                    answers=answers,
                )  # fmt: skip
            )
    return out


def vad_end_offset(audio: AudioFrame) -> float | None:
    """Seconds from the last sample above `LOUD` to where voicecore's own VAD (same config)
    puts the end of speech. The agent measures its latency from the latter, the client from the
    former: this much of the client-measured latency is a difference of definitions, not network."""
    from voicecore import load_config

    stream = _vad().stream(load_config(env={}).vad)
    samples = np.concatenate([audio.samples, np.zeros(16000, np.int16)]).astype(np.float32) / 32768
    ends = [e.sample for i in range(0, len(samples), 320) for e in stream.push(samples[i : i + 320])
            if e.kind == "end"]  # fmt: skip
    return ends[-1] / 16000 - speech_bounds(audio)[1] if ends else None


@cache
def _vad() -> Any:
    from voicecore.turn.silero import SileroVad

    return SileroVad()
