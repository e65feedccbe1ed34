"""Which tool, if any, a user's words ask for, for chat models that were not taught to call tools
(the bundled SmolLM2-135M), and the call's arguments under a grammar.

Asked to pick a tool, a small model names one at random, and "none" almost never. It does know
how likely a sentence is, though: the words "What's the weather in Paris?" are far likelier after
"The user asks for: the current weather in a city" than after "The user asks for anything". So
each tool is scored by that gain (pointwise mutual information, in nats), all in one batch on a
scoring context that shares the model's weights; the best tool wins if its gain clears
`MIN_GAIN`. The arguments are then generated in the conversation's own context, constrained by
the tool's JSON schema (llama.cpp's grammar), so a call always parses. Figures:
docs/decisions.md.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from voicecore.tools import Tool

MIN_GAIN = 2.5  # nats; chosen on the labelled set in benchmarks/tool_choice.py
BASELINE = "The user asks for anything."
MAX_SEQUENCES = 16  # tools scored per batch, the baseline included
MAX_WORDS = 48  # tokens of the user's words scored: what they ask for is said by then
MAX_DESCRIPTION = 240  # characters of a tool's description read (the batch holds 16 of them)
MAX_STRING = 80  # characters per string argument: a small model can loop inside a string


class ToolChooser:
    """Worker thread only (it uses the model's weights through its own context)."""

    def __init__(self, llama: Any, render: Callable[[str, str], tuple[str, str]]) -> None:
        """`render(system, user)`: the chat template's text before and after the user's words."""
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self._llama = llama
        self._render = render
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 2048  # 16 system lines and their words
        params.n_seq_max = MAX_SEQUENCES
        params.n_threads = params.n_threads_batch = llama.context_params.n_threads_batch
        if hasattr(params, "kv_unified"):
            params.kv_unified = True  # the sequences share the cells; none needs the whole window
        self._ctx = LlamaContext(model=llama._model, params=params, verbose=False)
        self._batch = LlamaBatch(n_tokens=2048, embd=0, n_seq_max=MAX_SEQUENCES, verbose=False)
        self._vocab = llama.n_vocab()
        self._systems: list[str] = []  # the system lines whose tokens the context holds
        self._heads: list[tuple[int, np.ndarray]] = []  # per line: its token count, the last logits

    def use_threads(self, threads: int) -> None:
        self._ctx.set_n_threads(threads, threads)

    def choose(self, user_text: str, tools: Sequence[Tool]) -> Tool | None:
        if not tools or not user_text.strip():
            return None
        gains: list[tuple[float, Tool]] = []
        for start in range(0, len(tools), MAX_SEQUENCES - 1):
            group = tools[start : start + MAX_SEQUENCES - 1]
            scores = self._score(user_text, system_lines(group))
            gains += [(score - scores[0], t) for score, t in zip(scores[1:], group, strict=True)]
        return best_of(gains)

    def gains(self, user_text: str, tools: Sequence[Tool]) -> dict[str, float]:
        """Each tool's gain (for the benchmark and the turn record)."""
        scores = self._score(user_text, system_lines(tools))
        return {t.name: s - scores[0] for s, t in zip(scores[1:], tools, strict=True)}

    def _score(self, user_text: str, systems: list[str]) -> list[float]:
        """log P(user_text | each system line), summed over the words' tokens. The system lines'
        tokens stay in the context between calls (one sequence each): only the words are read."""
        llama, batch = self._llama, self._batch
        if systems != self._systems:
            self._read_systems(systems)
        words = llama.tokenize(user_text.encode("utf-8"), add_bos=False, special=False)[:MAX_WORDS]
        batch.reset()
        for seq, (length, _) in enumerate(self._heads):
            add_tokens(batch, words, seq, start=length)
        self._ctx.decode(batch)
        scores = []
        for seq, (length, first) in enumerate(self._heads):
            rows = [first, *(self._logits(seq * len(words) + k) for k in range(len(words) - 1))]
            pairs = zip(rows, words, strict=True)
            scores.append(float(sum(log_softmax(row)[token] for row, token in pairs)))
            self._ctx.kv_cache_seq_rm(seq, length, -1)  # the words go; the system line stays
        return scores

    def _read_systems(self, systems: list[str]) -> None:
        """Read each system line (and the template up to the user's words) into its sequence."""
        llama, batch = self._llama, self._batch
        self._ctx.kv_cache_clear()
        heads = [
            llama.tokenize(self._render(system, "")[0].encode("utf-8"), add_bos=True, special=True)
            for system in systems
        ]
        batch.reset()
        for seq, head in enumerate(heads):
            add_tokens(batch, head, seq, start=0)
        self._ctx.decode(batch)
        ends = np.cumsum([len(h) for h in heads]) - 1
        self._heads = [(len(h), self._logits(int(end)).copy()) for h, end in zip(heads, ends, strict=True)]
        self._systems = list(systems)

    def _logits(self, index: int) -> np.ndarray:
        return logits_of(self._ctx, index, self._vocab)

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()


def system_lines(tools: Sequence[Tool]) -> list[str]:
    """The neutral line, then one per tool: what the user's words are scored after."""
    return [BASELINE, *(_asks_for(t) for t in tools)]


def best_of(gains: Sequence[tuple[float, Tool]]) -> Tool | None:
    """The tool with the highest gain, if it clears MIN_GAIN."""
    if not gains:
        return None
    gain, best = max(gains, key=lambda g: g[0])
    return best if gain >= MIN_GAIN else None


def _asks_for(tool: Tool) -> str:
    return f"The user asks for: {tool.description[:MAX_DESCRIPTION]}"


def add_tokens(batch: Any, tokens: list[int], seq: int, start: int, logits: bool = True) -> None:
    """Append `tokens` to `batch` for sequence `seq` at positions from `start` (with `logits`:
    each gets its logits)."""
    raw = batch.batch
    for i, token in enumerate(tokens):
        j = raw.n_tokens
        raw.token[j] = token
        raw.pos[j] = start + i
        raw.seq_id[j][0] = seq
        raw.n_seq_id[j] = 1
        raw.logits[j] = logits
        raw.n_tokens += 1


def logits_of(ctx: Any, index: int, vocab: int) -> np.ndarray:
    """The logits of the batch's `index`-th token (a view into the context's buffer)."""
    pointer = ctx.get_logits_ith(index)
    return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (vocab,))


def log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def arguments_schema(tool: Tool) -> dict[str, Any]:
    """The tool's parameters with every string bounded (see MAX_STRING)."""

    def bound(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: bound(v) for k, v in node.items()}
            if out.get("type") == "string" and "enum" not in out:
                out.setdefault("maxLength", MAX_STRING)
            return out
        if isinstance(node, list):
            return [bound(v) for v in node]
        return node

    return bound(tool.parameters)


def flat_fields(tool: Tool) -> list[tuple[str, str]] | None:
    """The required arguments, in order, with their JSON type, when each is a plain string,
    integer or number and nothing else is required; None otherwise (the grammar writes those)."""
    properties = tool.parameters.get("properties", {})
    required = tool.parameters.get("required", list(properties))
    fields = []
    for name in required:
        spec = properties.get(name, {})
        kind = spec.get("type")
        if kind not in ("string", "integer", "number") or set(spec) - {"type", "title", "description"}:
            return None
        fields.append((name, kind))
    return fields or None


def arguments_instruction(tool: Tool) -> str:
    return f"Call {tool.name} ({tool.description}) now: write its arguments as JSON."


def parse_arguments(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
