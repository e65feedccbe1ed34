"""Cuts a streaming LLM reply into speakable chunks.

The first chunk ends at the first clause or phrase boundary after a few words, so the first audio
starts after "The capital of France" rather than after the whole reply; later chunks are whole
sentences (or long clauses), which Piper prosodies better.
"""

from __future__ import annotations

import re
import unicodedata

SENTENCE_END = ".!?"
CLAUSE_END = ",;:—"
ABBREVIATIONS = frozenset("mr mrs ms dr prof st vs etc e.g i.e jr sr no".split())
# A first sentence with no comma in sight is cut before one of these once it has a few words:
# a phrase boundary where a speaker may breathe, so the first audio need not wait for the period.
# "is/are/was/were" end a long subject ("The largest ocean on earth | is the Pacific Ocean."): the
# most common first sentence of a short answer, and the one whose length was most of the latency
# spread. Piper speaks the subject as an utterance of its own (its last word falls, ~0.15 s of
# silence follows), as with every phrase cut.
PHRASE_STARTS = frozenset(
    "and but or so because which that who where when while with without for from in on at "
    "about after before during than like is are was were".split()
)
FIRST_CHUNK_PHRASE_WORDS = 4
# A run-on reply with no punctuation is still spoken in pieces Piper synthesises quickly.
MAX_CHUNK_WORDS = 30
# Text an LLM writes that is not meant to be heard: code blocks and reasoning. Held back until
# closed, then dropped whole; an unclosed one at the end of the reply is dropped too.
_HIDDEN = re.compile(r"```.*?```|<think>.*?</think>", re.DOTALL)
_HIDDEN_OPEN = re.compile(r"```|<think>")
_URL = re.compile(r"https?://(?:www\.)?([^/\s]+)\S*")
_MARKUP = re.compile(r"[*_#`~>|]+|\[(.*?)\]\(.*?\)|<[^>]{1,40}>|(?:^|(?<=\s))(?:[-•]|\d+[.)])(?=\s)")
_LIST_NUMBER = re.compile(r"\s*\d+[.)]")
_SPEAKABLE = re.compile(r"[A-Za-z0-9]")


def clean_for_speech(text: str) -> str:
    """Drop markdown, list markers, tags and symbols (emoji) an LLM may emit; keep link text and
    say a URL as its host."""
    text = _URL.sub(lambda m: m.group(1), text)
    text = _MARKUP.sub(lambda m: m.group(1) or " ", text)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith(("S", "C")) or ch in "$%&+=")
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+([.,!?;:])", r"\1", text)


def speakable(text: str) -> bool:
    return bool(_SPEAKABLE.search(text))


class SentenceChunker:
    def __init__(self, first_min_words: int = 3, min_words: int = 8) -> None:
        self._first_min_words = first_min_words
        self._min_words = min_words
        self._buffer = ""
        self._emitted = 0

    def push(self, piece: str) -> list[str]:
        """Add LLM text; return the chunks that are complete now."""
        self._buffer = _HIDDEN.sub(" ", self._buffer + piece)
        chunks: list[str] = []
        while (cut := self._find_cut()) is not None:
            chunk, self._buffer = self._buffer[:cut], self._buffer[cut:]
            self._emit(chunk, chunks)
        return chunks

    def flush(self) -> list[str]:
        """The reply is complete: whatever is left is the last chunk."""
        chunks: list[str] = []
        self._emit(_HIDDEN_OPEN.split(self._buffer, maxsplit=1)[0], chunks)
        self._buffer = ""
        return chunks

    def _emit(self, chunk: str, out: list[str]) -> None:
        text = clean_for_speech(chunk)
        if speakable(text):
            out.append(text)
            self._emitted += 1

    def _find_cut(self) -> int | None:
        """Index just after a boundary that is followed by whitespace (so "3.5" is not cut)."""
        text = _HIDDEN_OPEN.split(self._buffer, maxsplit=1)[0]  # nothing past an unclosed block
        min_words = self._first_min_words if self._emitted == 0 else self._min_words
        for i, ch in enumerate(text[:-1]):
            if ch == "\n":  # a line of its own: a list item, a heading
                return i + 1
            if not text[i + 1].isspace():
                continue
            if ch in SENTENCE_END and not self._is_abbreviation(text[: i + 1]):
                if _LIST_NUMBER.fullmatch(text[: i + 1]):
                    continue  # "2." opening a numbered line
                if len(text[: i + 1].split()) >= 2 or self._emitted > 0:
                    return i + 1
            elif ch in CLAUSE_END and len(text[: i + 1].split()) >= min_words:
                return i + 1
        if self._emitted == 0 and (cut := self._phrase_cut(list(re.finditer(r"\S+", text)))) is not None:
            return cut
        words = list(re.finditer(r"\S+(?=\s)", text))  # complete words only
        if len(words) > MAX_CHUNK_WORDS:
            return words[MAX_CHUNK_WORDS].start()
        return None

    @staticmethod
    def _phrase_cut(words: list[re.Match[str]]) -> int | None:
        """Index of the space before a phrase-starting word, after enough words for a clause.
        The last word may still be growing: " is" is taken for "is" as soon as it arrives, a
        token (~14 ms on CPU) sooner than waiting for the space after it. Were it "island", the
        cut would still fall between two words."""
        for n, word in enumerate(words):
            if n >= FIRST_CHUNK_PHRASE_WORDS and word.group().lower() in PHRASE_STARTS:
                return word.start()
        return None

    @staticmethod
    def _is_abbreviation(text: str) -> bool:
        words = text.lower().split()
        return bool(words) and words[-1].rstrip(".") in ABBREVIATIONS
