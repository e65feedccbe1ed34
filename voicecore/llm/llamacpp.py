"""llama.cpp engine (CPU default), through llama-cpp-python, in-process.

llama.cpp runs one generation at a time, on one worker thread shared by every session. A reply
runs to its end unless a new turn (of any session) is waiting for its first clause: then, once the
reply has at least PREEMPT_AFTER tokens, it steps aside and queues its continuation right behind
that first clause (same priority, so later arrivals queue behind it: it cannot starve). The
continuation starts from the prompt plus the text so far; llama-cpp-python re-evaluates only
what differs from its KV cache, which the other reply has replaced, so stepping aside costs a
re-read of the prompt. It happens only for a first clause, never to take turns between replies:
on a saturated CPU, taking turns every 16 tokens re-read prompts all the time and made every
reply slower (measured: p90 at 4 conversations 2.7 -> 5.3 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from voicecore.config import LlmConfig
from voicecore.errors import ConfigError
from voicecore.llm.base import Message
from voicecore.models import bundled_gguf
from voicecore.scheduling import CRITICAL, PriorityWorker

log = logging.getLogger(__name__)

_DONE = object()
PREEMPT_AFTER = 16  # tokens (about a first clause) a reply keeps before it may step aside
# For a GGUF without a chat template: ChatML, which most small instruction models use.
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class LlamaCppEngine:
    def __init__(self, config: LlmConfig) -> None:
        from llama_cpp import Llama

        cores = os.cpu_count() or 2
        # Token generation is memory-bound and shares the box with Piper and Whisper: one core is
        # left to them and to the event loop. The prompt (batch) uses every core. Not more: ggml's
        # threads spin at barriers, so a decode on every core while Whisper or Piper runs loses a
        # time slice per barrier (measured: seconds per reply under contention, for ~55 ms won
        # when idle).
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
        self._template = self._chat_template()
        self.model_name = model
        self.config = config
        self.context_tokens = config.context_tokens
        self._worker = PriorityWorker("llm")
        # First clauses queued and not started: a running reply steps aside for them.
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        prompt = self._template(messages=[m.as_dict() for m in messages])
        prompt_tokens = self._llama.tokenize(
            prompt.prompt.encode("utf-8"), add_bos=not prompt.added_special, special=True
        )
        text = ""
        first_clause = True
        while True:
            tokens = prompt_tokens + self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            budget = self.config.max_tokens - (len(tokens) - len(prompt_tokens))
            if budget <= 0:
                return
            stepped_aside = False
            async with contextlib.aclosing(self._run(tokens, budget, prompt.stop, first_clause)) as items:
                async for kind, value in items:  # closed with this stream: the generation stops
                    if kind == "text":
                        text += value
                        yield value
                    else:  # "stepped aside" for a waiting first clause
                        stepped_aside = True
            if not stepped_aside:
                return
            first_clause = False

    async def _run(
        self, tokens: list[int], budget: int, stop: Any, first_clause: bool
    ) -> AsyncGenerator[tuple[str, str], None]:
        """Generate from `tokens`: ("text", piece)..., and ("stepped aside", "") if it stopped early
        for a waiting first clause."""
        loop = asyncio.get_running_loop()
        # Bounded by construction: at most `budget` pieces and two markers are ever put here.
        items: asyncio.Queue[Any] = asyncio.Queue()
        stop_now = threading.Event()

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:
                stop_now.set()  # the loop is gone

        claim = threading.Lock()  # whoever takes it ends this first clause's wait, once

        def no_longer_waiting() -> None:
            if first_clause and claim.acquire(blocking=False):
                self._count_waiting(-1)

        def generate() -> None:
            no_longer_waiting()
            try:
                chunks = self._llama.create_completion(
                    prompt=tokens,
                    stream=True,
                    max_tokens=budget,
                    stop=stop,
                    temperature=self.config.temperature,
                    top_p=self.config.top_p,
                    repeat_penalty=self.config.repeat_penalty,
                )
                for n, chunk in enumerate(chunks, start=1):
                    if stop_now.is_set():
                        break
                    piece = chunk["choices"][0]["text"]  # type: ignore[index]
                    if piece:
                        hand_over(("text", piece))
                    if n >= PREEMPT_AFTER and self._first_clauses_waiting():
                        hand_over(("stepped aside", ""))
                        break
            except Exception as e:  # handed to the consumer, raised there
                hand_over(e)
            finally:
                hand_over(_DONE)

        if first_clause:
            self._count_waiting(+1)
        job = asyncio.ensure_future(self._worker.run(generate, CRITICAL))
        try:
            while (item := await items.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop_now.set()  # the worker stops after the token in progress
            if not job.done():
                job.cancel()  # if it has not started yet, it never will
            no_longer_waiting()  # done, or cancelled before it started

    def _count_waiting(self, delta: int) -> None:
        with self._waiting_lock:
            self._waiting += delta

    def _first_clauses_waiting(self) -> bool:
        return self._waiting > 0

    def _chat_template(self) -> Any:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = self._llama
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            log.warning("LLM %s has no chat template; using ChatML", llama.model_path)
            template = CHATML
        eos, bos = llama.token_eos(), llama.token_bos()
        return Jinja2ChatFormatter(
            template=template,
            eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
            bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
            stop_token_ids=[eos],
        )

    def close(self) -> None:
        self._worker.close()
