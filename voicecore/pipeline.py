"""Builds the models from config: the one place that names implementations.

Models are loaded once per process and shared by every `Session`, with the one `Scheduler` that
their worker threads coordinate through.
"""

from __future__ import annotations

import dataclasses
import logging
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

log = logging.getLogger(__name__)


@dataclass
class Models:
    vad: Vad
    stt: STT
    llm: LLMEngine
    tts: TTS
    scheduler: Scheduler = field(default_factory=Scheduler)
    voices: dict[str, TTS] = field(default_factory=dict)  # other voices than tts's, by path
    config: Config | None = None  # what they were loaded with (for add_voice)

    def tts_for(self, voice: str | None) -> TTS:
        """The TTS speaking `voice` (None: the configured one); ConfigError if not loaded."""
        if voice is None:
            return self.tts
        try:
            return self.voices[voice]
        except KeyError:
            raise ConfigError(
                f"voice {voice} is not loaded: call Models.add_voice({voice!r}) first"
            ) from None

    def add_voice(self, voice: str) -> None:
        """Load another Piper voice (an agent's); several seconds: from async code, in a thread.
        It shares the first voice's worker thread: one synthesis at a time, as with one voice."""
        from voicecore.tts.piper import PiperTTS

        if voice in self.voices or self.config is None:
            if self.config is None:
                raise ConfigError("add_voice: these models were not made by load_models")
            return
        config = dataclasses.replace(self.config.tts, voice=voice)
        self.voices[voice] = PiperTTS(
            config,
            self.scheduler,
            use_cuda=self.config.stt.device == "cuda",
            worker=getattr(self.tts, "worker", None),
        )

    async def warm_up(self, system_prompt: str, tools: Sequence[Tool] = ()) -> None:
        """Run each model once so the first turn does not pay for lazy initialisation, and
        leave the system prompt in the LLM's prefix cache; with `tools`, the LLM's way of
        choosing among them is made ready too (llama.cpp: ~1.3 s at the first turn otherwise).
        The end-of-turn question is asked once too (vLLM's first took ~3 s, later ones ~0.2 s)."""
        from voicecore.audio.frames import RECOGNITION_RATE
        from voicecore.audio.resample import resample
        from voicecore.llm.base import Message

        speech = await self.tts.synthesize("Hello there.")
        await self.stt.transcribe(resample(speech, RECOGNITION_RATE).to_float(), final=True)
        hello = [Message("system", system_prompt), Message("user", "Hi")]
        async for _ in self.llm.stream(hello, tools) if tools else self.llm.stream(hello):
            break
        ask = getattr(self.llm, "message_end", None)  # asked at every pause (turn/judging.py)
        if ask is not None:
            try:
                await ask("Hello there")
            except Exception:  # turns still end, at the ceiling (turn/judging.py): not fatal
                log.warning("the end-of-message question failed at warm-up", exc_info=True)

    def close(self) -> None:
        """Stop the models' threads (each finishes the call it is in) and free the models.
        Blocks for up to a few seconds: from async code, run it in a thread. Native models left
        to interpreter teardown, or freed under a running call, can abort the process at exit."""
        self.stt.close()
        self.llm.close()
        self.tts.close()  # first: it owns the other voices' thread
        for voice in self.voices.values():
            voice.close()


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
    return Models(vad=vad, stt=stt, llm=llm, tts=tts, scheduler=scheduler, config=config)
