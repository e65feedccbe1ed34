"""The llama.cpp contexts of recent conversations: one conversation's KV cells are kept when
another speaks, and put back when it speaks again, so only its new words are read."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

from voicecore.llm.base import common_prefix

SAVED_CONTEXTS_BYTES = 128 << 20  # KV cells kept for conversations switched away from


@dataclass
class _Kept:
    messages: list[dict[str, str]]  # what the context held: a prompt and the reply generated to it
    tokens: list[int]
    cells: ctypes.Array[ctypes.c_uint8]  # llama.cpp's KV cells of sequence 0


class Contexts:
    """The LLM context of each recent conversation, known by the messages it holds. Worker thread
    only. A request goes to the context sharing the most leading messages with it: the current
    one unless a kept one shares more than it and the system prompt; llama-cpp-python then
    reads only the tokens past the longest common prefix."""

    def __init__(self, llama: Any, max_bytes: int = SAVED_CONTEXTS_BYTES) -> None:
        self._llama = llama
        self._max_bytes = max_bytes
        self._holds: list[dict[str, str]] = []
        self._kept: list[_Kept] = []  # oldest first
        self.switches = 0

    def now_holds(self, messages: list[dict[str, str]]) -> None:
        self._holds = messages

    def switch_to(self, prompt: list[dict[str, str]]) -> None:
        here = common_prefix(self._holds, prompt)
        best = max(self._kept, key=lambda k: common_prefix(k.messages, prompt), default=None)
        best_shares = common_prefix(best.messages, prompt) if best is not None else 0
        if here > 1 and best_shares <= here:
            return  # the context in place is this conversation's
        if best is not None and best_shares > 1:
            self._kept.remove(best)
        else:
            best = None  # a new conversation: it starts after the system prompt in place
        if len(self._holds) > 1:
            self._keep()  # another conversation's, which will speak again
        if best is not None:
            self._restore(best)
            self.switches += 1

    def forget(self, history: list[dict[str, str]]) -> None:
        """Drop the contexts kept for the conversation that ended with `history`: each holds a
        prompt that `history` begins with, and the reply to it. Kept ones are otherwise let go
        only when the bound is reached, so ended conversations held up to SAVED_CONTEXTS_BYTES."""
        self._kept = [k for k in self._kept if not _ends_in(k.messages, history)]
        if _ends_in(self._holds, history):
            self._holds = self._holds[:1]  # the system prompt is all worth keeping in place

    def _keep(self) -> None:
        import llama_cpp

        ctx = self._llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        cells = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, cells, size, 0) != size:
            return
        tokens = self._llama.input_ids[: self._llama.n_tokens].tolist()
        self._kept.append(_Kept(self._holds, tokens, cells))
        while sum(len(k.cells) for k in self._kept) > self._max_bytes:
            self._kept.pop(0)

    def _restore(self, kept: _Kept) -> None:
        import llama_cpp

        self._llama._ctx.kv_cache_seq_rm(0, -1, -1)
        if not llama_cpp.llama_state_seq_set_data(self._llama._ctx.ctx, kept.cells, len(kept.cells), 0):
            self._llama.n_tokens = 0  # an empty context: the prompt is read whole
            self._holds = []
            return
        self._llama.input_ids[: len(kept.tokens)] = kept.tokens
        self._llama.n_tokens = len(kept.tokens)
        self._holds = kept.messages


def _ends_in(kept: list[dict[str, str]], history: list[dict[str, str]]) -> bool:
    """`kept` (a prompt and its reply) is an earlier state of the conversation `history`."""
    prompt = kept[:-1]
    return len(prompt) > 1 and history[: len(prompt)] == prompt
