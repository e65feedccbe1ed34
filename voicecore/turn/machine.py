"""The turn state machine: the one place that decides whose turn it is.

It is pure and synchronous. It sees VAD events, the passing of audio time (16 kHz samples
received, so it runs the same in real time and on a simulated clock) and transcripts; it
answers with `Action`s that the session carries out. It never touches a model.

Speech over the agent's voice first pauses it (`PAUSE`); it is a barge-in once it has lasted
`backchannel_max`, or when its words turn out to be more than a backchannel. A shorter overlap
with no words (a cough) or only backchannel words ("uh-huh") resumes the agent (`RESUME`). A
barge-in within `went_on_within` of the agent's first audio is the person going on after a pause
the agent took for the end (`GO_ON`): their words before it and after it are one message.

The agent may also take the floor on its own (`agent_says`: a greeting); the person can
interrupt that like any reply. While the person speaks, the machine also decides when the final
transcript may start early (the sound stopped before the VAD's first quiet window).

    LISTENING --speech--> USER_SPEAKING --silence--> USER_PAUSED --endpoint--> AGENT_THINKING
        ^                      ^                         |                         |
        |                      +-------speech------------+ (cancel speculation)    | first frame
        |                      +--- speech >= min_interruption (barge-in) ---+     v
        +---------------------------- reply played -------------------- AGENT_SPEAKING
                                                                          |  ^ backchannel
                                                       speech over it:    v  | (RESUME)
                                                        PAUSE, then ----> overlap judged
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from voicecore.audio.frames import RECOGNITION_RATE
from voicecore.config import TurnConfig
from voicecore.turn.endpoint import endpoint_delay
from voicecore.turn.overlap import OVERLAP_QUIET, VERDICT_WAIT, is_backchannel
from voicecore.turn.state import TurnState
from voicecore.turn.vad import VadEvent

EARLY_QUIET = 768  # samples (48 ms) of quiet after the sound stopped that start the final transcript


class Action(Enum):
    USER_STARTED = "user_started"  # a new utterance begins at `sample`
    SPECULATE = "speculate"  # start STT-final -> LLM -> first TTS chunk, audio held back
    CANCEL_SPECULATION = "cancel_speculation"  # the user went on speaking
    COMMIT = "commit"  # end of turn: release the (speculative) reply
    INTERRUPT = "interrupt"  # barge-in: stop the agent now, the user has the floor
    GO_ON = "go_on"  # a barge-in as the agent began: stop it; the words it answered open this utterance
    PAUSE = "pause"  # speech over the agent: silence it now, keep its place
    JUDGE_OVERLAP = "judge_overlap"  # that speech is over: transcribe it (from `held` to `sample`)
    RESUME = "resume"  # it was a backchannel or a noise: the agent goes on
    REOPEN = "reopen"  # the user went on before any agent audio: cancel the reply, same turn
    TRANSCRIBE_EARLY = "transcribe_early"  # the sound stopped at `sample`: start the final transcript
    DROP_EARLY = "drop_early"  # the sound came back: that early transcript is not the final one


CUT_SEARCH = 2 * RECOGNITION_RATE  # an over-long utterance is cut at the likeliest pause in its last 2 s


@dataclass(frozen=True)
class Decision:
    action: Action
    sample: int  # 16 kHz stream position the decision refers to
    audio_end: int | None = None  # SPECULATE: the utterance's audio ends here (None: all heard)


class TurnMachine:
    def __init__(self, config: TurnConfig, quietest: Callable[[int], int] | None = None) -> None:
        """`quietest(since)`: the stream sample since `since` closest to a pause (the VAD's)."""
        self.config = config
        self._quietest = quietest
        self.state = TurnState.LISTENING
        self.utterance_start = 0  # first sample of the current user utterance
        self.speech_end = 0  # estimated end of the user's speech
        self.transcript: str | None = None  # words heard in the current utterance, if known
        self.end_probability: float | None = None  # P(whole message) for this pause's words
        self._speculating = False
        self._barge_start: int | None = None
        self.held: int | None = None  # the agent is paused for speech over it that began here
        self._overlap_end = 0  # where that speech stopped (the VAD's end of speech)
        self._judging: int | None = None  # its words were asked for at this sample
        self._user_speaking = False
        self._speech_onset = 0  # where the VAD's current (or last) speech began
        self._cut = False  # the turn being answered is a monologue cut at max_utterance
        self._saying = False  # the agent took the floor on its own (no user utterance to answer)
        self._agent_began = 0  # where the agent's first audio went out (the reply now speaking)
        self._sound_stopped: int | None = None  # where the sound stopped, while in speech
        self.early_transcript: int | None = None  # where the early transcript started, if one is on

    # -- inputs -------------------------------------------------------------------------------
    def on_vad(self, event: VadEvent) -> list[Decision]:
        if event.kind == "sound_stopped":
            self._sound_stopped = event.sample
            return []
        if event.kind == "sound_resumed":
            self._sound_stopped = None
            return self._drop_early(event.sample)
        if event.kind == "pause":
            # Probably the end: speculate now, a window before the VAD is sure.
            if self.state is TurnState.USER_SPEAKING:
                self.state = TurnState.USER_PAUSED
                self.speech_end = event.sample
            return []
        if event.kind == "resume":  # the pause was inside a word: the user goes on
            return self._on_speech_start(event.sample) if self.state is TurnState.USER_PAUSED else []
        if event.kind == "start":
            self._judging = None
            self._user_speaking = True
            self._speech_onset = event.sample
            self._sound_stopped = None
            return self._on_speech_start(event.sample)
        self._user_speaking = False  # "end"
        self._barge_start = None
        self._overlap_end = event.sample  # if over the agent: judged after OVERLAP_QUIET of quiet
        if self.state is TurnState.USER_SPEAKING:
            self.state = TurnState.USER_PAUSED
            self.speech_end = event.sample
        return []

    def on_time(self, now: int) -> list[Decision]:
        """Called after every frame with the number of samples received so far."""
        cfg = self.config
        if self.state is TurnState.USER_SPEAKING:
            if now - self.utterance_start >= cfg.max_utterance * RECOGNITION_RATE:
                # An endless monologue: answer what fits in Whisper's window, cut between two
                # words rather than in one; what follows the cut opens the next utterance.
                cut = self._quietest(now - CUT_SEARCH) if self._quietest is not None else now
                self.speech_end = self._speech_onset = min(cut, now)
                self._cut = True
                return self._commit(now, speculate_first=True, audio_end=self.speech_end)
            return self._maybe_transcribe_early(now)
        if self.state is TurnState.USER_PAUSED:
            silence = (now - self.speech_end) / RECOGNITION_RATE
            decisions: list[Decision] = []
            if not self._speculating and silence >= cfg.speculation_delay:
                decisions.append(self._speculate())
            if silence >= endpoint_delay(self.transcript, cfg, self.end_probability):
                decisions += self._commit(now, speculate_first=not self._speculating)
            return decisions
        if self._cut and self.state is TurnState.AGENT_THINKING:
            return []  # the person talks on past the cut: heard next, not merged into the cut turn
        if self.held is not None:
            overlap = (now - self.held) / RECOGNITION_RATE
            if self._user_speaking:
                return self._barge_in(now) if overlap >= cfg.backchannel_max else []  # too long
            if overlap >= cfg.backchannel_max + VERDICT_WAIT:  # its words never came
                return self._barge_in(now, speech_end=self._overlap_end)
            if self._judging is None and now - self._overlap_end >= OVERLAP_QUIET:
                self._judging = now  # quiet long enough to be over: what did they say?
                return [Decision(Action.JUDGE_OVERLAP, now)]
            return []
        if self._barge_start is not None and self._user_speaking:
            if (now - self._barge_start) / RECOGNITION_RATE >= cfg.min_interruption:
                if self.state is TurnState.AGENT_SPEAKING and cfg.backchannel_max > cfg.min_interruption:
                    self.held, self._judging = self._barge_start, None
                    return [Decision(Action.PAUSE, self._barge_start)]
                return self._barge_in(now)
        return []

    def on_transcript(self, text: str) -> None:
        """The words of the current utterance so far (interim or speculative final)."""
        self.transcript = text

    def on_end_probability(self, probability: float | None, speech_end: int) -> None:
        """The chat model's P(whole message) for the words before the pause after `speech_end`;
        dropped when the person has spoken since (it was about an earlier pause)."""
        if self.state is TurnState.USER_PAUSED and speech_end == self.speech_end:
            self.end_probability = probability

    def on_overlap_words(self, text: str | None, sample: int) -> list[Decision]:
        """The words of the speech over the agent, asked for at `sample` (None: no transcript):
        a backchannel resumes the agent, anything more is a barge-in. Dropped if the person has
        spoken again since."""
        if self.held is None or self._judging != sample:
            return []
        self._judging = None
        if text is not None and is_backchannel(text, self.config):
            self.held = None
            return [Decision(Action.RESUME, sample)]
        return self._barge_in(sample, speech_end=self._overlap_end)

    def agent_says(self) -> bool:
        """The agent wants the floor on its own (a greeting): granted while nobody speaks."""
        if self.state is not TurnState.LISTENING or self._user_speaking:
            return False
        self.state = TurnState.AGENT_THINKING
        self._saying = True
        return True

    def user_typed(self, sample: int) -> list[Decision]:
        """The person typed a message: what is under way stops (the agent's reply interrupted, a
        reply made ahead cancelled); then `answer_typed` gives the agent the floor to answer."""
        if self.state in (TurnState.AGENT_THINKING, TurnState.AGENT_SPEAKING):
            return [Decision(Action.INTERRUPT, sample)]
        if self._speculating:
            self._speculating = False
            return [Decision(Action.CANCEL_SPECULATION, sample)]
        return []

    def answer_typed(self) -> None:
        """The agent answers typed words: its turn, which the person can interrupt by voice."""
        self.state = TurnState.AGENT_THINKING
        self._saying = True  # no utterance of theirs to reopen: speech over it is a barge-in
        self._speculating = False
        self._barge_start = None
        self.held = self._judging = None
        self._forget_words()
        self.early_transcript = None

    def agent_speaking(self, sample: int) -> None:
        """The reply's first audio went out when `sample` of the person's stream had come in."""
        if self.state is TurnState.AGENT_THINKING:
            self.state = TurnState.AGENT_SPEAKING
            self._agent_began = sample

    def agent_done(self) -> list[Decision]:
        """The reply finished playing (or failed): the floor is open again."""
        if self.state in (TurnState.AGENT_THINKING, TurnState.AGENT_SPEAKING):
            self.state = TurnState.LISTENING
            self._saying = False
            self._cut = False
            self._barge_start = None
            self.held = self._judging = None
            if self._user_speaking:  # the user already talks over the tail of the reply
                self._start_utterance(self._speech_onset)
                return [Decision(Action.USER_STARTED, self._speech_onset)]
        return []

    # -- transitions ----------------------------------------------------------------------------
    def _on_speech_start(self, sample: int) -> list[Decision]:
        if self.state is TurnState.LISTENING:
            self._start_utterance(sample)
            return [Decision(Action.USER_STARTED, sample)]
        if self.state is TurnState.USER_PAUSED:
            self.state = TurnState.USER_SPEAKING
            self._forget_words()
            if self._speculating:
                self._speculating = False
                return [Decision(Action.CANCEL_SPECULATION, sample)]
            return []
        if self.state in (TurnState.AGENT_THINKING, TurnState.AGENT_SPEAKING):
            self._barge_start = sample  # decided in on_time once it lasts long enough
        return []

    def _barge_in(self, now: int, speech_end: int | None = None) -> list[Decision]:
        """The person has the floor. `speech_end`: their speech has stopped there already (it
        was judged after it stopped)."""
        barge_start = self.held if self.held is not None else (self._barge_start or now)
        self._barge_start = None
        self.held = self._judging = None
        if self.state is TurnState.AGENT_THINKING and not self._saying:
            # Nothing was heard yet: the user was not done. Same utterance, reply cancelled.
            self.state = TurnState.USER_SPEAKING
            self._forget_words()
            self._speculating = False
            return [Decision(Action.REOPEN, barge_start)]
        went_on = (
            not self._saying
            and not self._cut
            and barge_start - self._agent_began <= self.config.went_on_within * RECOGNITION_RATE
        )
        self._start_utterance(barge_start)
        if speech_end is not None:  # as after a quiet window: the endpoint counts from there
            self.state = TurnState.USER_PAUSED
            self.speech_end = speech_end
        return [Decision(Action.GO_ON if went_on else Action.INTERRUPT, barge_start)]

    def _commit(self, now: int, speculate_first: bool, audio_end: int | None = None) -> list[Decision]:
        decisions = [self._speculate(audio_end)] if speculate_first else []
        self.state = TurnState.AGENT_THINKING
        self._speculating = False
        return decisions + [Decision(Action.COMMIT, now)]

    def _speculate(self, audio_end: int | None = None) -> Decision:
        """Start the reply; it takes over the early transcript, if one is on."""
        self._speculating = True
        self.early_transcript = None
        return Decision(Action.SPECULATE, self.speech_end, audio_end)

    def _maybe_transcribe_early(self, now: int) -> list[Decision]:
        """The sound stopped EARLY_QUIET ago while the VAD still hears speech: the final
        transcript may start now, before the VAD's first quiet window. Dropped if the sound
        comes back (a stop consonant, a breath)."""
        stopped = self._sound_stopped
        if (
            not self.config.early_transcript
            or stopped is None
            or self.early_transcript is not None
            or now - stopped < EARLY_QUIET
        ):
            return []
        self.early_transcript = stopped
        return [Decision(Action.TRANSCRIBE_EARLY, stopped)]

    def _drop_early(self, sample: int) -> list[Decision]:
        if self.early_transcript is None:
            return []
        self.early_transcript = None
        return [Decision(Action.DROP_EARLY, sample)]

    @property
    def carried_onset(self) -> int | None:
        """While the agent has the turn: where the speech the person is still making began (it
        opens their next utterance), if they are speaking, or the speech over it being judged."""
        if self.held is not None:
            return self.held
        return self._speech_onset if self._user_speaking else None

    def _forget_words(self) -> None:
        """The words of this pause go, and with them the model's P(whole message) for them."""
        self.transcript = None
        self.end_probability = None

    def _start_utterance(self, sample: int) -> None:
        self._cut = False
        self.state = TurnState.USER_SPEAKING
        self.utterance_start = sample
        self._forget_words()
        self._speculating = False
        self._saying = False
        self.early_transcript = None
