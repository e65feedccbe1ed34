"""Reading any WAV a user may hand in, and writing the agent's replies.

Python's `wave` module reads integer PCM only, so the RIFF chunks are parsed here: PCM of
8/16/24/32 bits, IEEE float of 32/64 bits, and WAVE_FORMAT_EXTENSIBLE wrapping either.
"""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np

from voicecore.audio.frames import RECOGNITION_RATE, AudioFrame, float_to_int16
from voicecore.audio.resample import resample_float
from voicecore.errors import AudioFormatError

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Return (samples, sample_rate): float32 in [-1, 1], shape (n, channels)."""
    path = Path(path)
    if not path.exists():
        raise AudioFormatError(f"{path}: no such file")
    if path.is_dir():
        raise AudioFormatError(f"{path}: is a directory, expected a .wav file")
    data = path.read_bytes()
    if len(data) == 0:
        raise AudioFormatError(f"{path}: the file is empty")
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise AudioFormatError(f"{path}: not a WAV file (no RIFF/WAVE header)")
    fmt: bytes | None = None
    payload: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body  # a truncated last chunk is read as far as it goes
            if fmt is not None:
                break
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise AudioFormatError(f"{path}: WAV file has no valid 'fmt ' chunk")
    if payload is None:
        raise AudioFormatError(f"{path}: WAV file has no 'data' chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 26:
            raise AudioFormatError(f"{path}: truncated WAVE_FORMAT_EXTENSIBLE header")
        tag = struct.unpack("<H", fmt[24:26])[0]  # first two bytes of the sub-format GUID
    if channels < 1 or rate < 1 or bits == 0:
        raise AudioFormatError(f"{path}: invalid header ({channels} channels, {rate} Hz)")
    width = bits // 8 if bits % 8 == 0 else block_align // channels
    usable = len(payload) - len(payload) % (width * channels)
    raw = payload[:usable]
    if tag == WAVE_FORMAT_PCM:
        samples = _decode_pcm(raw, width, path)
    elif tag == WAVE_FORMAT_IEEE_FLOAT and width in (4, 8):
        samples = np.frombuffer(raw, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
        samples = np.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    else:
        raise AudioFormatError(
            f"{path}: unsupported WAV encoding (format tag {tag:#06x}, {bits} bits); "
            "use PCM 8/16/24/32-bit or float 32/64-bit"
        )
    return samples.reshape(-1, channels), rate


def _decode_pcm(raw: bytes, width: int, path: Path) -> np.ndarray:
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    if width == 4:
        return (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
    raise AudioFormatError(f"{path}: unsupported PCM sample width of {width * 8} bits")


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Downmix (n, channels) to (n,) by averaging the channels."""
    return samples.mean(axis=1) if samples.ndim == 2 else samples


def load_for_recognition(path: str | Path) -> AudioFrame:
    """Read a WAV, downmix to mono and resample to 16 kHz: what the VAD and STT expect."""
    samples, rate = read_wav(path)
    mono = resample_float(to_mono(samples), rate, RECOGNITION_RATE)
    return AudioFrame(float_to_int16(mono), RECOGNITION_RATE)


def write_wav(path: str | Path, audio: AudioFrame) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(audio.sample_rate)
        out.writeframes(audio.samples.astype("<i2").tobytes())
