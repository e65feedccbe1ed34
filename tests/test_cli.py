"""The `voicecore` command as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from helpers import join, transcribe

from voicecore import AudioFrame, read_wav, write_wav
from voicecore.audio.resample import resample
from voicecore.metrics import STAGES

VOICECORE = [sys.executable, "-m", "voicecore"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*VOICECORE, *args], capture_output=True, text=True, timeout=timeout)


def write_stereo_8k(path: Path, audio: AudioFrame) -> None:
    low = resample(audio, 8000).samples
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(np.column_stack([low, low]).astype("<i2").tobytes())


async def test_talk_writes_a_reply_that_says_paris(tmp_path: Path, say, models):
    question = tmp_path / "question.wav"
    write_stereo_8k(question, join(0.3, say("What is the capital of France?")))  # 8 kHz stereo in
    reply = tmp_path / "reply.wav"
    result = run("talk", str(question), "--out", str(reply), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "capital of france" in data["user_transcript"].lower()
    assert "Paris" in data["reply_text"]
    latency = data["turns"][0]["latency_ms"]
    assert set(latency) == {*STAGES, "voice_to_voice"}
    assert all(isinstance(v, float) and v > 0 for v in latency.values()), latency
    samples, rate = read_wav(reply)
    assert rate == 48000 and len(samples) / rate > 0.5
    spoken = AudioFrame.from_float(samples[:, 0], rate)
    assert "Paris" in await transcribe(models, spoken)


def test_talk_prints_transcript_reply_and_latencies(tmp_path: Path):
    example = Path(__file__).parent.parent / "examples" / "what-is-the-capital-of-france.wav"
    result = run("talk", str(example))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "you:   What is the capital of France?" in out
    assert "Paris" in out.splitlines()[1]
    for field in (*STAGES, "voice_to_voice"):
        assert field in out


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p.write_bytes(b""), "the file is empty"),
        (lambda p: p.write_text("just some text, not audio\n"), "not a WAV file"),
        (lambda p: None, "no such file"),
    ],
)
def test_talk_bad_input_one_clear_line(tmp_path: Path, make, message):
    path = tmp_path / "input.wav"
    make(path)
    result = run("talk", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_talk_bad_config_one_clear_line(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[llm\n")
    example = Path(__file__).parent.parent / "examples" / "what-is-the-capital-of-france.wav"
    result = run("talk", str(example), "--config", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    result = run("talk", str(example), "--llm-model", str(tmp_path / "missing.gguf"))
    assert result.returncode == 2 and "missing.gguf not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_talk_silence_only_says_nothing(tmp_path: Path):
    path = tmp_path / "silence.wav"
    write_wav(path, AudioFrame.silence(2.0, 16000))
    result = run("talk", str(path), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["turns"] == [] and data["reply_text"] == ""


def test_help_and_doctor():
    result = run("--help")
    assert result.returncode == 0
    for command in ("talk", "doctor"):
        assert command in result.stdout
    doctor = run("doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    data = json.loads(doctor.stdout)
    assert all(entry["present"] for entry in data["models"].values()), data["models"]
    assert "CPUExecutionProvider" in data["accelerators"]["onnxruntime_providers"]
    assert data["packages"]["faster-whisper"] and data["packages"]["llama_cpp_python"]
