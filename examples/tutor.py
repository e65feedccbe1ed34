"""A patient tutor: explains one step at a time, checks that the student follows, gives examples.

    voicecore serve --agent examples/tutor.py
    voicecore serve --agent examples/assistant.py --config voicecore.toml  # with, in the file:
        [agent]
        profiles = "tutor=examples/tutor.py"    # a room whose metadata says {"agent": "tutor"}

The session keeps the conversation's history, so the tutor remembers what was explained before.
Both tools only read (`speculative=True`): they may run before the student has surely finished.
"""

from __future__ import annotations

from voicecore import Agent, tool

# Everyday examples the tutor reaches for first; anything else, the model makes up its own.
EXAMPLES = {
    "fraction": "Cut a pizza into eight slices and eat three: you ate three eighths of it.",
    "percentage": "Ten percent of 50 dollars is 5 dollars: one dollar in every ten.",
    "gravity": "Drop a ball and it falls to the ground: the Earth pulls it down.",
    "photosynthesis": "A plant on a windowsill turns sunlight, water and air into its own food.",
    "verb": "In 'the dog runs', runs is the verb: it says what the dog does.",
}


@tool(speculative=True)
def check_understanding(topic: str) -> str:
    """Check that the student understood a topic: get one short question to ask them about it."""
    return (
        f"Ask the student one short, friendly question about {topic} that they can answer in a "
        "sentence, then wait for their answer."
    )


@tool(speculative=True)
def provide_example(concept: str) -> str:
    """Give the student a concrete, everyday example of a concept."""
    key = concept.lower().strip().rstrip("s")
    for name, example in EXAMPLES.items():
        if name in key or key in name:
            return example
    return f"No stored example for {concept}: give one from everyday life, in one sentence."


# Short on purpose: with "...one small step at a time, and check that the student understood",
# the bundled SmolLM2-135M answered "What is the capital of France?" in broken French. A bigger
# model (llm.model) can take a longer prompt.
agent = Agent(
    name="tutor",
    instructions="You are a patient tutor. Explain simply, in one or two short sentences.",
    greeting="Hi, I am your tutor. What would you like to learn today?",
    tools=[check_understanding, provide_example],
)
