"""The person's words while they speak: the utterance's audio, an interim transcript every
`turn.interim_interval`, and the final one, started early when the sound stopped (the turn
machine says when) or when the reply starts. One per Session; it reads the turn machine and
never changes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Hashable
from functools import partial

import numpy as np

from voicecore.audio.frames import RECOGNITION_RATE
from voicecore.audio.recent import RecentAudio
from voicecore.config import Config
from voicecore.stt.base import STT, Transcript
from voicecore.turn.machine import TurnMachine
from voicecore.turn.state import TurnState

log = logging.getLogger(__name__)

KEEP_BEFORE_ONSET = 2.0  # seconds of audio kept outside an utterance (prefix padding, barge-in)


class Transcribing:
    def __init__(
        self,
        stt: STT,
        config: Config,
        machine: TurnMachine,
        owner: Hashable,
        on_interim: Callable[[str], None],
    ) -> None:
        """`owner`: whose requests these are, for the STT's round robin between conversations.
        `on_interim(words)`: the words so far, while the person is still speaking."""
        self._stt = stt
        self._config = config
        self._machine = machine
        self._owner = owner
        self._on_interim = on_interim
        self._audio = RecentAudio()  # 16 kHz: the utterance, or the last KEEP_BEFORE_ONSET seconds
        self._prefix = int(config.vad.prefix_padding_ms * RECOGNITION_RATE / 1000)
        self._interim_task: asyncio.Task[None] | None = None
        self._interim_at = 0  # where the last interim transcript (or the utterance) began
        self.early: asyncio.Future[Transcript] | None = None  # a final transcript started early
        self._overlaps: set[asyncio.Future[Transcript]] = set()  # speech over the agent, in STT

    def push(self, samples: np.ndarray) -> None:
        """16 kHz samples, before the turn machine sees them."""
        self._audio.append(samples)

    def tick(self, samples_seen: int) -> None:
        """After the turn machine's decisions on them: an interim transcript if one is due, and
        only the audio still needed kept."""
        self._maybe_interim(samples_seen)
        self._trim(samples_seen)

    def utterance_started(self, sample: int) -> None:
        self._interim_at = sample

    def start_early(self) -> None:
        if self.early is None:
            self.early = self._final()
            self.early.add_done_callback(_seen)  # a dropped one's error is nobody's to log

    def drop_early(self) -> None:
        if self.early is not None:
            self.early.cancel()
            self.early = None

    def final(self, audio_end: int | None = None) -> tuple[asyncio.Future[Transcript], bool]:
        """The final transcript of the utterance (up to stream sample `audio_end`, for a cut
        monologue), and whether it was started early."""
        early, self.early = self.early, None
        if early is not None and audio_end is None:
            return early, True
        if early is not None:
            early.cancel()  # it ran to the end of what was heard, past the cut
        return self._final(audio_end), False

    def overlap(self, heard: Callable[[str | None], None]) -> None:
        """Transcribe the speech over the agent: from the turn machine's `held` to now (its
        quiet tail too: cut at the estimated end, a short word is often misheard). `heard(words)`
        gets its words, or None if the STT failed."""
        held = self._machine.held
        assert held is not None
        task = self._final(start=held)
        self._overlaps.add(task)
        task.add_done_callback(self._overlaps.discard)
        task.add_done_callback(partial(_overlap_done, heard))

    def _final(self, end: int | None = None, start: int | None = None) -> asyncio.Future[Transcript]:
        """A final transcript of the utterance, or of the speech from stream sample `start`."""
        audio = self._utterance_audio(end, start)
        return asyncio.ensure_future(self._stt.transcribe(audio, final=True, owner=self._owner))

    def _maybe_interim(self, samples_seen: int) -> None:
        """Another interim_interval of speech: its words so far (one at a time; a slow model
        gets fewer)."""
        interval = int(self._config.turn.interim_interval * RECOGNITION_RATE)
        if (
            self._machine.state is TurnState.USER_SPEAKING
            and (self._interim_task is None or self._interim_task.done())
            and samples_seen - self._interim_at >= interval
        ):
            self._interim_at = samples_seen
            self._interim_task = asyncio.create_task(self._interim(self._utterance_audio()))

    async def _interim(self, audio: np.ndarray) -> None:
        try:
            transcript = await self._stt.transcribe(audio, final=False, owner=self._owner)
        except Exception:
            log.exception("interim transcription failed")
            return
        if self._machine.state is TurnState.USER_SPEAKING and transcript.text:
            self._on_interim(transcript.text)

    def _utterance_audio(self, end: int | None = None, start: int | None = None) -> np.ndarray:
        """The current utterance's audio (or the speech from stream sample `start`), all heard so
        far or up to stream sample `end`."""
        begin = self._machine.utterance_start if start is None else start
        return self._audio.since(begin - self._prefix, end)

    def _trim(self, now: int) -> None:
        """Keep the utterance (and its prefix), or a little before the next one; speech carried
        on past a cut monologue is the next turn's, up to max_utterance of it."""
        machine = self._machine
        if machine.state in (TurnState.USER_SPEAKING, TurnState.USER_PAUSED):
            self._audio.keep_from(machine.utterance_start - self._prefix)
            return
        keep = int(KEEP_BEFORE_ONSET * RECOGNITION_RATE)
        if (carried := machine.carried_onset) is not None:
            longest = int(self._config.turn.max_utterance * RECOGNITION_RATE)
            keep = max(keep, min(now - carried + self._prefix, longest))
        self._audio.keep_from(now - keep)

    async def aclose(self) -> None:
        for task in (self._interim_task, self.early, *self._overlaps):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def _overlap_done(heard: Callable[[str | None], None], future: asyncio.Future[Transcript]) -> None:
    if not future.cancelled():
        heard(None if future.exception() is not None else future.result().text)


def _seen(future: asyncio.Future[Transcript]) -> None:
    if not future.cancelled():
        future.exception()  # marks it retrieved; a reply that awaits it still gets the error
