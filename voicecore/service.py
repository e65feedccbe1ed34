"""`voicecore serve`, the whole process: the agent in LiveKit rooms and its HTTP side, on one loop.

    agents load            the default agent and its profiles (a bad one stops here)
    HTTP up first          /healthz answers at once, /readyz says "the models are loading"
    MCP servers            started or connected to; their tools are every agent's (voicecore.mcp)
    models load            in a worker thread, then warm up; shared by every room
    the agent              a fixed room (`--room`) or a dispatch worker, until SIGINT/SIGTERM
    shutdown               drain (no new rooms or turns; turns in progress finish, up to
                           livekit.drain_timeout; /readyz says so), leave the rooms, stop HTTP,
                           free the models, close the MCP servers; a second signal cuts the
                           drain short

Telemetry (Prometheus) and readiness watch the rooms through one `rtc.Observer`.
"""

from __future__ import annotations

import asyncio
import datetime
import signal
from collections.abc import Callable
from dataclasses import dataclass

from voicecore import memory
from voicecore.agent import Agents, profile_specs
from voicecore.config import Config
from voicecore.errors import ConfigError
from voicecore.mcp import McpServers
from voicecore.pipeline import Models
from voicecore.rtc.observer import Observers
from voicecore.rtc.serve import run_worker, serve_room
from voicecore.rtc.token import Credentials, check_credentials
from voicecore.rtc.worker import DispatchWorker
from voicecore.telemetry import Telemetry
from voicecore.web.app import WebContext, WebServer, build_app
from voicecore.web.auth import AccessPolicy, RateLimiter, is_loopback
from voicecore.web.details import DetailsIssuer
from voicecore.web.health import Readiness


@dataclass(frozen=True)
class ServeOptions:
    room: str | None = None  # a fixed room; None = dispatch worker
    dev: bool = False  # no key needed for connection details (local development)


def web_context(
    config: Config, creds: Credentials, options: ServeOptions, telemetry: Telemetry, readiness: Readiness
) -> WebContext:
    http = config.http
    policy = AccessPolicy.build(
        dev=options.dev,
        api_key=http.api_key,
        allowed_origins=http.allowed_origins.split(","),
        host=http.host,
        trust_proxy=http.trust_proxy,
    )
    issuer = DetailsIssuer(
        creds=creds,
        server_url=http.public_livekit_url or creds.ws_url,
        ttl=datetime.timedelta(seconds=http.token_ttl),
        agent_name=config.livekit.agent_name,
        fixed_room=options.room,
        client_room_names=http.client_room_names,
        profiles=frozenset(profile_specs(config.agent.profiles)),
    )
    limiter = RateLimiter(http.rate_per_minute, http.rate_burst)
    return WebContext(policy, limiter, issuer, readiness, telemetry)


def _draining(stop: asyncio.Event) -> str | None:
    return "shutting down: finishing the turns in progress, taking no new ones" if stop.is_set() else None


async def run(
    config: Config,
    creds: Credentials,
    load_models: Callable[[], Models],
    options: ServeOptions,
    notify: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT or SIGTERM (a second signal stops without waiting for rooms to close)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and main is not None:
            main.cancel()
        stop.set()

    agents = Agents.load(config.agent)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    telemetry = Telemetry()
    readiness = Readiness(creds.http_url)
    observer = Observers([telemetry, readiness])
    web: WebServer | None = None
    page = ""
    mcp_servers = McpServers(config.agent.mcp_servers)
    try:
        if config.http.enabled:
            app = build_app(web_context(config, creds, options, telemetry, readiness))
            web = WebServer(app, config.http.host, config.http.port)
            try:
                page = await web.start()
            except OSError as e:
                raise ConfigError(
                    f"cannot serve HTTP on {config.http.host}:{config.http.port} ({e.strerror or e}): "
                    "choose another port with --http-port, or --no-http"
                ) from None
            notify(f"HTTP on {page} (models loading)")
            if not options.dev and not config.http.api_key and not is_loopback(config.http.host):
                notify(
                    f"warning: HTTP on {config.http.host} is reachable from other machines and "
                    "VOICECORE_HTTP_API_KEY is not set: anyone who can open the page can talk to the agent"
                )
        await check_credentials(creds)  # a wrong key pair: one line now, not retries forever
        tools = await mcp_servers.open()  # before the models: a server that fails stops start-up at once
        if tools:
            notify(f"tools from MCP servers: {', '.join(t.name for t in tools)}")
            agents = agents.with_tools(tools)  # a name clash with an agent's own: one line, now
        notify("loading models...")
        models = await asyncio.to_thread(load_models)
        try:
            for voice in agents.voices:  # a bad voice file: one line, before any room
                await asyncio.to_thread(models.add_voice, voice)
            await models.warm_up(
                agents.default.instructions or config.llm.system_prompt, agents.default.tools
            )
            memory.freeze()  # what lives now lives for good: rooms' collections skip it
            readiness.models_ready = True
            if web is not None:
                notify(f"ready: talk to the agent at {page}")
            if stop.is_set():
                return
            if options.room:
                room = options.room
                readiness.agent_problem = lambda: (
                    _draining(stop)
                    or (None if room in readiness.rooms else f"the agent is not in room {room}")
                )
                await serve_room(models, config, creds, room, stop, notify, observer=observer, agents=agents)
            else:
                worker = DispatchWorker(
                    models, config, creds, notify=notify, observer=observer, agents=agents
                )
                unregistered = "the agent worker is not registered with LiveKit"
                readiness.agent_problem = lambda: (
                    _draining(stop) or (None if worker.registered.is_set() else unregistered)
                )
                await run_worker(worker, stop, notify)
        finally:
            await asyncio.to_thread(models.close)
    finally:
        await mcp_servers.aclose()
        if web is not None:
            await web.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
