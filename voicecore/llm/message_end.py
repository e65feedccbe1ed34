"""How likely the person's words are a whole message, as the chat model itself reads them: the
probability that the chat template's end-of-message token comes right after the words. The turn
machine turns it into the endpoint delay (voicecore/turn/endpoint.py).

The words are read in lower case without punctuation: Whisper ends fragments with a full stop
or a question mark ("What is the capital of?"), and the model would trust it. Figures:
docs/decisions.md.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from voicecore.llm.tool_choice import add_tokens, log_softmax, logits_of

MAX_TOKENS = 96  # the last words carry the answer; the start of a monologue does not
_NOT_WORDS = re.compile(r"[^\w\s']")


def plain_words(text: str) -> str:
    """Lower case, punctuation gone, spaces collapsed."""
    return " ".join(_NOT_WORDS.sub(" ", text.lower()).split())


class MessageEnd:
    """One thread at a time: its own small context on the chat model's weights, so the reply's
    cached prompt stays where it is (the weights are only read: a reply may decode meanwhile)."""

    def __init__(self, llama: Any, before: str, end: str, threads: int) -> None:
        """`before`: the template's text before a user's words; `end`: the text that closes them
        (its first token is the end-of-message token)."""
        import llama_cpp
        from llama_cpp._internals import LlamaBatch, LlamaContext

        self._llama = llama
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = 256
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = threads
        self._ctx = LlamaContext(model=llama._model, params=params, verbose=False)
        self._batch = LlamaBatch(n_tokens=256, embd=0, n_seq_max=1, verbose=False)
        self._vocab = llama.n_vocab()
        self._head = self._tokens(before, bos=True)
        self._end = self._tokens(end)[0]
        self._head_read = False

    def probability(self, text: str) -> float | None:
        """P(the message ends here) for `text`; None when there are no words."""
        words = plain_words(text)
        if not words:
            return None
        tokens = self._tokens(words, special=False)[-MAX_TOKENS:]
        ctx, batch, head = self._ctx, self._batch, len(self._head)
        if not self._head_read:  # the template's head stays in the context between questions
            batch.reset()
            add_tokens(batch, self._head, 0, start=0, logits=False)
            ctx.decode(batch)
            self._head_read = True
        ctx.kv_cache_seq_rm(0, head, -1)
        batch.reset()
        add_tokens(batch, tokens, 0, start=head, logits=False)
        batch.batch.logits[batch.batch.n_tokens - 1] = True
        ctx.decode(batch)
        after_words = log_softmax(logits_of(ctx, batch.batch.n_tokens - 1, self._vocab))
        return float(np.exp(after_words[self._end]))

    def _tokens(self, text: str, bos: bool = False, special: bool = True) -> list[int]:
        """`special`: the template's markers read as such; never for the person's words."""
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=bos, special=special))

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()
