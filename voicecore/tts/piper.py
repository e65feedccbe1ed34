"""Piper TTS, in-process on onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from voicecore.audio.frames import AudioFrame, float_to_int16
from voicecore.config import TtsConfig
from voicecore.errors import ConfigError
from voicecore.models import bundled_piper_voice
from voicecore.scheduling import CRITICAL, FOLLOW_UP, PriorityWorker, Scheduler


class PiperTTS:
    def __init__(
        self,
        config: TtsConfig,
        scheduler: Scheduler | None = None,
        use_cuda: bool = False,
        worker: PriorityWorker | None = None,
    ) -> None:
        """`worker`: another voice's thread, to share (one synthesis at a time)."""
        import json

        import onnxruntime as ort
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        path = Path(config.voice).expanduser() if config.voice else bundled_piper_voice()
        config_path = Path(str(path) + ".json")
        if not path.is_file():
            raise ConfigError(f"Piper voice {path} not found; set tts.voice to a .onnx voice file")
        if not config_path.is_file():
            raise ConfigError(f"Piper voice config {config_path} not found (expected beside it)")
        self.voice_path = path
        # Our own session options instead of PiperVoice.load's defaults: Piper runs while the
        # LLM is still generating the rest of the reply, and spinning idle threads would take
        # the LLM's core and the event loop's time on a small CPU box.
        options = ort.SessionOptions()
        if not use_cuda:
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CUDAExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        runner: Any = session if use_cuda else _Shrinking(session)
        piper_config = PiperConfig.from_dict(json.loads(config_path.read_text()))
        self._voice = PiperVoice(session=runner, config=piper_config)
        self._syn_config = SynthesisConfig(length_scale=config.length_scale)
        self.sample_rate: int = self._voice.config.sample_rate
        self._owns_worker = worker is None
        self.worker = worker or (scheduler or Scheduler()).worker("tts")

    async def synthesize(self, text: str, *, first: bool = True) -> AudioFrame:
        return await self.worker.run(lambda: self._speak(text), CRITICAL if first else FOLLOW_UP)

    def _speak(self, text: str) -> AudioFrame:
        parts = [c.audio_float_array for c in self._voice.synthesize(text, self._syn_config)]
        audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return AudioFrame(float_to_int16(audio), self.sample_rate)

    @property
    def last_progress(self) -> float:
        return self.worker.last_progress

    def close(self) -> None:
        # A shared thread is closed by its owner (closed last: Models.close), which finishes
        # the call it is in; this voice is freed with the rest at exit.
        if not self._owns_worker or self.worker.close():
            del self._voice


class _Shrinking:
    """An onnxruntime session whose memory arena gives back what a call grew it by.

    onnxruntime keeps the memory a call needed and never returns it, so the arena grows to the
    longest sentence synthesised yet. Shrunk after each call, RSS stays flat, at the same speed
    for the short chunks that carry latency.
    """

    def __init__(self, session: Any) -> None:
        import onnxruntime as ort

        self._session = session
        self._options = ort.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: Any, feed: Any, run_options: Any = None) -> Any:
        return self._session.run(output_names, feed, run_options or self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
