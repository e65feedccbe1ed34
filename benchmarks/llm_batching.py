"""Two conversations on one LLM engine at once: does the second wait for the first one's reply?

    .venv/bin/python benchmarks/llm_batching.py                          # llama.cpp
    .venv-vllm/bin/python benchmarks/llm_batching.py --llm-engine vllm   # vLLM (its CPU build here)

Through voicecore's engine protocol, with the bundled SmolLM2: conversation A asks for a story;
as soon as A's first piece arrives, conversation B asks a one-sentence question. Recorded per
round: B's first piece after B asked, A's whole reply, and whether B's first piece came before A
was done (continuous batching) or after (serialised). Then one lone question, for the time to
first token without a neighbour. Writes benchmarks/results/llm-batching-<engine>-<timestamp>.json.
On a CPU these figures show behaviour (batching, not waiting), not a GPU's speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from voicecore import Message, load_config
from voicecore.doctor import report
from voicecore.pipeline import load_models

RESULTS = Path(__file__).parent / "results"
STORY = [Message("system", "You tell long stories."), Message("user", "Tell me a story about a dragon.")]
QUESTIONS = ["What is the capital of France?", "What do bees make?", "What color is the sky?"]


async def round_(llm, question: str) -> dict[str, float | bool | int]:
    a_pieces: list[float] = []
    b_first: list[float] = []
    started = asyncio.Event()
    asked = 0.0

    async def conversation_a() -> None:
        async for _ in llm.stream(STORY):
            a_pieces.append(time.monotonic())
            started.set()

    async def conversation_b() -> None:
        nonlocal asked
        await started.wait()
        asked = time.monotonic()
        messages = [Message("system", "Answer in one short sentence."), Message("user", question)]
        async for _ in llm.stream(messages):
            b_first.append(time.monotonic())
            break

    a_asked = time.monotonic()
    await asyncio.gather(conversation_a(), conversation_b())
    return {
        "b_first_piece_ms": round((b_first[0] - asked) * 1000, 1),
        "a_reply_ms": round((a_pieces[-1] - a_asked) * 1000, 1),
        "a_pieces": len(a_pieces),
        "b_before_a_done": b_first[0] < a_pieces[-1],
    }


async def lone(llm, question: str) -> float:
    asked = time.monotonic()
    async for _ in llm.stream(
        [Message("system", "Answer in one short sentence."), Message("user", question)]
    ):
        return round((time.monotonic() - asked) * 1000, 1)
    return float("nan")


async def main(llm_engine: str | None, rounds: int) -> Path:
    config = load_config(overrides={"llm.engine": llm_engine})
    models = load_models(config)
    llm = models.llm
    try:
        await lone(llm, "Hello.")  # warm-up: lazy initialisation is not what is measured
        results = [await round_(llm, QUESTIONS[n % len(QUESTIONS)]) for n in range(rounds)]
        alone = [await lone(llm, q) for q in QUESTIONS]
    finally:
        models.close()
    doc = {
        "benchmark": "llm_batching",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "engine": config.llm.engine,
        "llm_runs": report(config)["engines"]["llm_runs"],
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average": os.getloadavg(),  # other work on the machine slows every figure
        "summary": {
            "b_first_piece_ms_p50": statistics.median(r["b_first_piece_ms"] for r in results),
            "a_reply_ms_p50": statistics.median(r["a_reply_ms"] for r in results),
            "b_before_a_done": f"{sum(bool(r['b_before_a_done']) for r in results)}/{len(results)}",
            "lone_first_piece_ms_p50": statistics.median(alone),
        },
        "rounds": results,
        "lone_first_piece_ms": alone,
    }
    RESULTS.mkdir(exist_ok=True)
    engine = config.llm.engine.replace(".", "")
    path = RESULTS / f"llm-batching-{engine}-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc["summary"], indent=2))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm-engine", default=None, help="llama.cpp (default) or vllm")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.llm_engine, args.rounds))
