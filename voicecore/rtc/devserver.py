"""A local livekit-server as a child process: `voicecore serve --dev` without a LiveKit URL, and the
server that the tests, the benchmarks and `voicecore.rtc.caller` users start for themselves.

Loopback only. LiveKit's public dev keys (devkey/secret, `--dev`) unless given key pairs of its
own, as in production. Free ports; `serve --dev` asks for LiveKit's usual ones (7880 signalling,
7881 ICE/TCP, 7882 ICE/UDP) when they are free. It can be stopped and started again on the same
ports and keys (a server restart, as a fault test wants). The child has a session of its own, so
Ctrl-C in the terminal reaches voicecore alone, which leaves its rooms before stopping the
server; on Linux the child also goes when the thread that started it dies without cleaning up.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from livekit import api

from voicecore.errors import ConfigError
from voicecore.rtc.token import DEV_API_KEY, DEV_API_SECRET, Credentials

USUAL_PORTS = (7880, 7881, 7882)  # signalling (HTTP/WebSocket), ICE over TCP, ICE over UDP
START_TIMEOUT = 20.0  # a busy two-core machine: it listens within ~1 s when idle
STOP_TIMEOUT = 3.0  # livekit-server waits for rooms to empty; ours are left already
LOG_TAIL = 15  # lines of its log in an error


def find_livekit_server() -> str | None:
    """`livekit-server` on PATH, else the one bin/setup builds into this checkout's .local/bin."""
    found = shutil.which("livekit-server")
    if found:
        return found
    checkout = Path(__file__).resolve().parents[2] / ".local" / "bin" / "livekit-server"
    return str(checkout) if checkout.is_file() else None


def new_key_pair(prefix: str = "key") -> dict[str, str]:
    """A fresh API key and secret (48 characters), not the public dev pair."""
    return {f"{prefix}{secrets.token_hex(4)}": secrets.token_hex(24)}


class LocalLiveKit:
    """livekit-server on 127.0.0.1. `keys` (API key -> secret): those pairs in its config and no
    development mode, `creds` with the first pair; without: `--dev`. Its config and log live in
    `workdir` (a temporary folder of its own when not given, removed by `close`)."""

    def __init__(
        self,
        binary: str | None = None,
        workdir: Path | None = None,
        keys: dict[str, str] | None = None,
        *,
        usual_ports: bool = False,
    ) -> None:
        if keys is not None and not keys:
            raise ValueError("keys: at least one API key pair")
        found = binary or find_livekit_server()
        if found is None:
            raise ConfigError(
                "no livekit-server to start (on PATH or in .local/bin: bin/setup builds it); "
                "or give a LiveKit server of yours in LIVEKIT_URL"
            )
        self.binary = found
        self._tmp = tempfile.TemporaryDirectory(prefix="voicecore-livekit-") if workdir is None else None
        self.workdir = Path(self._tmp.name) if self._tmp is not None else workdir
        assert self.workdir is not None
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "livekit.log"
        self.port, tcp, udp = _usual_or_free_ports() if usual_ports else _free_ports()
        self.config = self.workdir / "livekit.yaml"
        config = (
            f"port: {self.port}\n"
            "rtc:\n"
            f"  tcp_port: {tcp}\n"
            f"  udp_port: {udp}\n"
            "  use_external_ip: false\n"  # no STUN lookups: this server is for this machine
            "  node_ip: 127.0.0.1\n"
        )
        if keys:
            config += "keys:\n" + "".join(f"  {key}: {secret}\n" for key, secret in keys.items())
        self.config.write_text(config)
        self.dev = keys is None
        api_key, api_secret = next(iter(keys.items())) if keys else (DEV_API_KEY, DEV_API_SECRET)
        self.creds = Credentials(f"ws://127.0.0.1:{self.port}", api_key, api_secret)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> Credentials:
        """Start the server and wait until it listens (blocking: call it before the event loop, or
        in a thread). ConfigError, with the end of its log, if it exits or does not listen."""
        dev = ["--dev"] if self.dev else []
        # the child goes with the thread that started it (Linux ties PDEATHSIG to threads): only
        # the main thread lives as long as the process
        on_linux_main = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *dev, "--bind", "127.0.0.1", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent() if on_linux_main else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise ConfigError(f"livekit-server exited at start ({self.log}):\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.creds
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise ConfigError(
            f"livekit-server did not listen on port {self.port} in {timeout:g} s ({self.log}):\n"
            f"{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the server (it can be started again)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the server and remove its temporary folder, if it made one."""
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def api(self) -> api.LiveKitAPI:
        """A server API client with its key pair (the caller closes it)."""
        return api.LiveKitAPI(self.creds.http_url, self.creds.api_key, self.creds.api_secret)

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) if text else "(no output)"

    def __enter__(self) -> LocalLiveKit:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_KINDS = (socket.SOCK_STREAM, socket.SOCK_STREAM, socket.SOCK_DGRAM)


def _usual_or_free_ports() -> tuple[int, int, int]:
    if all(_free(port, kind) for port, kind in zip(USUAL_PORTS, _KINDS, strict=True)):
        return USUAL_PORTS
    return _free_ports()


def _free_ports() -> tuple[int, int, int]:
    return free_port(), free_port(), free_port(socket.SOCK_DGRAM)


def _free(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing holds now."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None]:
    # resolved here, in the parent: the child, between fork and exec, only makes the call (an
    # import there could wait forever on a lock another thread held at the fork)
    import ctypes

    prctl = ctypes.CDLL(None).prctl
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:  # pragma: no cover - runs in the child
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec
