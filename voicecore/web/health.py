"""What /readyz answers: is this process able to hold a conversation right now?

Ready means: the models are loaded and warm, the LiveKit server answers HTTP (probed with a short
timeout, the answer cached for a second so a busy prober cannot turn into load), and the agent is
where LiveKit can use it (the worker registered, or in its fixed room).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp

from voicecore.rtc.observer import Observer

PROBE_TIMEOUT = 2.0
PROBE_CACHE = 1.0


class Readiness(Observer):
    def __init__(self, livekit_http_url: str, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.livekit_http_url = livekit_http_url.rstrip("/") + "/"
        self.probe_timeout = probe_timeout
        self.models_ready = False
        # Set by whoever runs the agent: None when LiveKit can use it, else the reason it cannot.
        self.agent_problem: Callable[[], str | None] = lambda: "the agent is not started yet"
        self.rooms: set[str] = set()
        self._probed_at = float("-inf")
        self._probe_problem: str | None = None
        self._lock = asyncio.Lock()

    def on_room_joined(self, room: str) -> None:
        self.rooms.add(room)

    def on_room_left(self, room: str) -> None:
        self.rooms.discard(room)

    async def problems(self, http: aiohttp.ClientSession) -> list[str]:
        """Why this process is not ready; empty when it is."""
        found = []
        if not self.models_ready:
            found.append("the models are loading")
        if (livekit := await self._probe(http)) is not None:
            found.append(livekit)
        elif self.models_ready and (agent := self.agent_problem()) is not None:
            found.append(agent)
        return found

    async def _probe(self, http: aiohttp.ClientSession) -> str | None:
        async with self._lock:  # concurrent checks share one probe
            if time.monotonic() - self._probed_at < PROBE_CACHE:
                return self._probe_problem
            self._probe_problem = await self._get(http)
            self._probed_at = time.monotonic()
            return self._probe_problem

    async def _get(self, http: aiohttp.ClientSession) -> str | None:
        where = self.livekit_http_url
        try:
            timeout = aiohttp.ClientTimeout(total=self.probe_timeout)
            async with http.get(where, timeout=timeout, allow_redirects=False) as response:
                if response.status >= 500:
                    return f"LiveKit at {where} answers HTTP {response.status}"
                return None
        except TimeoutError:
            return f"LiveKit at {where} did not answer within {self.probe_timeout:g} s"
        except aiohttp.ClientError as e:
            return f"LiveKit at {where} is unreachable ({type(e).__name__})"
