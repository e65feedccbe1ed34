"""Chunking and endpointing rules, without models."""

from __future__ import annotations

from voicecore.config import TurnConfig
from voicecore.tts.chunker import MAX_CHUNK_WORDS, SentenceChunker, clean_for_speech
from voicecore.turn.endpoint import endpoint_delay
from voicecore.turn.machine import Action, Decision, TurnMachine
from voicecore.turn.overlap import VERDICT_WAIT, is_backchannel
from voicecore.turn.state import TurnState
from voicecore.turn.vad import VadEvent


def stream(chunker: SentenceChunker, text: str) -> list[str]:
    out: list[str] = []
    for i in range(0, len(text), 3):  # LLM-sized pieces
        out += chunker.push(text[i : i + 3])
    return out + chunker.flush()


def test_first_chunk_is_a_clause_later_ones_sentences():
    chunks = stream(
        SentenceChunker(first_min_words=3, min_words=8),
        "Paris is the capital of France, a city on the Seine. It has about two million people, "
        "and many museums. Dr. Smith lives at 3.5 Main St. too!",
    )
    assert chunks[0] == "Paris is the capital of France,"
    assert chunks[1] == "a city on the Seine."
    assert "Dr. Smith lives at 3.5 Main St. too!" in chunks  # no cut after Dr. or inside 3.5


def test_a_long_first_sentence_is_cut_at_a_phrase_boundary():
    chunks = stream(
        SentenceChunker(first_min_words=3, min_words=8),
        "The original play by William Shakespeare was written in the sixteenth century.",
    )
    assert chunks == ["The original play by William Shakespeare", "was written in the sixteenth century."]
    # A long subject is spoken while the LLM writes the rest; a short one is not cut.
    capital = stream(SentenceChunker(), "The capital of France is Paris.")
    assert capital == ["The capital of France", "is Paris."]
    # The first clause leaves as soon as the token that starts the next phrase arrives.
    chunker = SentenceChunker()
    pushed = [chunker.push(token) for token in ["The", " capital", " of", " France", " is"]]
    assert pushed[-1] == ["The capital of France"]
    assert stream(SentenceChunker(), "The sky is blue. Bees make honey from nectar.") == [
        "The sky is blue.",
        "Bees make honey from nectar.",
    ]


def test_markup_and_unspeakable_pieces_are_skipped():
    chunks = stream(SentenceChunker(), "**Paris** is `the` capital. ... !!! [Read more](http://x) now.")
    assert chunks[0] == "Paris is the capital."
    assert all(any(c.isalnum() for c in chunk) for chunk in chunks)
    assert clean_for_speech("# Title\n- item <b>bold</b>") == "Title item bold"
    assert clean_for_speech("See https://www.example.com/a_b?x=1 😀 for $5.") == "See example.com for $5."


def test_code_reasoning_and_lists_are_not_read_out():
    reply = "<think>The user wants code.</think>Sure.\n```python\nprint(1)\n```\n"
    reply += "- First, boil.\n2. Then eat.\n```\nx"
    assert stream(SentenceChunker(), reply) == ["Sure.", "First, boil.", "Then eat."]


def test_a_run_on_reply_is_still_spoken_in_bounded_pieces():
    chunks = stream(SentenceChunker(), " ".join(["blah"] * 100))
    assert len(chunks) >= 4 and all(len(chunk.split()) <= MAX_CHUNK_WORDS for chunk in chunks)
    assert stream(SentenceChunker(), "") == stream(SentenceChunker(), " ... ?! ") == []


def test_endpoint_delay_follows_how_likely_the_words_are_a_whole_message():
    cfg = TurnConfig()
    short, long = cfg.min_endpoint_delay, cfg.max_endpoint_delay
    assert endpoint_delay(None, cfg) == long  # no answer yet: only the ceiling ends the turn
    assert endpoint_delay("What is the capital of France?", cfg) == long
    assert endpoint_delay("What is the capital of France?", cfg, 0.02) == short
    assert endpoint_delay("What is the capital of", cfg, 1e-9) == long
    assert endpoint_delay("Hello", cfg, cfg.end_likely) == short
    assert endpoint_delay("Hello", cfg, cfg.end_unlikely) == long
    middle = endpoint_delay("Hello", cfg, (cfg.end_likely * cfg.end_unlikely) ** 0.5)
    assert abs(middle - (short + long) / 2) < 1e-9  # a straight line on a log scale
    # trailing off, in any script Whisper writes, is mid-thought whatever the model says
    for trailing in ("So, um...", "I think,", "Je pense que…", "我想，", "Well -"):
        assert endpoint_delay(trailing, cfg, 0.5) == long, trailing


def run(machine: TurnMachine, until: int, step: int = 320) -> list[Action]:
    actions = []
    for now in range(step, until + 1, step):
        actions += [d.action for d in machine.on_time(now)]
    return actions


def test_machine_waits_the_long_delay_after_an_incomplete_phrase():
    cfg = TurnConfig()
    m = TurnMachine(cfg)
    assert [d.action for d in m.on_vad(VadEvent("start", 0))] == [Action.USER_STARTED]
    m.on_vad(VadEvent("end", 16000))
    m.on_transcript("What is the capital of")
    actions = run(m, 16000 + int(0.7 * 16000))
    assert Action.SPECULATE in actions and Action.COMMIT not in actions
    # the user goes on: the speculation is cancelled, the turn continues
    assert [d.action for d in m.on_vad(VadEvent("start", 28000))] == [Action.CANCEL_SPECULATION]
    m.on_vad(VadEvent("end", 40000))
    m.on_transcript("What is the capital of France?")
    m.on_end_probability(0.02, 16000)  # about the earlier pause: dropped
    assert m.end_probability is None
    m.on_end_probability(0.02, 40000)
    actions = [d.action for now in range(40000, 40000 + 16000, 320) for d in m.on_time(now)]
    assert actions == [Action.SPECULATE, Action.COMMIT]


def test_speculation_starts_at_the_first_quiet_window_and_stops_if_speech_resumes():
    m = TurnMachine(TurnConfig())
    m.on_vad(VadEvent("start", 0))
    m.on_vad(VadEvent("pause", 16000))  # one quiet window: maybe a stop consonant
    assert [d.action for d in m.on_time(16000 + 512)] == [Action.SPECULATE]
    assert [d.action for d in m.on_vad(VadEvent("resume", 16512))] == [Action.CANCEL_SPECULATION]
    assert run(m, 16000 + 3200) == []  # speaking again: nothing until the next pause
    m.on_vad(VadEvent("pause", 24000))
    m.on_transcript("What is the capital of France?")
    m.on_end_probability(0.02, 24000)
    assert [d.action for d in m.on_time(24000 + 512)] == [Action.SPECULATE]
    m.on_vad(VadEvent("end", 24000))  # the VAD is sure now: the same speculation goes on
    assert m.speech_end == 24000
    actions = [d.action for now in range(24000 + 1024, 24000 + 16000, 320) for d in m.on_time(now)]
    assert actions == [Action.COMMIT]


def test_barge_in_needs_min_interruption_of_speech():
    cfg = TurnConfig(min_interruption=0.2, backchannel_max=0, went_on_within=0)  # every overlap barges in
    m = TurnMachine(cfg)
    m.on_vad(VadEvent("start", 0))
    m.on_vad(VadEvent("end", 16000))
    m.on_transcript("Hello there.")
    run(m, 16000 * 3)
    m.agent_speaking(16000 * 3)
    m.on_vad(VadEvent("start", 48000))  # a click: too short
    m.on_vad(VadEvent("end", 48000 + 1600))
    assert Action.INTERRUPT not in [d.action for d in m.on_time(48000 + 6400)]
    m.on_vad(VadEvent("start", 64000))
    assert m.on_time(64000 + 1600) == []
    assert [d.action for d in m.on_time(64000 + 3200)] == [Action.INTERRUPT]
    assert m.utterance_start == 64000


def speaking_agent(began: int = 23000, config: TurnConfig | None = None) -> TurnMachine:
    """A machine whose agent is speaking its reply to "Hello there." (committed at 22400, its
    first audio out at `began`), at sample 48000: more than went_on_within after it began."""
    m = TurnMachine(config or TurnConfig())
    m.on_vad(VadEvent("start", 0))
    m.on_vad(VadEvent("end", 16000))
    m.on_transcript("Hello there.")
    m.on_end_probability(0.5, 16000)
    assert run(m, began) == [Action.SPECULATE, Action.COMMIT]
    m.agent_speaking(began)
    run(m, 48000)
    return m


def overlap(m: TurnMachine, start: int, end: int) -> int:
    """Speech over the agent from `start` to `end`: paused at 0.1 s, judged after 0.2 s of quiet."""
    m.on_vad(VadEvent("start", start))
    assert m.on_time(start + 800) == []
    assert [d.action for d in m.on_time(start + 1600)] == [Action.PAUSE]  # 0.1 s: silent now
    m.on_vad(VadEvent("pause", end))
    m.on_vad(VadEvent("end", end))
    assert m.on_time(end + 3000) == []  # not quiet for long enough yet
    assert [d.action for d in m.on_time(end + 3200)] == [Action.JUDGE_OVERLAP]
    assert m.on_time(end + 4000) == []  # waiting for its words
    return end + 3200


def test_speech_over_the_agent_pauses_it_and_a_backchannel_resumes_it():
    m = speaking_agent()
    judged = overlap(m, 48000, 54000)
    assert m.on_overlap_words("Uh-huh.", judged) == [Decision(Action.RESUME, judged)]
    assert m.state is TurnState.AGENT_SPEAKING and m.held is None
    judged = overlap(m, 70000, 74000)  # a cough: no words at all
    assert [d.action for d in m.on_overlap_words("", judged)] == [Action.RESUME]


def test_words_over_the_agent_are_a_barge_in_from_where_they_began():
    m = speaking_agent()
    judged = overlap(m, 48000, 56000)
    # "Stop." is short, but no backchannel: the person has the floor, their speech is over
    assert m.on_overlap_words("Stop.", judged) == [Decision(Action.INTERRUPT, 48000)]
    assert m.state is TurnState.USER_PAUSED and m.utterance_start == 48000 and m.speech_end == 56000
    assert Action.COMMIT in run(m, 56000 + 3 * 16000)


def test_long_speech_over_the_agent_is_a_barge_in_without_waiting_for_words():
    m = speaking_agent()
    m.on_vad(VadEvent("start", 48000))
    m.on_time(48000 + 1600)
    assert m.on_time(48000 + 15000) == []
    assert [d.action for d in m.on_time(48000 + 16000)] == [Action.INTERRUPT]  # backchannel_max
    assert m.state is TurnState.USER_SPEAKING


def test_a_verdict_after_the_person_went_on_is_dropped():
    m = speaking_agent()
    judged = overlap(m, 48000, 52000)
    m.on_vad(VadEvent("start", 56000))
    assert m.on_overlap_words("Yeah.", judged) == []  # "Yeah, but ..." is not over
    assert m.held == 48000


def test_no_words_ever_for_the_overlap_gives_the_person_the_floor():
    m = speaking_agent()
    judged = overlap(m, 48000, 52000)
    assert [d.action for d in m.on_overlap_words(None, judged)] == [Action.INTERRUPT]  # STT failed
    m = speaking_agent()
    overlap(m, 48000, 52000)
    actions = run(m, 48000 + int((TurnConfig().backchannel_max + VERDICT_WAIT) * 16000) + 320)
    # the person has the floor, and what they said is answered (the endpoint long past)
    assert actions == [Action.INTERRUPT, Action.SPECULATE, Action.COMMIT]


def test_words_right_after_the_agent_began_go_on_with_the_persons_turn():
    """The agent took a pause for the end of "Hello there" and began at 42000; the person goes
    on 0.375 s later, before they could have reacted to it: their words before and after are
    one message."""
    m = speaking_agent(began=42000)
    judged = overlap(m, 48000, 56000)
    assert m.on_overlap_words("How are you?", judged) == [Decision(Action.GO_ON, 48000)]
    assert m.state is TurnState.USER_PAUSED and m.utterance_start == 48000
    m = speaking_agent(began=42000)  # speech that goes on past backchannel_max: the same
    m.on_vad(VadEvent("start", 48000))
    m.on_time(48000 + 1600)
    assert [d.action for d in m.on_time(48000 + 16000)] == [Action.GO_ON]
    m = speaking_agent(began=42000, config=TurnConfig(went_on_within=0))  # off: a barge-in
    judged = overlap(m, 48000, 56000)
    assert [d.action for d in m.on_overlap_words("How are you?", judged)] == [Action.INTERRUPT]
    m = speaking_agent(began=42000)  # a backchannel still lets it go on
    judged = overlap(m, 48000, 52000)
    assert [d.action for d in m.on_overlap_words("Yeah.", judged)] == [Action.RESUME]


def test_backchannels_are_whole_words_from_the_list_in_any_case():
    cfg = TurnConfig()
    assert is_backchannel("Mm-hmm.", cfg) and is_backchannel("Yeah, yeah.", cfg) and is_backchannel("", cfg)
    assert not is_backchannel("No.", cfg) and not is_backchannel("Yeah, but wait.", cfg)
    assert not is_backchannel("Oui.", cfg) and is_backchannel("Oui.", TurnConfig(backchannels="oui, ouais"))


def test_endless_monologue_is_cut_at_max_utterance():
    m = TurnMachine(TurnConfig(max_utterance=5.0))
    m.on_vad(VadEvent("start", 0))
    actions = run(m, 16000 * 6)
    assert actions == [Action.SPECULATE, Action.COMMIT]
