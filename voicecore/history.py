"""The conversation history on disk: every completed turn, appended durably.

One JSON object per line (room, participant, user transcript, the agent's reply as it was
heard, latencies, the interruption flag). Each line goes out in one O_APPEND write followed by
fsync before `append` returns, so a turn that completed survives a kill -9 or a power cut, and
lines from several processes never interleave. The file and its directory are created
owner-only (0600/0700): they hold what people said.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from voicecore.errors import ConfigError

log = logging.getLogger(__name__)


class TurnHistory:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        try:
            if not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, mode=0o700)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            os.fchmod(self._fd, 0o600)  # tighten a file created earlier with a looser umask
        except OSError as e:
            raise ConfigError(
                f"history file {self.path}: cannot append ({e.strerror or e}); "
                "point metrics.turn_log (--turn-log, VOICECORE_METRICS_TURN_LOG) at a writable file, "
                "or save no turns with --no-turn-log"
            ) from None

    def append(self, entry: dict[str, Any]) -> None:
        """Write one turn and fsync it. A failing disk is logged, never raised mid-conversation."""
        line = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            with self._lock:
                os.write(self._fd, line)
                os.fsync(self._fd)
        except OSError as e:
            log.error("history %s: turn not saved: %s", self.path, e.strerror or e)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def read_history(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """All complete turns in the file, oldest first, and the count of unreadable lines (a line
    torn by a crash mid-write is skipped, never fatal)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"history file {path} not found") from None
    except OSError as e:
        raise ConfigError(f"history file {path}: {e.strerror or e}") from None
    turns: list[dict[str, Any]] = []
    bad = 0
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            bad += 1
            continue
        if isinstance(entry, dict):
            turns.append(entry)
        else:
            bad += 1
    return turns, bad
