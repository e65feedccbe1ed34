"""How many conversations one process takes on, and how it lets them finish at shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence

from voicecore.config import Config
from voicecore.rtc.observer import Observer
from voicecore.rtc.room import AgentRoom
from voicecore.scheduling import Conversations

log = logging.getLogger(__name__)

GPU_CONVERSATIONS = 8  # default capacity with the vLLM engine: not measured here, set your own


def default_capacity(config: Config) -> int:
    """Conversations this process serves at once: `livekit.max_conversations`, or from the
    hardware. On the CPU path each conversation's turn needs about one core for its STT, LLM
    and TTS bursts (the concurrency benchmark, docs/decisions.md)."""
    if config.livekit.max_conversations > 0:
        return config.livekit.max_conversations
    if config.llm.engine == "vllm":
        return GPU_CONVERSATIONS
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class ConversationCount(Observer):
    """Capacity over the conversations of every room of this process (counted once, by the
    models' scheduler): warns once a person beyond capacity is taken on (they are answered, more
    slowly than the others would like) and reports each change."""

    def __init__(
        self, capacity: int, conversations: Conversations, notify: Callable[[str], None] = log.warning
    ) -> None:
        self.capacity = capacity
        self.conversations = conversations
        self.notify = notify
        self.on_change: Callable[[], None] = lambda: None  # the count changed (report the load)
        self.served: set[str] = set()  # rooms that have had a conversation (until their job ends)

    @property
    def per_room(self) -> Counter[str]:
        return self.conversations.per_room()

    @property
    def total(self) -> int:
        return self.conversations.count

    def on_conversation_started(self, room: str, identity: str) -> None:
        self.served.add(room)
        self.on_change()
        if self.total > self.capacity:
            self.notify(
                f"room {room}: {identity} joined: {self.total} conversations, over the capacity of "
                f"{self.capacity} (livekit.max_conversations); answering, but replies will be slower"
            )

    def on_conversation_ended(self, room: str, identity: str) -> None:
        self.on_change()  # a place is free: the server should know before its next dispatch


async def drain_rooms(rooms: Sequence[AgentRoom], grace: float, notify: Callable[[str], None]) -> None:
    """Let the turns in progress in `rooms` finish, up to `grace` seconds; start no new ones."""
    in_turn = sum(c.session.busy for room in rooms for c in room.conversations.values())
    conversations = sum(len(room.conversations) for room in rooms)
    notify(
        f"draining: {in_turn} of {conversations} conversations in a turn, in {len(rooms)} rooms; "
        f"up to {grace:g} s for them to finish"
    )
    unfinished = await asyncio.gather(*(room.drain(grace) for room in rooms))
    if sum(unfinished):
        notify(f"drain: {sum(unfinished)} turns unfinished after {grace:g} s; leaving anyway")
    else:
        notify("drain: every turn finished")
