"""Builds the models from config: the one place that names implementations.

Models are loaded once per process and shared by every `Session`, with the one `Scheduler` that
their worker threads coordinate through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from voicecore.config import Config
from voicecore.errors import ConfigError
from voicecore.llm.base import LLMEngine
from voicecore.scheduling import Scheduler
from voicecore.stt.base import STT
from voicecore.tools import Tool
from voicecore.tts.base import TTS
from voicecore.turn.vad import Vad


@dataclass
class Models:
    vad: Vad
    stt: STT
    llm: LLMEngine
    tts: TTS
    scheduler: Scheduler = field(default_factory=Scheduler)

    async def warm_up(self, system_prompt: str, tools: Sequence[Tool] = ()) -> None:
        """Run each model once so the first turn does not pay for lazy initialisation, and
        leave the system prompt in the LLM's prefix cache; with `tools`, the LLM's way of
        choosing among them is made ready too (llama.cpp: ~1.3 s at the first turn otherwise)."""
        from voicecore.audio.frames import RECOGNITION_RATE
        from voicecore.audio.resample import resample
        from voicecore.llm.base import Message

        speech = await self.tts.synthesize("Hello there.")
        await self.stt.transcribe(resample(speech, RECOGNITION_RATE).to_float(), final=True)
        hello = [Message("system", system_prompt), Message("user", "Hi")]
        async for _ in self.llm.stream(hello, tools) if tools else self.llm.stream(hello):
            break

    def close(self) -> None:
        """Stop the models' threads (each finishes the call it is in) and free the models.
        Blocks for up to a few seconds: from async code, run it in a thread. Native models left
        to interpreter teardown, or freed under a running call, can abort the process at exit."""
        for stage in (self.stt, self.llm, self.tts):
            stage.close()


def load_models(config: Config) -> Models:
    """Load VAD, STT, LLM and TTS as `config` says (bundled small models by default)."""
    from threadpoolctl import threadpool_limits

    from voicecore.stt.whisper import WhisperSTT
    from voicecore.tts.piper import PiperTTS
    from voicecore.turn.silero import SileroVad

    # numpy's BLAS gets one thread (process-wide, as OpenBLAS's setting is): its only work here is
    # Whisper's mel filterbank, and its idle threads spin after each call, taking a core from the
    # LLM reading the prompt right after the final transcript (docs/decisions.md).
    threadpool_limits(limits=1, user_api="blas")
    scheduler = Scheduler()
    vad = SileroVad(config.vad.model)
    stt = WhisperSTT(config.stt, scheduler)
    llm: LLMEngine
    if config.llm.engine == "llama.cpp":
        from voicecore.llm.llamacpp import LlamaCppEngine

        llm = LlamaCppEngine(config.llm, scheduler)
    elif config.llm.engine == "vllm":
        from voicecore.llm.vllm import VllmEngine

        llm = VllmEngine(config.llm)
    else:
        raise ConfigError(f"llm.engine = {config.llm.engine!r}: use 'llama.cpp' or 'vllm'")
    tts = PiperTTS(config.tts, scheduler, use_cuda=config.stt.device == "cuda")
    return Models(vad=vad, stt=stt, llm=llm, tts=tts, scheduler=scheduler)
