"""What tools cost a turn: end of speech -> first audio, in-process on the bundled models, in real
time, with Piper speaking the questions.

    .venv/bin/python benchmarks/tool_latency.py [--repeat N]

Four conditions, the same questions in each where it makes sense:
  plain         no tools: the baseline
  offered       the assistant's three tools offered, none needed (the choice's cost)
  fast tool     a weather lookup that answers at once (speculative: it may run in the pause)
  slow tool     a 1.5 s lookup: the filler comes first, then the answer

Writes benchmarks/results/tool-latency-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from recordings import piper, trim  # noqa: E402

from voicecore import (  # noqa: E402
    Agent,
    AudioFrame,
    RealtimeSink,
    Session,
    SessionHooks,
    load_config,
    load_models,
    split_frames,
    tool,
)

RESULTS = Path(__file__).parent / "results"
PLAIN = [
    "How many legs does a spider have?",
    "Who wrote Romeo and Juliet?",
    "What is the largest ocean on Earth?",
    "What do bees make?",
    "Which planet is closest to the sun?",
]
WEATHER = [
    "What's the weather in Paris?",
    "Is it going to rain in London today?",
    "How hot is it in Madrid right now?",
    "Is it sunny in Rome?",
    "Tell me the weather for Tokyo.",
]
TIME = [
    "What is the time right now?",
    "Can you tell me the time?",
    "Do you know what time it is?",
]


@tool(speculative=True)
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"{city}: sunny, 21 degrees"


@tool
async def get_time() -> str:
    """The current time."""
    await asyncio.sleep(1.5)  # a slow service
    return time.strftime("It is %H:%M.")


@tool
def calculate(expression: str) -> str:
    """Work out an arithmetic expression, such as 12 * 7."""
    return "42"


class Heard(SessionHooks):
    def __init__(self) -> None:
        self.chunks: list[tuple[float, str]] = []

    def on_agent_text(self, text: str) -> None:
        self.chunks.append((time.monotonic(), text))


async def one_turn(models, config, agent: Agent, question: str) -> dict:
    sink = RealtimeSink(config.audio.output_sample_rate)
    heard = Heard()
    session = Session(models, config, sink, heard, agent=agent)
    frames = list(split_frames(trim(piper(question))))
    silence = AudioFrame.silence(0.02, 16000)
    start = time.monotonic()
    try:
        for n in range(1500):
            session.push_audio(frames[n] if n < len(frames) else silence)
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))
            if n > len(frames) + 50 and not session.busy:
                break
    finally:
        await session.aclose()
    if not session.records:
        return {"question": question, "answered": False}
    turn = session.records[0]
    filler = [t for t, text in heard.chunks if text == config.agent.filler]
    answer = [t for t, text in heard.chunks if text != config.agent.filler]
    return {
        "question": question,
        "user_text": turn.user_text,
        "reply": turn.agent_text,
        "tools": turn.extra.get("tools", []),
        "first_audio_ms": _ms(turn.first_frame_out, turn.speech_end),
        "filler_ms": _ms(filler[0], turn.speech_end) if filler else None,
        "answer_ms": _ms(answer[0], turn.speech_end) if answer else None,
        "latency_ms": turn.latencies_ms(),
    }


def _ms(at: float | None, since: float) -> float | None:
    return None if at is None else round((at - since) * 1000, 1)


def _summary(rows: list[dict], key: str) -> dict[str, float] | None:
    values = sorted(r[key] for r in rows if r.get(key) is not None)
    if not values:
        return None
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return {"p50": round(statistics.median(values), 1), "p90": p90, "n": len(values)}


async def main(repeat: int) -> Path:
    config = load_config()
    models = load_models(config)
    await models.warm_up(config.llm.system_prompt)
    tools = [get_weather, get_time, calculate]
    conditions = {
        "plain": (Agent(), PLAIN + WEATHER),
        "offered": (Agent(tools=tools), PLAIN),
        "fast tool": (Agent(tools=tools), WEATHER),
        "slow tool": (Agent(tools=tools), TIME),
    }
    results: dict[str, dict] = {}
    for name, (agent, questions) in conditions.items():
        rows = [await one_turn(models, config, agent, q) for _ in range(repeat) for q in questions]
        called = sum(1 for r in rows if r.get("tools"))
        results[name] = {
            "first_audio_ms": _summary(rows, "first_audio_ms"),
            "answer_ms": _summary(rows, "answer_ms"),
            "tool_called": f"{called}/{len(rows)}",
            "rows": rows,
        }
        print(f"{name:10} first audio {results[name]['first_audio_ms']}  answer {results[name]['answer_ms']}"
              f"  tool called {called}/{len(rows)}", flush=True)  # fmt: skip
    models.close()
    doc = {
        "benchmark": "tool_latency",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "conditions": results,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"tool-latency-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(doc, indent=1))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2, help="times each question is asked")
    asyncio.run(main(parser.parse_args().repeat))
