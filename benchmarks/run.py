"""voicecore against LiveKit Agents 1.8.9, through a real LiveKit server on loopback, measured
from outside by client participants. One command:

    .venv/bin/python benchmarks/run.py [--quick] [--only voicecore|baseline]

For each system, one after the other on the same machine, the same recordings and models:
cold start, voice-to-voice latency (with the agent's own per-stage record of the same turns),
turn-taking with pauses mid-sentence, interruption, 1/2/4/8 conversations at once, and
recordings of real people (benchmarks/human_speech.py) as said and with a pause inserted. Writes
to benchmarks/results/ (--quick: benchmarks/results/quick/): a JSON file with the machine, the
versions and every raw sample; PNG plots; SUMMARY.md with voicecore/baseline ratios.

The baseline's virtualenv is made by benchmarks/baseline_livekit_agents/setup.sh (run here when
missing; a few minutes the first time). Needs .local/bin/livekit-server (bin/setup builds it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# as bin/test-vllm runs it: 1 GiB of KV cache, no usage reports, no warm-up passes of its own
VLLM_CPU_SETTINGS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_CI_ENV": "1", "VLLM_NO_USAGE_STATS": "1"}
sys.path.insert(0, str(HERE))
try:
    import matplotlib  # noqa: F401
    import psutil  # noqa: F401
except ImportError:
    raise SystemExit(
        "the benchmarks need matplotlib and psutil: .venv/bin/pip install -e '.[bench]'"
    ) from None

import report  # noqa: E402
from recordings import (  # noqa: E402
    LONG_ANSWERS,
    PAUSES_MS,
    PausedQuestion,
    Recording,
    backchannels,
    paused_questions,
    recordings,
    speech_bounds,
    vad_end_offset,
)
from scenarios import (  # noqa: E402
    Bench,
    latency_plan,
    run_concurrency,
    run_interruption,
    run_latency,
    run_turn_taking,
)
from systems import DEFAULT_VENV, BaselineSystem, ResourceSampler, System, VoicecoreSystem  # noqa: E402

from voicecore.rtc import Credentials  # noqa: E402
from voicecore.rtc.devserver import LocalLiveKit, find_livekit_server, new_key_pair  # noqa: E402

ROOT = HERE.parent
SETUP = HERE / "baseline_livekit_agents" / "setup.sh"


@dataclass(frozen=True)
class Plan:
    latency_conversations: int  # x latency_turns complete questions, each a different recording
    latency_turns: int
    paused_sentences: int  # x each pause in PAUSES_MS
    interruptions: int
    levels: tuple[int, ...]  # conversations at once
    concurrency_turns: int  # per conversation at each level
    cold_starts: int
    human_trials: int  # half as recorded, half with a pause inserted mid-sentence


FULL = Plan(8, 4, 5, 5, (1, 2, 4, 8), 2, 2, 48)
QUICK = Plan(2, 4, 2, 2, (1, 2, 4), 2, 1, 12)


class Progress:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, line: str) -> None:
        elapsed = int(time.monotonic() - self.start)
        print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {line}", flush=True)


SCENARIOS = ("latency", "turn_taking", "interruption", "backchannel", "concurrency", "human")


async def bench_system(
    system: System,
    creds: Credentials,
    plan: Plan,
    material: tuple[list[Recording], list[PausedQuestion], list[PausedQuestion]],
    scenarios: tuple[str, ...],
    say: Progress,
    run_id: str,
    others: dict[str, int],
) -> dict[str, Any]:
    began = time.monotonic()
    recs, paused, human = material
    say(f"== {system.name}: starting (cold start 1/{plan.cold_starts})")
    load_before = os.getloadavg()
    cold = [await system.start()]
    say(f"   {system.name} ready in {cold[0].seconds:.2f} s {_fmt(cold[0].detail)}")
    sampler = ResourceSampler(system.pids(), interval=1.0, others=others)
    sampler.start()
    bench = Bench(creds, system, say, run_id)
    timing: dict[str, float] = {"start": round(cold[0].seconds, 1)}
    result: dict[str, Any] = {
        "load_average_before": load_before,
        "timing_s": timing,
        "warmup": [],
        "latency": [],
        "turn_taking": [],
        "interruption": [],
        "backchannel": [],
        "concurrency": {"turns": [], "levels": []},
        "human": [],
    }
    try:
        say(f"-- {system.name}: warm-up conversation (not counted)")
        result["warmup"] = await run_latency(bench, [recs[:1]], label="warmup")
        timing["warmup"] = round(time.monotonic() - began - sum(timing.values()), 1)
        if "latency" in scenarios:
            plan_turns = latency_plan(recs, plan.latency_conversations, plan.latency_turns)
            count = sum(map(len, plan_turns))
            say(f"-- {system.name}: latency, {count} turns in {len(plan_turns)} conversations")
            mark = time.monotonic()
            result["latency"] = await run_latency(bench, plan_turns)
            timing["latency"] = round(time.monotonic() - began - sum(timing.values()), 1)
            result["latency_window"] = sampler.window(mark, time.monotonic())
        if "turn_taking" in scenarios:
            say(f"-- {system.name}: turn-taking, {len(paused)} questions with a pause")
            result["turn_taking"] = await run_turn_taking(bench, paused)
            timing["turn_taking"] = round(time.monotonic() - began - sum(timing.values()), 1)
        if "interruption" in scenarios:
            say(f"-- {system.name}: interruption, {plan.interruptions} trials")
            result["interruption"] = await run_interruption(bench, LONG_ANSWERS[: plan.interruptions])
            timing["interruption"] = round(time.monotonic() - began - sum(timing.values()), 1)
        if "backchannel" in scenarios:
            clips = backchannels()
            say(f"-- {system.name}: backchannels over the agent, {len(clips)} trials")
            result["backchannel"] = await run_interruption(bench, LONG_ANSWERS[: len(clips)], over=clips)
            timing["backchannel"] = round(time.monotonic() - began - sum(timing.values()), 1)
        if "human" in scenarios:
            say(f"-- {system.name}: human speech, {len(human)} recordings of real people")
            result["human"] = await run_turn_taking(bench, human, scenario="human")
            timing["human"] = round(time.monotonic() - began - sum(timing.values()), 1)
        if "concurrency" in scenarios:
            say(f"-- {system.name}: concurrency {list(plan.levels)}")
            turns, levels = await run_concurrency(
                bench, recs, list(plan.levels), plan.concurrency_turns, sampler
            )
            result["concurrency"] = {"turns": turns, "levels": levels}
            timing["concurrency"] = round(time.monotonic() - began - sum(timing.values()), 1)
    finally:
        sampler.stop()
        agent_records = system.agent_turns()
        await system.stop()
    for i in range(1, plan.cold_starts):
        say(f"-- {system.name}: cold start {i + 1}/{plan.cold_starts}")
        cold.append(await system.start())
        say(f"   ready in {cold[-1].seconds:.2f} s")
        await system.stop()
    timing["stop_and_cold_starts"] = round(time.monotonic() - began - sum(timing.values()), 1)
    result.update(
        versions=system.versions(),
        cold_start=[asdict(c) for c in cold],
        agent_records=agent_records,
        resources=sampler.series(),
        seconds=round(time.monotonic() - began, 1),
    )
    say(f"== {system.name} done in {result['seconds'] / 60:.1f} min ({_fmt(timing)} s)")
    return result


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil

    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def ensure_baseline_venv(venv: Path, say: Progress) -> None:
    if (venv / ".baseline-installed").exists():
        return
    say(f"setting up the baseline's virtualenv in {venv} (first time: a few minutes)")
    subprocess.run(["bash", str(SETUP)], check=True, env={**os.environ, "BASELINE_VENV": str(venv)})


def setting_variables(pairs: list[str]) -> dict[str, str]:
    """`turn.went_on_within=0` -> VOICECORE_TURN_WENT_ON_WITHIN=0 (the agent reads no other)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not section or not name:
            raise SystemExit(f"--set {pair!r}: write SECTION.NAME=VALUE, e.g. turn.went_on_within=0")
        out[f"VOICECORE_{section}_{name}".upper()] = value.strip()
    return out


async def main(args: argparse.Namespace) -> Path:
    say = Progress()
    plan = QUICK if args.quick else FULL
    systems = [args.only] if args.only else ["voicecore", "baseline"]
    scenarios = tuple(args.scenarios.split(",")) if args.scenarios else SCENARIOS
    if unknown := set(scenarios) - set(SCENARIOS):
        raise SystemExit(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}")
    out_dir = args.out or (HERE / "results" / ("quick" if args.quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = find_livekit_server()
    if binary is None:
        raise SystemExit("livekit-server not found: run bin/setup (it builds .local/bin/livekit-server)")
    if "baseline" in systems:
        ensure_baseline_venv(args.baseline_venv, say)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    workdir = ROOT / ".local" / "bench" / stamp
    say(
        f"plan: {'quick' if args.quick else 'full'} {asdict(plan)}; systems: {', '.join(systems)}; "
        f"scenarios: {', '.join(scenarios)}"
    )
    say("making the recordings (Piper, Piper slow, espeak-ng, flite) ...")
    human = human_recordings(plan.human_trials) if "human" in scenarios else []
    material = (recordings(), paused_questions(PAUSES_MS, plan.paused_sentences), human)
    say(f"{len(material[0])} questions, {len(material[1])} with a pause, {len(material[2])} of real people")
    described = [
        {"name": r.name, "voice": r.voice, "text": r.text, "seconds": round(r.audio.duration, 3),
         "speech": [round(x, 3) for x in speech_bounds(r.audio)],
         "vad_end_offset_ms": _ms(vad_end_offset(r.audio))}
        for r in material[0]
    ]  # fmt: skip
    # a key pair of its own: `voicecore serve` refuses the public dev pair outside --dev
    server = LocalLiveKit(binary, workdir / "livekit", keys=new_key_pair("bench"))
    server.start()
    say(f"livekit-server on {server.creds.ws_url}; logs in {workdir}")
    assert server.proc is not None
    others = {"benchmark client": os.getpid(), "livekit-server": server.proc.pid}
    doc: dict[str, Any] = {
        "benchmark": "livekit_voice_to_voice",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "llm_engine": args.llm_engine,
        "settings": args.set,
        "plan": asdict(plan),
        "scenarios": scenarios,
        "machine": machine(),
        "definitions": report.DEFINITIONS,
        "recordings": described,
        "systems": {},
    }
    try:
        for name in systems:
            system: System
            if name == "voicecore":
                # The concurrency scenario goes past the default capacity (the CPU cores) on purpose:
                # it measures where that capacity lies.
                most = str(max(plan.levels, default=1))
                settings = {"VOICECORE_LIVEKIT_MAX_CONVERSATIONS": most}
                python = None
                if args.llm_engine == "vllm":  # its CPU build lives in .venv-vllm (bin/setup-vllm)
                    python = ROOT / ".venv-vllm" / "bin" / "python"
                    settings.update(VOICECORE_LLM_ENGINE="vllm", **VLLM_CPU_SETTINGS)
                settings.update(setting_variables(args.set))
                system = VoicecoreSystem(server.creds, workdir / "voicecore", settings, python=python)
            else:
                system = BaselineSystem(server.creds, workdir / "baseline", venv=args.baseline_venv)
            doc["systems"][name] = await bench_system(
                system, server.creds, plan, material, scenarios, say, stamp.lower(), others
            )
    finally:
        server.stop()
    doc["machine"]["load_average_after"] = os.getloadavg()
    engine = "" if args.llm_engine == "llama.cpp" else f"{args.llm_engine}-"
    path = out_dir / f"livekit-{engine}{stamp}.json"
    path.write_text(json.dumps(doc, indent=1, default=float))
    say(f"raw results: {path}")
    summary = report.write(doc, out_dir)
    print(summary)
    say(f"summary and plots in {out_dir}")
    return path


def human_recordings(trials: int) -> list[PausedQuestion]:
    import human_speech

    if missing := human_speech.missing_packages():
        need = " ".join(missing)
        raise SystemExit(f"the human scenario needs (bin/setup, as root): apt-get install {need}")
    return human_speech.spoken_sentences(trials)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _fmt(detail: dict[str, float]) -> str:
    return "(" + ", ".join(f"{k} {v:.2f}" for k, v in detail.items()) + ")"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few recordings and trials (a few minutes)")
    parser.add_argument("--only", choices=["voicecore", "baseline"], help="benchmark one system")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results[/quick])")
    parser.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--baseline-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument(
        "--llm-engine", choices=["llama.cpp", "vllm"], default="llama.cpp",
        help="voicecore's LLM engine; vllm runs its CPU build from .venv-vllm (correctness and "
        "batching on this machine, not GPU speed)",
    )  # fmt: skip
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
        help="a voicecore setting for this run (e.g. turn.went_on_within=0), to compare one with another",
    )  # fmt: skip
    asyncio.run(main(parser.parse_args()))
