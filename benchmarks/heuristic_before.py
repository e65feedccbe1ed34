"""voicecore's end-of-turn rule before the end-of-turn model (issue 22), kept here as the
"before" of benchmarks/eot_bench.py: an English word list plus Whisper's punctuation decide
between the short and the long delay. voicecore itself no longer uses it."""

from __future__ import annotations

import re

# Words after which a speaker almost always goes on: conjunctions, articles, prepositions,
# fillers. A pause after them is a search for the next word, not the end of the turn.
CONTINUATION_WORDS = frozenset(
    """
    a an the and or but so because if then than of to in on at for with from by about into
    my your his her our their its this these those is are was were be been am do does did
    can could would should will shall may might must what which who whose where when how why
    um uh er erm ah hmm like mean well also plus minus point
    """.split()
)
NUMBER_WORDS = frozenset(
    "zero oh one two three four five six seven eight nine ten hundred thousand million".split()
)
_TRAILING = re.compile(r"[\s\"')\]]+$")
# "What do bees" ends on a noun, yet the question is not asked: after a question word and an
# auxiliary that cannot be the main verb, the subject must be followed by a verb.
QUESTION_WORDS = frozenset("what which where when why how who whom whose".split())
AUXILIARIES = frozenset("do does did can could will would should shall may might must".split())
PRONOUNS = frozenset("i you we they he she it".split())
SUBJECTS = PRONOUNS | frozenset("that this these those".split())
# Words that need a noun after them. Not "this/that/these/those": they stand alone as pronouns
# ("What do these make?" is a whole question; Whisper heard "bees" so in one benchmark turn, and
# the agent waited the long delay).
DETERMINERS = frozenset("a an the my your our their its some".split())


def sounds_complete(transcript: str) -> bool:
    """Does this transcript end the way a finished sentence ends?"""
    text = _TRAILING.sub("", transcript.strip())
    if not text:
        return False
    if text.endswith(("...", "…", ",", "-", "—", ":", ";")):
        return False  # Whisper marks trailing-off speech with an ellipsis or a comma
    words = re.findall(r"[a-z0-9']+", text.lower())
    if not words:
        return False
    last = words[-1]
    if last in CONTINUATION_WORDS and not ends_on_its_verb(words, text):
        return False
    if (last.isdigit() or last in NUMBER_WORDS) and not text.endswith(("?", "!")):
        return False  # likely in the middle of a phone number or an amount
    return not awaits_main_verb(text)


# Verbs that end a question once their subject is said: "What does that mean?", "What do you
# do?", "Do you know who he is?". Otherwise they promise more ("the capital is", "I mean").
CLOSING_VERBS = frozenset("do does did mean is are was were am".split())


def ends_on_its_verb(words: list[str], text: str) -> bool:
    """A question (Whisper's "?") whose last word is a verb right after its pronoun subject."""
    return text.endswith("?") and len(words) >= 3 and words[-1] in CLOSING_VERBS and words[-2] in SUBJECTS


def awaits_main_verb(text: str) -> bool:
    """A question inverted around an auxiliary that ends on its subject: "what do bees",
    "how many legs does a spider", "where can I". The last sentence alone counts."""
    sentence = re.split(r"[.!?]\s+", text.strip())[-1]
    words = re.findall(r"[a-z0-9']+", sentence.lower())
    if not words or words[0] not in QUESTION_WORDS:
        return False
    aux = next((i for i, w in enumerate(words[:5]) if w in AUXILIARIES), None)
    if aux is None:
        return False
    subject = words[aux + 1 :]
    if len(subject) == 1:
        return True  # "what do bees", "where can I"
    if len(subject) == 2:
        return subject[0] in DETERMINERS  # "what does the sun" (but "what do you think")
    return False
