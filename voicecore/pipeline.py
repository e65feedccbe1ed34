"""Builds the models from config: the one place that names implementations.

Models are loaded once per process and shared by every `Session`.
"""

from __future__ import annotations

from dataclasses import dataclass

from voicecore.config import Config
from voicecore.errors import ConfigError
from voicecore.llm.base import LLMEngine
from voicecore.stt.base import STT
from voicecore.tts.base import TTS
from voicecore.turn.vad import SileroVad


@dataclass
class Models:
    vad: SileroVad
    stt: STT
    llm: LLMEngine
    tts: TTS

    async def warm_up(self, system_prompt: str) -> None:
        """Run each model once so the first turn does not pay for lazy initialisation, and
        leave the system prompt in the LLM's prefix cache (llama.cpp: ~200 ms -> ~15 ms)."""
        from voicecore.audio.resample import resample
        from voicecore.llm.base import Message

        speech = await self.tts.synthesize("Hello there.")
        await self.stt.transcribe(resample(speech, 16_000).to_float(), final=True)
        async for _ in self.llm.stream([Message("system", system_prompt), Message("user", "Hi")]):
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

    # numpy's BLAS (OpenBLAS) gets one thread. Its only work here is Whisper's mel filterbank
    # (a few million multiply-adds), and after each call its worker thread spins for ~0.1 s
    # waiting for more: on 2 cores that took a core from the LLM reading the prompt right after
    # the final transcript (first token 110 ms after Whisper against 84 ms alone; 81 / 81 with one
    # BLAS thread). Process-wide, as OpenBLAS's setting is.
    threadpool_limits(limits=1, user_api="blas")
    vad = SileroVad(config.vad.model)
    stt = WhisperSTT(config.stt)
    llm: LLMEngine
    if config.llm.engine == "llama.cpp":
        from voicecore.llm.llamacpp import LlamaCppEngine

        llm = LlamaCppEngine(config.llm)
    elif config.llm.engine == "vllm":
        from voicecore.llm.vllm import VllmEngine

        llm = VllmEngine(config.llm)
    else:
        raise ConfigError(f"llm.engine = {config.llm.engine!r}: use 'llama.cpp' or 'vllm'")
    tts = PiperTTS(config.tts, use_cuda=config.stt.device == "cuda")
    return Models(vad=vad, stt=stt, llm=llm, tts=tts)
