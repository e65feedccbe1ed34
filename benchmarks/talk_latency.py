"""Voice-to-voice latency of `voicecore talk` over many recordings, in-process, real time.

    .venv/bin/python benchmarks/talk_latency.py [--limit N]
    .venv-vllm/bin/python benchmarks/talk_latency.py --llm-engine vllm [--limit N]

Writes benchmarks/results/talk-latency-<timestamp>.json (talk-latency-vllm-<timestamp>.json for
vLLM): machine, load, versions, what the LLM engine runs, every turn's stage times, and per-stage
medians. (The outside-in LiveKit benchmark lives beside it.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from recordings import recordings  # noqa: E402

from voicecore import load_config, load_models, talk  # noqa: E402
from voicecore.audio.frames import AudioFrame  # noqa: E402
from voicecore.doctor import report  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def main(limit: int | None, llm_engine: str | None) -> Path:
    config = load_config(overrides={"llm.engine": llm_engine})
    models = load_models(config)
    samples = []
    recs = recordings(limit)
    print(f"{len(recs)} recordings", flush=True)
    for n, rec in enumerate(recs, 1):
        audio = AudioFrame(rec.audio.samples, 16000)
        started = time.monotonic()
        result = await talk(models, config, audio, trailing_silence=0.5)
        turn = result.turns[0] if result.turns else None
        sample = {
            "recording": rec.name,
            "question": rec.text,
            "user_text": turn.user_text if turn else "",
            "reply": turn.agent_text if turn else "",
            "turns": len(result.turns),
            "latency_ms": turn.latencies_ms() if turn else None,
        }
        samples.append(sample)
        stages = " ".join(f"{k[:8]}={v}" for k, v in (sample["latency_ms"] or {}).items())
        print(
            f"[{n}/{len(recs)}] {rec.name} ({time.monotonic() - started:.1f} s): {stages}\n"
            f"    {sample['user_text']!r} -> {sample['reply'][:60]!r}",
            flush=True,
        )
    models.close()
    stages = [k for k in samples[0]["latency_ms"]] if samples and samples[0]["latency_ms"] else []
    summary: dict[str, dict[str, float]] = {}
    for stage in stages:
        values = [
            s["latency_ms"][stage] for s in samples if s["latency_ms"] and s["latency_ms"][stage] is not None
        ]
        if values:
            summary[stage] = {
                "p50": round(statistics.median(values), 1),
                "p90": round(percentile(values, 90), 1),
                "n": len(values),
            }
    answered = sum(1 for s in samples if s["reply"])
    doc = {
        "benchmark": "talk_latency",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average": os.getloadavg(),  # other work on the machine slows every stage
        "versions": report(config)["packages"],
        "llm_runs": report(config)["engines"]["llm_runs"],
        "summary_ms": summary,
        "answered": answered,
        "recordings": len(samples),
        "samples": samples,
    }
    RESULTS.mkdir(exist_ok=True)
    engine = "" if config.llm.engine == "llama.cpp" else f"{config.llm.engine}-"
    path = RESULTS / f"talk-latency-{engine}{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(doc, indent=2))
    if not engine:  # the README quotes the latest llama.cpp run
        (RESULTS / "talk-latency-latest.json").write_text(json.dumps(doc, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"answered {answered}/{len(samples)}; wrote {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limit", type=int, default=None, help="only the first N recordings")
    parser.add_argument("--llm-engine", default=None, help="llama.cpp (default) or vllm")
    args = parser.parse_args()
    asyncio.run(main(args.limit, args.llm_engine))
