"""A LiveKit server of the benchmark's own, on free loopback ports, with an API key pair made for
the run (not the public dev pair: `voicecore serve` refuses that outside --dev, as it should)."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

from voicecore.rtc import Credentials

ROOT = Path(__file__).resolve().parent.parent


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary() -> str | None:
    local = ROOT / ".local" / "bin" / "livekit-server"
    return str(local) if local.exists() else shutil.which("livekit-server")


class LiveKitServer:
    """Every port on 127.0.0.1, a fresh key pair, log in `workdir`."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "livekit.yaml"
        key, secret = f"bench{secrets.token_hex(4)}", secrets.token_hex(24)
        self.config.write_text(
            f"port: {self.port}\n"
            f"keys:\n  {key}: {secret}\n"
            "rtc:\n"
            f"  tcp_port: {free_port()}\n"
            f"  udp_port: {free_port(socket.SOCK_DGRAM)}\n"
            "  use_external_ip: false\n"
            "  node_ip: 127.0.0.1\n"
        )
        self.log = workdir / "livekit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.creds = Credentials(f"ws://127.0.0.1:{self.port}", key, secret)

    def start(self, timeout: float = 15.0) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"livekit-server exited; see {self.log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"livekit-server did not listen on {self.port}; see {self.log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
