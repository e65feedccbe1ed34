"""`voicecore serve` as a real process for tests, as a user runs it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from livekit_fixtures import ROOT

STARTUP = 120.0  # model loading in a fresh process, on a busy 2-core machine


class ServeProcess:
    """`voicecore serve ARGS` as a user runs it, its stdout and stderr in one log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log = log
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "voicecore", "serve", *self.args,
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
            )  # fmt: skip

    @property
    def proc(self) -> asyncio.subprocess.Process:
        """The process, once started."""
        assert self._proc is not None, "serve not started"
        return self._proc

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, text: str, within: float = STARTUP) -> None:
        """Until `text` is in the output; fails at once (with the output) if the process exits."""
        deadline = time.monotonic() + within
        while text not in self.output():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the output of serve:\n{self.output()[-4000:]}")
            await asyncio.sleep(0.1)

    def joined(self) -> list[str]:
        """The rooms it joined, in order (its "joined room NAME" lines)."""
        return re.findall(r"joined room (\S+)", self.output())

    async def stop(self, sig: int, within: float = 30.0) -> int:
        """Send `sig` (unless it has exited already); its exit code. Killed, and an AssertionError
        with the output, if it has not exited `within` seconds later."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"serve did not exit after {sig}:\n{self.output()[-4000:]}") from None

    async def kill(self) -> None:
        """SIGKILL, if started and still running (the end of a test, whatever happened)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


ServeProcesses = Callable[[Sequence[str], dict[str, str], Path], ServeProcess]
"""The `serve_processes` fixture: (args, env, log) -> a ServeProcess, not started yet."""
