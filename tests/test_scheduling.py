"""The model workers' queue, without models: who goes next."""

from __future__ import annotations

import asyncio
import threading

from voicecore.scheduling import BACKGROUND, CRITICAL, PriorityWorker


async def test_conversations_take_turns_on_a_model_worker():
    """One conversation that queues job after job (a monologue cut into turns, its interims)
    delays another conversation's job by one of its own at most; priority still comes first."""
    worker = PriorityWorker("turns")
    started, busy, order = threading.Event(), threading.Event(), []
    try:
        holding = asyncio.ensure_future(worker.run(lambda: (started.set(), busy.wait(5))))
        await asyncio.to_thread(started.wait, 5)  # the thread is busy...

        def job(name: str):
            return lambda: order.append(name)

        queued = [  # ... while these queue, in this order
            asyncio.ensure_future(worker.run(job("a1"), CRITICAL, owner="a")),
            asyncio.ensure_future(worker.run(job("a2"), CRITICAL, owner="a")),
            asyncio.ensure_future(worker.run(job("a3"), CRITICAL, owner="a")),
            asyncio.ensure_future(worker.run(job("housekeeping"), BACKGROUND, owner="b")),
            asyncio.ensure_future(worker.run(job("b1"), CRITICAL, owner="b")),
            asyncio.ensure_future(worker.run(job("c1"), CRITICAL, owner="c")),
        ]
        await asyncio.sleep(0.05)
        busy.set()
        await asyncio.gather(holding, *queued)
    finally:
        worker.close()
    assert order == ["a1", "b1", "c1", "a2", "a3", "housekeeping"]
