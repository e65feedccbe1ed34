"""Endpointing: how long a silence must last before the turn is the agent's.

The delay follows how likely the words heard are a whole message, as the chat model reads them
(voicecore/llm/message_end.py: P(end of message) right after the words): `min_endpoint_delay`
when that is `end_likely` or more, `max_endpoint_delay` when it is `end_unlikely` or less ("What
is the capital of"), in a straight line between on a log scale. `max_endpoint_delay` is also the
ceiling: with no answer yet (or none to be had) only it ends the turn.

The transcript adds only what holds in any script Whisper writes: speech that trails off (its
"...", or a comma or dash at the end) is mid-thought whatever the model says. No word list
decides: one tuned on English questions knows nothing of other languages and overfits the
sentences it was tuned on.
"""

from __future__ import annotations

import math
import re

from voicecore.config import TurnConfig

# Whisper ends a fragment that trails off with these; a closing quote or bracket may follow.
TRAILING_OFF = ("...", "…", ",", "，", "、", "-", "—", "–", ":", ";")
_CLOSING = re.compile(r"[\s\"'”’)\]」』]+$")


def trails_off(transcript: str) -> bool:
    """Does Whisper's transcript end the way it marks unfinished speech?"""
    return _CLOSING.sub("", transcript.strip()).endswith(TRAILING_OFF)


def endpoint_delay(transcript: str | None, config: TurnConfig, end_probability: float | None = None) -> float:
    """Seconds of silence after the end of speech that commit the turn.

    `end_probability`: the chat model's P(the words are a whole message) for this pause; None
    while there is none (not asked yet, no words, an engine that cannot say).
    """
    if end_probability is None or (transcript is not None and trails_off(transcript)):
        return config.max_endpoint_delay
    likely, unlikely = math.log(config.end_likely), math.log(config.end_unlikely)
    doubt = (likely - math.log(max(end_probability, 1e-30))) / max(likely - unlikely, 1e-9)
    doubt = min(1.0, max(0.0, doubt))
    return config.min_endpoint_delay + doubt * (config.max_endpoint_delay - config.min_endpoint_delay)
