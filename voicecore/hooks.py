"""The seams between a conversation and whatever carries it (LiveKit, `talk`, an application):
where the agent's voice goes (`AudioSink`) and what it tells about itself (`SessionHooks`)."""

from __future__ import annotations

from typing import Protocol

from voicecore.audio.frames import AudioFrame
from voicecore.metrics import TurnRecord
from voicecore.tools import ToolResult
from voicecore.turn.state import AgentState


class AudioSink(Protocol):
    """Where the agent's voice goes; shaped like `livekit.rtc.AudioSource`."""

    async def capture_frame(self, frame: AudioFrame) -> None:
        """Queue a frame for playout; waits while the queue is full (this paces the reply)."""
        ...

    def clear_queue(self) -> None:
        """Drop everything queued and not yet played (barge-in)."""
        ...

    @property
    def queued_duration(self) -> float:
        """Seconds of audio queued and not yet played."""
        ...

    async def wait_for_playout(self) -> None: ...


class SessionHooks:
    """Side channels: override what you need (transcripts, state, per-turn records). Called
    synchronously on the event loop: a hook records or posts, it never blocks."""

    def on_state(self, state: AgentState) -> None: ...

    def on_user_transcript(self, text: str, final: bool) -> None: ...

    def on_agent_text(self, text: str) -> None:
        """A chunk of the agent's speech, called as its audio starts playing."""

    def on_agent_said(self, text: str) -> None:
        """The agent stopped speaking (a reply or `Session.say`): `text` is what was heard, cut
        at a barge-in."""

    def on_tool(self, result: ToolResult) -> None:
        """A tool call is over (`result.error` says if it failed); `result.call` is what the
        model asked for."""

    def on_turn(self, record: TurnRecord) -> None:
        """A turn is over (answered or interrupted)."""

    def on_error(self, stage: str, error: BaseException) -> None:
        """A stage ("stt", "llm" or "tts") failed or timed out; the turn ends with an apology."""
