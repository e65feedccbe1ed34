"""Reading whatever WAV a user hands in; resampling; frames. No models needed."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from voicecore.audio.frames import AudioFrame, split_frames
from voicecore.audio.resample import StreamResampler
from voicecore.audio.wav import load_for_recognition, read_wav, write_wav
from voicecore.errors import AudioFormatError


def tone(rate: int, seconds: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def riff(fmt: bytes, data: bytes, extra_chunks: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt_chunk(tag: int, channels: int, rate: int, bits: int, extensible_sub: int | None = None) -> bytes:
    align = channels * bits // 8
    base = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    if extensible_sub is None:
        return base
    guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return base + struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", extensible_sub) + guid_tail


def encode(samples: np.ndarray, bits: int, is_float: bool) -> bytes:
    if is_float:
        return samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    if bits == 8:
        return (np.clip(samples, -1, 1) * 127 + 128).astype(np.uint8).tobytes()
    if bits == 16:
        return (samples * 32767).astype("<i2").tobytes()
    if bits == 24:
        v = (samples * (2**23 - 1)).astype("<i4").tobytes()
        return b"".join(v[i : i + 3] for i in range(0, len(v), 4))
    return (samples.astype(np.float64) * (2**31 - 1)).astype("<i4").tobytes()


@pytest.mark.parametrize(
    "rate,channels,bits,is_float,extensible",
    [
        (8000, 2, 16, False, False),  # 8 kHz stereo
        (48000, 1, 32, True, False),  # 48 kHz float
        (44100, 2, 24, False, True),  # extensible 24-bit
        (22050, 1, 8, False, False),
        (16000, 1, 32, False, False),
        (96000, 1, 64, True, True),
    ],
)
def test_reads_every_common_wav_encoding(tmp_path: Path, rate, channels, bits, is_float, extensible):
    mono = tone(rate)
    interleaved = np.repeat(mono, channels)
    tag = 3 if is_float else 1
    fmt = fmt_chunk(0xFFFE, channels, rate, bits, tag) if extensible else fmt_chunk(tag, channels, rate, bits)
    path = tmp_path / "in.wav"
    path.write_bytes(riff(fmt, encode(interleaved, bits, is_float), extra_chunks=b"LIST\x04\x00\x00\x00abcd"))

    samples, got_rate = read_wav(path)
    assert got_rate == rate
    assert samples.shape == (len(mono), channels)
    tolerance = 1.0 / 64 if bits == 8 else 1e-3
    assert np.allclose(samples[:, 0], mono, atol=tolerance)

    audio = load_for_recognition(path)
    assert audio.sample_rate == 16000
    assert abs(audio.duration - 0.5) < 0.01
    assert 0.4 < np.abs(audio.to_float()).max() < 0.6  # downmixed, not summed


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "empty"),
        (b"ID3\x03\x00 this is an mp3, honest", "not a WAV"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no valid 'fmt '"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioFormatError, match=message):
        read_wav(path)


def test_missing_file_and_directory(tmp_path: Path):
    with pytest.raises(AudioFormatError, match="no such file"):
        read_wav(tmp_path / "nope.wav")
    with pytest.raises(AudioFormatError, match="directory"):
        read_wav(tmp_path)


def test_unsupported_encoding_is_named(tmp_path: Path):
    path = tmp_path / "alaw.wav"
    path.write_bytes(riff(fmt_chunk(6, 1, 8000, 8), b"\x00" * 100))
    with pytest.raises(AudioFormatError, match="unsupported WAV encoding"):
        read_wav(path)


def test_write_then_read_round_trip(tmp_path: Path):
    audio = AudioFrame.from_float(tone(22050), 22050)
    write_wav(tmp_path / "out.wav", audio)
    samples, rate = read_wav(tmp_path / "out.wav")
    assert rate == 22050 and np.allclose(samples[:, 0], audio.to_float(), atol=1e-4)


def test_stream_resampler_keeps_length_and_pitch():
    source = tone(48000, 1.0, 1000.0)
    resampler = StreamResampler(16000)
    out = [resampler.push(f) for f in split_frames(AudioFrame.from_float(source, 48000))]
    joined = np.concatenate([o.samples for o in out]).astype(np.float32) / 32768
    assert abs(len(joined) - 16000) < 150  # low-delay filter: ~6 ms held back
    spectrum = np.abs(np.fft.rfft(joined[2000:14000]))
    peak_hz = np.argmax(spectrum) * 16000 / 12000
    assert abs(peak_hz - 1000) < 5


def test_frames_are_20ms_and_padded():
    audio = AudioFrame(np.ones(16000 + 100, np.int16), 16000)
    frames = list(split_frames(audio))
    assert all(len(f.samples) == 320 for f in frames)
    assert len(frames) == 51
    assert frames[-1].samples[100:].sum() == 0


def test_frame_rejects_stereo_and_float():
    with pytest.raises(ValueError):
        AudioFrame(np.zeros((10, 2), np.int16), 16000)
    with pytest.raises(ValueError):
        AudioFrame(np.zeros(10, np.float32), 16000)
