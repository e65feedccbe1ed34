"""No secret leaks: the LiveKit API secret, the HTTP API key and the tokens voicecore issues appear
nowhere a user or an operator can see them.

A real conversation with production-style credentials: livekit-server with a key pair of its own
(its config's `keys:` map, no --dev), `voicecore serve --verbose` (debug logs) with that pair and
an HTTP API key, a browser token fetched from /api/connection-details with the key and used by a
caller who asks a question and hears the answer. Errors are provoked too: requests without the
key, with a wrong one, malformed ones, a missing secret and a wrong secret at startup. Then every
byte they produced is searched: the logs, every HTTP answer (bodies and headers), /metrics,
/healthz, /readyz, the turn history file and `voicecore doctor`.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from livekit_fixtures import (
    ROOT,
    Caller,
    LiveKitServer,
    free_port,
    listening,
    livekit_binary,
    poll,
    reply_done,
)
from serve_process import ServeProcesses

pytestmark = pytest.mark.slow

API_KEY = "vc-prod-key"
API_SECRET = "Zq8vN3kP0wX7rT2mL5yB9cH4jF6dS1aG"  # 32 characters, like a generated LiveKit secret
HTTP_KEY = "http-key-Ux3Jr8Wq2Lm5Zp9T"
WRONG_SECRET = "Wr0ngSecretWr0ngSecretWr0ngSecret"
JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
ROOM = "private-room"


class Seen:
    """Everything voicecore showed anyone, to be searched at the end."""

    def __init__(self) -> None:
        self.parts: list[tuple[str, bytes]] = []

    def add(self, where: str, data: bytes | str) -> None:
        self.parts.append((where, data.encode() if isinstance(data, str) else data))

    def leaks(self, secrets: dict[str, str]) -> list[str]:
        found = []
        for where, data in self.parts:
            for name, secret in secrets.items():
                if secret.encode() in data:
                    found.append(f"{name} in {where}")
            for match in JWT.findall(data):
                found.append(f"a JWT in {where}: {match[:20]!r}...")
        return found


async def fetch(seen: Seen, method: str, url: str, **kwargs: object) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
            body = await response.read()
            headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
            where = f"HTTP {method} /{url.split('/', 3)[-1]} -> {response.status}"
            seen.add(where, f"{headers}\n\n".encode() + body)
            return response.status, body


def run_cli(seen: Seen, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "voicecore", *args],
        capture_output=True, text=True, env=env, timeout=120, cwd=ROOT,
    )  # fmt: skip
    seen.add(f"voicecore {' '.join(args)}", result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def keyed_livekit(tmp_path_factory: pytest.TempPathFactory):
    binary = livekit_binary()
    if binary is None:
        pytest.skip("livekit-server not found (bin/setup builds it)")
    server = LiveKitServer(binary, tmp_path_factory.mktemp("keyed-livekit"), keys={API_KEY: API_SECRET})
    server.start()
    yield server
    server.stop()


async def test_no_secret_or_token_appears_anywhere(
    keyed_livekit: LiveKitServer, serve_processes: ServeProcesses, say, tmp_path: Path
):
    seen = Seen()
    issued: list[str] = []
    history = tmp_path / "turns.jsonl"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "LIVEKIT_URL": keyed_livekit.creds.ws_url,
        "LIVEKIT_API_KEY": API_KEY,
        "LIVEKIT_API_SECRET": API_SECRET,
        "VOICECORE_HTTP_API_KEY": HTTP_KEY,
        "VOICECORE_METRICS_TURN_LOG": str(history),
        "VOICECORE_TURN_STAGE_TIMEOUT": "30",  # a loaded test machine is slow, not broken
    }
    args = ["--room", ROOM, "--http-port", str(port), "--verbose"]
    agent = serve_processes(args, env, tmp_path / "serve.log")
    await agent.start()
    await agent.wait_for("joined room")

    # the HTTP side, refusals first
    assert (await fetch(seen, "POST", f"{base}/api/connection-details"))[0] == 401
    bad = {"Authorization": f"Bearer {HTTP_KEY[:-1]}"}  # one character short: close to the key
    assert (await fetch(seen, "POST", f"{base}/api/connection-details", headers=bad))[0] == 401
    good = {"Authorization": f"Bearer {HTTP_KEY}"}
    details_url = f"{base}/api/connection-details"
    status, _ = await fetch(seen, "POST", f"{base}/api/connection-details", headers=good, data=b"{oops")
    assert status == 400
    status, _ = await fetch(seen, "POST", details_url, headers=good, json={"roomName": "x"})
    assert status == 400
    for _ in range(2):
        status, body = await fetch(seen, "POST", f"{base}/api/connection-details", headers=good)
        assert status == 200
        issued.append(json.loads(body)["participantToken"])
    details = json.loads(body)

    # a conversation with the issued token
    caller = Caller("browser")  # with a token from /api/connection-details, as a browser
    try:
        await asyncio.wait_for(caller.join_with(details["serverUrl"], details["participantToken"]), 15)
        await poll(lambda: listening(caller), 30)
        await caller.speak(say("What is the capital of France?"))
        await reply_done(caller, finals=1, within=60)
    finally:
        await caller.leave()
    for path in ("/metrics", "/healthz", "/readyz", "/nope", "/static/..%2f..%2fetc"):
        await fetch(seen, "GET", base + path)
    await fetch(seen, "GET", f"{base}/api/connection-details", headers=good)
    assert await agent.stop(signal.SIGTERM) == 0
    seen.add("serve's log (debug)", agent.output())
    seen.add("the turn history file", history.read_bytes())
    assert json.loads(history.read_text().splitlines()[0])["participant"].startswith("user-")

    # startup errors: the secret missing, then wrong
    missing = {k: v for k, v in env.items() if k != "LIVEKIT_API_SECRET"}
    result = run_cli(seen, ["serve", "--room", ROOM, "--no-http"], missing)
    assert result.returncode == 2 and "api secret not set" in result.stderr, result.stderr
    wrong_env = {**env, "LIVEKIT_API_SECRET": WRONG_SECRET}
    wrong = run_cli(seen, ["serve", "--room", ROOM, "--no-http", "--verbose"], wrong_env)
    assert wrong.returncode == 2, wrong.stderr  # one line saying what to fix, not retries forever
    assert "refused API key" in wrong.stderr and "LIVEKIT_API_SECRET" in wrong.stderr, wrong.stderr
    run_cli(seen, ["doctor"], env)
    run_cli(seen, ["doctor", "--json"], env)
    run_cli(seen, ["history", str(history)], env)

    secrets = {"the LiveKit secret": API_SECRET, "the wrong secret": WRONG_SECRET, "the HTTP key": HTTP_KEY}
    for i, token in enumerate(issued):
        secrets[f"issued token {i}"] = token
        secrets[f"issued token {i}'s signature"] = token.rsplit(".", 1)[1]
    # the answers that hand out tokens are the one place tokens belong
    seen.parts = [(where, data) for where, data in seen.parts if not where.endswith("details -> 200")]
    assert len(seen.parts) > 15
    assert not seen.leaks(secrets), seen.leaks(secrets)
