"""Who may ask for a LiveKit token: the shared key, same-origin browsers, a rate limit per client.

- `--dev`: anyone who reaches the port (loopback by default).
- A key configured (`VOICECORE_HTTP_API_KEY`): every request must carry it, as
  `Authorization: Bearer <key>` or `X-Voicecore-Key: <key>` (the talk page asks for it once).
- No key: only the talk page served here, i.e. browser requests whose `Origin` is this server.
  That keeps other web sites from minting tokens through a visitor's browser; it does not stop a
  script that forges the header, which is why anything reachable beyond your machine needs a key.
- Either way a browser request from another origin is refused (unless listed in
  `http.allowed_origins`), and on a loopback address only loopback host names are answered (a
  DNS-rebinding page cannot reach a local dev server through a name of its own).
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

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
KEY_HEADER = "X-Voicecore-Key"


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
        origins = frozenset(o.strip().rstrip("/") for o in allowed_origins if o.strip())
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
        if self.dev:
            return
        origin = request.headers.get("Origin")
        if origin is not None and not self._origin_allowed(request, origin):
            raise Refused(403, "requests from other web sites are refused (see http.allowed_origins)")
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

    def _origin_allowed(self, request: web.Request, origin: str) -> bool:
        origin = origin.rstrip("/")
        if origin in self.allowed_origins:
            return True
        scheme = request.scheme
        if self.trust_proxy:
            scheme = request.headers.get("X-Forwarded-Proto", scheme).split(",")[0].strip()
        return origin == f"{scheme}://{request.host}"


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
