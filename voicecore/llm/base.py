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
    # An assistant message that calls a tool (content ""), or a tool message: the call it answers
    tool_call: ToolCall | None = None

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    @classmethod
    def calling(cls, call: ToolCall) -> Message:
        return cls("assistant", "", call)

    @classmethod
    def result(cls, call: ToolCall, content: str) -> Message:
        return cls("tool", content, call)


def chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The messages as a chat template reads them. A tool's call and result become one system
    line, "Result of get_weather: sunny, 21 degrees": the bundled model, never taught tool
    messages, answers from that line in words, where after its own call as JSON followed by a
    "tool" message it went on writing JSON (docs/decisions.md)."""
    out = []
    for m in messages:
        if m.role == "assistant" and m.tool_call is not None:
            continue
        if m.role == "tool":
            name = m.tool_call.name if m.tool_call is not None else "a tool"
            out.append({"role": "system", "content": f"Result of {name}: {m.content}"})
        else:
            out.append(m.as_dict())
    return out


def common_prefix(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items (messages, tokens) `a` and `b` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


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
