"""Speech over the agent's voice: a backchannel ("uh-huh", "yeah"), a cough, or a barge-in.

The agent pauses as soon as the speech has lasted `min_interruption`, so real words stop it as
fast as ever; what then decides is how long the speech lasted (`backchannel_max`) and its words.
No words at all (a cough, a laugh, a door) or only words from `backchannels` resume the agent.
That list is English by default and only ever keeps the agent talking: in a language it does
not know, any words stop the agent, as every overlap did before.
"""

from __future__ import annotations

import re

from voicecore.config import TurnConfig

OVERLAP_QUIET = 3200  # samples (0.2 s) of quiet after it that make the overlap over: judge it
VERDICT_WAIT = 1.5  # seconds past backchannel_max to wait for the overlap's words before yielding
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation ("Uh-huh." -> ["uh-huh"])."""
    return [w.lower() for w in _WORD.findall(text)]


def is_backchannel(text: str, config: TurnConfig) -> bool:
    """Do these words (of speech over the agent) leave the agent the floor?"""
    allowed = set(words_of(config.backchannels))
    return all(word in allowed for word in words_of(text))
