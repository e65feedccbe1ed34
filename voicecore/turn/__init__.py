"""Turn taking: the VAD stage, endpointing, interruption and the turn state machine."""

from voicecore.turn.machine import Action, Decision, TurnMachine
from voicecore.turn.silero import SileroStream, SileroVad
from voicecore.turn.state import AgentState, TurnState, agent_state
from voicecore.turn.vad import Vad, VadEvent, VadStream

__all__ = [
    "Action", "AgentState", "Decision", "SileroStream", "SileroVad", "TurnMachine", "TurnState",
    "Vad", "VadEvent", "VadStream", "agent_state",
]  # fmt: skip
