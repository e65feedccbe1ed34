"""Is the person done? The final words before a pause go to the chat model, whose P(whole
message) sets the endpoint delay (turn/endpoint.py). One question at a time: a newer pause's
replaces the one in flight. A failing or missing answer leaves the ceiling to end the turn:
slower, never stuck.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from voicecore.turn.machine import TurnMachine
from voicecore.turn.state import TurnState

log = logging.getLogger(__name__)

Ask = Callable[[str], Awaitable[float | None]]


class EndOfTurnJudge:
    def __init__(self, machine: TurnMachine, ask: Ask | None) -> None:
        """`ask(words)`: the LLM engine's `message_end`, or None for an engine without one."""
        self._machine = machine
        self._ask = ask
        self._task: asyncio.Task[None] | None = None

    def heard(self, record: dict[str, Any], text: str) -> None:
        """The final words of the utterance; `record`: the turn's extra fields, which get the
        answer and what it cost."""
        machine = self._machine
        machine.on_transcript(text)
        if self._ask is None or machine.state is not TurnState.USER_PAUSED:
            return  # committed already (or the person speaks again): nothing left to decide
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.create_task(self._judge(self._ask, text, record, machine.speech_end))

    async def _judge(self, ask: Ask, text: str, record: dict[str, Any], speech_end: int) -> None:
        started = time.monotonic()
        try:
            probability = await ask(text)
        except Exception:
            log.exception("the end-of-message question failed; the ceiling ends this turn")
            return
        record["end_probability"] = None if probability is None else float(f"{probability:.3g}")
        record["end_judged_ms"] = round((time.monotonic() - started) * 1000, 1)
        self._machine.on_end_probability(probability, speech_end)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
