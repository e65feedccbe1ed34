"""The baseline voice agent: LiveKit Agents 1.8.9 with local models, built the way local-model
stacks build it (see README.md beside this file). Runs in its own virtualenv (setup.sh).

    Silero VAD (livekit-plugins-silero, prewarmed per job process)
    STT, LLM, TTS: livekit-plugins-openai clients with base_url -> OpenAI-compatible servers
    turn detection: AgentSession's default (1.8.9: the local turn-detector-v1-mini in `start` mode)
    everything else: documented defaults (endpointing, interruptions, preemptive generation)

    BASELINE_LLM_URL=... BASELINE_STT_URL=... BASELINE_TTS_URL=... python agent.py start

`stack.py` starts the servers and this worker together. Each finished conversation item (the
user's transcript, the agent's reply) goes to BASELINE_TURN_LOG as one JSON line with the
framework's own per-turn latency report (`ChatMessage.metrics`), for the benchmark's breakdown.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    ConversationItemAddedEvent,
    JobContext,
    JobProcess,
    cli,
)
from livekit.plugins import openai, silero

SYSTEM_PROMPT = os.environ.get(
    "BASELINE_SYSTEM_PROMPT", "You are a helpful voice assistant. Answer in one short sentence."
)
MAX_TOKENS = int(os.environ.get("BASELINE_MAX_TOKENS", "96"))
TEMPERATURE = float(os.environ.get("BASELINE_TEMPERATURE", "0.0"))
LLM_URL = os.environ.get("BASELINE_LLM_URL", "http://127.0.0.1:8000/v1")
STT_URL = os.environ.get("BASELINE_STT_URL", "http://127.0.0.1:8001/v1")
TTS_URL = os.environ.get("BASELINE_TTS_URL", "http://127.0.0.1:7878/v1")
TURN_LOG = os.environ.get("BASELINE_TURN_LOG")

# The worker's HTTP health port (8081 in production) is moved only so that it cannot collide
# with anything else on the machine; nothing else differs from AgentServer's defaults.
server = AgentServer(port=int(os.environ.get("BASELINE_HTTP_PORT", "8081")))


def prewarm(proc: JobProcess) -> None:
    proc.userdata["vad"] = silero.VAD.load()


server.setup_fnc = prewarm


def log_item(room: str, event: ConversationItemAddedEvent) -> None:
    item = event.item
    if TURN_LOG is None or getattr(item, "type", None) != "message":
        return
    line = {
        "room": room,
        "role": item.role,
        "text": item.text_content or "",
        "interrupted": item.interrupted,
        "metrics": {k: v for k, v in dict(item.metrics).items() if isinstance(v, (int, float, str))},
        "created_at": item.created_at,
        # both clocks, so a reader can put the wall-clock metrics on the monotonic clock
        "logged_wall": time.time(),
        "logged_monotonic": time.monotonic(),
    }
    with Path(TURN_LOG).open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")


@server.rtc_session(agent_name=os.environ.get("BASELINE_AGENT_NAME", "baseline"))
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession[Any] = AgentSession(
        vad=ctx.proc.userdata["vad"],
        stt=openai.STT(model="whisper-1", base_url=STT_URL, language="en"),
        llm=openai.LLM(
            model="smollm2",
            base_url=LLM_URL,
            temperature=TEMPERATURE,
            # llama-cpp-python's server reads `max_tokens` (it ignores max_completion_tokens)
            extra_body={"max_tokens": MAX_TOKENS},
        ),
        # Piper speaks at 22 050 Hz; the plugin would read `pcm` as 24 kHz, and its default
        # `mp3` needs ffmpeg on the server. `wav` carries its own rate.
        tts=openai.TTS(model="tts-1", voice="en_US-joe-medium", base_url=TTS_URL, response_format="wav"),
    )
    session.on("conversation_item_added", lambda event: log_item(ctx.room.name, event))
    await session.start(room=ctx.room, agent=Agent(instructions=SYSTEM_PROMPT))


if __name__ == "__main__":
    cli.run_app(server)
