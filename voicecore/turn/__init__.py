"""Turn taking: VAD, endpointing, interruption and the turn state machine."""

from voicecore.turn.machine import Action, Decision, TurnMachine
from voicecore.turn.state import AgentState, TurnState
from voicecore.turn.vad import SileroVad, VadEvent, VadStream

__all__ = [
    "Action", "AgentState", "Decision", "SileroVad", "TurnMachine", "TurnState", "VadEvent",
    "VadStream",
]  # fmt: skip
