"""Small asyncio helpers shared by the room, the worker and `serve`: racing waits, retry
backoff, and asking a LiveKit server whether it is up."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable

import aiohttp

PROBE_TIMEOUT = 1.0  # a server that takes longer to answer plain HTTP is not ready for rooms


async def wait_first(*awaitables: Awaitable[object]) -> None:
    """Wait until the first of `awaitables` is done; cancel the others (and wait for them)."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Backoff:
    """Waits between retries: doubling from `first` up to `cap`, each +-20 % at random so that
    many clients of one restarted server do not all come back in the same instant."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first


async def server_answers(url: str) -> bool:
    """Whether the LiveKit server at `url` (ws:// or http://, s or not) answers HTTP below 500
    (livekit-server answers "OK" on /; a proxy in front of a dead one says 502 or 503)."""
    http_url = "http" + url[2:] if url.startswith("ws") else url
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT)) as http,
            http.get(http_url.rstrip("/") + "/") as response,
        ):
            return response.status < 500
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
