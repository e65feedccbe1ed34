"""Soak: several conversations at once against `voicecore serve` for a long time, to show that
nothing leaks, stalls or breaks with time. One command:

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--conversations 4] [--out DIR]

The real thing, as a user runs it: the benchmark's own livekit-server on loopback, `python -m
voicecore serve` as a dispatch worker (bundled models, a turn log), and one client participant
(the `livekit` SDK, `voicecore.rtc.caller`) per conversation. Each conversation is a lane of back-to-back
calls: a person joins a freshly dispatched room, asks `--turns-per-room` questions from the
benchmark's recordings (several voices), waits for each answer and pauses 2-6 s as people do,
then hangs up and the next person calls. Joining and leaving rooms is where leaks hide, so the
soak does plenty of it; the long conversation of one room is the bad-input tests' business.

Every few seconds the agent's process tree is sampled (RSS, PSS, CPU, threads, open files); one
progress line a minute; at the end the agent's /metrics error counters, its log and its
`voicecore history` are read. Verdict (exit code 1 when it fails):

    every turn answered              first agent audio within 15 s of the end of the question
    RSS growth after the warm-up     < 5 %: the median RSS of every later minute against that of
                                     the minute around minute 5 (runs under 10 minutes: a third
                                     of the run); the highest single sample is shown beside it
    zero errors                      agent error counters, ERROR lines in the agent log, the
                                     agent's exit code, client-side errors, rooms never served
    no turn lost                     every answered turn is in the agent's history file

Writes soak-<UTC time>.json (machine, versions, settings, every turn, every sample, verdict),
SOAK.md and soak-rss.png to benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
from recordings import Recording, recordings  # noqa: E402
from run import Progress, machine  # noqa: E402
from scenarios import REPLY_TIMEOUT, Bench, _correct, ask, conversation  # noqa: E402
from systems import VoicecoreSystem, process_tree  # noqa: E402

from voicecore.rtc.caller import Caller  # noqa: E402
from voicecore.rtc.devserver import LocalLiveKit, find_livekit_server, new_key_pair  # noqa: E402

ROOT = HERE.parent
WARMUP_MINUTES = 5.0  # memory settles (allocator arenas, caches) before growth is judged
RSS_GROWTH_LIMIT = 0.05
PAUSE_S = (2.0, 6.0)  # between the end of a reply and the next question, as people pause
ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |^Traceback ")
WARNING_LINE = re.compile(r" WARNING ([\w.]+): (.{0,80})")


@dataclass
class Sample:
    """The agent's process tree (and, apart, the client and the LiveKit server) at one moment."""

    t: float  # seconds since the soak began
    rss_mib: float
    file_mib: float  # of the RSS, pages backed by files (model files mapped, libraries)
    pss_mib: float
    cpu_s: float  # user + system seconds so far
    threads: int
    fds: int
    processes: int
    client_rss_mib: float
    livekit_rss_mib: float
    load1: float  # the machine's 1-minute load average: on a shared machine, what else ran
    huge_mib: float = 0.0  # of the agent's RSS, transparent huge pages (khugepaged fills them)
    # The agent's C heap from /metrics (voicecore_heap_bytes): a leak grows in_use, fragmentation free
    heap_in_use_mib: float | None = None
    heap_free_mib: float | None = None
    heap_mapped_mib: float | None = None


@dataclass
class Soak:
    """What the lanes and the sampler share while the soak runs."""

    began: float
    deadline: float
    turns: list[dict[str, Any]] = field(default_factory=list)
    client_errors: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    rooms: int = 0
    cut_short_s: float | None = None  # when Ctrl-C or SIGTERM ended it early

    def elapsed(self, at: float | None = None) -> float:
        return (time.monotonic() if at is None else at) - self.began


class Stopper:
    """Ctrl-C or SIGTERM: the first ends the soak after the turns in progress (the lanes see the
    deadline passed) and still writes its results, cut short; a second, or one before the soak
    has begun, stops at once. Either way livekit-server and the agent are stopped on the way out
    (a terminal's Ctrl-C reaches them too: the agent then leaves its rooms by itself)."""

    def __init__(self, say: Progress) -> None:
        self.say = say
        self.soak: Soak | None = None
        self.main = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop, signum)

    def _stop(self, signum: int) -> None:
        name = signal.Signals(signum).name
        soak = self.soak
        if soak is None or soak.cut_short_s is not None:
            self.say(f"{name}: stopping now")
            if self.main is not None:
                self.main.cancel()
            return
        soak.cut_short_s = soak.elapsed()
        soak.deadline = time.monotonic()
        self.say(f"{name}: ending the soak after the turns in progress (again to stop at once)")


# -- sampling ---------------------------------------------------------------------------------------
def sample_tree(t: float, agent: psutil.Process, client: psutil.Process, livekit: psutil.Process) -> Sample:
    """The agent's process and its children (a model server a setting might start) summed."""
    rss = shared = pss = threads = fds = count = 0
    cpu = 0.0
    for proc in process_tree(agent):
        try:
            with proc.oneshot():
                mem = proc.memory_full_info()
                times = proc.cpu_times()
                threads += proc.num_threads()
                fds += proc.num_fds()
        except psutil.Error:
            continue
        count += 1
        rss += mem.rss
        shared += getattr(mem, "shared", 0)
        pss += getattr(mem, "pss", mem.rss)
        cpu += times.user + times.system
    return Sample(
        round(t, 1), _mib(rss), _mib(shared), _mib(pss), round(cpu, 2), threads, fds, count,
        _mib(_rss(client)), _mib(_rss(livekit)), round(os.getloadavg()[0], 2), _mib(_huge_pages(agent)),
    )  # fmt: skip


def _huge_pages(proc: psutil.Process) -> int:
    """AnonHugePages of /proc/PID/smaps_rollup, in bytes (0 where the kernel does not say)."""
    try:
        text = Path(f"/proc/{proc.pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    found = re.search(r"^AnonHugePages:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) * 1024 if found else 0


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _mib(size: int) -> float:
    return round(size / 2**20, 1)


async def sample_forever(
    soak: Soak, agent: psutil.Process, livekit: psutil.Process, url: str, every: float
) -> None:
    client = psutil.Process()
    while True:
        sample = await asyncio.to_thread(sample_tree, soak.elapsed(), agent, client, livekit)
        try:
            metrics = await read_metrics(url)
        except Exception:  # noqa: BLE001 - a missed reading, not an error of the agent's
            metrics = {}
        for kind in ("in_use", "free", "mapped"):
            if (value := metrics.get(f'voicecore_heap_bytes{{kind="{kind}"}}')) is not None:
                setattr(sample, f"heap_{kind}_mib", _mib(int(value)))
        soak.samples.append(sample)
        await asyncio.sleep(every)


# -- the agent's own counters ---------------------------------------------------------------------------
async def read_metrics(url: str) -> dict[str, float]:
    """`/metrics` as {series: value}, labels as written: voicecore_errors_total{stage="llm"}."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(url + "metrics") as response:
        response.raise_for_status()
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def agent_errors(metrics: dict[str, float]) -> dict[str, float]:
    """voicecore_errors_total by stage."""
    prefix = 'voicecore_errors_total{stage="'
    return {k[len(prefix) : -2]: v for k, v in metrics.items() if k.startswith(prefix)}


def http_url(log: str) -> str:
    """The agent's HTTP address, from its "HTTP on http://127.0.0.1:PORT/" line (it picked the port)."""
    found = re.search(r"HTTP on (http://\S+/)", log)
    if found is None:
        raise RuntimeError("voicecore serve did not say where it serves HTTP (is http enabled?)")
    return found.group(1)


def scan_log(text: str) -> tuple[list[str], dict[str, int]]:
    """ERROR/CRITICAL lines and tracebacks (errors), and warnings counted by logger and message start."""
    errors: list[str] = []
    warnings: dict[str, int] = {}
    for line in text.splitlines():
        if ERROR_LINE.search(line):
            errors.append(line[:300])
        elif found := WARNING_LINE.search(line):
            key = f"{found.group(1)}: {re.sub(r'[0-9]+', 'N', found.group(2))}"
            warnings[key] = warnings.get(key, 0) + 1
    return errors, warnings


def read_history(turn_log: Path) -> tuple[list[dict[str, Any]], str]:
    """The turn log as `voicecore history --json` (the user's command) reads it back; its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "voicecore", "history", str(turn_log), "--limit", "0", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    if done.returncode != 0:
        return [], done.stderr.strip() or f"exit code {done.returncode}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()], done.stderr.strip()


# -- the conversations ---------------------------------------------------------------------------------
async def lane(
    soak: Soak, bench: Bench, index: int, recs: list[Recording], turns_per_room: int, seed: int
) -> None:
    """Call after call in fresh rooms until the deadline; each call asks questions until it hangs up."""
    rng = random.Random(seed * 100 + index)
    await asyncio.sleep(rng.uniform(0.0, 4.0))  # people do not all call on the same frame
    asked = index * 7  # each lane starts at another question and voice
    call = 0
    while time.monotonic() < soak.deadline:
        call += 1
        room = bench.room(f"c{index}-r{call}")
        soak.rooms += 1

        async def steps(caller: Caller, room: str = room, call: int = call) -> list[dict[str, Any]]:
            nonlocal asked
            mine: list[dict[str, Any]] = []
            while len(mine) < turns_per_room and time.monotonic() < soak.deadline:
                rec = recs[asked % len(recs)]
                asked += 1
                try:
                    _, turn = await ask(caller, rec.audio)
                except Exception as e:  # the client broke: record it and hang up
                    soak.client_errors.append(_client_error(soak, index, room, e))
                    break
                turn.update(
                    conversation=index, call=call, turn=len(mine) + 1, t=round(soak.elapsed(turn["sent"]), 1),
                    recording=rec.name, voice=rec.voice, question=rec.text,
                    correct=_correct(turn["reply_text"], rec.answers),
                )  # fmt: skip
                mine.append(turn)
                soak.turns.append(turn)  # `conversation` adds the room to the same dict
                await asyncio.sleep(rng.uniform(*PAUSE_S))
            return mine

        try:
            result = await conversation(bench, room, steps)
        except Exception as e:  # joining or dispatching failed
            soak.client_errors.append(_client_error(soak, index, room, e))
            await asyncio.sleep(2.0)
            continue
        for entry in result:
            if "error" in entry:  # the agent never came
                soak.client_errors.append({"t": round(soak.elapsed(), 1), "conversation": index, **entry})


def _client_error(soak: Soak, index: int, room: str, error: BaseException) -> dict[str, Any]:
    return {"t": round(soak.elapsed(), 1), "conversation": index, "room": room, "error": repr(error)[:300]}


async def progress(soak: Soak, url: str, say: Progress, every: float = 60.0) -> None:
    """One line a minute: turns, answered, errors, the agent's RSS and CPU, recent latency."""
    last_cpu: tuple[float, float] | None = None
    while True:
        await asyncio.sleep(every)
        try:
            metrics = await read_metrics(url)
            errors = sum(agent_errors(metrics).values())
            sessions = metrics.get("voicecore_active_sessions", float("nan"))
        except Exception:  # noqa: BLE001 - the verdict reads them again at the end
            errors = sessions = float("nan")
        turns = list(soak.turns)
        answered = sum(1 for t in turns if t["answered"])
        recent = [
            t["latency_ms"] for t in turns if t["latency_ms"] is not None and t["t"] >= soak.elapsed() - every
        ]
        line = (
            f"minute {soak.elapsed() / 60:4.1f}: turns {len(turns)}, answered {answered}, "
            f"errors agent {errors:.0f} / client {len(soak.client_errors)}, rooms {soak.rooms}, "
            f"agent sessions now {sessions:.0f}"
        )
        if soak.samples:
            s = soak.samples[-1]
            cores = (
                (s.cpu_s - last_cpu[1]) / max(1e-6, s.t - last_cpu[0])
                if last_cpu
                else s.cpu_s / max(1.0, s.t)
            )
            last_cpu = (s.t, s.cpu_s)
            line += (
                f", RSS {s.rss_mib:.0f} MiB, CPU {cores:.2f} cores, threads {s.threads}, fds {s.fds}, "
                f"load {s.load1:.1f}"
            )
        if recent:
            line += f", latency p50 {np.percentile(recent, 50):.0f} ms (last minute)"
        say(line)


# -- verdict ------------------------------------------------------------------------------------------------
def warmup_seconds(minutes: float) -> tuple[float, str]:
    if minutes >= 2 * WARMUP_MINUTES:
        return WARMUP_MINUTES * 60, f"{WARMUP_MINUTES:.0f} minutes"
    return minutes * 60 / 3, f"a third of this {minutes:g}-minute run (shorter than {2 * WARMUP_MINUTES:.0f})"


def rss_growth(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    """Sustained RSS growth after the warm-up: the median RSS of each minute after it against the
    median of the minute around its end. A minute's median passes over the working set of single
    calls (Piper on a 30-word sentence takes ~200 MiB for a fraction of a second, which the
    sampler sometimes catches); a leak, or a cache that keeps growing, moves every later minute.
    The highest single sample is reported beside it."""

    def median(lo: float, hi: float) -> float | None:
        values = [s.rss_mib for s in samples if lo <= s.t < hi]
        return float(np.median(values)) if values else None

    base = median(warmup_s - 30, warmup_s + 30)
    end = samples[-1].t if samples else 0.0
    minutes = [(t, median(t, t + 60)) for t in np.arange(warmup_s, end - 30, 60.0)]
    levels = [(float(t), m) for t, m in minutes if m is not None]
    if base is None or not levels:
        return {"ok": False, "note": "too few samples after the warm-up"}
    top_t, top = max(levels, key=lambda level: level[1])
    peak = max((s for s in samples if s.t >= warmup_s), key=lambda s: s.rss_mib)
    growth, final = (top - base) / base, levels[-1][1]
    return {
        "at_warmup_mib": round(base, 1), "highest_minute_mib": round(top, 1), "highest_minute_t": top_t,
        "final_minute_mib": round(final, 1), "growth": round(growth, 4),
        "growth_to_final": round((final - base) / base, 4),
        "minute_medians_mib": [round(m, 1) for _, m in levels],
        "peak_sample_mib": peak.rss_mib, "peak_sample_t": peak.t,
        "ok": growth < RSS_GROWTH_LIMIT,
    }  # fmt: skip


def verdict(doc: dict[str, Any]) -> list[dict[str, Any]]:
    turns = doc["turns"]
    answered = [t for t in turns if t["answered"]]
    growth = doc["rss_growth"]
    errors = doc["errors"]
    in_history = [t for t in answered if "agent" in t]
    agent_counted = sum(errors["agent_counters"].values())
    cut = doc.get("cut_short_s")
    ran = f"{doc['settings']['minutes']:g} min" if cut is None else f"cut short at {cut / 60:.1f} min"
    return [
        {"check": "ran its full time", "result": ran, "ok": cut is None},
        {"check": "every turn answered (first agent audio <= 15 s after the question)",
         "result": f"{len(answered)}/{len(turns)}", "ok": bool(turns) and len(answered) == len(turns)},
        {"check": f"RSS growth after the warm-up ({doc['settings']['warmup']}) < 5 %, minute medians",
         "result": _growth_text(growth), "ok": growth["ok"]},
        {"check": "agent error counters (/metrics voicecore_errors_total)",
         "result": f"{agent_counted:.0f}", "ok": agent_counted == 0},
        {"check": "ERROR lines and tracebacks in the agent log",
         "result": str(len(errors["agent_log"])), "ok": not errors["agent_log"]},
        {"check": "agent exit code after SIGINT", "result": str(errors["agent_exit_code"]),
         "ok": errors["agent_exit_code"] == 0},
        {"check": "client-side errors (rooms never served included)",
         "result": str(len(errors["client"])), "ok": not errors["client"]},
        {"check": "every answered turn in `voicecore history`",
         "result": f"{len(in_history)}/{len(answered)} ({doc['history']['turns']} lines)",
         "ok": len(in_history) == len(answered)},
    ]  # fmt: skip


def _growth_text(growth: dict[str, Any]) -> str:
    if "growth" not in growth:
        return growth.get("note", "-")
    g = growth
    return (
        f"{g['at_warmup_mib']:.0f} -> highest minute {g['highest_minute_mib']:.0f} MiB ({g['growth']:+.1%}), "
        f"last minute {g['final_minute_mib']:.0f} MiB ({g['growth_to_final']:+.1%}); "
        f"highest sample {g['peak_sample_mib']:.0f} MiB"
    )


# -- outputs -----------------------------------------------------------------------------------------------
def write_markdown(doc: dict[str, Any], out_dir: Path, plot: str | None) -> Path:
    s, m = doc["settings"], doc["machine"]
    passed = all(c["ok"] for c in doc["verdict"])
    lat = [t["latency_ms"] for t in doc["turns"] if t["latency_ms"] is not None]
    lines = [
        f"# Soak: {s['conversations']} conversations at once for {s['minutes']:g} minutes",
        "",
        f"Run {doc['when']}, {m['cpu']} x{m['cores']} cores, {m['memory_gib']} GiB; load average before "
        f"{_load(m['load_average'])}, after {_load(m['load_average_after'])}. `voicecore serve` "
        f"(dispatch worker, bundled models) and livekit-server {doc['versions'].get('livekit-server')} on "
        f"loopback; one client participant per conversation, each asking {s['turns_per_room']} questions "
        f"per room with {PAUSE_S[0]:g}-{PAUSE_S[1]:g} s pauses, then hanging up for the next call "
        f"({doc['rooms']} rooms in all). Raw samples: `{doc['file']}`.",
        "",
        f"**Verdict: {'PASS' if passed else 'FAIL'}**",
        "",
        "| check | result | |",
        "|---|---|---|",
        *[f"| {c['check']} | {c['result']} | {'pass' if c['ok'] else '**FAIL**'} |" for c in doc["verdict"]],
        "",
        f"Client-measured voice-to-voice over {len(lat)} answered turns: "
        + (
            f"p50 {np.percentile(lat, 50):.0f} ms, p90 {np.percentile(lat, 90):.0f} ms, "
            f"p99 {np.percentile(lat, 99):.0f} ms, max {max(lat):.0f} ms."
            if lat
            else "none."
        ),
        "",
        "## The agent's process over time",
        "",
        "`voicecore serve` at the end of each period: RSS (and the part of it backed by files: mapped "
        "model files and libraries), PSS, CPU, threads and open files (its children would count); "
        "the turns asked in the period, their p50 client latency, and the machine's load average. "
        "Heap: the agent's C heap (`voicecore_heap_bytes`), in use / held free by the allocator; "
        "huge: of the RSS, transparent huge pages.",
        "",
        "| minute | RSS MiB | file-backed | PSS MiB | heap in use / free | huge | CPU cores | threads | fds "
        "| turns | p50 ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *_minute_rows(doc),
    ]
    if doc["errors"]["agent_log"] or doc["errors"]["client"]:
        lines += ["", "## Errors", ""]
        lines += [f"- agent log: `{e}`" for e in doc["errors"]["agent_log"][:20]]
        lines += [
            f"- client, {e['t']:.0f} s, conversation {e['conversation']}, room `{e['room']}`: {e['error']}"
            + (f" ({e['dispatch_attempts']} dispatches)" if "dispatch_attempts" in e else "")
            for e in doc["errors"]["client"][:20]
        ]
    if warnings := doc["errors"]["agent_warnings"]:
        counted = "; ".join(f"`{k}` x{v}" for k, v in warnings.items())
        lines += ["", f"Warnings in the agent log (not counted as errors): {counted}."]
    if plot:
        lines += ["", f"![RSS and latency over the run]({plot})"]
    path = out_dir / "SOAK.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _minute_rows(doc: dict[str, Any]) -> list[str]:
    samples = [Sample(**x) for x in doc["samples"]]
    rows = []
    minutes = int(doc["settings"]["minutes"] + 1)
    step = 1 if minutes <= 12 else 2
    prev: Sample | None = samples[0] if samples else None
    for minute in range(step, minutes + step, step):
        inside = [x for x in samples if x.t <= minute * 60]
        if not inside or prev is None or inside[-1] is prev:
            continue
        last = inside[-1]
        cores = (last.cpu_s - prev.cpu_s) / max(1e-6, last.t - prev.t)
        here = [t for t in doc["turns"] if (minute - step) * 60 <= t["t"] < minute * 60]
        lat = [t["latency_ms"] for t in here if t["latency_ms"] is not None]
        p50 = f"{np.percentile(lat, 50):.0f}" if lat else "-"
        heap = "-"
        if last.heap_in_use_mib is not None:
            heap = f"{last.heap_in_use_mib:.0f} / {last.heap_free_mib:.0f}"
        rows.append(
            f"| {minute} | {last.rss_mib:.0f} | {last.file_mib:.0f} | {last.pss_mib:.0f} | {heap} "
            f"| {last.huge_mib:.0f} | {cores:.2f} "
            f"| {last.threads} | {last.fds} | {len(here)} | {p50} | {last.load1:.1f} |"
        )
        prev = last
    return rows


def _load(load: list[float] | tuple[float, ...]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def write_plot(doc: dict[str, Any], out_dir: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    samples = doc["samples"]
    growth = doc["rss_growth"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot([x["t"] / 60 for x in samples], [x["rss_mib"] for x in samples], label="RSS")
    top.plot([x["t"] / 60 for x in samples], [x["pss_mib"] for x in samples], label="PSS", alpha=0.6)
    top.plot([x["t"] / 60 for x in samples], [x["file_mib"] for x in samples], label="of RSS, file-backed")
    top.axvline(doc["settings"]["warmup_s"] / 60, color="grey", linestyle=":", label="end of warm-up")
    if "minute_medians_mib" in growth:
        start = doc["settings"]["warmup_s"] / 60
        medians = growth["minute_medians_mib"]
        top.step([start + i for i in range(len(medians))], medians, where="post", color="black",
                 label="RSS, median of each minute")  # fmt: skip
        top.axhline(growth["at_warmup_mib"] * (1 + RSS_GROWTH_LIMIT), color="red", linestyle="--",
                    label="+5 % of the median at warm-up")  # fmt: skip
    top.set_ylabel("voicecore serve, MiB")
    top.legend(loc="lower right")
    answered = [t for t in doc["turns"] if t["latency_ms"] is not None]
    bottom.scatter([t["t"] / 60 for t in answered], [t["latency_ms"] for t in answered], s=6)
    bottom.set_ylabel("voice-to-voice, ms (client)")
    bottom.set_xlabel("minutes")
    fig.suptitle(
        f"Soak: {doc['settings']['conversations']} conversations, {doc['settings']['minutes']:g} min"
    )
    fig.tight_layout()
    name = "soak-rss.png"
    fig.savefig(out_dir / name, dpi=110)
    plt.close(fig)
    return name


def agent_settings(conversations: int) -> dict[str, str]:
    """Room for every conversation of the soak. On a CPU the agent takes as many people at once
    as it has cores (`livekit.max_conversations`) and rightly refuses more; the soak asks for
    `conversations` at once, as an operator who wants that many would configure it."""
    from voicecore.config import LiveKitConfig

    if "max_conversations" not in {f.name for f in fields(LiveKitConfig)}:
        return {}
    return {"VOICECORE_LIVEKIT_MAX_CONVERSATIONS": str(conversations)}


def livekit_version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip().rsplit(" ", 1)[-1]


# -- main ----------------------------------------------------------------------------------------------------
async def main(args: argparse.Namespace) -> bool:
    say = Progress()
    stopper = Stopper(say)
    binary = find_livekit_server()
    if binary is None:
        raise SystemExit("livekit-server not found: run bin/setup (it builds .local/bin/livekit-server)")
    out_dir: Path = args.out or HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - before anything runs
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    workdir = ROOT / ".local" / "soak" / stamp
    warmup_s, warmup_text = warmup_seconds(args.minutes)
    settings = {
        "minutes": args.minutes, "conversations": args.conversations, "turns_per_room": args.turns_per_room,
        "pause_s": PAUSE_S, "reply_timeout_s": REPLY_TIMEOUT, "sample_every_s": args.sample_every,
        "warmup_s": warmup_s, "warmup": warmup_text, "rss_growth_limit": RSS_GROWTH_LIMIT, "seed": args.seed,
        "agent_settings": agent_settings(args.conversations),
    }  # fmt: skip
    say(
        f"soak: {args.conversations} conversations for {args.minutes:g} min; "
        f"warm-up {warmup_text}; logs in {workdir}"
    )
    say("making the recordings (Piper, Piper slow, espeak-ng, flite) ...")
    recs = recordings()
    load_before = os.getloadavg()
    # a key pair of its own: `voicecore serve` refuses the public dev pair outside --dev
    server = LocalLiveKit(binary, workdir / "livekit", keys=new_key_pair("bench"))
    server.start()
    assert server.proc is not None
    system = VoicecoreSystem(server.creds, workdir / "voicecore", agent_settings(args.conversations))
    tasks: list[asyncio.Task[None]] = []
    try:
        cold = await system.start()
        assert system.proc is not None
        agent_proc = system.proc
        url = http_url(system.log.read_text(errors="replace"))
        say(
            f"voicecore serve ready in {cold.seconds:.1f} s (pid {agent_proc.pid}, {url}), "
            f"{len(recs)} recordings"
        )
        metrics_before = await read_metrics(url)
        began = time.monotonic()
        soak = stopper.soak = Soak(began=began, deadline=began + args.minutes * 60)
        bench = Bench(server.creds, system, say, f"soak{stamp.lower()}")
        agent, livekit = psutil.Process(agent_proc.pid), psutil.Process(server.proc.pid)
        tasks = [
            asyncio.create_task(sample_forever(soak, agent, livekit, url, args.sample_every)),
            asyncio.create_task(progress(soak, url, say)),
        ]
        await asyncio.gather(
            *(lane(soak, bench, i, recs, args.turns_per_room, args.seed) for i in range(args.conversations))
        )
        say(f"soak over after {soak.elapsed() / 60:.1f} min; reading the agent's counters, log and history")
        await asyncio.sleep(3.0)  # the last rooms close
        metrics_after = await read_metrics(url)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await system.stop()
        server.stop()
    exit_code = agent_proc.returncode
    log_errors, log_warnings = scan_log(system.log.read_text(errors="replace"))
    history, history_stderr = await asyncio.to_thread(read_history, system.turn_log)
    report.attach_agent_records("voicecore", soak.turns, history)
    before, after = agent_errors(metrics_before), agent_errors(metrics_after)
    path = out_dir / f"soak-{stamp}.json"
    doc: dict[str, Any] = {
        "benchmark": "soak",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "file": path.name,
        "machine": {**machine(), "load_average": load_before, "load_average_after": os.getloadavg()},
        "versions": {**system.versions(), "livekit-server": livekit_version(binary)},
        "settings": settings,
        "cut_short_s": None if soak.cut_short_s is None else round(soak.cut_short_s, 1),
        "cold_start_s": round(cold.seconds, 2),
        "rooms": soak.rooms,
        "turns": soak.turns,
        "samples": [asdict(x) for x in soak.samples],
        "rss_growth": rss_growth(soak.samples, warmup_s),
        "metrics_after": {k: v for k, v in metrics_after.items() if k.startswith("voicecore_")},
        "history": {"turns": len(history), "stderr": history_stderr},
        "errors": {
            "agent_counters": {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after},
            "agent_log": log_errors,
            "agent_warnings": log_warnings,
            "agent_exit_code": exit_code,
            "client": soak.client_errors,
        },
    }
    doc["verdict"] = verdict(doc)
    path.write_text(json.dumps(doc, indent=1, default=float))
    plot = write_plot(doc, out_dir)
    summary = write_markdown(doc, out_dir, plot)
    for check in doc["verdict"]:
        say(f"{'pass' if check['ok'] else 'FAIL'}  {check['check']}: {check['result']}")
    passed = all(c["ok"] for c in doc["verdict"])
    say(f"verdict: {'PASS' if passed else 'FAIL'}; results {path}, {summary}")
    return passed


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="how long (default 30)")
    parser.add_argument("--conversations", type=int, default=4, help="conversations at once (default 4)")
    parser.add_argument("--turns-per-room", type=int, default=10, help="questions per call before hanging up")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--seed", type=int, default=1, help="pauses and call starts")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    try:
        passed = asyncio.run(main(parser.parse_args()))
    except asyncio.CancelledError:  # stopped at once (Stopper)
        sys.exit(130)
    sys.exit(0 if passed else 1)
