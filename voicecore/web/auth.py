"""Who may ask for a LiveKit token: the shared key, same-origin browsers, a rate limit per client.

- `--dev`: anyone who reaches the port (loopback by default).
- A key configured (`VOICECORE_HTTP_API_KEY`): every request must carry it, as
  `Authorization: Bearer <key>` or `X-Voicecore-Key: <key>` (the talk page asks for it once).
- No key: only the talk page served here, i.e. browser requests whose `Origin` is this server.
  That keeps other web sites from minting tokens through a visitor's browser; it does not stop a
  script that forges the header, which is why anything reachable beyond your machine needs a key.
- In every mode a browser request from another origin is refused, unless that origin is listed
  in `http.allowed_origins` (or, with `--dev`, is a loopback page such as a frontend's dev server
  on http://localhost:3000). Listed origins get CORS: a preflight answer naming exactly them
  (never `*`, never credentials), so LiveKit's starter frontends can fetch tokens from their own
  origin. On a loopback address only loopback host names are answered (a DNS-rebinding page
  cannot reach a local dev server through a name of its own).
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from voicecore.errors import ConfigError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
KEY_HEADER = "X-Voicecore-Key"
# What a cross-origin page may send: the JSON body's type and either form of the key.
CORS_HEADERS = ("Content-Type", "Authorization", KEY_HEADER)
CORS_MAX_AGE = 600  # seconds a browser may reuse a preflight answer


class Refused(Exception):
    """A request that is not let through: HTTP `status` and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class AccessPolicy:
    dev: bool
    api_key: str | None
    allowed_origins: frozenset[str]
    loopback_only: bool  # bound to a loopback address: answer loopback host names only
    trust_proxy: bool = False

    @classmethod
    def build(
        cls, *, dev: bool, api_key: str | None, allowed_origins: Iterable[str], host: str, trust_proxy: bool
    ) -> AccessPolicy:
        origins = frozenset(_origin(o) for o in allowed_origins if o.strip())
        return cls(dev, api_key or None, origins, is_loopback(host), trust_proxy)

    def check_host(self, request: web.Request) -> None:
        """Refuse a Host header that names something other than this loopback server."""
        if not self.loopback_only:
            return
        hostname = urlsplit(f"//{request.host}").hostname or ""
        allowed = {urlsplit(origin).hostname for origin in self.allowed_origins}
        if hostname not in LOOPBACK_NAMES and hostname not in allowed:
            raise Refused(403, "this server answers on its loopback address only (unexpected Host header)")

    def authorize(self, request: web.Request) -> None:
        """Let a connection-details request through, or raise `Refused` (401 or 403)."""
        origin = request.headers.get("Origin")
        if origin is not None and not self._same_origin(request, origin) and not self.cross_origin(origin):
            raise Refused(403, _foreign(origin))
        if self.dev:
            return
        if self.api_key is not None:
            presented = _presented_key(request)
            if presented is None:
                raise Refused(
                    401, f"an API key is required: send Authorization: Bearer <key> or {KEY_HEADER}: <key>"
                )
            # aiohttp hands over non-UTF-8 header bytes as surrogates: compare the bytes as sent
            if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self.api_key.encode()):
                raise Refused(401, "wrong API key")
            return
        if origin is None:
            raise Refused(
                401,
                "only the talk page served here may ask for tokens: set VOICECORE_HTTP_API_KEY on "
                "the server to let other clients in with a key",
            )

    def client_ip(self, request: web.Request) -> str:
        if self.trust_proxy and (forwarded := request.headers.get("X-Forwarded-For")):
            return forwarded.split(",")[-1].strip()  # the address our own proxy saw
        return request.remote or "unknown"

    def cross_origin(self, origin: str) -> bool:
        """Whether a page on `origin` (another than this server's) may ask for tokens, and read
        the answer: CORS is granted to exactly these."""
        origin = origin.rstrip("/")
        if origin in self.allowed_origins:
            return True
        # --dev: a frontend's own dev server on this machine (agent-starter-react: localhost:3000)
        return self.dev and _loopback_origin(origin)

    def preflight(self, request: web.Request) -> dict[str, str]:
        """The CORS headers that answer a preflight (`OPTIONS` with `Origin`), or `Refused` (403)
        saying what this server does not allow."""
        origin = request.headers["Origin"]
        if not self.cross_origin(origin):
            raise Refused(403, _foreign(origin))
        method = request.headers.get("Access-Control-Request-Method", "POST")
        if method != "POST":
            raise Refused(403, f"cross-origin {method} is not allowed here; only POST")
        allowed = {name.lower() for name in CORS_HEADERS}
        asked = [h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",")]
        extra = [h for h in asked if h and h.lower() not in allowed]
        if extra:
            allowed_list = ", ".join(CORS_HEADERS)
            raise Refused(403, f"header {extra[0][:100]!r} not allowed cross-origin; allowed: {allowed_list}")
        headers = {
            **self.cors_headers(origin),
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": ", ".join(CORS_HEADERS),
            "Access-Control-Max-Age": str(CORS_MAX_AGE),
        }
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            # Chromium asks before a public page reaches a private address (voicecore on a LAN)
            headers["Access-Control-Allow-Private-Network"] = "true"
        return headers

    @staticmethod
    def cors_headers(origin: str) -> dict[str, str]:
        """What lets a page on `origin` read an answer: that origin by name, never `*`, and no
        credentials (the key travels in a header the page sets itself, not in a cookie)."""
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "Retry-After",
            "Vary": "Origin",
        }

    def _same_origin(self, request: web.Request, origin: str) -> bool:
        origin = origin.rstrip("/")
        scheme = request.scheme
        if self.trust_proxy:
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        return origin == f"{scheme}://{request.host}"


def _foreign(origin: str) -> str:
    return (
        f"requests from the web site {origin[:100]!r} are refused: list it in http.allowed_origins "
        "(VOICECORE_HTTP_ALLOWED_ORIGINS) to let its pages ask for tokens"
    )


def _origin(configured: str) -> str:
    """One `http.allowed_origins` entry, checked: scheme://host[:port], as browsers send it."""
    origin = configured.strip().rstrip("/")
    parts = urlsplit(origin)
    if origin == "*":
        raise ConfigError(
            "http.allowed_origins: '*' is not allowed (any web site could mint tokens through its "
            "visitors' browsers); list the origins, e.g. https://app.example.com"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ConfigError(
            f"http.allowed_origins: {configured.strip()!r} is not an origin; write scheme://host[:port], "
            "e.g. http://localhost:3000 (no path)"
        )
    return origin.lower()


def _loopback_origin(origin: str) -> bool:
    """A well-formed http(s)://host[:port] on this machine; it is echoed in a header if so."""
    if not (origin.isascii() and origin.isprintable()):
        return False
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return False
    well_formed = parts.scheme in ("http", "https") and origin == f"{parts.scheme}://{parts.netloc}"
    return well_formed and is_loopback(parts.hostname or "")


def _presented_key(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get(KEY_HEADER) or None


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RateLimiter:
    """A token bucket per client: `burst` requests at once, then `per_minute` a minute.

    Memory is bounded: at most `max_clients` buckets, the least recently seen forgotten first
    (a forgotten client starts again with a full bucket). IPv6 clients are counted by their /64,
    which is what one customer line usually gets.
    """

    def __init__(
        self,
        per_minute: float,
        burst: int,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1, burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, updated

    def take(self, client: str) -> float:
        """Spend one request of `client`'s: 0.0 when allowed, else seconds until it would be."""
        key = _client_key(client)
        now = self.clock()
        tokens, updated = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate if self.rate > 0 else float("inf")
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def _client_key(client: str) -> str:
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return client
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client of a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
