"""Typed chat and per-room agents on a real LiveKit server, with the real models, as a frontend
uses them: a message typed in LiveKit's chat (`sendText` on lk.chat) is answered aloud, and a
room's metadata, its dispatch's, or the profile a browser named picks the agent its people get.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import transcribe, weather_agent, words
from livekit import api
from livekit_fixtures import LiveKitServer, heard_by_agent, poll, reply_done

from voicecore import Config, Models, load_agent
from voicecore.agent import Agents
from voicecore.rtc import AgentRoom, DispatchWorker, agent_token
from voicecore.rtc.chat import CHAT_TOPIC, MAX_CHARS
from voicecore.rtc.transcription import ATTR_TRACK
from voicecore.web.details import DetailsIssuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
TUTOR = str(ROOT / "examples" / "tutor.py")
ASSISTANT = str(ROOT / "examples" / "assistant.py")
LONG_SAY = (
    "Here is a long story about the history of Paris, from a small island in the river to the "
    "great city of today, with its bridges, its markets and its many famous churches."
)


@pytest.fixture(scope="module")
async def warm(models: Models, config: Config) -> Models:
    await models.warm_up(config.llm.system_prompt)
    return models


def _room_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]


async def test_a_typed_question_is_answered_aloud_and_both_texts_are_transcribed(
    livekit_server: LiveKitServer, warm: Models, config: Config, callers, request
):
    """The answer is spoken; the typed words and the answer are both on lk.transcription (the
    typed ones as the person's, as their spoken words are). Typed while the agent speaks, a
    message stops it where the person stopped hearing it; one far over the bound is cut."""
    room = _room_name(request)
    creds = livekit_server.creds
    token = agent_token(creds, room, "vc")
    agent = await asyncio.wait_for(AgentRoom.join(warm, config, creds.ws_url, token), 15)
    try:
        alice = callers("alice")
        await asyncio.wait_for(alice.join(creds, room), 15)
        await heard_by_agent(alice)
        # her microphone chosen (the server asked which came first): typed words carry its id
        await poll(lambda: "alice" in agent.conversations and agent.conversations["alice"].track_sid, 10)
        question = "What is the capital of France?"
        sent = time.monotonic()
        await asyncio.wait_for(alice.room.local_participant.send_text(question, topic=CHAT_TOPIC), 10)
        await reply_done(alice, finals=1)
        await asyncio.sleep(0.3)

        assert "paris" in words(alice.agent_finals()[0].text), alice.agent_finals()
        heard = await transcribe(warm, alice.heard(since=sent))
        assert "paris" in words(heard), heard
        typed = [t for t in alice.transcripts if t.sender == "alice" and t.final]
        assert [t.text for t in typed] == [question]
        assert typed[0].attributes[ATTR_TRACK] == alice.mic_sid  # the person's, as spoken words are
        session = agent.conversations["alice"].session
        assert [m.content for m in session.history.turns][0] == question

        # typed while the agent speaks: it stops at once, and the message is answered
        saying = asyncio.ensure_future(session.say(LONG_SAY))
        await poll(lambda: alice.state == "speaking", 10, step=0.02)
        await asyncio.sleep(1.0)
        await asyncio.wait_for(alice.room.local_participant.send_text("Thank you.", topic=CHAT_TOPIC), 10)
        cut = await asyncio.wait_for(saying, 10)
        assert cut and len(cut) < len(LONG_SAY) and LONG_SAY.startswith(cut), cut
        await reply_done(alice, finals=3)
        assert [t.text for t in alice.transcripts if t.sender == "alice" and t.final][-1] == "Thank you."

        # a message far over the bound is cut, and still answered
        long = "Please tell me about the weather. " + "x" * (3 * MAX_CHARS)
        await asyncio.wait_for(alice.room.local_participant.send_text(long, topic=CHAT_TOPIC), 10)
        await reply_done(alice, finals=4)
        user_said = [m.content for m in session.history.turns][-2]
        assert len(user_said) == MAX_CHARS and long.startswith(user_said)
    finally:
        await agent.aclose()


@pytest.fixture
async def worker(
    livekit_server: LiveKitServer, warm: Models, config: Config
) -> AsyncIterator[DispatchWorker]:
    cfg = copy.deepcopy(config)
    cfg.livekit.agent_name = "vc-profiles"
    cfg.livekit.max_conversations = 4  # three rooms at once even on a one-core machine
    cfg.livekit.rejoin_wait = 0.0
    cfg.agent.definition = ASSISTANT
    cfg.agent.profiles = f"tutor={TUTOR}"
    worker = DispatchWorker(warm, cfg, livekit_server.creds)
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.registered.wait(), 10)
    yield worker
    await asyncio.wait_for(worker.aclose(), 15)
    await asyncio.wait_for(running, 10)


async def test_room_metadata_picks_the_tutor_while_another_room_keeps_the_default(
    livekit_server: LiveKitServer, worker: DispatchWorker, warm: Models, callers, request
):
    """One worker, three rooms: the tutor profile by the room's metadata, by the profile a
    browser named in POST /api/connection-details (the token's dispatch), and a room that names
    no known profile, which gets the default agent (examples/assistant.py)."""
    creds = livekit_server.creds
    base = _room_name(request)[:40]
    tutor, assistant = load_agent(TUTOR), load_agent(ASSISTANT)
    lkapi = api.LiveKitAPI(creds.http_url, creds.api_key, creds.api_secret)
    try:
        metadata = json.dumps({"agent": "tutor"})
        await lkapi.room.create_room(api.CreateRoomRequest(name=f"{base}-meta", metadata=metadata))
        for room, metadata in ((f"{base}-meta", ""), (f"{base}-plain", json.dumps({"agent": "pirate"}))):
            request_ = api.CreateAgentDispatchRequest(
                agent_name=worker.agent_name, room=room, metadata=metadata
            )
            await lkapi.agent_dispatch.create_dispatch(request_)
    finally:
        await lkapi.aclose()
    issuer = DetailsIssuer(
        creds, creds.ws_url, datetime.timedelta(minutes=5), worker.agent_name, profiles=frozenset({"tutor"})
    )
    browser = issuer.issue(issuer.parse(b'{"agent": "tutor", "participantName": "Bea"}'))

    people = {"meta": callers("ann"), "plain": callers("carl"), "browser": callers("bea")}
    await asyncio.wait_for(people["meta"].join(creds, f"{base}-meta"), 15)
    await asyncio.wait_for(people["plain"].join(creds, f"{base}-plain"), 15)
    await asyncio.wait_for(people["browser"].join_with(browser["serverUrl"], browser["participantToken"]), 15)
    for caller in people.values():
        await reply_done(caller, finals=1, within=30)  # the greeting
        await heard_by_agent(caller)
    greetings = {where: caller.agent_finals()[0].text for where, caller in people.items()}
    assert greetings == {"meta": tutor.greeting, "plain": assistant.greeting, "browser": tutor.greeting}
    # the tutor's greeting in the tutor's voice; its first words may be lost on a busy machine
    # (the client still setting up its audio), so its words, not its beginning
    heard = words(await transcribe(warm, people["meta"].heard()))
    assert len(set(heard) & set(words(tutor.greeting))) >= 3 and "assistant" not in heard, heard
    prompts = {
        job.room: next(iter(job.agent.conversations.values())).session.history.messages()[0].content
        for job in worker.jobs.values()
        if job.agent is not None
    }
    assert prompts[f"{base}-meta"] == prompts[browser["roomName"]] == tutor.instructions
    assert prompts[f"{base}-plain"] == assistant.instructions


async def test_a_spoken_weather_question_calls_the_tool_and_is_answered_aloud(
    livekit_server: LiveKitServer, warm: Models, config: Config, say, callers, request
):
    """Through a real room: the person asks aloud, the agent's get_weather tool is called with
    the city, and the answer the person hears comes from the tool's result."""
    cities: list[str] = []
    room = _room_name(request)
    creds = livekit_server.creds
    agents = Agents(default=weather_agent(cities))
    token = agent_token(creds, room, "vc")
    agent = await asyncio.wait_for(AgentRoom.join(warm, config, creds.ws_url, token, agents=agents), 15)
    try:
        alice = callers("alice")
        await asyncio.wait_for(alice.join(creds, room), 15)
        await heard_by_agent(alice)
        _, speech_end = await alice.speak(say("What's the weather in Paris?"))
        await reply_done(alice, finals=1)
        await asyncio.sleep(0.3)
        assert [c.lower() for c in cities] == ["paris"]
        heard = await transcribe(warm, alice.heard(since=speech_end))
        assert {"sunny", "21"} & set(words(heard)), heard
        record = agent.conversations["alice"].session.records[-1]
        assert [t["name"] for t in record.extra["tools"]] == ["get_weather"]
    finally:
        await agent.aclose()
