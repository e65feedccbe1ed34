"""The per-turn latency record. Every time is on one monotonic clock (seconds); a stage that did
not happen (no reply, interrupted before audio) stays None rather than a made-up number."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voicecore.history import TurnHistory

log = logging.getLogger(__name__)

STAGES = (
    "endpoint",  # turn committed
    "stt_final",  # final transcript ready (often before the endpoint: speculation)
    "llm_first_token",
    "first_chunk_text",  # the chunker released the first clause
    "tts_first_audio",  # Piper returned its audio
    "first_frame_out",  # first agent frame handed to the output
)


@dataclass
class TurnRecord:
    turn: int
    speech_end: float  # estimated end of the user's speech
    user_text: str = ""
    agent_text: str = ""  # as heard: cut at the interruption point
    interrupted: bool = False
    speculative: bool = True  # the reply was started before the endpoint
    endpoint: float | None = None
    stt_final: float | None = None
    llm_first_token: float | None = None
    first_chunk_text: float | None = None
    tts_first_audio: float | None = None
    first_frame_out: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def voice_to_voice(self) -> float | None:
        """First agent audio out minus the end of the user's speech, in seconds."""
        if self.first_frame_out is None:
            return None
        return self.first_frame_out - self.speech_end

    def latencies_ms(self) -> dict[str, float | None]:
        """Each stage in milliseconds after `speech_end`, plus `voice_to_voice`."""
        out: dict[str, float | None] = {}
        for stage in STAGES:
            t = getattr(self, stage)
            out[stage] = None if t is None else round((t - self.speech_end) * 1000, 1)
        v2v = self.voice_to_voice
        out["voice_to_voice"] = None if v2v is None else round(v2v * 1000, 1)
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_ms"] = self.latencies_ms()
        return data


class TurnLog:
    """Finished turns as JSON lines (`TurnRecord.as_dict()` plus context such as room and
    participant), one durable line per turn (see voicecore.history: fsync'd, owner-only), so a
    reader can follow it live and a crash loses no completed turn. `voicecore history` reads it.
    A failed write is logged, never raised: the conversation goes on.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._history = TurnHistory(self.path)

    def write(self, record: TurnRecord, **context: Any) -> None:
        self._history.append({**context, "logged_at": time.time(), **record.as_dict()})
