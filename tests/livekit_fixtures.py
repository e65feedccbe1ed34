"""A real LiveKit server for tests: `livekit-server --dev` on loopback ports of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from livekit import api

from voicecore.rtc import Credentials

ROOT = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def livekit_binary() -> str | None:
    binary = shutil.which("livekit-server") or str(ROOT / ".local" / "bin" / "livekit-server")
    return binary if os.access(binary, os.X_OK) else None


class LiveKitServer:
    """`livekit-server --dev` on loopback ports of its own; can be stopped and started again."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        self.config = workdir / "livekit.yaml"
        self.config.write_text(
            f"port: {self.port}\n"
            "rtc:\n"
            f"  tcp_port: {free_port()}\n"
            f"  udp_port: {free_port(socket.SOCK_DGRAM)}\n"
            "  use_external_ip: false\n"
            "  node_ip: 127.0.0.1\n"
        )
        self.log = workdir / "livekit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.creds = Credentials(f"ws://127.0.0.1:{self.port}", "devkey", "secret")

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--dev", "--bind", "127.0.0.1", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"livekit-server exited; see {self.log}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"livekit-server did not listen on {self.port}; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # graceful: it waits for rooms to empty, a while at most
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self) -> api.LiveKitAPI:
        return api.LiveKitAPI(self.creds.http_url, self.creds.api_key, self.creds.api_secret)
