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
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from livekit_fixtures import ROOT, LiveKitServer
from test_livekit import Caller, _listening, _reply_done, poll

from voicecore.metrics import STAGES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning"),
]

QUESTIONS = ["What is the capital of France?", "What color is the sky?", "How many days are in a week?"]


class ServeProcess:
    """`voicecore serve ARGS` as a user runs it, its stdout and stderr in one log file."""

    def __init__(self, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.args = list(args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "voicecore", "serve", *self.args,
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
            )  # fmt: skip

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, text: str, within: float = 120.0) -> None:
        """Until `text` is in the output; fails at once (with the output) if the process exits."""
        assert self.proc is not None
        deadline = time.monotonic() + within
        while text not in self.output():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the output of serve:\n{self.output()[-4000:]}")
            await asyncio.sleep(0.2)

    async def stop(self, sig: int = signal.SIGINT, within: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"serve did not exit after {sig}:\n{self.output()[-4000:]}") from None


@pytest.fixture(name="serve_processes")
async def _serve_processes() -> AsyncIterator[Callable[..., ServeProcess]]:
    made: list[ServeProcess] = []

    def make(args: Sequence[str], env: dict[str, str], log: Path) -> ServeProcess:
        made.append(ServeProcess(args, env, log))
        return made[-1]

    yield make
    for process in made:
        if process.proc is not None and process.proc.returncode is None:
            process.proc.kill()
            await process.proc.wait()


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
        await _reply_done(caller, finals=i, within=60)


def check_turn(turn: dict, room: str, participant: str, question: str, heard: str) -> None:
    assert (turn["room"], turn["participant"]) == (room, participant), turn
    assert question.split()[-1].rstrip("?").lower() in turn["user_text"].lower(), turn["user_text"]
    assert turn["agent_text"] == heard and heard.strip(), (turn["agent_text"], heard)
    assert turn["interrupted"] is False
    latencies = turn["latency_ms"]
    assert set(latencies) == {*STAGES, "voice_to_voice"}, latencies
    assert latencies["voice_to_voice"] > 0 and latencies["endpoint"] > 0, latencies


async def test_kill_9_mid_reply_loses_no_completed_turn(
    livekit_server: LiveKitServer, serve_processes, say, tmp_path: Path
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
        await poll(lambda: _listening(caller), 30)
        await converse(caller, say, QUESTIONS, answered_before=0)
        heard = [t.text for t in caller.agent_finals()]
        # a fourth question; the agent is killed while it speaks the answer
        await caller.speak(say("What is the capital of Italy?"))
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
        await poll(lambda: _listening(caller), 30)
        await converse(caller, say, QUESTIONS[:1], answered_before=0)
        heard_after = caller.agent_finals()[0].text
    finally:
        await caller.leave()
    assert await agent.stop() == 0, agent.output()[-3000:]

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
