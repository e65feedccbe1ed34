"""The dispatch worker: register with LiveKit and take the rooms it hands out (the scale-out path).

The protocol is livekit_agent.proto, as binary protobuf frames on `ws(s)://<server>/agent`
(header `Authorization: Bearer <JWT with the agent grant>`):

    worker                                      server
    register(RegisterWorkerRequest)      --->
                                         <---   register(RegisterWorkerResponse: worker_id)
    update_worker(status, load, jobs)    --->   on every change and every STATUS_INTERVAL
                                         <---   availability(AvailabilityRequest: job)
    availability(job_id, available,      --->   refused at capacity: the server asks another
      participant identity and name)            worker
                                         <---   assignment(JobAssignment: job, url, token)
    [join job.room with the token]
    update_job(JS_RUNNING)               --->
                                         <---   termination(job_id): dispatch deleted, room gone
    [leave] update_job(JS_SUCCESS)       --->
    ping(timestamp)                      --->
                                         <---   pong

The server picks among WS_AVAILABLE workers at random, weighted by 1 - load. What costs CPU is
not rooms but conversations (people being listened to, each with their own VAD, turns and
replies), so load is conversations / `max_conversations`, counted over every room, a room with
nobody in it yet (or promised, not yet assigned) as one. At capacity, or at `max_jobs` rooms, the
worker reports WS_FULL and refuses availability requests, so a burst of dispatches is spread over
other workers (or waits) instead of being accepted and served late. Someone who joins a room the
agent already serves is answered even above capacity (a silent agent is worse than a slow one);
one warning line says so.

Everyone left a room: the agent stays while LiveKit keeps the room (its `departure_timeout`, or
`livekit.rejoin_wait`), because LiveKit dispatches an agent when a room is created, not when a
person joins one that exists; the job ends when the server closes the room.

Shutdown drains: the worker reports WS_FULL and refuses every new job at once, lets the turns in
progress finish for up to `drain_timeout` seconds (`AgentRoom.drain`), then leaves every room
(each job reported JS_SUCCESS) and closes the connection.

When the connection drops (server restart, network), the worker reconnects with exponential
backoff and registers again; rooms it is in stay joined (the RTC connection is separate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
from livekit.protocol import agent as proto
from livekit.protocol import models as proto_models

from voicecore import memory
from voicecore.config import Config
from voicecore.pipeline import Models
from voicecore.rtc.capacity import ConversationCount, default_capacity, drain_rooms
from voicecore.rtc.observer import Observer, Observers
from voicecore.rtc.room import AgentRoom
from voicecore.rtc.tasks import wait_first
from voicecore.rtc.token import Credentials, worker_token
from voicecore.tools import Tool

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
SERVER_TARGET_LOAD = 0.7  # livekit-server's agents.target_load default: no job at or above it
STATUS_INTERVAL = 2.5  # seconds between load reports (what livekit-agents sends)
PING_INTERVAL = 10.0
HEARTBEAT = 15.0  # websocket ping; a server that stops answering is dropped after this
CONNECT_TIMEOUT = 10.0
REGISTER_TIMEOUT = 10.0
ASSIGNMENT_TIMEOUT = 15.0  # the server gives up on an availability answer after 10 s
RECONNECT_MIN = 0.5
RECONNECT_MAX = 2.0  # a restarted server has the worker back within seconds
LEAVE_TIMEOUT = 10.0  # per room, at shutdown
# A room's last callbacks (the SDK's events for it, tasks finishing) may still hold it just after
# it closes: collected at once, it sometimes survived (about one room in ten in the tests) and
# waited for Python's next full collection. Rooms close rarely; the release waits this long,
# and collects again, twice as late each time, while something still holds the room (seen once
# in about a dozen runs of the test suite on a loaded machine; what held it was not found).
RELEASE_AFTER = 1.0
RELEASE_TRIES = 3  # collections at 1, 3 and 7 s after the room closed


class ConnectionLost(Exception):
    pass


@dataclass
class Job:
    id: str
    room: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    agent: AgentRoom | None = None  # once joined


class DispatchWorker:
    """One process's registration with a LiveKit server; each assigned job is an AgentRoom."""

    def __init__(
        self,
        models: Models,
        config: Config,
        creds: Credentials,
        notify: Callable[[str], None] = log.info,
        observer: Observer | None = None,
        tools: Sequence[Tool] = (),
    ) -> None:
        self.models = models
        self.tools = tools  # the agent's besides its own (an MCP server's)
        self.config = config
        self.creds = creds
        self.notify = notify
        self.agent_name = config.livekit.agent_name
        self.max_jobs = max(1, config.livekit.max_jobs)
        self.capacity = default_capacity(config)
        self.conversations = ConversationCount(self.capacity, models.scheduler.conversations, notify)
        self.conversations.on_change = self._report_load
        self.observer = Observers([observer or Observer(), self.conversations])
        self.worker_id = ""
        self.registered = asyncio.Event()
        self.registrations = 0  # how many times this worker registered (reconnects + 1)
        self.jobs: dict[str, Job] = {}
        self._pending: dict[str, asyncio.TimerHandle] = {}  # accepted, awaiting assignment
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._stopping = False
        self._stopped = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()  # job refusals and load reports being sent

    @property
    def url(self) -> str:
        return self.creds.ws_url.rstrip("/") + "/agent"

    # -- connection -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Register and serve until `aclose()`; reconnect with exponential backoff."""
        delay = RECONNECT_MIN
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not self._stopping:
                try:
                    await self._connect_and_serve(http)
                except Exception as e:  # refused, reset, timed out, closed: all mean try again
                    if self.registered.is_set():
                        delay = RECONNECT_MIN  # it was healthy: try again soon
                    reason = str(e) or type(e).__name__
                    if not self._stopping:
                        self.notify(
                            f"agent worker: no connection to {self.url} ({reason}); retrying in {delay:.1f} s"
                        )
                finally:
                    self._ws = None
                    self.registered.clear()
                if self._stopping:
                    break
                with contextlib.suppress(TimeoutError):  # sleep, unless stopped meanwhile
                    async with asyncio.timeout(delay * random.uniform(0.8, 1.2)):
                        await self._stopped.wait()
                delay = min(delay * 2, RECONNECT_MAX)

    async def _connect_and_serve(self, http: aiohttp.ClientSession) -> None:
        headers = {"Authorization": f"Bearer {worker_token(self.creds)}"}
        async with http.ws_connect(
            self.url,
            headers=headers,
            params={"protocol": str(PROTOCOL_VERSION)},
            heartbeat=HEARTBEAT,
            timeout=aiohttp.ClientWSTimeout(ws_close=2.0),
        ) as ws:
            permissions = proto_models.ParticipantPermission(
                can_publish=True,
                can_subscribe=True,
                can_publish_data=True,
                can_update_metadata=True,  # lk.agent.state is a participant attribute
                agent=True,
            )
            register = proto.RegisterWorkerRequest(
                type=proto.JobType.JT_ROOM,
                agent_name=self.agent_name,
                version=_version(),
                allowed_permissions=permissions,
            )
            await ws.send_bytes(proto.WorkerMessage(register=register).SerializeToString())
            async with asyncio.timeout(REGISTER_TIMEOUT):
                reply = await _receive(ws)
            if reply.WhichOneof("message") != "register":
                raise ConnectionLost(f"expected a register reply, got {reply.WhichOneof('message')}")
            self.worker_id = reply.register.worker_id
            self._ws = ws
            self.registrations += 1
            self.registered.set()
            self.notify(
                f"agent worker {self.worker_id}: registered as {self.agent_name!r} on "
                f"{self.creds.ws_url}, up to {self.capacity} conversations in {self.max_jobs} rooms"
            )
            await self._send_status()
            tickers = [
                asyncio.create_task(self._every(STATUS_INTERVAL, self._send_status)),
                asyncio.create_task(self._every(PING_INTERVAL, self._ping)),
            ]
            try:
                while True:
                    await self._handle(await _receive(ws))
            finally:
                for ticker in tickers:
                    ticker.cancel()
                await asyncio.gather(*tickers, return_exceptions=True)

    async def _handle(self, message: proto.ServerMessage) -> None:
        which = message.WhichOneof("message")
        if which == "availability":
            await self._on_availability(message.availability)
        elif which == "assignment":
            self._on_assignment(message.assignment)
        elif which == "termination":
            self._on_termination(message.termination.job_id)
        elif which == "pong":
            rtt = time.time() * 1000 - message.pong.last_timestamp
            log.debug("agent worker: pong, round trip %.0f ms", rtt)

    async def _send(self, message: proto.WorkerMessage) -> None:
        ws = self._ws
        if ws is None or ws.closed:
            return  # the server forgets this worker's state anyway; we re-register
        async with self._send_lock:
            try:
                await ws.send_bytes(message.SerializeToString())
            except (aiohttp.ClientError, ConnectionError) as e:
                log.debug("agent worker: send failed: %s", e)

    @staticmethod
    async def _every(interval: float, send: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            await send()

    async def _ping(self) -> None:
        await self._send(proto.WorkerMessage(ping=proto.WorkerPing(timestamp=int(time.time() * 1000))))

    # -- load -------------------------------------------------------------------------------------
    @property
    def rooms(self) -> int:
        """Rooms in use or promised (accepted, not yet assigned)."""
        return len(self.jobs) + len(self._pending)

    @property
    def load(self) -> int:
        """Conversations going on or expected: a room's people; at least one in a room no one has
        spoken in yet (someone is about to join a room just dispatched); one per promised room. A
        room everyone has left counts nothing: the agent only waits there in case they come back."""
        per_room, served = self.conversations.per_room, self.conversations.served
        return sum(
            per_room[job.room] if job.room in served else max(1, per_room[job.room])
            for job in self.jobs.values()
        ) + len(self._pending)

    @property
    def reported_load(self) -> float:
        """The load LiveKit sees: the share of capacity in use, scaled to the server's target
        load. LiveKit sends a job only to a worker below that target (`agents.target_load`, 0.7 by
        default), so the plain share would make a worker with a free place look busy: 3 of 4 is
        0.75. At capacity the status is WS_FULL anyway."""
        if self.full:
            return 1.0
        return SERVER_TARGET_LOAD * self.load / self.capacity

    @property
    def full(self) -> bool:
        return self._stopping or self.load >= self.capacity or self.rooms >= self.max_jobs

    def _report_load(self) -> None:
        self._sends.add(task := asyncio.create_task(self._send_status()))
        task.add_done_callback(self._sends.discard)

    async def _send_status(self) -> None:
        status = proto.WorkerStatus.WS_FULL if self.full else proto.WorkerStatus.WS_AVAILABLE
        update = proto.UpdateWorkerStatus(status=status, load=self.reported_load, job_count=len(self.jobs))
        await self._send(proto.WorkerMessage(update_worker=update))

    # -- jobs -------------------------------------------------------------------------------------
    async def _on_availability(self, request: proto.AvailabilityRequest) -> None:
        job = request.job
        if self.full:
            why = "shutting down" if self._stopping else f"full: {self.load} of {self.capacity} conversations"
            self.notify(f"refusing room {job.room.name} ({why})")
            answer = proto.AvailabilityResponse(job_id=job.id, available=False)
            await self._send(proto.WorkerMessage(availability=answer))
            return
        loop = asyncio.get_running_loop()
        self._pending[job.id] = loop.call_later(ASSIGNMENT_TIMEOUT, self._forget, job.id)
        await self._send_status()  # the new load reaches the server before the next dispatch
        answer = proto.AvailabilityResponse(
            job_id=job.id,
            available=True,
            participant_identity=f"agent-{job.id}",
            participant_name=self.agent_name,
        )
        await self._send(proto.WorkerMessage(availability=answer))

    def _forget(self, job_id: str) -> None:
        if self._pending.pop(job_id, None) is not None:
            log.warning("agent worker: job %s was never assigned", job_id)

    def _on_assignment(self, assignment: proto.JobAssignment) -> None:
        timer = self._pending.pop(assignment.job.id, None)
        if timer is None:
            log.warning("agent worker: assignment for unknown job %s", assignment.job.id)
            return
        timer.cancel()
        job = Job(assignment.job.id, assignment.job.room.name)
        if self._stopping:  # accepted just before the drain began: too late to serve it now
            self.notify(f"not joining room {job.room}: shutting down")
            refused = self._send_job_status(job, proto.JobStatus.JS_FAILED, "the worker is shutting down")
            self._sends.add(task := asyncio.create_task(refused))
            task.add_done_callback(self._sends.discard)
            return
        self.jobs[job.id] = job
        url = assignment.url or self.creds.ws_url  # empty: the server we registered with
        job.task = asyncio.create_task(self._run_job(job, url, assignment.token))

    def _on_termination(self, job_id: str) -> None:
        if (job := self.jobs.get(job_id)) is not None:
            log.info("agent worker: server ended the job in room %s", job.room)
            job.stop.set()

    async def _run_job(self, job: Job, url: str, token: str) -> None:
        status, error = proto.JobStatus.JS_SUCCESS, ""
        agent: AgentRoom | None = None
        try:
            agent = await AgentRoom.join(
                self.models, self.config, url, token, leave_when_empty=True, observer=self.observer,
                creds=self.creds, tools=self.tools,
            )  # fmt: skip
            job.agent = agent
            await self._send_job_status(job, proto.JobStatus.JS_RUNNING)
            self.notify(f"joined room {job.room}")
            await wait_first(job.stop.wait(), agent.wait_closed())
        except Exception as e:
            status, error = proto.JobStatus.JS_FAILED, str(e) or type(e).__name__
            log.exception("agent worker: job in room %s failed", job.room)
            self.observer.on_error("job")
        finally:
            left: weakref.ref[AgentRoom] | None = None
            if agent is not None:
                await agent.aclose()
                self.notify(f"left room {job.room}")
                left = weakref.ref(agent)
            self.jobs.pop(job.id, None)
            job.agent = agent = None  # nothing of the room is referenced from here on
            self.conversations.served.discard(job.room)
            await self._send_job_status(job, status, error)
            await self._send_status()
            await self._release(job.room, left)

    async def _release(self, room: str, left: weakref.ref[AgentRoom] | None) -> None:
        """Collect what a closed room left, again a little later while the room is still held."""
        for attempt in range(RELEASE_TRIES):
            if not self._stopping:
                await asyncio.sleep(RELEASE_AFTER * 2**attempt)
            began = time.perf_counter()
            collected = await asyncio.to_thread(memory.release)  # what the room left goes back to the OS
            log.info(
                "agent worker: room %s released: %d objects collected in %.0f ms",
                room, collected, (time.perf_counter() - began) * 1000,
            )  # fmt: skip
            if left is None or left() is None or self._stopping:
                return

    async def _send_job_status(self, job: Job, status: int, error: str = "") -> None:
        update = proto.UpdateJobStatus(job_id=job.id, status=status, error=error)  # type: ignore[arg-type]
        await self._send(proto.WorkerMessage(update_job=update))

    # -- shutdown ---------------------------------------------------------------------------------
    async def drain(self, grace: float) -> None:
        """Take no new job from now on (WS_FULL, availability refused), and give the turns in
        progress in every room up to `grace` seconds to finish. `aclose()` then leaves."""
        self._stopping = True
        self._stopped.set()
        await self._send_status()
        rooms = [job.agent for job in self.jobs.values() if job.agent is not None]
        await drain_rooms(rooms, grace, self.notify)

    async def aclose(self) -> None:
        """Take no new rooms, leave every room (reporting each job done), close the connection."""
        self._stopping = True
        self._stopped.set()
        await self._send_status()
        jobs = list(self.jobs.values())
        for job in jobs:
            job.stop.set()
        tasks = [job.task for job in jobs if job.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=LEAVE_TIMEOUT)
            for task in late:
                task.cancel()
        for timer in self._pending.values():
            timer.cancel()
        self._pending.clear()
        await asyncio.gather(*self._sends, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()


async def _receive(ws: aiohttp.ClientWebSocketResponse) -> proto.ServerMessage:
    """The next protobuf message from the server; other frame types are skipped."""
    while True:
        frame = await ws.receive()
        if frame.type == aiohttp.WSMsgType.BINARY:
            message = proto.ServerMessage()
            message.ParseFromString(frame.data)
            return message
        if frame.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSING,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        ):
            raise ConnectionLost(f"websocket closed (code {ws.close_code})")


def _version() -> str:
    from voicecore import __version__

    return __version__
