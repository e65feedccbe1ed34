"""Recordings of real people, from installed packages, cut into end-of-turn cases.

Sources (Debian packages, which bin/setup apt-get installs when run as root, and, for the call,
fetched by bin/setup from PyPI; none of the audio is committed):
- Debian `pocketsphinx-testdata` (BSD-2): LibriVox read sentences, spoken card names and
  "go forward ten meters";
- Debian `codec2-examples` (LGPL-2.1): clean speech and HF radio speech, 8 kHz, several speakers;
- Debian `alsa-utils`: "Front center" and the other speaker-test phrases (48 kHz);
- the `pyannote-audio` wheel (MIT): a 30 s two-person telephone call with a timed transcript
  (bin/setup fetches it from PyPI and keeps its two audio files).

A *sentence* is one utterance: a whole short recording, a line of the call's transcript, or, in a
long monologue, the words up to Whisper's next full stop, question or exclamation mark. Word
times come from the bundled Whisper (tiny.en) with word timestamps.

- an *end* is the whole sentence, then silence: the speaker is done;
- a *hold* is the sentence up to a word boundary inside it, then a pause of 0.3-1.5 s after which
  the speaker goes on: the speaker's own mid-sentence prosody is at the cut.

Each case's audio ends at the audible end of its last word (10 ms energy frames), so silence
after it is counted from there, as the VAD's end-of-speech estimate counts it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from recordings import PausedQuestion

from voicecore import AudioFrame, load_for_recognition
from voicecore.models import bundled_whisper

SR = 16_000
CACHE = Path(__file__).parent / ".cache"
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
CODEC2 = Path("/usr/share/codec2")
ALSA = Path("/usr/share/sounds/alsa")
CALL = Path(__file__).parent.parent / ".local" / "recordings" / "pyannote"  # bin/setup fetches it
HOLD_PAUSES = (0.3, 0.5, 0.75, 1.0, 1.25, 1.5)  # each boundary gets one, in turn
HOLDS_PER_SENTENCE = 4
FRAME = 160  # 10 ms energy frames


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    kind: str  # read | command | phrase | radio | monologue | call


@dataclass
class Word:
    text: str
    start: float
    end: float


@dataclass
class Sentence:
    id: str
    source: str
    kind: str
    start: float  # seconds into the source recording
    end: float  # where the sentence's audio is cut (a quiet point after its last word)
    words: list[Word]  # times relative to `start`

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass
class Case:
    id: str
    sentence: str
    source: str
    kind: str  # source kind
    label: str  # "hold" | "end"
    audio: np.ndarray  # float32 16 kHz, ending at the audible end of the last word before the silence
    pause: float | None  # hold: seconds before the speaker goes on; end: None
    text: str  # the words before the silence (Whisper's)


def sources() -> list[Source]:
    """Every recording that is installed; say which packages are missing."""
    out = [
        Source(f"librivox-{p.stem[-4:]}", p, "read")
        for p in sorted((POCKETSPHINX / "librivox").glob("*.wav"))
    ]
    out += [Source(f"cards-{p.stem}", p, "command") for p in sorted((POCKETSPHINX / "cards").glob("*.wav"))]
    if (POCKETSPHINX / "goforward.raw").is_file():
        out.append(Source("goforward", POCKETSPHINX / "goforward.raw", "command"))
    # Clean read speech (8 kHz). f2400/m2400 are forig/morig through the codec and all.wav
    # their concatenation; cross.wav is mu-law: all left out.
    for stem in ("big_dog", "forig", "morig", "hts1a", "hts2a", "mmt1", "wia_16kHz"):
        if (CODEC2 / "wav" / f"{stem}.wav").is_file():
            out.append(Source(f"codec2-{stem}", CODEC2 / "wav" / f"{stem}.wav", "read"))
    if (CODEC2 / "raw" / "speech_orig_16k.wav").is_file():
        out.append(Source("codec2-speech_orig_16k", CODEC2 / "raw" / "speech_orig_16k.wav", "monologue"))
    for stem in ("david4", "vk2tpm_004", "vk5qi", "ve9qrp"):  # amateur radio: noisy to very noisy
        if (CODEC2 / "wav" / f"{stem}.wav").is_file():
            out.append(Source(f"codec2-{stem}", CODEC2 / "wav" / f"{stem}.wav", "radio"))
    out += [Source(f"alsa-{p.stem}", p, "phrase") for p in sorted(ALSA.glob("*.wav")) if p.stem != "Noise"]
    call = pyannote_sample()
    if call is not None:
        out.append(Source("pyannote-call", call, "call"))
    return out


def missing_packages() -> list[str]:
    checks = {"pocketsphinx-testdata": POCKETSPHINX / "librivox", "codec2-examples": CODEC2 / "wav",
              "alsa-utils": ALSA}  # fmt: skip
    return [name for name, path in checks.items() if not path.is_dir()]


def pyannote_sample() -> Path | None:
    """sample.wav (+ sample.stm) from the pyannote-audio wheel, which bin/setup fetches."""
    wav = CALL / "sample.wav"
    return wav if wav.is_file() and (CALL / "sample.stm").is_file() else None


def real_backchannel() -> AudioFrame | None:
    """Diane's "Oh," in the call (17.90-18.48 s): Whisper tiny.en hears only "oh" in it from
    any start within 0.5 s; a cut 20 ms longer takes in the next word's onset ("Oh, what?")."""
    wav = pyannote_sample()
    if wav is None:
        return None
    call = load_for_recognition(wav)
    return AudioFrame(call.samples[int(17.9 * SR) : int(18.48 * SR)], SR)


def load(path: Path) -> np.ndarray:
    if path.suffix == ".raw":  # pocketsphinx's raw files: 16 kHz s16le
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768
    return load_for_recognition(path).samples.astype(np.float32) / 32768


# -- sentences -------------------------------------------------------------------------------------
def sentences(refresh: bool = False) -> tuple[list[Sentence], dict[str, np.ndarray]]:
    """Sentences of every installed source (word times cached per file) and their audio."""
    audio: dict[str, np.ndarray] = {}
    out: list[Sentence] = []
    model = None
    for src in sources():
        audio[src.name] = load(src.path)
        key = hashlib.sha256(audio[src.name].tobytes()).hexdigest()[:16]
        cached = CACHE / "sentences" / f"{src.name}-{key}.json"
        if cached.is_file() and not refresh:
            out += [_sentence_from(d) for d in json.loads(cached.read_text())]
            continue
        if model is None:
            from faster_whisper import WhisperModel

            model = WhisperModel(str(bundled_whisper()), device="cpu", compute_type="int8", cpu_threads=1)
        found = _split(src, audio[src.name], model)
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps([asdict(s) for s in found], indent=1))
        out += found
    return out, audio


def _sentence_from(d: dict) -> Sentence:
    return Sentence(**{**d, "words": [Word(**w) for w in d["words"]]})


def _words(model: object, audio: np.ndarray) -> list[Word]:
    segments, _ = model.transcribe(  # type: ignore[attr-defined]
        audio, language="en", beam_size=1, word_timestamps=True, condition_on_previous_text=False,
        vad_filter=False,
    )  # fmt: skip
    return [Word(w.word.strip(), float(w.start), float(w.end)) for s in segments for w in (s.words or [])
            if w.word.strip()]  # fmt: skip


def _split(src: Source, audio: np.ndarray, model: object) -> list[Sentence]:
    duration = len(audio) / SR
    if src.kind == "call":
        out = []
        for i, (start, end) in enumerate(_stm_lines(src.path.with_suffix(".stm"))):
            a, b = max(0.0, start - 0.1), min(duration, end + 0.15)
            words = _words(model, audio[int(a * SR) : int(b * SR)])
            if words:
                out.append(Sentence(f"{src.name}-{i:02d}", src.name, src.kind, a, b, words))
        return out
    words = _words(model, audio)
    if src.kind in ("read", "command", "phrase") and len(words) > 0 and duration < 12:
        return [Sentence(src.name, src.name, src.kind, 0.0, duration, words)]
    # A long recording: sentences end at Whisper's full stops.
    groups: list[list[Word]] = [[]]
    for w in words:
        groups[-1].append(w)
        if w.text.endswith((".", "?", "!")):
            groups.append([])
    groups = [g for g in groups if g]
    out = []
    for i, group in enumerate(groups):
        before = groups[i - 1][-1].end if i > 0 else 0.0
        after = groups[i + 1][0].start if i + 1 < len(groups) else duration
        start = _quietest(audio, before, group[0].start) if i > 0 else 0.0
        end = _quietest(audio, group[-1].end, after) if i + 1 < len(groups) else duration
        shifted = [Word(w.text, w.start - start, w.end - start) for w in group]
        out.append(Sentence(f"{src.name}-{i:02d}", src.name, src.kind, start, end, shifted))
    return out


def _stm_lines(path: Path) -> list[tuple[float, float]]:
    lines = [line.split(maxsplit=5) for line in path.read_text().splitlines() if line.strip()]
    return [(float(p[3]), float(p[4])) for p in lines]


# -- cases ------------------------------------------------------------------------------------------
def cases(refresh: bool = False) -> list[Case]:
    found, audio = sentences(refresh)
    out: list[Case] = []
    turn = 0
    for s in found:
        clip = audio[s.source][int(s.start * SR) : int(s.end * SR)]
        if len(s.words) == 0 or len(clip) < SR // 4:
            continue
        end = audible_end(clip, len(clip) / SR)
        out.append(Case(f"{s.id}/end", s.id, s.source, s.kind, "end", clip[: int(end * SR)], None, s.text))
        for i in boundaries(len(s.words)):
            cut = _between(clip, s.words[i], s.words[i + 1])
            stop = audible_end(clip, cut)
            if stop < 0.15:
                continue
            text = " ".join(w.text for w in s.words[: i + 1])
            pause = HOLD_PAUSES[turn % len(HOLD_PAUSES)]
            turn += 1
            out.append(Case(f"{s.id}/hold{i + 1:02d}", s.id, s.source, s.kind, "hold", clip[: int(stop * SR)],
                            pause, text))  # fmt: skip
    return out


# -- whole recordings for the LiveKit benchmark (benchmarks/run.py --scenarios human) ---------------
E2E_PAUSES = (0.5, 0.75, 1.0, 1.25, 1.5)  # the targets are for holds of 0.5 s and more
E2E_PER_SOURCE = 2  # sentences per recording, so one long monologue does not outnumber the rest


def spoken_sentences(limit: int | None = None) -> list[PausedQuestion]:
    """Sentences of real people to say through LiveKit, each twice: as recorded (`pause_ms` 0:
    any agent audio before its last word is a cut-in, at the speaker's own pauses) and with a
    pause of 0.5-1.5 s inserted at a word boundary near its middle (a hold)."""
    found, audio = sentences()
    per_source: dict[str, int] = {}
    natural: list[PausedQuestion] = []
    holds: list[PausedQuestion] = []
    for s in found:
        clip = audio[s.source][int(s.start * SR) : int(s.end * SR)]
        if len(s.words) < 3 or per_source.get(s.source, 0) >= E2E_PER_SOURCE:
            continue
        end = audible_end(clip, len(clip) / SR)
        start = audible_start(clip, 0.0)
        if end - start < 0.5:
            continue
        per_source[s.source] = per_source.get(s.source, 0) + 1
        whole = clip[: int(end * SR)]
        natural.append(_question(f"human-{s.id}", s.text, "", 0, whole, start, start))
        i = len(s.words) // 2 - 1  # the boundary after word i: near the middle
        cut = _between(clip, s.words[i], s.words[i + 1])
        first_end, second_start = audible_end(clip, cut), audible_start(clip, cut)
        if first_end < 0.15 or second_start >= end:
            continue
        pause = E2E_PAUSES[len(holds) % len(E2E_PAUSES)]
        gap = np.zeros(max(0, int((pause - (second_start - first_end)) * SR)), np.float32)
        first, second = " ".join(w.text for w in s.words[: i + 1]), " ".join(w.text for w in s.words[i + 1 :])
        held = np.concatenate([clip[: int(first_end * SR)], gap, clip[int(first_end * SR) : int(end * SR)]])
        resumed = first_end + len(gap) / SR + (second_start - first_end)
        name = f"hold{int(pause * 1000)}-{s.id}"
        holds.append(_question(name, first, second, int(pause * 1000), held, first_end, resumed))
    out = [q for pair in zip(natural, holds, strict=False) for q in pair]
    out += natural[len(holds) :]
    return out[:limit]


def _question(
    name: str, first: str, second: str, pause_ms: int, audio: np.ndarray, first_end: float, resumed: float
) -> PausedQuestion:
    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    return PausedQuestion(name, first, second, pause_ms, AudioFrame(samples, SR), first_end, resumed)


def audible_start(audio: np.ndarray, after: float) -> float:
    """Seconds to the start of the first loud 10 ms frame from `after` (audible_end's threshold)."""
    levels = _levels(audio)
    if len(levels) == 0:
        return after
    first = int(after * SR) // FRAME
    loud = np.flatnonzero(levels[first:] > _loud_threshold(levels))
    return (first + loud[0]) * FRAME / SR if len(loud) else after


def boundaries(words: int) -> list[int]:
    """Up to HOLDS_PER_SENTENCE word boundaries spread over the sentence (a hold after word i):
    the long radio monologue would otherwise outnumber every other speaker."""
    inside = words - 1
    if inside <= HOLDS_PER_SENTENCE:
        return list(range(inside))
    return sorted({int(round(x)) for x in np.linspace(0, inside - 1, HOLDS_PER_SENTENCE)})


def _loud_threshold(levels: np.ndarray) -> float:
    """Loud: 30 dB under the clip's loudest frame and 10 dB over its quietest tenth."""
    return float(max(levels.max() - 30.0, np.percentile(levels, 10) + 10.0))


def _levels(audio: np.ndarray) -> np.ndarray:
    frames = len(audio) // FRAME
    block = audio[: frames * FRAME].reshape(frames, FRAME).astype(np.float64)
    return 10 * np.log10(np.mean(block * block, axis=1) + 1e-12)


def _between(clip: np.ndarray, left: Word, right: Word) -> float:
    """Where to cut between two words: the quietest frame around the gap Whisper puts there."""
    return _quietest(clip, max(left.start + 0.05, left.end - 0.1), min(right.end - 0.05, right.start + 0.1))


def _quietest(audio: np.ndarray, a: float, b: float) -> float:
    """The middle of the quietest 10 ms frame between `a` and `b` seconds (`a` if b <= a)."""
    i, j = int(a * SR) // FRAME, int(b * SR) // FRAME
    if j <= i:
        return a
    levels = _levels(audio[i * FRAME : j * FRAME])
    return (i + int(np.argmin(levels))) * FRAME / SR + FRAME / SR / 2


def audible_end(audio: np.ndarray, before: float) -> float:
    """Seconds to the end of the last loud 10 ms frame before `before`: louder than 30 dB under
    the clip's loudest frame and 10 dB over its quietest tenth (the noise of a radio channel)."""
    levels = _levels(audio)
    if len(levels) == 0:
        return before
    last = min(len(levels), int(before * SR) // FRAME)
    loud = np.flatnonzero(levels[:last] > _loud_threshold(levels))
    return (loud[-1] + 1) * FRAME / SR if len(loud) else before


if __name__ == "__main__":
    missing = missing_packages()
    if missing:
        print(f"missing Debian packages: {' '.join(missing)} (bin/setup installs them as root)")
    all_cases = cases(refresh="--refresh" in sys.argv)
    for c in all_cases:
        print(f"{c.label:4} {c.pause or 0:4.2f} {len(c.audio) / SR:5.2f}s {c.id:40} {c.text[-60:]}")
    holds = sum(c.label == "hold" for c in all_cases)
    print(
        f"{len(all_cases) - holds} ends, {holds} holds from {len({c.source for c in all_cases})} recordings"
    )
