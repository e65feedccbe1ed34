"""Small asyncio helpers shared by the room, the worker and `serve`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def wait_first(*awaitables: Awaitable[object]) -> None:
    """Wait until the first of `awaitables` is done; cancel the others (and wait for them)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
