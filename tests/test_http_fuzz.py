"""HTTP fuzzing: whatever a client sends, `voicecore serve`'s HTTP side answers with a clear 4xx or
a success, never a 5xx (the two documented 503s aside: /readyz while not ready, / while the page
is not built), and stays healthy.

The app runs as in production (aiohttp on a loopback port, in a thread of its own with its own
event loop); hypothesis writes raw HTTP/1.1 requests to it over a socket, so the request line,
the headers and the body can be anything, bad UTF-8 and broken percent-encoding included. The
run is derandomized with a fixed number of examples: the same requests every time, well under a
minute.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import json
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from livekit_fixtures import free_port

from voicecore import Config
from voicecore.rtc import Credentials
from voicecore.service import ServeOptions, web_context
from voicecore.telemetry import Telemetry
from voicecore.web.app import MAX_BODY, WebServer, build_app
from voicecore.web.health import Readiness

API_KEY = "fuzz-api-key-0123456789abcdef"
EXAMPLES = 400
SEEN: Counter[int] = Counter()  # statuses the fuzz got back, to show it reached every kind of answer

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@dataclass
class Target:
    """One running app: where it listens, and what kind of access policy it has."""

    port: int
    name: str


class Servers:
    """The apps under test, on an event loop in a thread of their own (the test is synchronous,
    as hypothesis wants, and talks to them over real sockets)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-http", daemon=True)
        self.servers: list[WebServer] = []
        self.targets: list[Target] = []
        self.logs = Records()

    def start(self) -> None:
        self.thread.start()
        # LiveKit is not running: nothing here needs it except /readyz, which must say so.
        creds = Credentials(f"ws://127.0.0.1:{free_port()}", "fuzzkey", "fuzz-secret-0123456789abcdef0123")
        variants = {
            "api key, behind a proxy": (dict(api_key=API_KEY, trust_proxy=True), ServeOptions()),
            "same-origin only": (dict(), ServeOptions()),
            "dev, fixed room": (dict(), ServeOptions(room="lobby", dev=True)),
        }
        for name, (settings_, options) in variants.items():
            started = self._start(creds, settings_, options)
            port = asyncio.run_coroutine_threadsafe(started, self.loop).result(30)
            self.targets.append(Target(port, name))

    async def _start(
        self, creds: Credentials, http_settings: dict[str, object], options: ServeOptions
    ) -> int:
        cfg = copy.deepcopy(self.config)
        for field, value in http_settings.items():
            setattr(cfg.http, field, value)
        cfg.http.rate_burst = 1_000_000  # the limiter is exercised by test_web; here, reach the handler
        readiness = Readiness(creds.http_url, probe_timeout=0.5)
        app = build_app(web_context(cfg, creds, options, Telemetry(), readiness))
        server = WebServer(app, "127.0.0.1", 0)
        await server.start()
        self.servers.append(server)
        return server.port

    def stop(self) -> None:
        for server in self.servers:
            asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Records(logging.Handler):
    """Every log record of the servers, at every level, formatted as an operator would see it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, logging.Formatter().format(record)))


@pytest.fixture(scope="module")
def servers(config: Config) -> Iterator[Servers]:
    running = Servers(config)
    loggers = [logging.getLogger(name) for name in ("aiohttp", "voicecore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(running.logs)
        logger.setLevel(logging.DEBUG)
    running.start()
    yield running
    running.stop()
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(running.logs)
        logger.setLevel(level)


# -- what a client may send -------------------------------------------------------------------------
ROUTES = ["/", "/static/app.js", "/static/index.html", "/api/connection-details", "/healthz", "/readyz",
          "/metrics", "/api/openapi.json", "/static/", "/static/..%2Fapp.py", "/static/.hidden",
          "/api/connection-details/", "//api/connection-details", "/%ff", "/%zz", "/a%00b", "/é"]  # fmt: skip
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "FOO"]
URL_TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n #"), max_size=40)
HEADER_TEXT = st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=80)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=20), children, max_size=4)
    ),
    max_leaves=12,
)
DETAILS_JSON = st.fixed_dictionaries(
    {},
    optional={
        "roomName": st.sampled_from(["lobby", "support-42", "", "../x", "a" * 65])
        | st.text(max_size=70)
        | JSON,
        "participantName": st.text(max_size=70) | JSON,
        "room_config": JSON | st.fixed_dictionaries({"agents": st.lists(JSON, max_size=2)}),
    },
)


def sometimes_wild(tame: st.SearchStrategy[str], wild: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Mostly a plausible value (so most requests get past the HTTP parser to the handlers), one
    time in eight anything."""
    return st.integers(0, 7).flatmap(lambda roll: wild if roll == 0 else tame)


QUERY = st.sampled_from(["", "x=1", "roomName=lobby", "a=%ff", "%zz", "k=" + "v" * 3000])
HEADERS = {
    "Origin": sometimes_wild(
        st.sampled_from(["null", "https://evil.example", "http://127.0.0.1", ""]), HEADER_TEXT
    ),
    "Authorization": sometimes_wild(
        st.sampled_from([f"Bearer {API_KEY}", "Bearer nope", "Bearer ", "Basic Zm9vOmJhcg=="]), HEADER_TEXT
    ),
    "X-Voicecore-Key": sometimes_wild(st.sampled_from([API_KEY, "nope", ""]), HEADER_TEXT),
    "X-Forwarded-For": sometimes_wild(st.ip_addresses().map(str), HEADER_TEXT),
    "X-Forwarded-Proto": sometimes_wild(st.sampled_from(["https", "http", ""]), HEADER_TEXT),
    "Content-Type": sometimes_wild(
        st.sampled_from(
            [
                "application/json",
                "text/plain",
                "multipart/form-data; boundary=x",
                "application/x-www-form-urlencoded",
                "application/json; charset=latin-1",
            ]
        ),
        HEADER_TEXT,
    ),  # fmt: skip
    "Host": sometimes_wild(
        st.sampled_from(["localhost", "evil.example", "127.0.0.1:1", "[::1]", ""]), HEADER_TEXT
    ),
    # a CORS preflight's questions (an OPTIONS with an Origin is one)
    "Access-Control-Request-Method": sometimes_wild(st.sampled_from(["POST", "GET", ""]), HEADER_TEXT),
    "Access-Control-Request-Headers": sometimes_wild(
        st.sampled_from(["content-type", "content-type, x-voicecore-key", "authorization, x-evil", ""]),
        HEADER_TEXT,
    ),
}
BODIES = st.one_of(
    st.just(b""),
    DETAILS_JSON.map(lambda d: json.dumps(d).encode()),
    DETAILS_JSON.map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda d: json.dumps(d, ensure_ascii=False).encode()),
    st.binary(max_size=200),  # bad UTF-8 among it
    st.sampled_from([b"\xff\xfe{", b'{"roomName": "\xc3\x28"}', b"[" * 5000 + b"]" * 5000, b"{" * 5000]),
    st.integers(MAX_BODY - 2, MAX_BODY + 2).map(lambda n: b"x" * n),
    st.just(b" " * 200_000),  # huge
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]], bytes]:
    if draw(st.booleans()):  # half the requests aim at the token API, the one that matters most
        method, path = "POST", "/api/connection-details"
    else:
        method = draw(
            sometimes_wild(st.sampled_from(METHODS), st.from_regex(r"[A-Za-z]{1,10}", fullmatch=True))
        )
        path = draw(sometimes_wild(st.sampled_from(ROUTES), URL_TEXT.map(lambda s: "/" + s.lstrip("/"))))
    if draw(st.booleans()):
        path += "?" + draw(sometimes_wild(QUERY, URL_TEXT))
    headers = [(name, draw(values)) for name, values in HEADERS.items() if draw(st.integers(0, 2)) == 0]
    return method, path, headers, draw(BODIES)


Headers = list[tuple[str, str]]


def send(port: int, method: str, path: str, headers: Headers, body: bytes) -> tuple[int, str, bytes]:
    """One raw HTTP/1.1 request on a fresh connection: status, content type, body."""
    names = {name.lower() for name, _ in headers}
    lines = [f"{method} {path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: 127.0.0.1:{port}")
    lines += [f"{name}: {value}" for name, value in headers]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it answered (413) before reading everything: the answer is still there to read
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.getheader("Content-Type") or "", response.read()


def check(method: str, path: str, status: int, content_type: str, body: bytes) -> None:
    route = path.split("?")[0]
    if status >= 500:
        documented = (route == "/readyz" and status == 503) or (route == "/" and status == 503)
        assert documented, (status, body[:300])
    if status >= 400 and method != "HEAD":
        assert body.strip(), f"{status} with an empty body"
        if content_type.startswith("application/json") and route == "/readyz" and status == 503:
            assert json.loads(body)["problems"], body  # not ready: the reasons
        elif content_type.startswith("application/json"):
            message = json.loads(body).get("error")
            assert isinstance(message, str) and len(message) >= 5, body
        else:  # the page that says how to build the page; every other error is JSON
            kind = content_type.split(";")[0]
            assert (route, status, kind) == ("/", 503, "text/html"), (status, kind, body[:300])
        assert b"Traceback" not in body


# -- the fuzz -------------------------------------------------------------------------------------
@settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same requests every run: a failure reproduces
    deadline=None,  # a loaded 2-core machine is slow; boundedness comes from max_examples
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)
@given(target=st.integers(0, 2), request=requests())
# and always these, whatever hypothesis draws: bodies over the limit where they reach the handler,
# a key that is not UTF-8, a body that is not
@example(target=2, request=("POST", "/api/connection-details", [], b" " * 200_000))
@example(target=0, request=("POST", "/api/connection-details", [("Authorization", f"Bearer {API_KEY}")],
                            b"x" * (MAX_BODY + 1)))  # fmt: skip
@example(target=0, request=("POST", "/api/connection-details", [("X-Voicecore-Key", "\x80\xff")], b""))
@example(target=2, request=("POST", "/api/connection-details", [], b'{"roomName": "\xc3\x28"}'))
@example(target=0, request=("POST", "/api/connection-details", [("Authorization", f"Bearer {API_KEY}\x01")],
                            b""))  # fmt: skip
def test_no_request_gets_a_5xx_and_every_refusal_says_why(
    servers: Servers, target: int, request: tuple[str, str, list[tuple[str, str]], bytes]
):
    method, path, headers, body = request
    port = servers.targets[target].port
    status, content_type, answer = send(port, method, path, headers, body)
    SEEN[status] += 1
    check(method, path, status, content_type, answer)


@pytest.mark.parametrize(
    "head",
    [
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {'a' * 60_000}\r\n",  # a 60 KB header
        f"GET /healthz?{'a' * 60_000} HTTP/1.1\r\nHost: 127.0.0.1\r\n",  # a 60 KB request line
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nno colon here\r\n",  # a broken header line
        "GET /healthz HTTP/9.9\r\nHost: 127.0.0.1\r\n",  # an unknown HTTP version
    ],
    ids=["60KB-header", "60KB-request-line", "broken-header", "bad-version"],
)
def test_a_request_the_parser_refuses_gets_the_json_error(servers: Servers, head: str):
    """aiohttp answers these itself, before any middleware: in the same JSON shape all the same."""
    with socket.create_connection(("127.0.0.1", servers.targets[0].port), timeout=10) as sock:
        sock.sendall((head + "Connection: close\r\n\r\n").encode("latin-1"))
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        status, content_type, body = response.status, response.getheader("Content-Type", ""), response.read()
    assert 400 <= status < 500, (status, body[:200])
    assert content_type.startswith("application/json"), (content_type, body[:200])
    message = json.loads(body)["error"]
    assert len(message) >= 5 and "aaaa" not in message, message
    if "X-Big" in head:
        assert status == 431 and "too large" in message, (status, message)


def test_the_fuzzed_servers_stay_healthy_and_hand_out_tokens(servers: Servers):
    """Runs after the fuzz (file order): the servers still answer, and the fuzz reached past
    the parser into every kind of answer, successes included."""
    print(f"statuses seen: {dict(sorted(SEEN.items()))}")
    if SEEN:
        assert {200, 400, 401, 403, 404, 405, 413} <= set(SEEN), SEEN
        # a client's bad request is no server error, and its key is never written to the log,
        # not even from a header the parser refused
        assert not [text for level, text in servers.logs.records if level >= logging.ERROR]
        assert servers.logs.records and not [text for _, text in servers.logs.records if API_KEY in text]
    for target in servers.targets:
        status, _, body = send(target.port, "GET", "/healthz", [], b"")
        assert (status, json.loads(body)) == (200, {"status": "ok"}), target.name
    keyed = servers.targets[0].port
    key = [("Authorization", f"Bearer {API_KEY}")]
    status, _, body = send(keyed, "POST", "/api/connection-details", key, b"")
    assert status == 200 and json.loads(body)["participantToken"]
    status, _, body = send(keyed, "POST", "/api/connection-details", [], b"")
    assert status == 401 and "API key is required" in json.loads(body)["error"]
