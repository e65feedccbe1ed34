"""The HTTP side of `voicecore serve`: connection details, protection, health and metrics.

The API runs as in production (aiohttp on a loopback port) against a real livekit-server; the
tokens it hands out are tried on that server with the livekit SDK.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import dataclasses
import datetime
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import jwt
import pytest
from livekit import rtc
from livekit_fixtures import LiveKitServer, free_port
from prometheus_client.parser import text_string_to_metric_families

from voicecore import Config, TurnRecord, load_config
from voicecore.errors import ConfigError
from voicecore.metrics import STAGES
from voicecore.rtc import Credentials, user_token
from voicecore.service import ServeOptions, web_context
from voicecore.telemetry import Telemetry
from voicecore.web.app import STATIC_DIR, WebServer, build_app
from voicecore.web.auth import RateLimiter
from voicecore.web.details import BadRequest, DetailsIssuer
from voicecore.web.health import Readiness

pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

AGENT = "vc-web-api"  # no worker has this name: dispatches in these tokens wait harmlessly
KEY = "k3y-for-tests-0123456789"


# -- the server under test --------------------------------------------------------------------------
class Api:
    def __init__(self, url: str, readiness: Readiness, telemetry: Telemetry) -> None:
        self.url = url
        self.readiness = readiness
        self.telemetry = telemetry

    async def request(self, method: str, path: str, **kwargs: object) -> tuple[int, dict, dict[str, str]]:
        async with aiohttp.ClientSession() as http:
            async with http.request(method, self.url + path, **kwargs) as response:  # type: ignore[arg-type]
                text = await response.text()
                try:
                    body = json.loads(text)
                except json.JSONDecodeError:
                    body = {"text": text}
                return response.status, body, dict(response.headers)

    async def details(self, body: object = None, **kwargs: object) -> tuple[int, dict, dict[str, str]]:
        if body is not None and "data" not in kwargs:
            kwargs["json"] = body
        return await self.request("POST", "/api/connection-details", **kwargs)


StartApi = Callable[..., Awaitable[Api]]


@pytest.fixture
async def start_api(config: Config) -> AsyncIterator[StartApi]:
    servers: list[WebServer] = []

    async def start(
        creds: Credentials,
        *,
        dev: bool = False,
        room: str | None = None,
        api_key: str | None = None,
        burst: int = 50,
        static_dir: Path | None = None,
        allowed_origins: str = "",
        client_room_names: bool = False,
    ) -> Api:
        cfg = copy.deepcopy(config)
        cfg.livekit.agent_name = AGENT
        cfg.http.api_key = api_key
        cfg.http.allowed_origins = allowed_origins
        cfg.http.client_room_names = client_room_names
        cfg.http.rate_burst = burst
        cfg.http.rate_per_minute = 6.0
        telemetry, readiness = Telemetry(), Readiness(creds.http_url, probe_timeout=1.0)
        context = web_context(cfg, creds, ServeOptions(room=room, dev=dev), telemetry, readiness)
        if static_dir is not None:
            context.static_dir = static_dir
        server = WebServer(build_app(context), "127.0.0.1", 0)
        url = await server.start()
        servers.append(server)
        return Api(url.rstrip("/"), readiness, telemetry)

    yield start
    for server in servers:
        await server.stop()


def _claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def _with_claims(token: str, claims: dict) -> str:
    """The same signature over other claims: what tampering with a token looks like."""
    header, _, signature = token.split(".")
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{payload}.{signature}"


# -- connection details -----------------------------------------------------------------------------
async def test_token_joins_its_own_room_and_nothing_else(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, dev=True)
    status, details, headers = await api.details({"participantName": "Ada"})
    assert status == 200, details
    assert set(details) == {"serverUrl", "roomName", "participantName", "participantToken"}
    assert details["serverUrl"] == livekit_server.creds.ws_url
    assert details["participantName"] == "Ada"
    assert headers["Cache-Control"] == "no-store"
    claims = _claims(details["participantToken"])
    video = claims["video"]
    assert video["roomJoin"] is True and video["room"] == details["roomName"]
    assert not {"roomCreate", "roomList", "roomAdmin", "roomRecord", "agent", "ingressAdmin"} & {
        k for k, v in video.items() if v
    }, video
    # a microphone, and data (the starters' chat box, livekit-client's pre-connect audio); no camera
    assert video["canPublishSources"] == ["microphone"] and video["canPublishData"] is True
    assert claims["exp"] - claims["nbf"] == 600  # ten minutes to join
    assert claims["roomConfig"]["agents"] == [{"agentName": AGENT}]  # the agent comes with the room

    # a fresh room per call
    _, other, _ = await api.details()
    assert other["roomName"] != details["roomName"]

    # the LiveKit server lets it into that room, where it can send text as a chat box does...
    room, listener = rtc.Room(), rtc.Room()
    chat: asyncio.Queue[str] = asyncio.Queue()

    def on_chat(reader: rtc.TextStreamReader, sender: str) -> None:
        reading = asyncio.ensure_future(reader.read_all())
        reading.add_done_callback(lambda done: chat.put_nowait(done.result()))

    listener.register_text_stream_handler("lk.chat", on_chat)
    listener_token = user_token(livekit_server.creds, details["roomName"], "listener")
    await asyncio.wait_for(listener.connect(details["serverUrl"], listener_token), 15)
    await asyncio.wait_for(room.connect(details["serverUrl"], details["participantToken"]), 15)
    try:
        assert room.name == details["roomName"]
        assert room.local_participant.name == "Ada"
        await asyncio.wait_for(room.local_participant.send_text("hello there", topic="lk.chat"), 10)
        assert await asyncio.wait_for(chat.get(), 10) == "hello there"
    finally:
        await room.disconnect()
        await listener.disconnect()

    # ...and into no other: the room is signed into the token
    forged = _with_claims(details["participantToken"], {**claims, "video": {**video, "room": "someone-else"}})
    with pytest.raises(rtc.ConnectError):
        await asyncio.wait_for(rtc.Room().connect(details["serverUrl"], forged), 15)

    # nor does it open the server API (listing or creating rooms)
    async with aiohttp.ClientSession() as http:
        for method in ("ListRooms", "CreateRoom"):
            url = f"{livekit_server.creds.http_url}/twirp/livekit.RoomService/{method}"
            bearer = {"Authorization": f"Bearer {details['participantToken']}"}
            async with http.post(url, json={"name": "x"}, headers=bearer) as response:
                assert response.status in (401, 403), (method, response.status)


async def test_a_chosen_room_name_is_for_the_operator_to_allow(
    livekit_server: LiveKitServer, start_api: StartApi
):
    """Off by default: a caller who knows (or guesses) the name of a room someone is in gets no
    token for it. With `http.client_room_names`, the name is honoured (either spelling)."""
    api = await start_api(livekit_server.creds, dev=True)
    for body in ({"roomName": "support-42"}, {"room_name": "support-42"}):
        status, answer, _ = await api.details(body)
        assert status == 400 and "http.client_room_names" in answer["error"], answer
    status, details, _ = await api.details({"participant_name": "Ada"})  # TokenSource's spelling
    assert status == 200 and details["participantName"] == "Ada"
    assert details["roomName"].startswith("voicecore-")

    api = await start_api(livekit_server.creds, dev=True, client_room_names=True)
    for body in ({"roomName": "support-42"}, {"room_name": "support-42"}):
        status, details, _ = await api.details(body)
        assert status == 200 and details["roomName"] == "support-42", details
        assert _claims(details["participantToken"])["video"]["room"] == "support-42"
    status, answer, _ = await api.details({"roomName": "a", "room_name": "b"})
    assert status == 400 and "disagree" in answer["error"]


async def test_fixed_room_hands_out_that_room(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, dev=True, room="lobby")
    status, details, _ = await api.details({"roomName": "lobby"})
    assert status == 200 and details["roomName"] == "lobby"
    assert "roomConfig" not in _claims(details["participantToken"])  # the agent is there already
    status, body, _ = await api.details({"roomName": "elsewhere"})
    assert status == 400 and "lobby" in body["error"]


async def test_outside_dev_mode_a_key_is_required(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, api_key=KEY)
    status, body, _ = await api.details()
    assert status == 401 and "API key is required" in body["error"]
    for wrong in ({"Authorization": "Bearer nope"}, {"X-Voicecore-Key": "nope"}):
        status, body, _ = await api.details(headers=wrong)
        assert status == 401 and body == {"error": "wrong API key"}
    for right in ({"Authorization": f"Bearer {KEY}"}, {"X-Voicecore-Key": KEY}):
        status, details, _ = await api.details(headers=right)
        assert status == 200 and details["participantToken"]
    # the right key from another web site's page is still refused
    status, body, _ = await api.details(headers={"X-Voicecore-Key": KEY, "Origin": "https://evil.example"})
    assert status == 403 and "http.allowed_origins" in body["error"]

    # without a key configured: the served page only (same origin)
    api = await start_api(livekit_server.creds)
    status, body, _ = await api.details()
    assert status == 401 and "VOICECORE_HTTP_API_KEY" in body["error"]
    status, _, _ = await api.details(headers={"Origin": api.url})
    assert status == 200
    status, body, _ = await api.details(headers={"Origin": "http://localhost:1"})
    assert status == 403 and "http.allowed_origins" in body["error"]


async def test_cors_for_the_listed_origins_only(livekit_server: LiveKitServer, start_api: StartApi):
    """What a browser does before and while a page on another origin fetches a token
    (agent-starter-react's TokenSource.endpoint): a preflight, then the POST; only a listed origin
    is answered with CORS headers, by name, never `*` and never with credentials."""
    app = "http://localhost:3000"
    api = await start_api(livekit_server.creds, api_key=KEY, allowed_origins=f"{app}/, https://app.example")
    asks = {"Origin": app, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-voicecore-key"}  # fmt: skip
    status, _, headers = await api.request("OPTIONS", "/api/connection-details", headers=asks)
    assert status == 204, headers
    assert headers["Access-Control-Allow-Origin"] == app and "Origin" in headers["Vary"]
    assert headers["Access-Control-Allow-Methods"] == "POST"
    allowed = {h.strip().lower() for h in headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "authorization", "x-voicecore-key"} <= allowed
    assert "Access-Control-Allow-Credentials" not in headers
    assert int(headers["Access-Control-Max-Age"]) > 0

    # the request itself, and a refusal the page can read
    status, details, headers = await api.details({}, headers={"Origin": app, "X-Voicecore-Key": KEY})
    assert status == 200 and details["participantToken"] and headers["Access-Control-Allow-Origin"] == app
    status, body, headers = await api.details({}, headers={"Origin": app})
    assert status == 401 and headers["Access-Control-Allow-Origin"] == app and "API key" in body["error"]

    # another origin: refused, saying how to allow it, and no CORS header for the browser
    for origin in ("https://evil.example", "null", "http://localhost:3001"):
        status, body, headers = await api.request(
            "OPTIONS", "/api/connection-details", headers={**asks, "Origin": origin}
        )
        assert status == 403 and "http.allowed_origins" in body["error"], (origin, body)
        assert "Access-Control-Allow-Origin" not in headers
        status, body, headers = await api.details({}, headers={"Origin": origin, "X-Voicecore-Key": KEY})
        assert status == 403 and "Access-Control-Allow-Origin" not in headers
    # a header or method that is not part of the API
    status, body, _ = await api.request(
        "OPTIONS", "/api/connection-details", headers={**asks, "Access-Control-Request-Headers": "x-evil"}
    )
    assert status == 403 and "x-evil" in body["error"]
    status, body, _ = await api.request(
        "OPTIONS", "/api/connection-details", headers={**asks, "Access-Control-Request-Method": "DELETE"}
    )
    assert status == 403 and "POST" in body["error"]
    # not a preflight: what the path takes
    status, _, headers = await api.request("OPTIONS", "/api/connection-details")
    assert status == 204 and headers["Allow"] == "OPTIONS, POST"

    # --dev: a frontend's dev server on this machine is let in; a web site is not
    api = await start_api(livekit_server.creds, dev=True)
    status, _, headers = await api.request("OPTIONS", "/api/connection-details", headers=asks)
    assert status == 204 and headers["Access-Control-Allow-Origin"] == app
    status, _, _ = await api.details({}, headers={"Origin": "https://evil.example"})
    assert status == 403


@pytest.mark.parametrize("origins", ["*", "localhost:3000", "https://app.example/path", "ftp://x.example"])
def test_allowed_origins_must_be_origins(config: Config, origins: str):
    cfg = copy.deepcopy(config)
    cfg.http.allowed_origins = origins
    creds = Credentials("ws://127.0.0.1:7880", "k", "s")
    with pytest.raises(ConfigError, match="http.allowed_origins"):
        web_context(cfg, creds, ServeOptions(), Telemetry(), Readiness(creds.http_url))


async def test_a_burst_over_the_rate_limit_gets_429(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, dev=True, burst=3)
    statuses = []
    for _ in range(5):
        status, body, headers = await api.details()
        statuses.append(status)
    assert statuses == [200, 200, 200, 429, 429]
    assert body["error"].startswith("too many requests") and int(headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "body,message",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"roomName": 7}', "roomName must be a string"),
        (b'{"roomName": "../admin"}', "roomName: 1-64 letters"),
        (b'{"participantName": ""}', "participantName: 1-64"),
        (b'{"participantName": "a\\u0000b"}', "printable"),
        (b'{"room": "x"}', "unknown field 'room'"),
        (b'{"room_config": {"agents": [{"agent_name": "someone-else"}]}}', "this server runs"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_malformed_bodies_get_400_with_a_message(
    livekit_server: LiveKitServer, start_api: StartApi, body: bytes, message: str
):
    api = await start_api(livekit_server.creds, dev=True)
    status, answer, _ = await api.details(data=body, headers={"Content-Type": "application/json"})
    assert status == 400 and message in answer["error"], answer


async def test_errors_are_json_and_tell_nothing_secret(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, dev=True)
    status, body, _ = await api.details(data=b"x" * 20_000)
    assert status == 413 and "too large" in body["error"]
    status, body, _ = await api.request("GET", "/api/connection-details")
    assert status == 405 and "POST" in body["error"]
    status, body, _ = await api.request("GET", "/no/such/page")
    assert (status, body) == (404, {"error": "not found"})
    status, body, _ = await api.request("GET", "/healthz", headers={"Host": "rebound.example"})
    assert status == 403 and "loopback" in body["error"]  # a DNS-rebinding page gets nowhere
    status, body, _ = await api.request("GET", "/static/..%2Fapp.py")
    assert status == 404
    # LiveKit's secret is in no answer (the token is signed with it, not carrying it)
    _, details, _ = await api.details()
    assert livekit_server.creds.api_secret not in json.dumps(_claims(details["participantToken"]))


# -- health and metrics ---------------------------------------------------------------------------
async def test_healthz_and_readyz(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, dev=True)
    assert (await api.request("GET", "/healthz"))[:2] == (200, {"status": "ok"})
    status, body, _ = await api.request("GET", "/readyz")
    assert status == 503 and "the models are loading" in body["problems"]
    api.readiness.models_ready = True
    api.readiness.agent_problem = lambda: None
    assert (await api.request("GET", "/readyz"))[:2] == (200, {"ready": True})
    api.readiness.agent_problem = lambda: "the agent worker is not registered with LiveKit"
    status, body, _ = await api.request("GET", "/readyz")
    assert status == 503 and body["problems"] == ["the agent worker is not registered with LiveKit"]

    # LiveKit unreachable: nothing listens on that port
    gone = Credentials(f"ws://127.0.0.1:{free_port()}", "devkey", "secret")
    api = await start_api(gone, dev=True)
    api.readiness.models_ready = True
    api.readiness.agent_problem = lambda: None
    status, body, _ = await api.request("GET", "/readyz")
    assert status == 503 and "unreachable" in body["problems"][0], body
    assert (await api.request("GET", "/healthz"))[0] == 200  # alive all the same


def test_metrics_count_turns_latencies_sessions_and_errors():
    telemetry = Telemetry()
    telemetry.on_room_joined("r")
    telemetry.on_conversation_started("r", "ada")
    answered = TurnRecord(turn=1, speech_end=10.0, endpoint=10.4, stt_final=10.2, llm_first_token=10.3,
                          first_chunk_text=10.35, tts_first_audio=10.45, first_frame_out=10.5)  # fmt: skip
    telemetry.on_turn("r", "ada", answered)
    telemetry.on_turn("r", "ada", TurnRecord(turn=2, speech_end=20.0, endpoint=20.4, interrupted=True))
    telemetry.on_error("llm")
    samples = _samples(telemetry.render()[0].decode())
    assert samples["voicecore_voice_to_voice_seconds_count"] == 1
    assert samples["voicecore_voice_to_voice_seconds_sum"] == pytest.approx(0.5)
    assert samples[("voicecore_turn_stage_latency_seconds_count", "endpoint")] == 2
    assert samples[("voicecore_turn_stage_latency_seconds_count", "first_frame_out")] == 1
    assert samples[("voicecore_turn_stage_latency_seconds_sum", "stt_final")] == pytest.approx(0.2)
    assert samples["voicecore_turns_total"] == 2 and samples["voicecore_interruptions_total"] == 1
    assert samples[("voicecore_errors_total", "llm")] == 1 and samples[("voicecore_errors_total", "tts")] == 0
    assert samples["voicecore_active_sessions"] == 1 and samples["voicecore_active_rooms"] == 1
    telemetry.on_conversation_ended("r", "ada")
    assert _samples(telemetry.render()[0].decode())["voicecore_active_sessions"] == 0


def test_metrics_show_the_c_heap_an_operator_tells_a_leak_by():
    """voicecore_heap_bytes{kind="in_use"} follows what is allocated: 64 MiB in 100 kB blocks
    (the size a leaked audio buffer has) shows up, and goes once freed."""

    def heap() -> dict[str, float]:
        text = Telemetry().render()[0].decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert "python_gc_collections" in families  # collections by generation, beside it
        return {s.labels["kind"]: s.value for s in families["voicecore_heap_bytes"].samples}

    before = heap()
    blocks = [bytearray(100_000) for _ in range(671)]
    grown = heap()["in_use"] - before["in_use"]
    del blocks
    after = heap()
    assert 60 * 2**20 < grown < 80 * 2**20, f"in use grew {grown / 2**20:.1f} MiB for 64 MiB held"
    assert after["in_use"] - before["in_use"] < 8 * 2**20
    assert set(after) == {"in_use", "free", "mapped"}


async def test_metrics_endpoint_serves_prometheus_text(livekit_server: LiveKitServer, start_api: StartApi):
    api = await start_api(livekit_server.creds, dev=True)
    api.telemetry.on_turn("r", "ada", TurnRecord(turn=1, speech_end=1.0, first_frame_out=1.6))
    async with aiohttp.ClientSession() as http:
        async with http.get(api.url + "/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            samples = _samples(await response.text())
    assert samples["voicecore_voice_to_voice_seconds_count"] == 1
    assert all(("voicecore_turn_stage_latency_seconds_count", stage) in samples for stage in STAGES)


def _samples(text: str) -> dict[object, float]:
    """name -> value, or (name, stage) -> value for series labelled by stage."""
    out: dict[object, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "le" in sample.labels:
                continue
            key = (sample.name, sample.labels["stage"]) if "stage" in sample.labels else sample.name
            out[key] = sample.value
    return out


# -- the page, and validation without a server ------------------------------------------------------
async def test_page_without_built_assets_says_how_to_build(
    livekit_server: LiveKitServer, start_api: StartApi, tmp_path: Path
):
    api = await start_api(livekit_server.creds, dev=True, static_dir=tmp_path)
    status, body, headers = await api.request("GET", "/")
    assert status == 503 and "bin/setup" in body["text"] and headers["Content-Type"].startswith("text/html")
    if not (STATIC_DIR / "app.js").is_file():
        pytest.skip("the talk page is not built here (bin/setup builds it)")
    api = await start_api(livekit_server.creds, dev=True)
    status, body, headers = await api.request("GET", "/")
    assert status == 200 and "/static/app.js" in body["text"]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert (await api.request("GET", "/static/app.js"))[0] == 200


def test_rate_limiter_refills_and_stays_bounded():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, max_clients=100, clock=lambda: now[0])
    assert [limiter.take("10.0.0.1") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.take("10.0.0.1") == pytest.approx(1.0, abs=0.01)  # one a second
    now[0] += 1.0
    assert limiter.take("10.0.0.1") == 0.0
    assert limiter.take("10.0.0.2") == 0.0  # clients are counted apart...
    limiter.take("2001:db8::1")
    assert limiter.take("2001:db8::2") == 0.0 and limiter.take("2001:db8::3") > 0  # ...IPv6 by /64
    assert limiter.take("::ffff:10.0.0.1") > 0  # an IPv4 client on a dual-stack socket
    for i in range(1000):
        limiter.take(f"10.1.{i // 256}.{i % 256}")
    assert len(limiter) == 100


def test_request_validation_without_a_server():
    creds = Credentials("ws://127.0.0.1:7880", "k", "s")
    issuer = DetailsIssuer(creds, "wss://public.example", datetime.timedelta(minutes=10), "voicecore")
    assert issuer.parse(b"").room is None
    assert issuer.parse(b'{"participantName": " Ada "}').participant_name == "Ada"
    starter = b'{"room_config": {"agents": [{"agent_name": "voicecore"}]}}'  # LiveKit's starters send this
    assert issuer.parse(starter).room is None
    with pytest.raises(BadRequest, match="room_config.agents"):
        issuer.parse(b'{"room_config": {"agents": "all"}}')
    with pytest.raises(BadRequest, match="client_room_names"):
        issuer.parse(b'{"roomName": "support-42"}')
    with pytest.raises(BadRequest, match="fresh identity"):
        issuer.parse(b'{"participant_identity": "someone-else"}')
    issuer = dataclasses.replace(issuer, client_room_names=True)
    details = issuer.issue(issuer.parse(b'{"roomName": "support-42"}'))
    assert details["serverUrl"] == "wss://public.example" and details["roomName"] == "support-42"


def test_http_settings_come_from_the_environment_and_hide_the_key():
    config = load_config(env={"VOICECORE_HTTP_API_KEY": "s3cr3t", "VOICECORE_HTTP_PORT": "9000"})
    assert config.http.api_key == "s3cr3t" and config.http.port == 9000
    assert "s3cr3t" not in repr(config)


def test_serve_refuses_the_dev_keys_without_dev():
    env = {"PATH": "/usr/bin:/bin", "LIVEKIT_URL": "ws://127.0.0.1:1",
           "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "voicecore", "serve"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dev" in lines[0] and "devkey" in lines[0], result.stderr
