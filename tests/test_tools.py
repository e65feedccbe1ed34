"""Function tools on the real bundled models: a function's schema, the call the LLM makes from
spoken words, the filler while a slow tool runs, barge-in cancelling it, failures answered."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from helpers import join, weather_agent, words
from pydantic import BaseModel
from test_pipeline import Recorder, feed

from voicecore import Agent, AudioFrame, ConfigError, RealtimeSink, Session, ToolCall, talk, tool
from voicecore.telemetry import Telemetry
from voicecore.turn.state import TurnState


class Order(BaseModel):
    item: str
    quantity: int = 1


async def test_a_function_becomes_a_tool_with_a_schema_from_its_hints():
    @tool
    def place_order(order: Order, note: str = "") -> Order:
        """Place an order for the customer.

        Longer notes for developers stay out of the description."""
        return order

    assert place_order.name == "place_order"
    assert place_order.description == "Place an order for the customer."
    params = place_order.parameters
    assert params["required"] == ["order"]
    assert params["properties"]["note"] == {"type": "string", "default": ""}
    order = params["properties"]["order"]
    assert set(order["properties"]) == {"item", "quantity"} and order["required"] == ["item"]

    ok = await place_order(ToolCall("place_order", {"order": {"item": "tea"}}), 1.0)
    assert ok.error is None and '"item": "tea"' in ok.content and '"quantity": 1' in ok.content
    bad = await place_order(ToolCall("place_order", {"order": {"item": "tea", "quantity": "many"}}), 1.0)
    assert bad.error == "bad arguments" and "quantity" in bad.content
    missing = await place_order(ToolCall("place_order", {}), 1.0)
    assert missing.error == "bad arguments" and "order" in missing.content

    @tool
    def slow() -> str:
        """Take a while."""
        time.sleep(0.5)
        return "done"

    late = await slow(ToolCall("slow", {}), 0.1)
    assert late.error == "timed out" and "0.1" in late.content

    with pytest.raises(ConfigError, match="docstring"):
        tool(lambda city: city)

    def untyped(city):  # type: ignore[no-untyped-def]
        """The weather."""

    with pytest.raises(ConfigError, match="type hint"):
        tool(untyped)


async def test_a_spoken_weather_question_is_answered_from_the_tool(models, config, say):
    cities: list[str] = []
    agent = weather_agent(cities)
    result = await talk(models, config, join(0.5, say("What's the weather in Paris?")), agent=agent)
    assert [c.lower() for c in cities] == ["paris"]
    turn = result.turns[0]
    assert {"sunny", "21"} & set(words(turn.agent_text)), turn.agent_text
    assert [t["name"] for t in turn.extra["tools"]] == ["get_weather"]
    assert turn.voice_to_voice is not None


async def test_a_slow_tool_gets_a_filler_then_the_answer(models, config, say):
    @tool
    async def get_time() -> str:
        """The current time."""
        await asyncio.sleep(2.0)
        return "It is 14:05."

    question = join(0.5, say("What is the time right now?"))
    result = await talk(models, config, question, agent=Agent(tools=[get_time]))
    turn = result.turns[0]
    assert turn.agent_text.startswith(config.agent.filler), turn.agent_text
    assert len(words(turn.agent_text)) > len(words(config.agent.filler))  # then the answer
    assert turn.extra["tools"][0]["seconds"] >= 2.0
    # the filler was heard while the tool ran, not after it
    assert turn.voice_to_voice is not None and turn.voice_to_voice < 2.0


async def test_barge_in_during_a_tool_call_cancels_it_and_the_agent_listens(models, config, say):
    started, cancelled = asyncio.Event(), asyncio.Event()

    @tool
    async def get_time() -> str:
        """The current time."""
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "14:05"

    sink = RealtimeSink(config.audio.output_sample_rate)
    hooks = Recorder()
    session = Session(models, config, sink, hooks, agent=Agent(tools=[get_time]))
    try:
        question = join(0.3, say("What is the time right now?"))
        await feed(session, question, until=lambda: hooks.spoken, max_seconds=20)
        assert started.is_set() and hooks.spoken == [config.agent.filler]
        await feed(session, join(say("Stop, never mind."), 0.2))
        await asyncio.wait_for(cancelled.wait(), 2)
        assert session.records and session.records[0].interrupted
        await feed(session, AudioFrame.silence(1.0, 16000), until=lambda: not session.busy, max_seconds=20)
        assert session._machine.state is TurnState.LISTENING
    finally:
        await session.aclose()


async def test_a_tool_that_fails_is_answered_and_counted(models, config, say):
    @tool
    def get_stock_price(company: str) -> str:
        """The price of a company's shares on the stock market."""
        raise RuntimeError("market data offline")

    @tool
    async def get_weather(city: str) -> str:
        """The current weather in a city."""
        await asyncio.sleep(10)
        return "sunny"

    config = replace(config, agent=replace(config.agent, tool_timeout=1.0))
    agent = Agent(tools=[get_stock_price, get_weather])
    telemetry = Telemetry()
    for question, tool_name, error in [
        ("What is the stock price of Apple?", "get_stock_price", "raised"),
        ("What's the weather in London?", "get_weather", "timed out"),
    ]:
        result = await talk(models, config, join(0.5, say(question)), agent=agent)
        turn = result.turns[0]
        assert [(t["name"], t["error"]) for t in turn.extra["tools"]] == [(tool_name, error)]
        assert words(turn.agent_text), "the person gets an answer"
        telemetry.on_turn("room", "alice", turn)
    metrics = telemetry.render()[0].decode()
    assert 'voicecore_tool_calls_total{outcome="raised",tool="get_stock_price"} 1.0' in metrics
    assert 'voicecore_tool_calls_total{outcome="timed out",tool="get_weather"} 1.0' in metrics
