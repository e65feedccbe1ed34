"""No conversation lost: `voicecore serve` killed with SIGKILL in the middle of a reply keeps every
turn the person heard complete, and `voicecore history` (the command a user runs) reads them back
from a file that is not corrupt. A restarted agent appends to the same file.

Everything is real: `voicecore serve` as a subprocess with the bundled models, a livekit-server,
a caller speaking Piper speech through the livekit SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from livekit_fixtures import ROOT, Caller, LiveKitServer, listening, poll, reply_done
from serve_process import ServeProcesses

from voicecore.metrics import STAGES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

QUESTIONS = ["What is the capital of France?", "What color is the sky?", "How many days are in a week?"]


def history(path: Path) -> tuple[list[dict], str]:
    """`voicecore history FILE --json --limit 0`: every turn, and what it said on stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "voicecore", "history", str(path), "--json", "--limit", "0"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], result.stderr


def every_line_parses(path: Path) -> int:
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the last line is cut short"
    for line in lines[:-1]:
        assert isinstance(json.loads(line), dict), line
    return len(lines) - 1


async def converse(caller: Caller, say, questions: Sequence[str], answered_before: int) -> None:
    for i, question in enumerate(questions, start=answered_before + 1):
        await caller.speak(say(question))
        await reply_done(caller, finals=i, within=60)


def check_turn(turn: dict, room: str, participant: str, question: str, heard: str) -> None:
    assert (turn["room"], turn["participant"]) == (room, participant), turn
    assert question.split()[-1].rstrip("?").lower() in turn["user_text"].lower(), turn["user_text"]
    assert turn["agent_text"] == heard and heard.strip(), (turn["agent_text"], heard)
    assert turn["interrupted"] is False
    latencies = turn["latency_ms"]
    assert set(latencies) == {*STAGES, "voice_to_voice"}, latencies
    assert latencies["voice_to_voice"] > 0 and latencies["endpoint"] > 0, latencies


async def test_kill_9_mid_reply_loses_no_completed_turn(
    livekit_server: LiveKitServer, serve_processes: ServeProcesses, say, tmp_path: Path
):
    room = "durability"
    turn_log = tmp_path / "private" / "turns.jsonl"  # the directory does not exist yet: serve makes it
    creds = livekit_server.creds
    env = {
        "LIVEKIT_URL": creds.ws_url,
        "LIVEKIT_API_KEY": creds.api_key,
        "LIVEKIT_API_SECRET": creds.api_secret,
        "VOICECORE_TURN_STAGE_TIMEOUT": "30",  # a loaded test machine is slow, not broken
    }
    args = ["--dev", "--room", room, "--no-http", "--turn-log", str(turn_log)]
    agent = serve_processes(args, env, tmp_path / "serve-1.log")
    await agent.start()
    await agent.wait_for("joined room")
    assert turn_log.stat().st_mode & 0o777 == 0o600 and turn_log.parent.stat().st_mode & 0o777 == 0o700

    caller = Caller("ada")
    try:
        await asyncio.wait_for(caller.join(creds, room), 15)
        await poll(lambda: listening(caller), 30)
        await converse(caller, say, QUESTIONS, answered_before=0)
        heard = [t.text for t in caller.agent_finals()]
        # a fourth question; the agent is killed while it speaks the answer (a long one: the
        # state change reaches a client on a busy machine late, after a short answer was over)
        await caller.speak(say("Tell me a long story about a brave little cat."))
        await poll(lambda: caller.states[-1][1] == "speaking", 60)
        await asyncio.sleep(0.3)
        assert await agent.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        await caller.leave()

    turns, complaints = history(turn_log)
    assert not complaints, complaints  # no torn line to skip
    assert every_line_parses(turn_log) == len(turns)
    # the reply cut short by the kill is not a completed turn
    assert len(turns) == len(QUESTIONS), [t["user_text"] for t in turns]
    for turn, question, answer in zip(turns, QUESTIONS, heard, strict=True):
        check_turn(turn, room, "ada", question, answer)
    assert [t["turn"] for t in turns] == [1, 2, 3]

    # restarted on the same file: the old turns stay, the new one is appended
    agent = serve_processes(args, env, tmp_path / "serve-2.log")
    await agent.start()
    await agent.wait_for("joined room")
    caller = Caller("bob")
    try:
        await asyncio.wait_for(caller.join(creds, room), 15)
        await poll(lambda: listening(caller), 30)
        await converse(caller, say, QUESTIONS[:1], answered_before=0)
        heard_after = caller.agent_finals()[0].text
    finally:
        await caller.leave()
    assert await agent.stop(signal.SIGINT) == 0, agent.output()[-3000:]

    after, complaints = history(turn_log)
    assert not complaints and every_line_parses(turn_log) == len(after) == len(QUESTIONS) + 1
    assert after[: len(turns)] == turns
    check_turn(after[-1], room, "bob", QUESTIONS[0], heard_after)
    assert turn_log.stat().st_mode & 0o777 == 0o600


def test_no_turn_log_stores_nothing(tmp_path: Path):
    """A turn log set in the config file is not created with `--no-turn-log` (or an empty
    VOICECORE_METRICS_TURN_LOG); without them it is, owner-only. `serve` opens the log before it
    checks the LiveKit keys, so a refused dev key ends each run at once, after that point."""
    turn_log = tmp_path / "turns.jsonl"
    config = tmp_path / "voicecore.toml"
    config.write_text(f'[metrics]\nturn_log = "{turn_log}"\n')
    env = {"PATH": os.environ["PATH"], "LIVEKIT_URL": "ws://127.0.0.1:1",
           "LIVEKIT_API_KEY": "devkey", "LIVEKIT_API_SECRET": "secret"}  # fmt: skip

    def serve(*extra: str, **more_env: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "voicecore", "serve", "--config", str(config), *extra],
            capture_output=True, text=True, env={**env, **more_env}, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 2 and "--dev" in result.stderr, result.stderr

    serve("--no-turn-log")
    serve(VOICECORE_METRICS_TURN_LOG="")
    serve(VOICECORE_METRICS_TURN_LOG="none")
    assert not turn_log.exists()
    serve()
    assert turn_log.exists() and turn_log.stat().st_mode & 0o777 == 0o600
