"""What happens in the agent's rooms, for whoever watches the process (Prometheus, /readyz).

Called synchronously on the event loop, from the rooms' own callbacks: an observer records and
returns, it never awaits or blocks. Override what you need; every method defaults to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from voicecore.metrics import TurnRecord


class Observer:
    def on_room_joined(self, room: str) -> None: ...

    def on_room_left(self, room: str) -> None: ...

    def on_conversation_started(self, room: str, identity: str) -> None:
        """A person's Session began (one per person in a room)."""

    def on_conversation_ended(self, room: str, identity: str) -> None: ...

    def on_turn(self, room: str, identity: str, record: TurnRecord) -> None:
        """A turn is over (answered or interrupted): its latency record."""

    def on_error(self, stage: str) -> None:
        """Something failed and the conversation went on without it: `stage` says where
        (stt, llm, tts: a model call; room: a room task; job: a dispatched room; send: a
        transcript or state update that did not reach the room)."""


class Observers(Observer):
    """Several observers as one, in order."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers = list(observers)

    def on_room_joined(self, room: str) -> None:
        for observer in self.observers:
            observer.on_room_joined(room)

    def on_room_left(self, room: str) -> None:
        for observer in self.observers:
            observer.on_room_left(room)

    def on_conversation_started(self, room: str, identity: str) -> None:
        for observer in self.observers:
            observer.on_conversation_started(room, identity)

    def on_conversation_ended(self, room: str, identity: str) -> None:
        for observer in self.observers:
            observer.on_conversation_ended(room, identity)

    def on_turn(self, room: str, identity: str, record: TurnRecord) -> None:
        for observer in self.observers:
            observer.on_turn(room, identity, record)

    def on_error(self, stage: str) -> None:
        for observer in self.observers:
            observer.on_error(stage)
