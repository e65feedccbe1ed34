"""llama.cpp engine (CPU default), through llama-cpp-python, in-process.

llama.cpp runs one generation at a time: requests from every session are serialised on one
worker thread, each reply whole. llama-cpp-python keeps the KV cache of the previous prompt and
re-evaluates only the tokens after the longest common prefix, which `ChatHistory` keeps stable.

Tried and measured (benchmarks/run.py, 2 cores): generating replies in slices of 16 tokens, so a
new turn's first clause need not wait for other conversations' whole replies, re-read a prompt
at every switch and made 4 conversations slower (p90 2.7 -> 5.3 s); stepping aside only for a
waiting first clause did no better in the soak (more first tokens past the stage timeout). On a
saturated CPU the fewest prompt re-reads win; capacity (`livekit.max_conversations`) keeps the
CPU from being saturated. Generating on every core (not one fewer) is ~35 % faster per token
when idle, but ggml's threads spin at barriers: with Whisper or Piper busy, a reply took seconds.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from voicecore.config import LlmConfig
from voicecore.errors import ConfigError
from voicecore.llm.base import Message
from voicecore.models import bundled_gguf
from voicecore.scheduling import CRITICAL, PriorityWorker

_DONE = object()


class LlamaCppEngine:
    def __init__(self, config: LlmConfig) -> None:
        from llama_cpp import Llama

        cores = os.cpu_count() or 2
        # Token generation is memory-bound and shares the box with Piper and Whisper: one core is
        # left to them and to the event loop. The prompt (batch) uses every core.
        threads = config.threads or max(1, cores - 1)
        common: dict[str, Any] = dict(
            n_ctx=config.context_tokens, n_threads=threads, n_threads_batch=cores, verbose=False
        )
        model = config.model or str(bundled_gguf())
        if model.endswith(".gguf") or Path(model).exists() or model.startswith(("/", "./", "~")):
            path = Path(model).expanduser()
            if not path.is_file():
                raise ConfigError(f"LLM model {path} not found; set llm.model to a .gguf file")
            self._llama = Llama(model_path=str(path), **common)
        else:
            # "org/repo:file.gguf" (or "org/repo", taking its first GGUF) from the model hub
            repo, _, filename = model.partition(":")
            self._llama = Llama.from_pretrained(repo_id=repo, filename=filename or "*.gguf", **common)
        self.model_name = model
        self.config = config
        self.context_tokens = config.context_tokens
        self._worker = PriorityWorker("llm")

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        # Bounded by construction: at most max_tokens pieces are ever put here.
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, item)
            except RuntimeError:
                stop.set()  # the loop is gone

        def generate() -> None:
            try:
                chunks = self._llama.create_chat_completion(
                    messages=[m.as_dict() for m in messages],  # type: ignore[misc]
                    stream=True,
                    max_tokens=self.config.max_tokens,
                    temperature=self.config.temperature,
                    top_p=self.config.top_p,
                    repeat_penalty=self.config.repeat_penalty,
                )
                for chunk in chunks:
                    self._worker.progressed()
                    if stop.is_set():
                        break
                    piece = chunk["choices"][0]["delta"].get("content")  # type: ignore[index,union-attr]
                    if piece:
                        hand_over(piece)
            except Exception as e:  # handed to the consumer, raised there
                hand_over(e)
            finally:
                hand_over(_DONE)

        job = asyncio.ensure_future(self._worker.run(generate, CRITICAL))
        try:
            while True:
                item = await pieces.get()
                if item is _DONE:
                    break
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()  # the worker stops after the token in progress
            if not job.done():
                job.cancel()  # if it has not started yet, it never will

    @property
    def last_progress(self) -> float:
        return self._worker.last_progress

    def close(self) -> None:
        if self._worker.close():
            self._llama.close()  # freed now, not during interpreter teardown
