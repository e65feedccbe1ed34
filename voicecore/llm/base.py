"""The LLM stage: a chat history in, a cancellable stream of text pieces out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]


@dataclass
class Message:
    role: Role
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


class LLMEngine(Protocol):
    context_tokens: int

    def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        """Stream the reply to `messages` piece by piece.

        Closing the iterator (or cancelling the task that iterates it) stops generation; the
        engine is free for the next request as soon as the current token is done.
        """
        ...

    def read_ahead(self, messages: list[Message]) -> None:
        """The person is still speaking: `messages` end with the user's words so far. An engine
        may read that prompt ahead (all but the last word, which may change) so that the reply
        reads less. A hint: never blocks, may do nothing."""
        ...

    def count_tokens(self, text: str) -> int: ...

    def forget(self, messages: list[Message]) -> None:
        """The conversation that got as far as `messages` is over: drop what the engine keeps
        for it (llama.cpp: its saved context). Never blocks."""
        ...

    @property
    def last_progress(self) -> float:
        """time.monotonic() of the last token or finished request, any session's: stage timeouts
        restart from it (waiting in line is not a hang)."""
        ...

    def close(self) -> None: ...
