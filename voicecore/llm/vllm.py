"""vLLM engine (GPU), in-process through AsyncLLM.

vLLM batches the generations of every session itself (continuous batching) and keeps a prefix
cache, so requests are not serialised here. Install with `pip install voicecore[gpu]`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from voicecore.config import LlmConfig
from voicecore.errors import ConfigError
from voicecore.llm.base import Message

_request_ids = itertools.count()


class VllmEngine:
    def __init__(self, config: LlmConfig) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:
            raise ConfigError(
                "llm.engine = 'vllm' needs vLLM and a CUDA GPU: pip install 'voicecore[gpu]'"
            ) from None
        if not config.model:
            raise ConfigError("llm.engine = 'vllm' needs llm.model: a model directory or hub id")
        if config.model.startswith(("/", "./", "~")) and not Path(config.model).expanduser().exists():
            raise ConfigError(f"LLM model {config.model} not found")
        args = AsyncEngineArgs(
            model=config.model,
            max_model_len=config.context_tokens,
            enable_prefix_caching=True,
            gpu_memory_utilization=config.gpu_memory_utilization,
        )
        self._engine: Any = AsyncLLM.from_engine_args(args)
        self._tokenizer: Any = None
        self.config = config
        self.model_name = config.model
        self.context_tokens = config.context_tokens
        self.last_progress = time.monotonic()  # any request's latest tokens (one batch serves all)

    def _get_tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.config.model)
        return self._tokenizer

    def forget(self, messages: list[Message]) -> None:
        pass  # vLLM's prefix cache evicts by itself

    def read_ahead(self, messages: list[Message]) -> None:
        pass  # a GPU reads a prompt in a few milliseconds; the prefix cache keeps the history

    def count_tokens(self, text: str) -> int:
        return len(self._get_tokenizer().encode(text, add_special_tokens=False))

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        prompt = self._get_tokenizer().apply_chat_template(
            [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=True
        )
        params = SamplingParams(
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            repetition_penalty=self.config.repeat_penalty,
            output_kind=RequestOutputKind.DELTA,
        )
        request_id = f"voicecore-{next(_request_ids)}"
        try:
            async for output in self._engine.generate(prompt, params, request_id):
                self.last_progress = time.monotonic()
                piece = output.outputs[0].text
                if piece:
                    yield piece
        finally:
            await self._engine.abort(request_id)  # no-op when finished; frees the slot otherwise

    def close(self) -> None:
        self._engine.shutdown()
