"""The LLM stage: a chat history in, a cancellable stream of text pieces out."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from voicecore.tools import Tool, ToolCall

Role = Literal["system", "user", "assistant", "tool"]


@dataclass
class Message:
    role: Role
    content: str
    tool_call: ToolCall | None = None  # an assistant message that calls a tool (content "")

    def as_dict(self) -> dict[str, str]:
        """As chat templates read it; a tool call as its JSON, which the model then sees as
        what it said (templates that know tools are given `tools` separately)."""
        if self.tool_call is not None:
            return {"role": self.role, "content": self.tool_call.as_json()}
        return {"role": self.role, "content": self.content}

    @classmethod
    def calling(cls, call: ToolCall) -> Message:
        return cls("assistant", "", call)


class LLMEngine(Protocol):
    context_tokens: int

    def stream(self, messages: list[Message], tools: Sequence[Tool] = ()) -> AsyncIterator[str | ToolCall]:
        """Stream the reply to `messages` piece by piece. With `tools`, the reply may instead be
        one `ToolCall` (and nothing else): the caller runs it and asks again with the result.

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
