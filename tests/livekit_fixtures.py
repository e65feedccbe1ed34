"""A real LiveKit server and real client participants for tests: the tests' names for the harness
the benchmarks use too (voicecore/rtc/devserver.py, voicecore/rtc/caller.py), and helpers.

`LiveKitServer` is livekit-server on loopback ports of its own (`--dev`, or a key pair of its own).
A `Caller` is a person: it joins with the livekit SDK, speaks through its own rtc.AudioSource in
real time (silence between utterances, like a live microphone), and records what it receives:
the agent's audio, `lk.transcription` text streams and `lk.agent.state`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from voicecore.rtc.caller import FRAME, LOUD, RATE, Caller, Microphone, Spoken, Text, Transcript, poll
from voicecore.rtc.caller import agents_in as _agents_in
from voicecore.rtc.caller import dispatch as _dispatch
from voicecore.rtc.devserver import LocalLiveKit, free_port
from voicecore.rtc.devserver import find_livekit_server as livekit_binary

__all__ = [
    "FRAME", "LOUD", "RATE", "ROOT", "Caller", "LiveKitServer", "Microphone", "Spoken", "Text",
    "Transcript", "agents_in", "dispatch", "free_port", "listening", "livekit_binary", "poll",
    "reply_done",
]  # fmt: skip

ROOT = Path(__file__).resolve().parent.parent
LiveKitServer = LocalLiveKit  # LiveKitServer(binary, workdir, keys=None): free ports, --dev without keys


async def dispatch(server: LiveKitServer, agent_name: str, room: str) -> None:
    """Ask the server to send the agent `agent_name` to `room` (explicit dispatch)."""
    await _dispatch(server.creds, agent_name, room)


async def agents_in(server: LiveKitServer, room: str) -> list[str]:
    """The identities of the agent participants the server lists in `room` now."""
    return await _agents_in(server.creds, room)


# Set-up bound: a dispatched agent joins and says it is listening. Alone ~1 s; beside a CPU
# burner and another test run it took over 15 s. No test here measures that time.
AGENT_READY = 30.0


def listening(caller: Caller) -> bool:
    """The agent in the caller's room says it is listening (its latest `lk.agent.state`)."""
    return caller.state_path()[-1:] == ["listening"]


async def heard_by_agent(caller: Caller, within: float = AGENT_READY) -> None:
    """Until the agent listens and has subscribed to this caller's microphone: its `listening`
    alone may come from before they joined, and words spoken before the subscription are lost."""
    await poll(partial(listening, caller), within)
    await caller.noticed(within)


async def reply_done(caller: Caller, finals: int, within: float = 40.0) -> None:
    """Until the agent published `finals` final transcripts and is listening again."""
    await poll(lambda: len(caller.agent_finals()) >= finals and caller.state == "listening", within)
