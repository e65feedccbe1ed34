"""Audio frames, resampling and WAV input/output."""

from voicecore.audio.frames import FRAME_MS, AudioFrame, split_frames
from voicecore.audio.resample import StreamResampler, resample
from voicecore.audio.wav import load_for_recognition, read_wav, write_wav

__all__ = [
    "FRAME_MS",
    "AudioFrame",
    "StreamResampler",
    "load_for_recognition",
    "read_wav",
    "resample",
    "split_frames",
    "write_wav",
]
