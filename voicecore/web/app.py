"""The HTTP routes of `voicecore serve` (aiohttp, on the agent's own event loop).

    GET  /                        the talk page (built assets in voicecore/web/static/)
    GET  /static/...              its script and style
    POST /api/connection-details  a fresh room and a join token for it (details.py, auth.py)
    OPTIONS /api/connection-details  the CORS preflight of a page on an allowed origin (auth.py)
    GET  /healthz                 the process answers
    GET  /readyz                  models warm, LiveKit reachable, agent registered (health.py)
    GET  /metrics                 Prometheus (telemetry.py)

Every error is JSON, `{"error": "..."}`, with no stack trace; tokens and keys are never logged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from voicecore.telemetry import Telemetry
from voicecore.web.auth import AccessPolicy, RateLimiter, Refused
from voicecore.web.details import BadRequest, DetailsIssuer
from voicecore.web.health import Readiness

log = logging.getLogger(__name__)
server_log = logging.getLogger(f"{__name__}.server")  # aiohttp's connection-level errors

STATIC_DIR = Path(__file__).parent / "static"
DETAILS_PATH = "/api/connection-details"
MAX_BODY = 16 * 1024  # connection-details bodies are a few dozen bytes
PAGE_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss: http: https:; img-src 'self' data:; "
    "media-src 'self' blob: mediastream:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voicecore: page not built</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem">
<h1>The talk page is not built</h1>
<p>This voicecore runs, but the page's script was never built. In the voicecore checkout, run</p>
<pre style="background: #f3f3f3; padding: .75rem">bin/setup</pre>
<p>(it needs Node.js 18 or newer; by hand: <code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>),
then reload this page. The API (<code>POST /api/connection-details</code>), <code>/healthz</code>,
<code>/readyz</code> and <code>/metrics</code> work without it.</p>
</body></html>
"""


@dataclass
class WebContext:
    policy: AccessPolicy
    limiter: RateLimiter
    issuer: DetailsIssuer
    readiness: Readiness
    telemetry: Telemetry
    static_dir: Path = STATIC_DIR

    @property
    def page_built(self) -> bool:
        return (self.static_dir / "index.html").is_file() and (self.static_dir / "app.js").is_file()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTEXT = web.AppKey("context", WebContext)
HTTP = web.AppKey("http", aiohttp.ClientSession)


def build_app(context: WebContext) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=MAX_BODY)
    app[CONTEXT] = context
    app.cleanup_ctx.append(_http_client)
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", index)
    app.router.add_get("/static/{name}", static)
    app.router.add_post(DETAILS_PATH, connection_details)
    app.router.add_route("OPTIONS", DETAILS_PATH, preflight)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


# -- routes -----------------------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    context = request.app[CONTEXT]
    if not context.page_built:
        return web.Response(text=NOT_BUILT, content_type="text/html", status=503)
    return web.FileResponse(context.static_dir / "index.html", headers={"Cache-Control": "no-cache"})


async def static(request: web.Request) -> web.StreamResponse:
    directory = request.app[CONTEXT].static_dir
    name = request.match_info["name"]
    path = directory / name
    # one flat directory of build output: no subpaths, no dot files
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


async def connection_details(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    client = context.policy.client_ip(request)
    wait = context.limiter.take(client)
    if wait > 0:
        seconds = max(1, math.ceil(wait))
        raise Refused(429, f"too many requests: try again in {seconds} s", {"Retry-After": str(seconds)})
    context.policy.authorize(request)
    body = await request.read()
    try:
        details = context.issuer.issue(context.issuer.parse(body))
    except BadRequest as e:
        raise Refused(400, str(e)) from None
    log.info("connection details: room %s for %s", details["roomName"], client)
    return web.json_response(details, headers={"Cache-Control": "no-store"})


async def preflight(request: web.Request) -> web.Response:
    if "Origin" not in request.headers:  # not a browser's preflight: say what the path takes
        return web.Response(status=204, headers={"Allow": "OPTIONS, POST"})
    return web.Response(status=204, headers=request.app[CONTEXT].policy.preflight(request))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems = await request.app[CONTEXT].readiness.problems(request.app[HTTP])
    if problems:
        return web.json_response({"ready": False, "problems": problems}, status=503)
    return web.json_response({"ready": True})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[CONTEXT].telemetry.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


# -- plumbing ---------------------------------------------------------------------------------------
@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Host check first; every failure becomes a JSON error without internals."""
    try:
        request.app[CONTEXT].policy.check_host(request)
        return await handler(request)
    except Refused as e:
        return _error(e.status, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        kept = {name: e.headers[name] for name in ("Allow",) if name in e.headers}
        return _error(e.status, _describe(e), kept)
    except Exception:
        log.exception("HTTP %s %s failed", request.method, request.path)
        return _error(500, "internal error (the server's log has the details)")


def _describe(error: web.HTTPException) -> str:
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return f"request body too large (at most {MAX_BODY} bytes)"
    if isinstance(error, web.HTTPMethodNotAllowed):
        return f"method {error.method} not allowed here; allowed: {', '.join(sorted(error.allowed_methods))}"
    return error.reason.lower() if error.reason else f"HTTP {error.status}"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if request.path == DETAILS_PATH and origin and request.app[CONTEXT].policy.cross_origin(origin):
        # errors too: the page on that origin can then read why it was refused
        for name, value in request.app[CONTEXT].policy.cors_headers(origin).items():
            response.headers.setdefault(name, value)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if response.content_type == "text/html":
        response.headers.setdefault("Content-Security-Policy", PAGE_POLICY)
        response.headers.setdefault("Permissions-Policy", "microphone=(self)")


async def _http_client(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        yield


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request its parser rejects as an ERROR with a traceback, and the message
    quotes the offending line: a mangled `Authorization` header would put the key or token in the
    log. The client already got a 400 saying what is wrong; keep one debug line, without the
    request's bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, BadHttpMessage):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg = "malformed HTTP request refused (%s %s)"
        record.args = (error.code, type(error).__name__)
        record.exc_info = record.exc_text = None
        return server_log.isEnabledFor(logging.DEBUG)


server_log.addFilter(_MalformedRequests())


class _JsonErrorHandler(web.RequestHandler):
    """A request aiohttp's parser rejects (a 60 KB header, a broken request line) never reaches
    the middleware: aiohttp answers it itself, in plain text. Give it the JSON shape every other
    error has, without quoting the request's bytes back."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs (filtered above); closes
        if isinstance(exc, LineTooLong):
            status, text = 431, f"request line or header too large (at most {self.max_field_size} bytes each)"
        elif status < 500:
            text = f"malformed HTTP request ({type(exc).__name__ if exc else status})"
        else:
            text = "internal error (the server's log has the details)"
        response = _error(status, text)
        response.force_close()
        return response


class _JsonErrorServer(web.Server):
    __slots__ = ()

    def __call__(self) -> web.RequestHandler:
        handler = super().__call__()
        handler.__class__ = _JsonErrorHandler  # same fields; only its error answer differs
        return handler


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the app's own server, making the handlers above
        return server


class WebServer:
    """`build_app`'s application on host:port, started and stopped with the agent."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen; the page's URL. `OSError` (port taken) is the caller's to explain."""
        runner = _Runner(self.app, shutdown_timeout=2.0, logger=server_log)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        host = f"[{host}]" if ":" in host else host
        if self.host == "::":
            host = "[::1]"
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
