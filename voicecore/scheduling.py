"""How the models of one process share the CPU: one `Scheduler`, owned by `Models`.

    Scheduler
      .worker(name)   one thread per model, serving requests by priority (`PriorityWorker`)
      .first_audio    while a reply's first audio is synthesised, the LLM waits between tokens
      .conversations  the conversations open now (one alone may take every core)

Models are shared by every session. Work on the critical path of a turn (an LLM reply, TTS) goes
ahead of background work (letting go of an ended conversation's LLM context); interim transcripts
have a Whisper worker of their own, beside the one for final transcripts. Within one priority the
conversations (a job's `owner`) take turns, so one that queues job after job (a monologue) delays
another's by one job at most. The model code releases the GIL, so the event loop keeps running
while a worker computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

CRITICAL = 0  # final transcripts, replies' first audio
FOLLOW_UP = 1  # the rest of a reply's speech: it plays for seconds, a new reply's first chunk goes first
BACKGROUND = 2  # housekeeping: an ended conversation's LLM context let go

CLOSE_GRACE = 2.0  # seconds a closing worker gives the call in progress


class FirstAudioGate:
    """While a reply's first audio is being synthesised, the LLM waits between tokens.

    The rest of the reply is not urgent (the first chunk plays for a second or more), so the LLM
    steps aside, token by token, for at most `MAX_WAIT` each time, and the first audio leaves
    sooner. The reply closes the gate when it hands its first chunk to TTS (`synthesising`);
    until then the LLM lets its consumer look at each piece before computing the next (`look`),
    so the token after the one that completed the first chunk does not run beside TTS.
    """

    MAX_WAIT = 0.5

    def __init__(self) -> None:
        self._open = threading.Condition()
        self._synthesising = 0
        self._looked = 0  # pieces the LLM's consumers have looked at, in all

    @contextlib.contextmanager
    def synthesising(self) -> Iterator[None]:
        with self._open:
            self._synthesising += 1
            self._open.notify_all()
        try:
            yield
        finally:
            with self._open:
                self._synthesising -= 1
                self._open.notify_all()

    def looked(self) -> None:
        """From the event loop: a consumer has dealt with the piece it was given (it asks for the
        next one, or has started the first audio)."""
        with self._open:
            self._looked += 1
            self._open.notify_all()

    def look(self, handed_over: Callable[[], None]) -> bool:
        """From the LLM's worker: hand a piece over (`handed_over`) and wait until the consumer
        has looked at it or a first audio is being synthesised. True if one is."""
        with self._open:
            before = self._looked
        handed_over()
        with self._open:
            self._open.wait_for(lambda: self._looked > before or self._synthesising > 0, self.MAX_WAIT)
            return self._synthesising > 0

    def wait_for_synthesis(self, timeout: float) -> bool:
        """From a worker thread: until a first audio is being synthesised (the LLM steps aside
        then, leaving a core), at most `timeout` seconds. True if one is."""
        with self._open:
            return self._open.wait_for(lambda: self._synthesising > 0, timeout)

    def wait(self) -> None:
        """From a worker thread, between two steps of less urgent work."""
        with self._open:
            self._open.wait_for(lambda: self._synthesising == 0, self.MAX_WAIT)


class Conversations:
    """The conversations this process holds open, each in a room ("" outside LiveKit), known
    weakly: one never closed is forgotten once collected. With one alone, its models run one after
    another and a model may take every core between two of its steps; with two or more, another's
    speech may start a model at any moment. The dispatch worker's load counts them too."""

    def __init__(self) -> None:
        self._open: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

    def opened(self, conversation: object, room: str = "") -> None:
        self._open[conversation] = room

    def closed(self, conversation: object) -> None:
        self._open.pop(conversation, None)

    @property
    def count(self) -> int:
        return len(self._open)

    @property
    def alone(self) -> bool:
        """At most one conversation is open: its models run one after another."""
        return self.count <= 1

    def per_room(self) -> Counter[str]:
        return Counter(self._open.values())


class Scheduler:
    """The model workers of one process and what they coordinate through. Built once with the
    models (`Models.scheduler`) and handed to each engine; nothing here is a module global, so
    two `Models` in one process (tests, benchmarks) never see each other's work."""

    def __init__(self) -> None:
        self.first_audio = FirstAudioGate()
        self.conversations = Conversations()
        self._workers: weakref.WeakSet[PriorityWorker] = weakref.WeakSet()

    def worker(self, name: str, max_pending: int = 256) -> PriorityWorker:
        """A new thread that owns one model."""
        worker = PriorityWorker(name, max_pending)
        self._workers.add(worker)
        return worker

    def busy_besides(self, worker: PriorityWorker) -> bool:
        """Another model of these is computing now (so it wants CPU cores too)."""
        return any(other.busy for other in list(self._workers) if other is not worker)


_Job = tuple[Callable[[], Any], asyncio.Future[Any] | None]


class PriorityWorker:
    def __init__(self, name: str, max_pending: int = 256) -> None:
        self.name = name
        self._max_pending = max_pending
        # priority -> owner -> that owner's jobs, oldest first; the first owner's turn is next
        self._queues: dict[int, OrderedDict[Hashable, deque[_Job]]] = {}
        self._pending = 0
        self._ready = threading.Condition()
        self._closed = False
        self.last_progress = time.monotonic()  # a job ended, or told of a step (a token)
        self.busy = False  # a job is running
        self._thread = threading.Thread(target=self._run, name=f"voicecore-{name}", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[[], T], priority: int = CRITICAL, owner: Hashable = None) -> T:
        """Run `fn` on the worker thread. Cancelling the await drops the job if not yet started.
        `owner` (a conversation): owners take turns among the jobs of one priority."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError(f"{self.name} worker is closed")
            if self._pending >= self._max_pending:
                raise RuntimeError(f"{self.name} worker is overloaded ({self._max_pending} queued)")
            self._queue(priority, owner, (fn, future))
        return await future

    def post(self, fn: Callable[[], object], priority: int = BACKGROUND, owner: Hashable = None) -> None:
        """Run `fn` on the worker thread in its turn; nobody waits for it (an error is logged)."""
        with self._ready:
            if self._closed or self._pending >= self._max_pending:
                return  # housekeeping: skipping it loses nothing that matters
            self._queue(priority, owner, (fn, None))

    def _queue(self, priority: int, owner: Hashable, job: _Job) -> None:
        self._queues.setdefault(priority, OrderedDict()).setdefault(owner, deque()).append(job)
        self._pending += 1
        self._ready.notify()

    def _next(self) -> _Job:
        """The next job (the lock held, one pending): the most urgent priority's next owner's."""
        priority = min(p for p, owners in self._queues.items() if owners)
        owners = self._queues[priority]
        owner, jobs = owners.popitem(last=False)
        job = jobs.popleft()
        if jobs:
            owners[owner] = jobs  # back of the line
        self._pending -= 1
        return job

    def progressed(self) -> None:
        """From inside a long job (a reply, token by token): the model is not stuck."""
        self.last_progress = time.monotonic()

    def close(self, grace: float = CLOSE_GRACE) -> bool:
        """Take no more jobs, drop the queued ones, and wait up to `grace` seconds for the one in
        progress (a token, a transcription: well under a second). True once the thread is gone:
        only then may the model it uses be freed."""
        with self._ready:
            self._closed = True
            dropped = [job for owners in self._queues.values() for jobs in owners.values() for job in jobs]
            self._queues, self._pending = {}, 0
            self._ready.notify()
        for _, future in dropped:
            if future is not None:
                _resolve(future, None, RuntimeError(f"{self.name} worker is closed"))
        if threading.current_thread() is not self._thread:
            self._thread.join(grace)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if self._closed and not self._pending:
                    return
                fn, future = self._next()
            if future is not None and future.cancelled():
                continue
            self.busy = True
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                if future is None:
                    log.error("%s worker: a posted job failed", self.name, exc_info=e)
                else:
                    _resolve(future, None, e)
            else:
                if future is not None:
                    _resolve(future, result, None)
            finally:
                self.busy = False
                self.last_progress = time.monotonic()


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    try:
        future.get_loop().call_soon_threadsafe(settle)
    except RuntimeError:
        pass  # the loop is gone; nobody waits for this result


@contextlib.asynccontextmanager
async def stall_timeout(seconds: float, last_progress: Callable[[], float]) -> AsyncIterator[None]:
    """Like `asyncio.timeout(seconds)`, but the clock restarts whenever the model makes progress
    (`last_progress()`, a `time.monotonic()`): a request waiting in line behind other
    conversations' work is not hung; a model stuck for `seconds` in one call is."""
    loop = asyncio.get_running_loop()
    start = loop.time()  # the same clock as time.monotonic()
    async with asyncio.timeout(None) as timeout:
        handle: asyncio.TimerHandle

        def check() -> None:
            nonlocal handle
            deadline = max(start, last_progress()) + seconds
            if deadline <= loop.time():
                timeout.reschedule(loop.time())  # no progress for `seconds`: expire now
            else:
                handle = loop.call_at(deadline, check)

        handle = loop.call_at(start + seconds, check)
        try:
            yield
        finally:
            handle.cancel()
