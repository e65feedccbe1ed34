"""vLLM engine, in-process through AsyncLLM: the GPU path (and vLLM's CPU build, which CI runs).

vLLM batches the generations of every session itself (continuous batching) and keeps a prefix
cache, so requests are not serialised here: a second conversation's reply starts while the first
one's is still being generated. The chat is rendered by vLLM's own renderer (the model's chat
template, tokenised there); a plain string prompt is deprecated since vLLM 0.32. With no
`llm.model`, vLLM runs the bundled SmolLM2 converted to a Hugging Face folder once
(llm/hf_weights.py). Install with `pip install 'voicecore[gpu]'`; bin/setup-vllm installs the
CPU build into .venv-vllm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from voicecore.config import LlmConfig
from voicecore.errors import ConfigError
from voicecore.llm.base import Message, chat, common_prefix
from voicecore.llm.message_end import plain_words
from voicecore.llm.tool_choice import (
    arguments_instruction,
    arguments_schema,
    best_of,
    parse_arguments,
    system_lines,
)
from voicecore.tools import Tool, ToolCall

log = logging.getLogger(__name__)

_request_ids = itertools.count()
DTYPES = ("auto", "float32", "bfloat16", "float16")
CLOSE_TIMEOUT = 30.0  # seconds the engine's processes get to exit before they are killed


class VllmEngine:
    def __init__(self, config: LlmConfig) -> None:
        try:
            from vllm import AsyncEngineArgs
            from vllm.renderers import ChatParams
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError:
            raise ConfigError(
                "llm.engine = 'vllm' needs vLLM: pip install 'voicecore[gpu]' (a CUDA GPU), "
                "or bin/setup-vllm for its CPU build"
            ) from None
        if config.dtype not in DTYPES:
            raise ConfigError(f"llm.dtype = {config.dtype!r}: use one of {', '.join(DTYPES)}")
        if config.model and config.model.startswith(("/", "./", "~")):
            if not Path(config.model).expanduser().exists():
                raise ConfigError(f"LLM model {config.model} not found")
        if config.model is None:
            from voicecore.llm.hf_weights import bundled_hf_folder

            model = str(bundled_hf_folder())
        else:
            model = config.model
        args = AsyncEngineArgs(
            model=model,
            max_model_len=config.context_tokens,
            enable_prefix_caching=True,
            gpu_memory_utilization=config.gpu_memory_utilization,
            dtype=resolve_dtype(config.dtype),
            **_cpu_args(),
        )
        self._engine: Any = AsyncLLM.from_engine_args(args)
        self._chat = ChatParams(chat_template_kwargs={"add_generation_prompt": True})
        self.config = config
        self.model_name = model
        self.context_tokens = config.context_tokens
        self.last_progress = time.monotonic()  # any request's latest tokens (one batch serves all)
        # Prompt tokens read, and those the prefix cache served instead: a conversation's
        # history should be served turn after turn (DESIGN: a stable prefix).
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.aborted = 0  # requests closed before their end (barge-in, a cancelled speculation)

    def forget(self, messages: list[Message]) -> None:
        pass  # vLLM's prefix cache evicts by itself

    def read_ahead(self, messages: list[Message]) -> None:
        pass  # a GPU reads a prompt in a few milliseconds; the prefix cache keeps the history

    def count_tokens(self, text: str) -> int:
        return len(self._engine.get_tokenizer().encode(text, add_special_tokens=False))

    @property
    def active_requests(self) -> int:
        """Requests vLLM is generating or holds in line (a cancelled reply is not one)."""
        return int(self._engine.get_num_unfinished_requests())

    async def stream(
        self, messages: list[Message], tools: Sequence[Tool] = ()
    ) -> AsyncIterator[str | ToolCall]:
        from vllm import SamplingParams

        if tools and messages and messages[-1].role == "user":
            call = await self._tool_call(messages, list(tools))
            if call is not None:
                yield call
                return
        params = SamplingParams(
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            top_p=self.config.top_p,
            repetition_penalty=self.config.repeat_penalty,
        )
        async for piece in self._generate(messages, params):
            yield piece

    async def _render(self, messages: list[Message]) -> Any:
        _, (prompt,) = await self._engine.renderer.render_chat_async([chat(messages)], self._chat)
        return prompt

    async def _generate(self, messages: list[Message], params: Any) -> AsyncIterator[str]:
        from vllm.sampling_params import RequestOutputKind

        prompt = await self._render(messages)
        params.output_kind = RequestOutputKind.DELTA
        request_id = f"voicecore-{next(_request_ids)}"
        first, finished = True, False
        # Closing vLLM's generator (here, when this one is closed or cancelled) aborts the
        # request: its batch slot and KV blocks are freed at the next step.
        try:
            async with contextlib.aclosing(self._engine.generate(prompt, params, request_id)) as outputs:
                async for output in outputs:
                    self.last_progress = time.monotonic()
                    if first:
                        first = False
                        self.prompt_tokens += len(output.prompt_token_ids or ())
                        self.cached_tokens += output.num_cached_tokens or 0
                    finished = output.finished
                    piece = output.outputs[0].text
                    if piece:
                        yield piece
        finally:
            self.aborted += not finished

    async def _tool_call(self, messages: list[Message], tools: list[Tool]) -> ToolCall | None:
        """The tool the user's words ask for, chosen as on llama.cpp (voicecore.llm.tool_choice:
        each tool's description scored by how much likelier it makes the words, one request
        each, batched by vLLM), its arguments under vLLM's structured outputs."""
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        user = messages[-1].content
        lines = system_lines(tools)
        scores = await asyncio.gather(*(self._words_logprob(line, user) for line in lines))
        chosen = best_of([(score - scores[0], tool) for score, tool in zip(scores[1:], tools, strict=True)])
        if chosen is None:
            return None
        if not chosen.parameters.get("properties"):
            return ToolCall(chosen.name, {})
        asked = [*messages, Message("system", arguments_instruction(chosen))]
        params = SamplingParams(
            max_tokens=self.config.max_tokens,
            temperature=0.0,
            structured_outputs=StructuredOutputsParams(json=arguments_schema(chosen)),
        )
        text = "".join([piece async for piece in self._generate(asked, params)])
        arguments = parse_arguments(text)
        return ToolCall(chosen.name, arguments) if arguments is not None else None

    async def message_end(self, text: str) -> float | None:
        """P(the person's words are a whole message), as on llama.cpp (voicecore.llm.message_end):
        the end-of-message token's probability right after the words, from one scoring request."""
        words = plain_words(text)
        if not words:
            return None
        empty = (await self._render([Message("user", "")]))["prompt_token_ids"]
        prompt = await self._render([Message("user", words)])
        ids = prompt["prompt_token_ids"]
        end = len(ids) - (len(empty) - common_prefix(empty, ids))  # the end-of-message token
        return math.exp((await self._prompt_logprobs(prompt))[end])

    async def _prompt_logprobs(self, prompt: Any) -> list[float]:
        """log P(each prompt token | those before it); 0 for the first."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        request_id = f"voicecore-score-{next(_request_ids)}"
        ids = prompt["prompt_token_ids"]
        out = [0.0] * len(ids)
        async with contextlib.aclosing(self._engine.generate(prompt, params, request_id)) as outputs:
            async for output in outputs:
                if output.finished and output.prompt_logprobs:
                    out = [0.0] + [output.prompt_logprobs[i][ids[i]].logprob for i in range(1, len(ids))]
        self.last_progress = time.monotonic()
        return out

    async def _words_logprob(self, system: str, words: str) -> float:
        """log P(words | a system line), as the chat template frames a user's message."""
        empty = await self._render([Message("system", system), Message("user", "")])
        full = await self._render([Message("system", system), Message("user", words)])
        start = common_prefix(empty["prompt_token_ids"], full["prompt_token_ids"])
        end = len(full["prompt_token_ids"]) - (len(empty["prompt_token_ids"]) - start)
        return sum((await self._prompt_logprobs(full))[start:end])

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is None:
            return
        # The engine core and its worker are interpreters of their own, and their exit (a full
        # collection of torch's heap) outlasts vLLM's default 5 s on a loaded 2-core box: it then
        # kills them before they unlink their shared memory, which the resource tracker reports
        # at exit. Let them finish. Dropping the last reference here frees AsyncLLM now, not
        # during interpreter teardown, where its __del__ raises.
        engine.shutdown(timeout=CLOSE_TIMEOUT)


def _cpu_args() -> dict[str, Any]:
    """Engine settings for vLLM's CPU build: no torch.compile tracing (its first request took
    22 s instead of 2 s, at the same ~12 tokens/s after), and 32-token KV blocks instead of its
    default 128, which the prefix cache reuses only when whole: a voice prompt of a short system
    prompt and a turn or two, under 128 tokens, was read whole every turn."""
    from vllm.platforms import current_platform

    return {"enforce_eager": True, "block_size": 32} if current_platform.is_cpu() else {}


def resolve_dtype(setting: str) -> str:
    """`llm.dtype` for vLLM: "auto" is the model's own, except float32 on a CPU without native
    bf16 (AVX512-BF16), where vLLM would pick bf16 and emulate it: prompts ~7.5x slower."""
    if setting != "auto":
        return setting
    import torch
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and not torch.cpu._is_avx512_bf16_supported():
        return "float32"
    return "auto"
