"""The agent in LiveKit rooms until told to stop, then leave cleanly. `voicecore serve` runs
these through `voicecore.service`, which owns signals, models and the HTTP side.

Two ways in: a fixed room (`room=NAME`: mint an agent token, join, rejoin if thrown out) or
dispatch (register as an agent worker; LiveKit assigns rooms). Either way the models are loaded
once, before, and shared by every room.

Told to stop, either way drains first: no new turn starts, the turns in progress get up to
`livekit.drain_timeout` seconds to finish (the reply being spoken is heard to its end), then the
agent leaves. A second signal (handled by `voicecore.service`) cancels the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from livekit import rtc

from voicecore.config import Config
from voicecore.pipeline import Models
from voicecore.rtc.capacity import ConversationCount, default_capacity, drain_rooms
from voicecore.rtc.observer import Observer, Observers
from voicecore.rtc.room import REJOIN_MAX, AgentRoom
from voicecore.rtc.tasks import Backoff, wait_first
from voicecore.rtc.token import Credentials, agent_token
from voicecore.rtc.worker import RECONNECT_MIN, DispatchWorker
from voicecore.tools import Tool


async def serve_room(
    models: Models,
    config: Config,
    creds: Credentials,
    room: str,
    stop: asyncio.Event,
    notify: Callable[[str], None] = print,
    observer: Observer | None = None,
    tools: Sequence[Tool] = (),
) -> None:
    """Stay in `room` until `stop`: join, and join again if the connection is lost for good.
    At `stop`, let the turns in progress finish (up to `livekit.drain_timeout`), then leave.
    `tools`: the agent's besides its own (an MCP server's)."""
    identity = config.livekit.identity
    counter = ConversationCount(
        default_capacity(config), models.scheduler.conversations, notify
    )  # warns above capacity
    observer = Observers([observer or Observer(), counter])
    retry = Backoff(RECONNECT_MIN, REJOIN_MAX)  # short cap: back within seconds of the server
    while not stop.is_set():
        token = agent_token(creds, room, identity, config.livekit.agent_name)
        try:
            agent = await AgentRoom.join(
                models, config, creds.ws_url, token, observer=observer, rejoin=True, creds=creds, tools=tools
            )
        except Exception as e:
            delay = retry.next()
            notify(f"could not join room {room} on {creds.ws_url} ({e}); retrying in {delay:.1f} s")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            continue
        retry.reset()
        notify(f"joined room {room} on {creds.ws_url} as {identity}")
        try:
            await wait_first(stop.wait(), agent.wait_closed())
            if stop.is_set() and not agent.closed:
                await drain_rooms([agent], config.livekit.drain_timeout, notify)
        finally:
            await agent.aclose()
            notify(f"left room {room}")
        if agent.disconnect_reason == rtc.DisconnectReason.DUPLICATE_IDENTITY:
            # Rejoining would throw the other one out, and it us, forever.
            notify(f"another participant joined room {room} as {identity}; not rejoining")
            return


async def serve_dispatch(
    models: Models,
    config: Config,
    creds: Credentials,
    stop: asyncio.Event,
    notify: Callable[[str], None] = print,
    observer: Observer | None = None,
) -> None:
    """Register as an agent worker until `stop`, then leave every room and unregister."""
    worker = DispatchWorker(models, config, creds, notify=notify, observer=observer)
    await run_worker(worker, stop, notify)


async def run_worker(worker: DispatchWorker, stop: asyncio.Event, notify: Callable[[str], None]) -> None:
    """Run `worker` until `stop`; then take no new rooms, let the turns in progress finish (up
    to `livekit.drain_timeout`), leave every room and unregister."""
    notify(f"registering agent worker {worker.agent_name!r} on {worker.url}")
    running = asyncio.create_task(worker.run(), name="agent-worker")
    try:
        await wait_first(stop.wait(), asyncio.shield(running))
        if stop.is_set():
            await worker.drain(worker.config.livekit.drain_timeout)
    finally:
        await worker.aclose()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            async with asyncio.timeout(5.0):
                await running
        notify("agent worker stopped")
