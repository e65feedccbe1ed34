"""`voicecore talk`: one recording through the whole pipeline, paced like a live microphone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voicecore.agent import Agent
from voicecore.audio.frames import FRAME_MS, AudioFrame, split_frames
from voicecore.config import Config
from voicecore.metrics import TurnRecord
from voicecore.pipeline import Models
from voicecore.session import Session, SessionHooks
from voicecore.turn.state import AgentState

MAX_QUEUE = 0.2  # seconds of agent audio queued ahead of the (simulated) speaker


class RealtimeSink:
    """A loudspeaker that plays frames in real time and records what was actually played.

    Frames cleared by a barge-in before their turn came are not recorded: the reply WAV holds
    exactly what a listener would have heard.
    """

    def __init__(self, sample_rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.sample_rate = sample_rate
        self.clock = clock
        self._play_until = 0.0
        self._scheduled: list[tuple[float, AudioFrame]] = []  # (play start, frame)

    @property
    def queued_duration(self) -> float:
        return max(0.0, self._play_until - self.clock())

    async def capture_frame(self, frame: AudioFrame) -> None:
        while (wait := self.queued_duration - MAX_QUEUE) > 0:  # noqa: ASYNC110 - a clock, not an event
            await asyncio.sleep(wait)
        start = max(self.clock(), self._play_until)
        self._scheduled.append((start, frame))
        self._play_until = start + frame.duration

    def clear_queue(self) -> None:
        now = self.clock()
        self._scheduled = [(t, f) for t, f in self._scheduled if t <= now]
        if self._scheduled:
            t, f = self._scheduled[-1]
            played = max(0, min(len(f.samples), int((now - t) * f.sample_rate)))
            self._scheduled[-1] = (t, AudioFrame(f.samples[:played], f.sample_rate))
        self._play_until = now

    async def wait_for_playout(self) -> None:
        while (wait := self.queued_duration) > 0:  # noqa: ASYNC110 - a clock, not an event
            await asyncio.sleep(wait)

    def played(self) -> AudioFrame:
        parts = [f.samples for _, f in self._scheduled]
        samples = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return AudioFrame(samples, self.sample_rate)


@dataclass
class TalkResult:
    user_transcripts: list[str]
    turns: list[TurnRecord]
    reply_audio: AudioFrame
    states: list[str] = field(default_factory=list)

    @property
    def reply_text(self) -> str:
        return " ".join(t.agent_text for t in self.turns if t.agent_text)


class _Collect(SessionHooks):
    def __init__(self) -> None:
        self.finals: list[str] = []
        self.states: list[str] = []

    def on_state(self, state: AgentState) -> None:
        self.states.append(state.value)

    def on_user_transcript(self, text: str, final: bool) -> None:
        if final:
            self.finals.append(text)


async def talk(
    models: Models,
    config: Config,
    audio: AudioFrame,
    *,
    trailing_silence: float = 1.0,
    max_wait: float = 30.0,
    agent: Agent | None = None,
) -> TalkResult:
    """Feed `audio` (16 kHz) in real-time 20 ms frames, then silence until the agent is done.
    `agent`: its instructions and tools (default: the configured system prompt, no tools)."""
    instructions = agent.instructions if agent is not None else None
    if agent is not None and agent.voice:
        await asyncio.to_thread(models.add_voice, agent.voice)
    await models.warm_up(instructions or config.llm.system_prompt, agent.tools if agent else ())
    sink = RealtimeSink(config.audio.output_sample_rate)
    hooks = _Collect()
    session = Session(models, config, sink, hooks, agent=agent)
    frame_s = FRAME_MS / 1000
    silence = AudioFrame.silence(frame_s, audio.sample_rate)
    start = time.monotonic()
    sent = 0
    try:
        for frame in split_frames(audio):
            session.push_audio(frame)
            sent += 1
            await _sleep_until(start + sent * frame_s)
        deadline = time.monotonic() + max_wait
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            session.push_audio(silence)
            sent += 1
            await _sleep_until(start + sent * frame_s)
            if session.busy:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= trailing_silence:
                break
    finally:
        await session.aclose()
    return TalkResult(hooks.finals, session.records, sink.played(), hooks.states)


async def _sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))
