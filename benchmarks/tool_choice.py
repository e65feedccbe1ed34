"""How well the bundled LLM picks the tool a sentence asks for (or none), and what the choice
costs per turn.

Two agents' tool sets (the assistant's and the tutor's in examples/), each with sentences that
need one of its tools and sentences that need none, written as people ask, not tuned to the
scorer. Prints accuracy by MIN_GAIN threshold and writes benchmarks/results/tool-choice-*.json.

    .venv/bin/python benchmarks/tool_choice.py
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from voicecore import Tool, load_config, tool
from voicecore.llm.llamacpp import LlamaCppEngine
from voicecore.llm.tool_choice import MIN_GAIN, ToolChooser


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return ""


@tool
def get_time() -> str:
    """The current time."""
    return ""


@tool
def calculate(expression: str) -> str:
    """Work out an arithmetic expression, such as 12 * 7."""
    return ""


@tool
def check_understanding(topic: str) -> str:
    """Ask the student a question to check they understood a topic."""
    return ""


@tool
def provide_example(topic: str) -> str:
    """Give a worked example of a topic."""
    return ""


ASSISTANT = [get_weather, get_time, calculate]
TUTOR = [check_understanding, provide_example]

# (tool set, expected tool or None, sentence)
LABELLED: list[tuple[list[Tool], str | None, str]] = [
    *[
        (ASSISTANT, "get_weather", s)
        for s in [
            "What's the weather in Paris?",
            "Is it going to rain in London today?",
            "How hot is it in Madrid right now?",
            "Do I need a jacket in Chicago?",
            "What's it like outside in Berlin?",
            "Is it sunny in Rome?",
            "Tell me the weather for Tokyo.",
            "Is it snowing in Oslo?",
        ]
    ],
    *[
        (ASSISTANT, "get_time", s)
        for s in [
            "What time is it?",
            "Can you tell me the time?",
            "What's the time right now?",
            "Do you know what time it is?",
            "How late is it?",
            "Is it past noon yet?",
        ]
    ],
    *[
        (ASSISTANT, "calculate", s)
        for s in [
            "What is 12 times 7?",
            "What's 345 plus 120?",
            "How much is 15 percent of 80?",
            "Divide 144 by 12.",
            "What is the square root of 81?",
            "Add 17 and 26.",
        ]
    ],
    *[
        (ASSISTANT, None, s)
        for s in [
            "What is the capital of France?",
            "Tell me a joke.",
            "Hello, how are you?",
            "Who wrote Hamlet?",
            "Why is the sky blue?",
            "Thanks, that's all.",
            "Can you recommend a good book?",
            "How do I boil an egg?",
            "What is the tallest mountain in the world?",
            "Who painted the Mona Lisa?",
            "What's your name?",
            "How many legs does a spider have?",
        ]
    ],
    *[
        (TUTOR, "check_understanding", s)
        for s in [
            "Can you quiz me on fractions?",
            "Test me on photosynthesis.",
            "Ask me a question about the water cycle.",
            "Check if I understood long division.",
        ]
    ],
    *[
        (TUTOR, "provide_example", s)
        for s in [
            "Can you show me an example of a fraction?",
            "Give me an example of a metaphor.",
            "Show me a worked example of long division.",
            "What's an example of a chemical reaction?",
        ]
    ],
    *[
        (TUTOR, None, s)
        for s in [
            "Hi, I'm ready to start.",
            "I don't get it.",
            "Thanks, that helps.",
            "What is photosynthesis?",
            "Can we take a break?",
            "Who discovered gravity?",
        ]
    ],
]


def main() -> None:
    engine = LlamaCppEngine(load_config(env={}).llm)
    chooser = ToolChooser(engine._llama, engine._render_turn)
    rows = []
    seconds = []
    for tools, expected, sentence in LABELLED:
        start = time.perf_counter()
        gains = chooser.gains(sentence, tools)
        seconds.append(time.perf_counter() - start)
        rows.append({"sentence": sentence, "expected": expected, "gains": gains})
    by_threshold = {}
    for threshold in [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]:
        by_threshold[threshold] = _score(rows, threshold)
    chooser.close()
    engine.close()
    result = {
        "model": engine.model_name or "bundled SmolLM2-135M-Instruct Q4_1",
        "sentences": len(rows),
        "min_gain": MIN_GAIN,
        "at_min_gain": _score(rows, MIN_GAIN),
        "by_threshold": by_threshold,
        "choice_ms": {
            "p50": round(statistics.median(seconds) * 1000, 1),
            "p90": round(sorted(seconds)[int(0.9 * len(seconds))] * 1000, 1),
        },
        "rows": rows,
    }
    out = Path(__file__).parent / "results" / f"tool-choice-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=1))
    for threshold, score in by_threshold.items():
        print(f"MIN_GAIN {threshold}: {score}")
    print(f"choice p50/p90 {result['choice_ms']} -> {out}")


def _score(rows: list[dict], threshold: float) -> dict[str, float]:
    def chosen(row: dict) -> str | None:
        name, gain = max(row["gains"].items(), key=lambda g: g[1])
        return name if gain >= threshold else None

    right = [chosen(r) == r["expected"] for r in rows]
    tool_rows = [r for r in rows if r["expected"]]
    none_rows = [r for r in rows if not r["expected"]]
    return {
        "accuracy": round(sum(right) / len(rows), 3),
        "right_tool_when_one_is_needed": round(
            sum(chosen(r) == r["expected"] for r in tool_rows) / len(tool_rows), 3
        ),
        "no_tool_when_none_is_needed": round(sum(chosen(r) is None for r in none_rows) / len(none_rows), 3),
    }


if __name__ == "__main__":
    main()
