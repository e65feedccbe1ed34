"""`voicecore serve --dev` without a LiveKit URL: a local `livekit-server --dev` as a child process.

Loopback only, LiveKit's public dev keys (devkey/secret), its usual ports (7880 signalling, 7881
ICE/TCP, 7882 ICE/UDP) when free, other free ones when not. The child has a session of its own,
so Ctrl-C in the terminal reaches voicecore alone, which leaves its rooms before stopping the
server; on Linux the child also goes when voicecore dies without cleaning up.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from voicecore.errors import ConfigError
from voicecore.rtc.token import DEV_API_KEY, DEV_API_SECRET, Credentials

DEFAULT_PORTS = (7880, 7881, 7882)  # signalling (HTTP/WebSocket), ICE over TCP, ICE over UDP
START_TIMEOUT = 20.0
STOP_TIMEOUT = 3.0  # livekit-server waits for rooms to empty; ours are left already


def find_livekit_server() -> str | None:
    """`livekit-server` on PATH, else the one bin/setup builds into this checkout's .local/bin."""
    found = shutil.which("livekit-server")
    if found:
        return found
    checkout = Path(__file__).resolve().parents[2] / ".local" / "bin" / "livekit-server"
    return str(checkout) if checkout.is_file() else None


class LocalLiveKit:
    def __init__(self, binary: str | None = None) -> None:
        found = binary or find_livekit_server()
        if found is None:
            raise ConfigError(
                "--dev needs livekit-server (on PATH or in .local/bin: bin/setup builds it), "
                "or a LiveKit server of yours in LIVEKIT_URL"
            )
        self.binary = found
        self._dir = tempfile.TemporaryDirectory(prefix="voicecore-livekit-")
        self.log_path = Path(self._dir.name) / "livekit.log"
        self.port, tcp, udp = _ports()
        self.config_path = Path(self._dir.name) / "livekit.yaml"
        self.config_path.write_text(
            f"port: {self.port}\n"
            "rtc:\n"
            f"  tcp_port: {tcp}\n"
            f"  udp_port: {udp}\n"
            "  use_external_ip: false\n"  # no STUN lookups: this server is for this machine
            "  node_ip: 127.0.0.1\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def creds(self) -> Credentials:
        return Credentials(f"ws://127.0.0.1:{self.port}", DEV_API_KEY, DEV_API_SECRET)

    def start(self) -> Credentials:
        """Start the server and wait until it listens (blocking: call before the event loop)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--dev", "--bind", "127.0.0.1", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ConfigError(f"livekit-server exited at start: {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.creds
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ConfigError(f"livekit-server did not listen on port {self.port} in {START_TIMEOUT:g} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._dir.cleanup()

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(no output)"

    def __enter__(self) -> LocalLiveKit:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _ports() -> tuple[int, int, int]:
    if all(_free(port, kind) for port, kind in zip(DEFAULT_PORTS, _KINDS, strict=True)):
        return DEFAULT_PORTS
    return _any_port(socket.SOCK_STREAM), _any_port(socket.SOCK_STREAM), _any_port(socket.SOCK_DGRAM)


_KINDS = (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM)


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _any_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, between fork and exec
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
