"""Chat history kept as a stable prefix, trimmed to the context window before each prompt.

Engines cache the key/values of the longest prompt prefix they saw last, so messages are only
ever appended, or the oldest exchanges dropped as a block when the window is full, never
rewritten in the middle. The history owns its changes: a reply's exchange goes in once the reply
is over (`commit`, with the reply as heard), words the agent said on its own with `add_said`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from voicecore.llm.base import Message

PER_MESSAGE_OVERHEAD = 6  # role markers of a chat template


class ChatHistory:
    def __init__(self, system_prompt: str) -> None:
        self.system = Message("system", system_prompt)
        self._turns: list[Message] = []

    @property
    def turns(self) -> tuple[Message, ...]:
        """The user's and the agent's messages, oldest first (read-only)."""
        return tuple(self._turns)

    def messages(self) -> list[Message]:
        return [self.system, *self._turns]

    def prompt(self, user_text: str, budget_tokens: int, count_tokens: Callable[[str], int]) -> list[Message]:
        """The messages to answer `user_text` with, within `budget_tokens` (the context window
        less the reply's own tokens). The oldest exchanges are dropped for good to make room; the
        new message counts, and one longer than the window keeps its end, the freshest words."""

        def cost(m: Message) -> int:
            return count_tokens(m.content) + PER_MESSAGE_OVERHEAD

        user = Message("user", user_text)
        total = cost(self.system) + sum(cost(m) for m in self._turns) + cost(user)
        while total > budget_tokens and self._turns:
            total -= cost(self._turns.pop(0))
            # keep user/assistant alternation: never start with an assistant or a tool message
            while self._turns and self._turns[0].role in ("assistant", "tool"):
                total -= cost(self._turns.pop(0))
        if total > budget_tokens:
            spare = budget_tokens - cost(self.system)
            words = user_text.split()
            while words and count_tokens(" ".join(words)) + PER_MESSAGE_OVERHEAD > spare:
                words = words[max(1, len(words) // 10) :]
            user = Message("user", " ".join(words))
        return [*self.messages(), user]

    def commit(self, user_text: str, reply: str, steps: Sequence[Message] = ()) -> None:
        """A turn is over: the person's words, the tool calls and results the reply was made
        with, and the reply as they heard it (nothing heard: no assistant message)."""
        self._turns.append(Message("user", user_text))
        self._turns += steps
        if reply.strip():
            self._turns.append(Message("assistant", reply))

    def add_said(self, text: str) -> None:
        """Words the agent said on its own (a greeting), as heard."""
        if text.strip():
            self._turns.append(Message("assistant", text))
