"""The two systems under test, started as their users start them, and what they cost.

    VoicecoreSystem   `python -m voicecore serve` (dispatch worker), one process, turn log JSONL
    BaselineSystem    LiveKit Agents 1.8.9 + three OpenAI-compatible servers (baseline_livekit_agents/)

Both register as agent workers with the benchmark's LiveKit server under an agent name of their
own and get rooms by explicit dispatch. `ResourceSampler` follows each system's process trees
(CPU time, RSS and PSS; PSS counts pages shared between processes once, which matters for the
baseline's forked job processes).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from voicecore.rtc import Credentials

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE / "baseline_livekit_agents"))

from stack import DEFAULT_VENV, BaselineStack  # noqa: E402

READY_TIMEOUT = 180.0


@dataclass
class ColdStart:
    seconds: float  # process start -> ready (registered, models loaded and warmed)
    detail: dict[str, float] = field(default_factory=dict)


class System:
    name = ""
    agent_name = ""

    async def start(self) -> ColdStart:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def pids(self) -> dict[str, int]:
        """Component name -> root process id; each root's descendants belong to it."""
        raise NotImplementedError

    def agent_turns(self) -> list[dict[str, Any]]:
        """Per-turn records from the agent's own log, on the monotonic clock."""
        raise NotImplementedError

    def versions(self) -> dict[str, str | None]:
        raise NotImplementedError


class VoicecoreSystem(System):
    name = "voicecore"
    agent_name = "voicecore-bench"

    def __init__(
        self,
        creds: Credentials,
        workdir: Path,
        settings: dict[str, str] | None = None,
        python: Path | None = None,
    ) -> None:
        self.creds = creds
        self.python = str(python or sys.executable)  # another virtualenv's (vLLM's)
        self.workdir = workdir
        self.settings = settings or {}  # VOICECORE_* variables of the benchmark's own
        self.turn_log = workdir / "voicecore-turns.jsonl"
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / "voicecore.log"
        self.starts = 0

    async def start(self) -> ColdStart:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # only the benchmark's settings: a VOICECORE_* variable of the caller's would change the agent
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VOICECORE_", "LIVEKIT_"))}
        env.update(
            LIVEKIT_URL=self.creds.ws_url,
            LIVEKIT_API_KEY=self.creds.api_key,
            LIVEKIT_API_SECRET=self.creds.api_secret,
            VOICECORE_LIVEKIT_AGENT_NAME=self.agent_name,
            VOICECORE_METRICS_TURN_LOG=str(self.turn_log),
            VOICECORE_LOG_LEVEL="INFO",  # rooms taken and refused, each turn: the log is a file
            PYTHONUNBUFFERED="1",
        )
        env.update(self.settings)
        if _has_config_section("http"):
            env["VOICECORE_HTTP_PORT"] = "0"  # its web server on any free port: no clash with others
        self.starts += 1
        offset = self.log.stat().st_size if self.log.exists() else 0
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "voicecore",
                "serve",
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        loaded = None
        deadline = started + READY_TIMEOUT
        while True:
            text = self._log_since(offset)
            if loaded is None and "registering agent worker" in text:
                loaded = time.monotonic() - started  # models loaded and warmed, connecting
            if "registered as" in text:
                break
            if self.proc.returncode is not None:
                raise RuntimeError(f"voicecore serve exited ({self.proc.returncode}):\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"voicecore serve not registered after {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.02)
        ready = time.monotonic() - started
        return ColdStart(ready, {"models_loaded_and_warm": loaded or ready, "registered": ready})

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)  # leave rooms cleanly
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    def pids(self) -> dict[str, int]:
        return {"voicecore": self.proc.pid} if self.proc is not None else {}

    def agent_turns(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.turn_log)

    def versions(self) -> dict[str, str | None]:
        from voicecore.config import load_config
        from voicecore.doctor import report

        return dict(report(load_config(env={}))["packages"])


class BaselineSystem(System):
    name = "baseline"
    agent_name = "baseline-bench"

    def __init__(self, creds: Credentials, workdir: Path, venv: Path = DEFAULT_VENV) -> None:
        self.creds = creds
        self.workdir = workdir
        self.venv = venv
        self.stack: BaselineStack | None = None
        self.turn_log = workdir / "baseline-turns.jsonl"

    async def start(self) -> ColdStart:
        stack = BaselineStack(
            self.creds.ws_url,
            self.creds.api_key,
            self.creds.api_secret,
            self.workdir,
            agent_name=self.agent_name,
            venv=self.venv,
            turn_log=self.turn_log,
        )
        self.stack = stack
        stack.start()
        up = await asyncio.to_thread(stack.wait_up, READY_TIMEOUT)
        took = await asyncio.to_thread(stack.warm_up)
        ready = time.monotonic() - stack.started_at
        detail = {f"{name}_up": (c.up_at or 0.0) - stack.started_at for name, c in stack.components.items()}
        detail.update({"all_up": up, **{f"{k}_first_request": v for k, v in took.items()}, "warm": ready})
        return ColdStart(ready, detail)

    async def stop(self) -> None:
        if self.stack is not None:
            await asyncio.to_thread(self.stack.stop)
            self.stack = None

    def pids(self) -> dict[str, int]:
        return self.stack.pids() if self.stack is not None else {}

    def agent_turns(self) -> list[dict[str, Any]]:
        """The worker's conversation items, wall-clock metrics moved to the monotonic clock."""
        out = []
        for line in _read_jsonl(self.turn_log):
            shift = line["logged_monotonic"] - line["logged_wall"]
            metrics = dict(line.get("metrics") or {})
            for key in ("started_speaking_at", "stopped_speaking_at"):
                if key in metrics:
                    metrics[key] = metrics[key] + shift
            out.append({**line, "metrics": metrics, "created_monotonic": line["created_at"] + shift})
        return out

    def versions(self) -> dict[str, str | None]:
        names = [
            "livekit-agents", "livekit-plugins-silero", "livekit-plugins-openai", "livekit-local-inference",
            "livekit", "llama_cpp_python", "faster-whisper-server", "faster-whisper", "ctranslate2",
            "local-tts-studio", "piper-tts", "onnxruntime",
        ]  # fmt: skip
        code = (
            "import json, importlib.metadata as m\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except m.PackageNotFoundError: return None\n"
            f"print(json.dumps({{n: v(n) for n in {names!r}}}))"
        )
        python = self.venv / "bin" / "python"
        done = subprocess.run(
            [str(python), "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
        return dict(json.loads(done.stdout))


def _has_config_section(name: str) -> bool:
    from voicecore.config import SECTIONS

    return name in SECTIONS


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
    return out


@dataclass
class Usage:
    rss: int = 0
    pss: int = 0
    cpu: float = 0.0  # user + system seconds used by the tree so far (ended processes included)
    processes: int = 0


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    """`root` and its children, all the way down (none if `root` is gone)."""
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class ResourceSampler:
    """A thread that samples each component's process tree every `interval` seconds."""

    def __init__(
        self, pids: dict[str, int], interval: float = 1.0, others: dict[str, int] | None = None
    ) -> None:
        """`pids`: the system's components; `others` (the benchmark's own client process, the
        LiveKit server) are sampled too, shown apart, and never added to the system's total."""
        self.roots = {name: psutil.Process(pid) for name, pid in {**pids, **(others or {})}.items()}
        self.others = set(others or {})
        self.interval = interval
        self.ticks: list[tuple[float, dict[str, Usage]]] = []
        self.machine: list[tuple[float, float, float]] = []  # (at, busy cpu seconds, all cpu seconds)
        # last CPU seconds seen per process, kept after it ends (job processes come and go)
        self._cpu: dict[str, dict[int, float]] = {name: {} for name in self.roots}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        now = time.monotonic()
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        self.machine.append((now, sum(times) - idle, sum(times)))
        tick: dict[str, Usage] = {}
        for name, root in self.roots.items():
            usage = Usage()
            for proc in [root] if name in self.others else process_tree(root):
                try:
                    with proc.oneshot():
                        mem = proc.memory_full_info()
                        t = proc.cpu_times()
                except psutil.Error:
                    continue
                usage.processes += 1
                usage.rss += mem.rss
                usage.pss += getattr(mem, "pss", mem.rss)
                self._cpu[name][proc.pid] = t.user + t.system
            usage.cpu = sum(self._cpu[name].values())
            tick[name] = usage
        self.ticks.append((now, tick))

    def window(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Per component and in total: peak RSS/PSS (MiB) and CPU cores used between the times;
        and how busy the whole machine was (clients and LiveKit server included)."""
        inside = [(at, tick) for at, tick in self.ticks if start <= at <= end]
        out: dict[str, dict[str, float]] = {}
        if len(inside) >= 2:
            span = max(1e-6, inside[-1][0] - inside[0][0])
            for name in self.roots:
                first, last = inside[0][1].get(name), inside[-1][1].get(name)
                if first is None or last is None:
                    continue
                out[name] = {
                    "peak_rss_mib": max(t[name].rss for _, t in inside if name in t) / 2**20,
                    "peak_pss_mib": max(t[name].pss for _, t in inside if name in t) / 2**20,
                    "cpu_cores": (last.cpu - first.cpu) / span,
                    "processes": max(t[name].processes for _, t in inside if name in t),
                }
            mine = [{n: u for n, u in t.items() if n not in self.others} for _, t in inside]
            out["total"] = {
                "peak_rss_mib": max(sum(u.rss for u in t.values()) for t in mine) / 2**20,
                "peak_pss_mib": max(sum(u.pss for u in t.values()) for t in mine) / 2**20,
                "cpu_cores": sum(v["cpu_cores"] for n, v in out.items() if n not in self.others),
                "processes": max(sum(u.processes for u in t.values()) for t in mine),
            }
        machine = [m for m in self.machine if start <= m[0] <= end]
        if len(machine) >= 2:
            busy = (machine[-1][1] - machine[0][1]) / max(1e-6, machine[-1][2] - machine[0][2])
            out["machine"] = {"cpu_busy_fraction": busy, "cores": float(psutil.cpu_count() or 1)}
        return out

    def series(self) -> list[dict[str, Any]]:
        """Every tick, for the results file: total PSS (MiB) and tree CPU seconds per component."""
        return [
            {"at": round(at, 3), **{n: [round(u.pss / 2**20, 1), round(u.cpu, 2)] for n, u in tick.items()}}
            for at, tick in self.ticks
        ]
