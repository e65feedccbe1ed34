"""llama.cpp engine (CPU default), through llama-cpp-python, in-process.

llama.cpp runs one generation at a time: requests from every session are serialised on one
worker thread, each reply whole (on a saturated CPU the fewest prompt re-reads win; capacity,
`livekit.max_conversations`, keeps the CPU from saturating). llama-cpp-python keeps the KV cache
of the previous prompt and re-evaluates only the tokens after the longest common prefix, which
`ChatHistory` keeps stable.

Generation runs on one core fewer than the machine has: ggml's threads spin at barriers, and
with Whisper or Piper busy beside them a reply slows to seconds. It takes every core only for a
lone conversation (another's speech may start Whisper at any moment), token by token, while no
other model computes, and while the process really gets those cores: on a machine other
programs keep busy, threads waiting at barriers for a descheduled sibling made every token ~20x
slower, so a step whose threads got well under their share of CPU time sends generation and the
prompt to one core fewer for a while.

Several conversations share the one context: the context of the one switched away from is kept
(`Contexts`, bounded) and put back when that conversation speaks again, so only its new words
are read. While a lone conversation's person speaks, the prompt is read ahead (`read_ahead`), so
the reply reads only the last word or two and the assistant's header. The figures behind each
choice: docs/decisions.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from voicecore.config import LlmConfig
from voicecore.errors import ConfigError
from voicecore.llm.base import Message, chat
from voicecore.llm.contexts import Contexts
from voicecore.llm.message_end import MessageEnd
from voicecore.llm.tool_choice import (
    MAX_STRING,
    ToolChooser,
    arguments_instruction,
    arguments_schema,
    flat_fields,
    parse_arguments,
)
from voicecore.llm.weights import fast_cpu_copy
from voicecore.models import bundled_gguf
from voicecore.scheduling import BACKGROUND, CRITICAL, Scheduler
from voicecore.tools import Tool, ToolCall

log = logging.getLogger(__name__)

_DONE = object()
JUDGE_WAIT = 0.15  # s after the transcript: the answer is wanted by the 0.4 s endpoint
_CUT = "\ue000"  # marks where a prompt read ahead ends (a private-use character nobody says)
# A token on N threads that got less than this share of N x its wall time in CPU time, and took
# SLOWER times the fastest token yet (or got under half that share): other programs hold the
# cores. A little less CPU (a client on the same box) is no reason. Every core is tried again
# after CONTENDED_FOR seconds.
CONTENDED_SHARE = 0.6
SLOWER = 3.0
CONTENDED_FOR = 30.0


class LlamaCppEngine:
    def __init__(self, config: LlmConfig, scheduler: Scheduler | None = None) -> None:
        from llama_cpp import Llama

        cores = os.cpu_count() or 2
        # Generation threads (see the module docstring): one core fewer than the machine has,
        # every core while one conversation alone is served and no other model computes;
        # `llm.threads` fixes the count. The prompt (batch) uses every core.
        self._threads_sharing = config.threads or max(1, cores - 1)
        self._threads_alone = config.threads or cores
        self._cores = self._threads_batch = cores
        self._threads = self._threads_sharing
        self._contended_until = 0.0  # time.monotonic() until which other programs hold the cores
        self._fastest = float("inf")  # the fastest token yet, in seconds
        common: dict[str, Any] = dict(
            n_ctx=config.context_tokens,
            n_threads=self._threads,
            n_threads_batch=self._threads_batch,
            verbose=False,
        )
        model = config.model or str(bundled_gguf())
        if model.endswith(".gguf") or Path(model).exists() or model.startswith(("/", "./", "~")):
            path = Path(model).expanduser()
            if not path.is_file():
                raise ConfigError(f"LLM model {path} not found; set llm.model to a .gguf file")
            if config.q8_0_copy:
                path = fast_cpu_copy(path)
            self._llama = Llama(model_path=str(path), **common)
        else:
            # "org/repo:file.gguf" (or "org/repo", taking its first GGUF) from the model hub
            repo, _, filename = model.partition(":")
            self._llama = Llama.from_pretrained(repo_id=repo, filename=filename or "*.gguf", **common)
        self.model_name = model
        self.config = config
        self.context_tokens = config.context_tokens
        self._scheduler = scheduler or Scheduler()
        self._worker = self._scheduler.worker("llm")
        self._contexts = Contexts(self._llama)
        self._template = _template(self._llama)
        self._ahead: list[dict[str, str]] | None = None  # the latest prompt to read ahead
        self._ahead_lock = threading.Lock()
        self._chooser: ToolChooser | None = None  # made at the first request with tools
        # The end-of-message question has a context and a thread of its own: on the LLM's
        # worker it would make the reply's first token wait (or wait behind whole replies). It
        # runs while the reply's first clause is synthesised, when the LLM steps aside.
        self._judge = self._scheduler.worker("llm-judge")
        self._ender: MessageEnd | None = None  # made at the first end-of-message question
        self._grammars: dict[str, Any] = {}  # tool name -> its arguments' grammar

    def count_tokens(self, text: str) -> int:
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def forget(self, messages: list[Message]) -> None:
        history = chat(messages)
        self._worker.post(lambda: self._contexts.forget(history), BACKGROUND)

    def read_ahead(self, messages: list[Message]) -> None:
        """Read ahead the prompt of a reply still to come: `messages` end with the user's words
        heard so far ("" before any), of which all but the last word are read, at background
        priority and on one thread (Whisper's final may run beside it). Only the latest request
        waits; an older one not yet started is dropped. Never blocks."""
        if self._template is None:
            return
        with self._ahead_lock:
            queued, self._ahead = self._ahead is not None, chat(messages)
        if not queued:
            self._worker.post(self._read_ahead, BACKGROUND)

    def _read_ahead(self) -> None:
        """Worker thread: evaluate the tokens of the latest read-ahead prompt past the longest
        prefix the context already holds."""
        with self._ahead_lock:
            messages, self._ahead = self._ahead, None
        if not messages:
            return
        words = messages[-1]["content"].split()
        known = " ".join(words[:-1])
        rendered = self._template(messages=[*messages[:-1], {**messages[-1], "content": known + _CUT}])
        text = rendered.prompt[: rendered.prompt.rindex(_CUT)].rstrip(" ")
        tokens = self._llama.tokenize(text.encode("utf-8"), add_bos=not rendered.added_special, special=True)
        if len(tokens) > self.context_tokens - self.config.max_tokens:
            return  # the reply trims the history first: this prompt is not the one it will read
        self._contexts.switch_to(messages)
        llama = self._llama
        common = llama.longest_token_prefix(llama.input_ids[: llama.n_tokens].tolist(), tokens)
        if common == len(tokens):
            return
        llama.n_tokens = common
        llama._ctx.set_n_threads(1, 1)
        try:
            llama.eval(tokens[common:])
        finally:
            llama._ctx.set_n_threads(self._threads, self._threads_batch)
        log.debug("read ahead %d prompt tokens", len(tokens) - common)

    async def stream(
        self, messages: list[Message], tools: Sequence[Tool] = ()
    ) -> AsyncIterator[str | ToolCall]:
        if tools and messages and messages[-1].role == "user":
            prompt = chat(messages)
            call = await self._worker.run(partial(self._tool_call, prompt, list(tools)), CRITICAL)
            if call is not None:
                yield call
                return
        async for piece in self._generate(messages):
            yield piece

    def _tool_call(self, prompt: list[dict[str, str]], tools: list[Tool]) -> ToolCall | None:
        """Worker thread: the tool the user's words ask for, with its arguments, or None (see
        voicecore.llm.tool_choice)."""
        if self._chooser is None:
            self._chooser = ToolChooser(self._llama, self._render_turn)
        self._pick_threads()
        # as many threads as a prompt gets now: two on a machine others keep busy cost ~20x
        self._chooser.use_threads(self._threads_batch)
        chosen = self._chooser.choose(prompt[-1]["content"], tools)
        self._worker.progressed()
        if chosen is None:
            return None
        if not chosen.parameters.get("properties"):
            return ToolCall(chosen.name, {})
        asked = [*prompt, {"role": "system", "content": arguments_instruction(chosen)}]
        self._contexts.switch_to(asked)
        self._pick_threads()
        fields = flat_fields(chosen)
        if fields is not None and self._template is not None:
            text = self._flat_arguments(asked, fields)
        else:
            text = self._grammar_arguments(asked, chosen)
        self._contexts.now_holds([*asked, {"role": "assistant", "content": text}])
        arguments = parse_arguments(text)
        return ToolCall(chosen.name, arguments) if arguments is not None else None

    def _flat_arguments(self, asked: list[dict[str, str]], fields: list[tuple[str, str]]) -> str:
        """Arguments that are all strings or numbers: the JSON around them is written here and
        only each value generated, up to its closing quote (or the number's end). llama.cpp's
        grammar sampler checks every token of the vocabulary at every step: ~10x slower."""
        prompt = self._template(messages=asked).prompt + "{"
        for n, (name, kind) in enumerate(fields):
            prompt += f'{", " if n else ""}"{name}": ' + ('"' if kind == "string" else "")
            out = self._llama.create_completion(
                prompt,
                max_tokens=MAX_STRING // 3 if kind == "string" else 12,
                temperature=0.0,
                stop=['"', "\n"] if kind == "string" else [",", "}", " ", "\n"],
            )
            value = str(out["choices"][0]["text"])[:MAX_STRING]  # type: ignore[index]
            prompt += value.replace('"', "") + ('"' if kind == "string" else "")
            self._worker.progressed()
        return prompt[prompt.rindex("{") :] + "}"

    def _grammar_arguments(self, asked: list[dict[str, str]], tool: Tool) -> str:
        from llama_cpp import LlamaGrammar

        grammar = self._grammars.get(tool.name)
        if grammar is None:
            schema = json.dumps(arguments_schema(tool))
            grammar = self._grammars[tool.name] = LlamaGrammar.from_json_schema(schema, verbose=False)
        out = self._llama.create_chat_completion(
            messages=asked,  # type: ignore[arg-type]
            grammar=grammar,
            max_tokens=self.config.max_tokens,
            temperature=0.0,
        )
        return str(out["choices"][0]["message"]["content"] or "")  # type: ignore[index]

    async def message_end(self, text: str) -> float | None:
        """P(the person's words are a whole message) (voicecore.llm.message_end); None without
        a chat template (no end-of-message token to ask about) or words."""
        if self._template is None:
            return None
        return await self._judge.run(partial(self._message_end, text), CRITICAL)

    def _message_end(self, text: str) -> float | None:
        """Judge thread: one core, a few dozen tokens, in the gap the reply leaves while its
        first audio is made (or after JUDGE_WAIT if none comes: no reply, a slow one)."""
        self._scheduler.first_audio.wait_for_synthesis(JUDGE_WAIT)
        if self._ender is None:
            rendered = self._template(messages=[{"role": "user", "content": _CUT}]).prompt
            before, _, after = rendered.partition(_CUT)
            self._ender = MessageEnd(self._llama, before, after, threads=1)
        return self._ender.probability(text)

    def _render_turn(self, system: str, user: str) -> tuple[str, str]:
        """The chat template's text before and after a user's words, under one system line."""
        if self._template is None:
            return f"{system}\nUser: ", ""
        rendered = self._template(
            messages=[{"role": "system", "content": system}, {"role": "user", "content": _CUT}]
        )
        before, _, after = rendered.prompt.partition(_CUT)
        return before, after

    async def _generate(self, messages: list[Message]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        # Bounded by construction: at most max_tokens pieces are ever put here.
        pieces: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()
        prompt = chat(messages)

        def hand_over(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, item)
            except RuntimeError:
                stop.set()  # the loop is gone

        gate = self._scheduler.first_audio

        def generate() -> None:
            said: list[str] = []
            first_audio = False  # a first audio is being made: the consumer need not look first
            try:
                self._contexts.switch_to(prompt)
                self._pick_threads()
                step = self._step(self._threads_batch, token=False)  # the prompt
                chunks = self._llama.create_chat_completion(
                    messages=prompt,  # type: ignore[arg-type]
                    stream=True,
                    max_tokens=self.config.max_tokens,
                    temperature=self.config.temperature,
                    top_p=self.config.top_p,
                    repeat_penalty=self.config.repeat_penalty,
                )
                for chunk in chunks:
                    self._worker.progressed()
                    self._stepped(*step)
                    if stop.is_set():
                        break
                    self._pick_threads()  # for the next token
                    piece = chunk["choices"][0]["delta"].get("content")  # type: ignore[index,union-attr]
                    if piece:
                        said.append(str(piece))
                        if first_audio:
                            hand_over(piece)
                        else:  # it may complete the first chunk: Piper gets the cores first
                            first_audio = gate.look(partial(hand_over, piece))
                    gate.wait()  # a reply's first audio being made goes first
                    # Those waits are the scheduler's, bounded: time spent in them is not a stall.
                    self._worker.progressed()
                    step = self._step(self._threads)
            except Exception as e:  # handed to the consumer, raised there
                hand_over(e)
            finally:
                self._contexts.now_holds([*prompt, {"role": "assistant", "content": "".join(said)}])
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
                gate.looked()
        finally:
            stop.set()  # the worker stops after the token in progress
            gate.looked()  # and does not wait for this consumer
            if not job.done():
                job.cancel()  # if it has not started yet, it never will

    def _pick_threads(self) -> None:
        """Worker thread, between two tokens: every core for a lone conversation while no other
        model computes and no other program holds the cores, else one fewer."""
        contended = time.monotonic() < self._contended_until
        scheduler = self._scheduler
        alone = not contended and scheduler.conversations.alone and not scheduler.busy_besides(self._worker)
        threads = self._threads_alone if alone else self._threads_sharing
        batch = self._threads_sharing if contended else self._cores
        if (threads, batch) != (self._threads, self._threads_batch):
            self._threads, self._threads_batch = threads, batch
            self._llama._ctx.set_n_threads(threads, batch)

    @staticmethod
    def _step(threads: int, token: bool = True) -> tuple[int, bool, float, float]:
        return threads, token, time.process_time(), time.perf_counter()

    def _stepped(self, threads: int, token: bool, cpu: float, wall: float) -> None:
        """A step (the prompt, a token) on `threads` threads is done: did they get their cores?"""
        wall = time.perf_counter() - wall
        share = (time.process_time() - cpu) / (threads * wall) if wall > 0 else 1.0
        if not token:
            return  # a prompt's length varies: only its tokens are compared
        fastest, self._fastest = self._fastest, min(self._fastest, wall)
        if threads <= self._threads_sharing or share >= CONTENDED_SHARE:
            return
        if wall > SLOWER * fastest or share < CONTENDED_SHARE / 2:
            if time.monotonic() >= self._contended_until:
                log.info("llama.cpp: other programs hold the cores; one core fewer for a while")
            self._contended_until = time.monotonic() + CONTENDED_FOR

    @property
    def last_progress(self) -> float:
        return self._worker.last_progress

    def close(self) -> None:
        judged = self._judge.close()
        if judged and self._ender is not None:
            self._ender.close()
        if self._worker.close():
            if self._chooser is not None:
                self._chooser.close()
            if judged:  # a judge still decoding reads the weights
                self._llama.close()  # freed now, not during interpreter teardown


def _template(llama: Any) -> Any:
    """The chat template llama-cpp-python formats prompts with, when it is the model's own (a
    Jinja template in the GGUF); None otherwise (nothing is read ahead)."""
    from llama_cpp import llama_chat_format

    source = llama.metadata.get("tokenizer.chat_template")
    if llama.chat_format != "chat_template.default" or llama.chat_handler is not None or not source:
        return None

    def token(i: int) -> str:
        return str(llama._model.token_get_text(i)) if i != -1 else ""

    return llama_chat_format.Jinja2ChatFormatter(
        template=source, eos_token=token(llama.token_eos()), bos_token=token(llama.token_bos())
    )
