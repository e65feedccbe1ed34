"""Conversation states, named as LiveKit's `lk.agent.state` attribute names them."""

from __future__ import annotations

from enum import Enum, StrEnum


class AgentState(StrEnum):
    INITIALIZING = "initializing"
    IDLE = "idle"
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class TurnState(Enum):
    LISTENING = "listening"  # nobody speaks
    USER_SPEAKING = "user_speaking"
    USER_PAUSED = "user_paused"  # silence after speech: waiting for the endpoint (speculating)
    AGENT_THINKING = "agent_thinking"  # turn committed, no agent audio out yet
    AGENT_SPEAKING = "agent_speaking"


def agent_state(turn: TurnState, paused: bool = False) -> AgentState:
    """What the agent shows (`lk.agent.state`) while the turn is in `turn`: listening until the
    turn is its own, thinking until its first audio is out, then speaking; listening again while
    it is `paused` for speech over it (a backchannel, or the start of a barge-in)."""
    if turn is TurnState.AGENT_THINKING:
        return AgentState.THINKING
    if turn is TurnState.AGENT_SPEAKING and not paused:
        return AgentState.SPEAKING
    return AgentState.LISTENING
