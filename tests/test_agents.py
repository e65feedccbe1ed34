"""Agent definitions an operator runs: the examples load and their tools work, profiles are
loaded once with clear errors, a room's metadata picks one, and a browser can only name one.

Nothing here needs a model or a server: what a room does with the agent chosen is checked in
tests/test_agents_livekit.py.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import jwt
import pytest

from voicecore import Agent, Config, ConfigError, load_agent
from voicecore.agent import Agents, profile_specs
from voicecore.config import AgentConfig
from voicecore.rtc.token import Credentials
from voicecore.service import ServeOptions, web_context
from voicecore.telemetry import Telemetry
from voicecore.tools import ToolCall
from voicecore.web.app import WebServer, build_app
from voicecore.web.details import BadRequest, DetailsIssuer
from voicecore.web.health import Readiness

ROOT = Path(__file__).resolve().parent.parent
TUTOR = str(ROOT / "examples" / "tutor.py")
ASSISTANT = str(ROOT / "examples" / "assistant.py")


def test_the_examples_load_and_the_assistant_can_calculate():
    tutor, assistant = load_agent(TUTOR), load_agent(ASSISTANT)
    assert {t.name for t in tutor.tools} == {"check_understanding", "provide_example"}
    assert all(t.description for t in (*tutor.tools, *assistant.tools))  # the model reads these
    assert tutor.greeting and tutor.instructions and "tutor" in tutor.instructions
    assert {t.name for t in assistant.tools} == {"current_time", "weather", "calculate"}

    calculate = next(t for t in assistant.tools if t.name == "calculate")
    result = asyncio.run(calculate(ToolCall("calculate", {"expression": "12 * (3 + 4)"}), 5.0))
    assert result.error is None and result.content == "12 * (3 + 4) = 84"
    # what someone said, through the model, is never run as Python
    for hostile in ('__import__("os").system("true")', "9 ** 9 ** 9", "[1] * 10**9"):
        result = asyncio.run(calculate(ToolCall("calculate", {"expression": hostile}), 5.0))
        assert result.error == "raised", (hostile, result)
    weather = next(t for t in assistant.tools if t.name == "weather")
    assert "sunny" in asyncio.run(weather(ToolCall("weather", {"city": "Paris"}), 5.0)).content


def test_profiles_load_once_and_a_bad_one_is_a_clear_config_error(tmp_path: Path):
    agents = Agents.load(AgentConfig(definition=ASSISTANT, profiles=f"tutor={TUTOR}"))
    assert agents.default.name == "assistant" and set(agents.profiles) == {"tutor"}
    assert agents.profiles["tutor"].greeting == load_agent(TUTOR).greeting
    assert profile_specs(" a=x.py , b = pkg.mod:agent ") == {"a": "x.py", "b": "pkg.mod:agent"}

    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no database')\n")
    not_agent = tmp_path / "not_agent.py"
    not_agent.write_text("agent = 42\n")
    for profiles, message in [
        ("tutor", "is not name=spec"),
        (f"tutor={TUTOR},tutor={TUTOR}", "named twice"),
        (f"bad name={TUTOR}", "letters, digits"),
        (f"x={tmp_path / 'missing.py'}", "not found"),
        (f"x={broken}", "failed to load"),
        (f"x={not_agent}", "is not a voicecore.Agent"),
        ("x=no_such_package.agents", "cannot import"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            Agents.load(AgentConfig(profiles=profiles))


def test_metadata_picks_a_profile_unknown_names_get_the_default(caplog: pytest.LogCaptureFixture):
    default, tutor = Agent(greeting="Hello."), Agent(name="tutor", greeting="Hi, I am your tutor.")
    agents = Agents(default, {"tutor": tutor})
    assert agents.choose("", "") is default
    assert agents.choose('{"agent": "tutor"}') is tutor
    assert agents.choose("", '{"agent": "tutor"}') is tutor  # the dispatch's metadata
    assert agents.choose('{"agent": "tutor"}', '{"agent": "default"}') is default  # ...wins
    assert agents.choose("an application's own note, not JSON") is default
    with caplog.at_level(logging.WARNING, logger="voicecore.agent"):
        assert agents.choose('{"agent": "pirate"}', where="room r1") is default
    assert "room r1: no agent profile 'pirate'" in caplog.text


def test_free_text_instructions_only_when_the_operator_allows_them(caplog: pytest.LogCaptureFixture):
    metadata = json.dumps({"agent": "tutor", "instructions": "Speak like a pirate."})
    tutor = Agent(name="tutor", instructions="You are a tutor.", greeting="Hi.")
    with caplog.at_level(logging.WARNING, logger="voicecore.agent"):
        chosen = Agents(Agent(), {"tutor": tutor}).choose(metadata)
    assert chosen.instructions == "You are a tutor." and "metadata_instructions is off" in caplog.text
    chosen = Agents(Agent(), {"tutor": tutor}, metadata_instructions=True).choose(metadata)
    assert chosen.instructions == "Speak like a pirate."
    assert chosen.greeting == "Hi." and tutor.instructions == "You are a tutor."  # the profile stays


def test_a_browser_names_a_profile_from_the_allow_list_only():
    creds = Credentials("ws://127.0.0.1:7880", "k", "s" * 32)
    issuer = DetailsIssuer(
        creds, "ws://127.0.0.1:7880", datetime.timedelta(minutes=10), "voicecore",
        profiles=frozenset({"tutor"}),
    )  # fmt: skip
    details = issuer.issue(issuer.parse(b'{"agent": "tutor"}'))
    claims = jwt.decode(details["participantToken"], options={"verify_signature": False})
    [dispatch] = claims["roomConfig"]["agents"]
    assert dispatch["agentName"] == "voicecore" and json.loads(dispatch["metadata"]) == {"agent": "tutor"}
    with pytest.raises(BadRequest, match="no profile 'pirate'.*profiles: tutor"):
        issuer.parse(b'{"agent": "pirate"}')
    with pytest.raises(BadRequest, match="agent must be a string"):
        issuer.parse(b'{"agent": {"instructions": "Speak like a pirate."}}')
    fixed = dataclasses.replace(issuer, fixed_room="lobby")  # serve --room: its agent is there already
    with pytest.raises(BadRequest, match="in room 'lobby' only"):
        fixed.parse(b'{"agent": "tutor"}')


async def test_connection_details_refuse_an_unknown_profile_with_400(config: Config):
    cfg = copy.deepcopy(config)
    cfg.agent.profiles = f"tutor={TUTOR}"
    creds = Credentials("ws://127.0.0.1:7880", "k", "s" * 32)
    context = web_context(cfg, creds, ServeOptions(dev=True), Telemetry(), Readiness(creds.http_url))
    server = WebServer(build_app(context), "127.0.0.1", 0)
    url = (await server.start()).rstrip("/") + "/api/connection-details"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json={"agent": "pirate"}) as response:
                assert response.status == 400
                assert "no profile 'pirate'" in (await response.json())["error"]
            async with http.post(url, json={"agent": "tutor"}) as response:
                assert response.status == 200
                token = (await response.json())["participantToken"]
    finally:
        await server.stop()
    claims = jwt.decode(token, options={"verify_signature": False})
    assert json.loads(claims["roomConfig"]["agents"][0]["metadata"]) == {"agent": "tutor"}


def test_a_bad_agent_on_the_command_line_is_one_clear_line(tmp_path: Path):
    """Before any model loads (talk) or any room is joined (serve)."""
    wav = str(ROOT / "examples" / "what-is-the-capital-of-france.wav")
    missing = str(tmp_path / "nope.py")
    env = {"PATH": "/usr/bin:/bin", "LIVEKIT_URL": "ws://127.0.0.1:1",
           "LIVEKIT_API_KEY": "a-key", "LIVEKIT_API_SECRET": "a-secret-of-32-characters-or-more"}  # fmt: skip
    for command in (["talk", wav, "--agent", missing], ["serve", "--no-http", "--agent", missing]):
        result = subprocess.run(
            [sys.executable, "-m", "voicecore", *command], capture_output=True, text=True, timeout=60,
            env={**env, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "nope.py not found" in lines[0], result.stderr


async def test_an_agent_speaks_with_its_own_voice(models, config, say, tmp_path: Path, monkeypatch):
    import shutil

    from helpers import join, words

    from voicecore import RealtimeSink, Session, talk
    from voicecore.models import bundled_piper_voice

    bundled = bundled_piper_voice()
    voice = tmp_path / "other-voice.onnx"
    shutil.copy(bundled, voice)
    shutil.copy(str(bundled) + ".json", str(voice) + ".json")
    agent = Agent(voice=str(voice))
    with pytest.raises(ConfigError, match="not loaded"):
        Session(models, config, RealtimeSink(48_000), agent=agent)  # a voice nobody loaded

    result = await talk(models, config, join(0.5, say("What is the capital of France?")), agent=agent)
    other = models.tts_for(str(voice))
    assert other is not models.tts
    spoken: list[str] = []
    speak = other._speak  # type: ignore[attr-defined]
    monkeypatch.setattr(other, "_speak", lambda text: (spoken.append(text), speak(text))[1])
    result = await talk(models, config, join(0.5, say("What is the capital of France?")), agent=agent)
    assert "paris" in words(result.turns[0].agent_text)
    assert " ".join(spoken) == result.turns[0].agent_text  # every word in the agent's own voice
    with pytest.raises(ConfigError, match="not found"):
        models.add_voice(str(tmp_path / "missing.onnx"))
