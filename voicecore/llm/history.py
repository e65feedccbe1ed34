"""Chat history kept as a stable prefix, trimmed to the context window.

Engines cache the key/values of the longest prompt prefix they saw last (llama.cpp: first token
307 ms -> 66 ms for SmolLM2 on 2 cores). So messages are only ever appended, or the oldest
turns dropped as a block when the window is full, never rewritten in the middle.
"""

from __future__ import annotations

from collections.abc import Callable

from voicecore.llm.base import Message

PER_MESSAGE_OVERHEAD = 6  # role markers of a chat template


class ChatHistory:
    def __init__(self, system_prompt: str) -> None:
        self.system = Message("system", system_prompt)
        self.turns: list[Message] = []

    def add_user(self, text: str) -> None:
        self.turns.append(Message("user", text))

    def add_assistant(self, text: str) -> None:
        self.turns.append(Message("assistant", text))

    def replace_last_assistant(self, text: str) -> None:
        """Cut the last reply to what the user actually heard (barge-in)."""
        if self.turns and self.turns[-1].role == "assistant":
            if text.strip():
                self.turns[-1].content = text
            else:
                self.turns.pop()  # nothing was heard

    def drop_last_user(self) -> None:
        if self.turns and self.turns[-1].role == "user":
            self.turns.pop()

    def messages(self) -> list[Message]:
        return [self.system, *self.turns]

    def trim(self, budget_tokens: int, count_tokens: Callable[[str], int]) -> None:
        """Drop the oldest exchanges until the prompt fits in `budget_tokens`."""

        def cost(m: Message) -> int:
            return count_tokens(m.content) + PER_MESSAGE_OVERHEAD

        total = sum(cost(m) for m in self.messages())
        while total > budget_tokens and len(self.turns) > 1:
            dropped = self.turns.pop(0)
            total -= cost(dropped)
            # keep user/assistant alternation: never start with an assistant message
            while self.turns and self.turns[0].role == "assistant":
                total -= cost(self.turns.pop(0))
        if total > budget_tokens and self.turns:
            # A single monologue longer than the window: keep its end, the freshest words.
            last = self.turns[-1]
            spare = budget_tokens - (total - cost(last))
            words = last.content.split()
            while words and count_tokens(" ".join(words)) + PER_MESSAGE_OVERHEAD > spare:
                words = words[max(1, len(words) // 10) :]
            last.content = " ".join(words)
