"""End of turn on recordings of real people, scored as LiveKit's eot-bench scores it: how often a
pause inside a sentence is taken for the end (a cut-off), and how long the real end waits.

    .venv/bin/python benchmarks/eot_bench.py                 # ~5 min on an idle 2-core machine
    .venv/bin/python benchmarks/eot_bench.py --rescore FILE  # the policies again, from a results file

Cases (benchmarks/human_speech.py): *holds* are real sentences cut at a word boundary and
followed by a pause of 0.3-1.5 s (the speaker would go on); *ends* are the same sentences ending
normally. Plus the latency benchmark's synthetic paused questions (Piper), which must not regress.
For each case: what voicecore's Whisper hears at the VAD's first quiet window (the speech and
0.1 s of silence) and what the bundled LLM makes of it (P(whole message), voicecore.llm.
message_end), with its cost. A policy turns that into the silence that ends the turn; a hold is
cut off when that is shorter than its pause, and an end waits that long.

Policies: `vad`, a fixed silence; `word_list`, voicecore before issue 22 (benchmarks/
heuristic_before.py: 0.4 s after words that sound complete, 1.4 s otherwise); `llm`, voicecore
now (turn/endpoint.py), at its defaults and over a sweep of its four settings.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import human_speech  # noqa: E402

from voicecore.config import LlmConfig, SttConfig, TurnConfig  # noqa: E402
from voicecore.turn.endpoint import endpoint_delay  # noqa: E402

SR = 16_000
FIRST_LOOK = 0.1  # the VAD's first quiet window comes 50-120 ms after the audible end
RESULTS = Path(__file__).parent / "results"
FIXED_SILENCES = (0.3, 0.6, 1.0)  # summary rows: common fixed endpointing delays


@dataclass
class Scored:
    id: str
    group: str  # human | synthetic
    label: str  # hold | end
    pause: float | None
    text: str  # the words before the silence (reference)
    transcript: str  # what Whisper heard at the first quiet window
    p_end: float | None  # the LLM's P(whole message) for that
    cost_ms: float  # the LLM's time for it


def synthetic_cases() -> list[human_speech.Case]:
    import recordings

    out = []
    for q in recordings.paused_questions(pauses=(400, 700, 1000)):
        first = q.audio.samples[: int(q.first_end * SR) + 1].astype(np.float32) / 32768
        out.append(human_speech.Case(q.name, q.name, "piper", "synthetic", "hold", first, q.pause_ms / 1000,
                                     q.first))  # fmt: skip
    for i, text in enumerate(recordings.QUESTIONS):
        audio = recordings.trim(recordings.piper(text), margin=0.0).samples.astype(np.float32) / 32768
        out.append(human_speech.Case(f"piper-{i:02d}", f"piper-{i:02d}", "piper", "synthetic", "end", audio,
                                     None, text))  # fmt: skip
    return out


async def score(cases: list[human_speech.Case], group: str) -> list[Scored]:
    from voicecore.llm.llamacpp import LlamaCppEngine
    from voicecore.stt.whisper import WhisperSTT

    stt, llm = WhisperSTT(SttConfig()), LlamaCppEngine(LlmConfig())
    out = []
    try:
        for n, case in enumerate(cases):
            heard = np.concatenate([case.audio, np.zeros(int(FIRST_LOOK * SR), np.float32)])
            transcript = (await stt.transcribe(heard, final=True)).text
            started = time.perf_counter()
            p = await llm.message_end(transcript)
            cost = (time.perf_counter() - started) * 1000
            out.append(
                Scored(case.id, group, case.label, case.pause, case.text, transcript, p, round(cost, 1))
            )
            if n % 25 == 0:
                print(f"[eot] {group} {n + 1}/{len(cases)} {case.id} P={p} {transcript!r}", file=sys.stderr)
    finally:
        stt.close()
        llm.close()
    return out


# -- policies ------------------------------------------------------------------------------------------
def delay(policy: str, s: Scored, knobs: dict[str, float]) -> float:
    if policy == "vad":
        return knobs["silence"]
    if policy == "word_list":
        from heuristic_before import sounds_complete

        return knobs["short"] if sounds_complete(s.transcript) else knobs["long"]
    config = replace(TurnConfig(), **knobs)  # type: ignore[arg-type]
    return endpoint_delay(s.transcript, config, s.p_end)


def grid(policy: str) -> list[dict[str, float]]:
    if policy == "vad":
        return [{"silence": round(float(x), 2)} for x in np.arange(0.2, 2.01, 0.1)]
    if policy == "word_list":
        return [{"short": a, "long": b} for a in (0.2, 0.3, 0.4, 0.5) for b in (1.0, 1.4, 1.8, 2.2)]
    return [
        {"min_endpoint_delay": a, "max_endpoint_delay": b, "end_likely": hi, "end_unlikely": lo}
        for a, b, hi, lo in itertools.product(
            (0.3, 0.4), (1.2, 1.6, 2.0, 2.4), (1e-6, 1e-5, 1e-4, 1e-3), (1e-9, 1e-8, 1e-7, 1e-6)
        )
        if lo < hi
    ]


DEFAULTS = {
    "vad": {"silence": 0.55},
    "word_list": {"short": 0.4, "long": 1.4},
    "llm": {
        k: getattr(TurnConfig(), k)
        for k in ("min_endpoint_delay", "max_endpoint_delay", "end_likely", "end_unlikely")
    },  # fmt: skip
}


def evaluate(policy: str, scored: list[Scored], knobs: dict[str, float]) -> dict[str, Any]:
    holds = [s for s in scored if s.label == "hold"]
    waits = np.array([delay(policy, s, knobs) for s in scored if s.label == "end"])
    cut = {s.id: delay(policy, s, knobs) < (s.pause or 0) for s in holds}

    def rate(keep: Any) -> float | None:
        chosen = [cut[s.id] for s in holds if keep(s)]
        return round(float(np.mean(chosen)), 3) if chosen else None

    return {
        "knobs": knobs,
        "cutoff_rate": rate(lambda s: True),
        "cutoff_rate_holds_0.5s+": rate(lambda s: s.pause >= 0.5),
        "cutoff_rate_holds_1s+": rate(lambda s: s.pause >= 1.0),
        "cutoff_by_pause": {
            str(p): rate(lambda s, p=p: s.pause == p) for p in sorted({s.pause for s in holds})
        },
        "latency_mean_ms": round(1000 * float(waits.mean())),
        "latency_p50_ms": round(1000 * float(np.median(waits))),
        "latency_p90_ms": round(1000 * float(np.percentile(waits, 90))),
    }


def auc(scored: list[Scored]) -> float | None:
    ends = np.array([s.p_end or 0.0 for s in scored if s.label == "end"])
    holds = np.array([s.p_end or 0.0 for s in scored if s.label == "hold"])
    if not len(ends) or not len(holds):
        return None
    return round(
        float(np.mean(ends[:, None] > holds[None, :]) + 0.5 * np.mean(ends[:, None] == holds[None, :])), 3
    )


def report(scored: list[Scored], meta: dict[str, Any]) -> dict[str, Any]:
    groups: dict[str, Any] = {}
    for group in ("human", "synthetic"):
        mine = [s for s in scored if s.group == group]
        ends = sum(s.label == "end" for s in mine)
        groups[group] = {"ends": ends, "holds": len(mine) - ends, "auc_p_end": auc(mine), "policies": {}}
        for policy in ("vad", "word_list", "llm"):
            rows = [evaluate(policy, mine, k) for k in grid(policy)]
            within = [r for r in rows if (r["cutoff_rate_holds_0.5s+"] or 0) <= 0.05]
            groups[group]["policies"][policy] = {
                "defaults": evaluate(policy, mine, DEFAULTS[policy]),
                "lowest_latency_at_5pct_cutoffs": min(
                    within, key=lambda r: r["latency_mean_ms"], default=None
                ),
                "sweep": rows,
            }
    costs = [s.cost_ms for s in scored if s.p_end is not None]
    return {**meta, "llm_cost_ms": {"p50": round(float(np.median(costs)), 1),
                                    "p90": round(float(np.percentile(costs, 90)), 1), "n": len(costs)},
            "groups": groups, "cases": [asdict(s) for s in scored]}  # fmt: skip


def summary(result: dict[str, Any]) -> str:
    lines = []
    for group, g in result["groups"].items():
        head = f"## {group}: {g['holds']} holds, {g['ends']} ends; P(whole message) AUC {g['auc_p_end']}"
        lines += [head, "",
                  "| policy | cut-offs (all / holds >= 0.5 s / >= 1 s) | end waits mean, p50, p90 | "
                  "lowest mean wait at <= 5 % cut-offs (holds >= 0.5 s) |", "|---|---|---|---|"]  # fmt: skip
        for name, p in g["policies"].items():
            d, best = p["defaults"], p["lowest_latency_at_5pct_cutoffs"]
            cuts = " / ".join(
                _pct(d[k]) for k in ("cutoff_rate", "cutoff_rate_holds_0.5s+", "cutoff_rate_holds_1s+")
            )
            at5 = f"{best['latency_mean_ms']} ms ({best['knobs']})" if best else "-"
            lines.append(f"| {name} (defaults) | {cuts} | {d['latency_mean_ms']}, {d['latency_p50_ms']}, "
                         f"{d['latency_p90_ms']} ms | {at5} |")  # fmt: skip
        for row in g["policies"]["vad"]["sweep"]:  # what a fixed-silence endpointer costs at each
            if row["knobs"]["silence"] in FIXED_SILENCES:
                cuts = " / ".join(
                    _pct(row[k]) for k in ("cutoff_rate", "cutoff_rate_holds_0.5s+", "cutoff_rate_holds_1s+")
                )
                lines.append(f"| fixed silence {row['knobs']['silence']} s | {cuts} | "
                             f"{row['latency_mean_ms']} ms | |")  # fmt: skip
        lines.append("")
    cost = result["llm_cost_ms"]
    lines.append(f"P(whole message) per decision: p50 {cost['p50']} ms, p90 {cost['p90']} ms, n={cost['n']} "
                 f"(load average before {result['load_before']}, after {result['load_after']})")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: Path) -> list[Path]:
    """eot-tradeoff.png: cut-offs on holds of 0.5 s or more against the mean wait at real ends,
    every setting of each policy swept (the defaults ringed); eot-p-end.png: P(whole message)
    at ends and at holds, on recordings of real people."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = result["groups"]
    fig, axes = plt.subplots(1, len(groups), figsize=(11, 4.2), sharey=True)
    styles = {
        "vad": ("fixed silence", "tab:gray", "-"),
        "word_list": ("word list (before)", "tab:orange", ""),
        "llm": ("LLM P(whole message) (now)", "tab:blue", ""),
    }
    for ax, (group, g) in zip(axes, groups.items(), strict=True):
        for name, (label, color, line) in styles.items():
            policy = g["policies"][name]
            rows = sorted(policy["sweep"], key=lambda r: r["latency_mean_ms"])
            x = [r["latency_mean_ms"] for r in rows]
            y = [100 * (r["cutoff_rate_holds_0.5s+"] or 0) for r in rows]
            ax.plot(x, y, line or ".", color=color, label=label, alpha=0.8 if line else 0.35)
            d = policy["defaults"]
            ax.plot(d["latency_mean_ms"], 100 * (d["cutoff_rate_holds_0.5s+"] or 0), "o", color=color,
                    markersize=11, markerfacecolor="none", markeredgewidth=2)  # fmt: skip
        ax.axhline(5, color="tab:red", linewidth=0.8, linestyle="--")
        ax.set_title(f"{group}: {g['holds']} holds, {g['ends']} ends")
        ax.set_xlabel("mean wait after a real end (ms)")
        ax.set_xlim(0, 2500)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cut off at holds >= 0.5 s (%)")
    axes[0].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    paths = [out / "eot-tradeoff.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    cases = [c for c in result["cases"] if c["group"] == "human" and c["p_end"] is not None]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    bins = np.linspace(-14, 0, 29)
    for label, color in (("end", "tab:green"), ("hold", "tab:red")):
        values = [np.log10(max(c["p_end"], 1e-14)) for c in cases if c["label"] == label]
        ax.hist(values, bins=bins, alpha=0.55, color=color, label=f"{label}s ({len(values)})", density=True)
    cfg = TurnConfig()
    for p_value in (cfg.end_likely, cfg.end_unlikely):
        ax.axvline(np.log10(p_value), color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("log10 P(whole message) from the bundled LLM (dashed: end_unlikely, end_likely)")
    ax.set_title(f"real people: ends against mid-sentence holds (AUC {groups['human']['auc_p_end']})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "eot-p-end.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


async def main(args: argparse.Namespace) -> None:
    if args.rescore:
        old = json.loads(args.rescore.read_text())
        scored = [Scored(**c) for c in old["cases"]]
        meta = {k: old[k] for k in ("started", "load_before", "load_after")}
    else:
        if missing := human_speech.missing_packages():
            need = " ".join(missing)
            raise SystemExit(f"needs the Debian packages {need} (bin/setup installs them as root)")
        meta = {"started": datetime.now(UTC).isoformat(timespec="seconds"), "load_before": os.getloadavg()[0]}
        scored = await score(human_speech.cases(), "human") + await score(synthetic_cases(), "synthetic")
        meta["load_after"] = os.getloadavg()[0]
    result = report(scored, meta)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    out = args.out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    (out / f"eot-{stamp}.json").write_text(json.dumps(result, indent=1))
    text = summary(result)
    print(text)
    print(f"results: {out / f'eot-{stamp}.json'}; plots: {', '.join(p.name for p in plot(result, out))}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rescore", type=Path, help="score the policies again from a results file")
    parser.add_argument("--out", type=Path, help="results folder (default benchmarks/results)")
    asyncio.run(main(parser.parse_args()))
