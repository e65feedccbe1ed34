"""Per-room agents on a real LiveKit server, with the real models, as a frontend uses them: a
room's metadata, its dispatch's, or the profile a browser named picks the agent its people get.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import re
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from helpers import transcribe, words
from livekit import api
from livekit_fixtures import LiveKitServer, listening, poll, reply_done

from voicecore import Config, Models, load_agent
from voicecore.rtc import DispatchWorker
from voicecore.web.details import DetailsIssuer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
TUTOR = str(ROOT / "examples" / "tutor.py")
ASSISTANT = str(ROOT / "examples" / "assistant.py")


@pytest.fixture(scope="module")
async def warm(models: Models, config: Config) -> Models:
    await models.warm_up(config.llm.system_prompt)
    return models


def _room_name(request: pytest.FixtureRequest) -> str:
    return re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:60]


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
        await poll(partial(listening, caller), 10)
    greetings = {where: caller.agent_finals()[0].text for where, caller in people.items()}
    assert greetings == {"meta": tutor.greeting, "plain": assistant.greeting, "browser": tutor.greeting}
    heard = words(await transcribe(warm, people["meta"].heard()))
    assert "tutor" in heard, heard
    prompts = {
        job.room: next(iter(job.agent.conversations.values())).session.history.messages()[0].content
        for job in worker.jobs.values()
        if job.agent is not None
    }
    assert prompts[f"{base}-meta"] == prompts[browser["roomName"]] == tutor.instructions
    assert prompts[f"{base}-plain"] == assistant.instructions
