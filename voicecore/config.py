"""One typed configuration object, with every default in one place.

Sources, lowest precedence first: the defaults below, a TOML file, `VOICECORE_<SECTION>_<FIELD>`
environment variables (e.g. `VOICECORE_LLM_TEMPERATURE=0.3`), then command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voicecore.errors import ConfigError

ENV_PREFIX = "VOICECORE_"

DEFAULT_SYSTEM_PROMPT = "You are a helpful voice assistant. Answer in one short sentence."


@dataclass
class VadConfig:
    model: str | None = None  # path to a Silero ONNX file; None = the bundled Silero v6
    activation_threshold: float = 0.5  # probability that starts speech (Silero's own default)
    deactivation_threshold: float = 0.35  # below this, speech is over (hysteresis gap 0.15)
    min_speech_ms: int = 96  # shorter bursts (clicks, coughs) never open a turn
    min_silence_ms: int = 64  # gaps shorter than this are inside the speech (two windows)
    prefix_padding_ms: int = 320  # audio kept from before the onset so STT hears the first syllable


@dataclass
class TurnConfig:
    # Silence after speech that commits the turn (turn/endpoint.py): min_endpoint_delay when the
    # chat model finds the words a whole message (P >= end_likely), max_endpoint_delay when it
    # expects more (P <= end_unlikely: "What is the capital of"); max is also the ceiling.
    min_endpoint_delay: float = 0.4
    max_endpoint_delay: float = 2.0
    end_likely: float = 1e-6
    end_unlikely: float = 1e-8
    speculation_delay: float = 0.0  # silence before the speculative STT -> LLM -> TTS start
    # (0: at the VAD's first quiet window, before it is sure of the end after min_silence_ms)
    # Start the final transcript once the sound has stopped for 48 ms, before Silero's first quiet
    # window, while one conversation alone is open; dropped if the sound resumes.
    early_transcript: bool = True
    # User speech over the agent longer than this barges in: short enough, with the network and
    # the VAD's own delay, to stop the agent within 300 ms of the speech start as heard at the
    # client; Silero plus min_speech_ms already filter clicks and coughs.
    min_interruption: float = 0.1
    # That speech pauses the agent; it resumes when the speech stopped within backchannel_max
    # seconds having said nothing (a cough) or only words from `backchannels` (turn/overlap.py).
    # 0 (or <= min_interruption): every such overlap stops the agent, as a barge-in.
    backchannel_max: float = 1.0
    backchannels: str = "yeah, yes, yep, uh-huh, mm-hmm, mhm, mm, hmm, uh, um, okay, ok, right, sure, oh, ah"
    # A barge-in that began within this many seconds of the agent's first audio, before the
    # person could have reacted to it, is them going on after a pause the agent took for the
    # end: the reply is dropped as if unsaid, and the words it answered open their next
    # utterance (not for a reply that spoke a filler or used a tool). 0: every one is a barge-in.
    went_on_within: float = 0.5
    max_utterance: float = 28.0  # Whisper's window is 30 s: a longer monologue is cut into turns
    interim_interval: float = 1.0  # seconds of new speech between interim transcripts
    # A model stage that raises, or whose model makes no progress for this long (STT, the LLM's
    # next token, one TTS chunk; waiting in line behind other conversations does not count),
    # ends the turn with the apology below; the conversation goes on.
    stage_timeout: float = 8.0
    apology: str = "Sorry, something went wrong on my side. Could you say that again?"


@dataclass
class SttConfig:
    model: str | None = None  # faster-whisper model: path or hub id; None = bundled tiny.en
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    compute_type: str = "int8"
    language: str | None = "en"
    beam_size: int = 1
    # One thread, so that the LLM's prompt and Piper run beside the final transcript (CTranslate2's
    # default takes every core).
    cpu_threads: int = 1  # 0 = CTranslate2's default
    # Encode only the audio plus padding instead of Whisper's fixed 30 s window (far cheaper on a
    # CPU); guarded against the repetition loops a short context can produce.
    short_context: bool = True


@dataclass
class LlmConfig:
    engine: str = "llama.cpp"  # "llama.cpp" (CPU default) or "vllm" (GPU; its CPU build runs too)
    model: str | None = None  # path, or hub id ("org/repo" or "org/repo:file.gguf" for llama.cpp)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    context_tokens: int = 2048
    max_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    repeat_penalty: float = 1.1
    threads: int = 0  # llama.cpp threads for generation; 0 = one fewer than the cores
    # llama.cpp reads a Q4_1/Q5_0/Q5_1 GGUF (the bundled model is Q4_1) through a Q8_0 copy made
    # once in ~/.cache/voicecore: the same weights, prompts read faster on a CPU (llm/weights.py).
    q8_0_copy: bool = True
    gpu_memory_utilization: float = 0.5  # vLLM only
    # vLLM only: "auto" (the model's own; float32 on a CPU without native bf16, where vLLM's
    # emulated bf16 read prompts ~7.5x slower), "float32", "bfloat16" or "float16".
    dtype: str = "auto"


@dataclass
class TtsConfig:
    voice: str | None = None  # path to a Piper .onnx voice; None = bundled en_US-joe-medium
    length_scale: float = 1.0  # >1 speaks slower
    first_chunk_min_words: int = 3  # cut the first clause early so the first audio starts soon
    chunk_min_words: int = 8  # later chunks: whole sentences or long clauses


@dataclass
class AudioConfig:
    output_sample_rate: int = 48_000  # LiveKit's native rate


@dataclass
class LiveKitConfig:
    # Server and credentials; unset = LiveKit's own LIVEKIT_URL / LIVEKIT_API_KEY /
    # LIVEKIT_API_SECRET environment variables. The secret never appears in a repr or a log.
    url: str | None = None
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    agent_name: str = "voicecore"  # what dispatch rules and CreateAgentDispatch name
    identity: str = "voicecore-agent"  # the agent's identity in a fixed room (`serve --room`)
    max_jobs: int = 8  # rooms one process serves at once in worker mode (a cap; see below)
    # People being listened to at once, across all rooms: what costs CPU, so what capacity
    # counts. Load = conversations / this; at it the worker reports WS_FULL and refuses rooms.
    # 0 = from the hardware: the CPU cores on the CPU path, 8 with the vLLM engine.
    max_conversations: int = 0
    # On SIGTERM/SIGINT: seconds the turns in progress get to finish (no new ones start) before
    # the agent leaves its rooms anyway.
    drain_timeout: float = 10.0
    greeting: str = ""  # said to each person who joins; empty = the agent waits to be spoken to
    # A dispatched agent stays this many seconds in a room everyone has left, in case they come
    # back (a dropped connection, a reloaded page). None = as long as LiveKit keeps the room: it
    # closes it `departure_timeout` (20 s by default) after the last person left.
    rejoin_wait: float | None = None
    # Each turn's latency record, as JSON on text stream topic `voicecore.metrics`, to the person
    # answered (the talk page shows it; docs/web.md).
    turn_metrics: bool = True


@dataclass
class HttpConfig:
    # `voicecore serve` also answers HTTP on this address: the talk page, connection details for
    # browsers, health and Prometheus metrics (docs/web.md). Loopback unless you say otherwise.
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080  # 0 = any free port (the one chosen is printed)
    # Required by POST /api/connection-details outside --dev when set (VOICECORE_HTTP_API_KEY);
    # unset, only same-origin requests from the served page get tokens. Never logged.
    api_key: str | None = field(default=None, repr=False)
    # Comma-separated origins of other web sites whose pages may ask for tokens (CORS), e.g. a
    # LiveKit starter frontend: "https://app.example.com,http://localhost:3000". Never "*".
    allowed_origins: str = ""
    # Let a token request name its room (`roomName`). Off: a fresh room per call, so nobody gets
    # a token for a room someone else is in by knowing its name.
    client_room_names: bool = False
    public_livekit_url: str | None = None  # LiveKit URL handed to browsers; None = livekit.url
    token_ttl: float = 600.0  # seconds a handed-out participant token can be used to join
    rate_per_minute: float = 12.0  # connection details per client IP, sustained ...
    rate_burst: int = 6  # ... after a burst of this many
    trust_proxy: bool = False  # client IP from X-Forwarded-For: only behind your own proxy


@dataclass
class MetricsConfig:
    # Append each finished turn (room, participant identity, what the person said, the agent's
    # reply as heard, latencies, interrupted) to this JSONL file, one fsync'd line per turn, the
    # file owner-only (0600). Unset (the default), empty or "none" = nothing is stored;
    # `serve --no-turn-log` overrides a file set here. `voicecore history` reads it back; the
    # benchmarks read it to split latency by stage.
    turn_log: str | None = None


@dataclass
class AgentConfig:
    # The agent every room gets: a Python file or module holding a voicecore.Agent (instructions,
    # greeting, tools): "examples/assistant.py", "mypackage.agents:support". Empty = talk only.
    definition: str = ""
    # Other agents a room may ask for by name in its metadata or its dispatch's ({"agent": "tutor"}),
    # or a browser in POST /api/connection-details: "tutor=examples/tutor.py,helper=pkg.mod:agent".
    profiles: str = ""
    # Let room metadata set the instructions as free text ({"instructions": "..."}). Off: only
    # the profiles above; whoever can create rooms would otherwise write the system prompt.
    metadata_instructions: bool = False
    tool_timeout: float = 10.0  # seconds a tool may run; then the model hears it timed out
    filler: str = "One moment."  # said while a tool runs longer than filler_after
    filler_after: float = 0.7
    max_tool_calls: int = 3  # per turn; then the model answers with what it has
    # MCP servers whose tools every agent gets, separated by ";": a command line
    # ("python my_server.py", stdio) or a streamable HTTP URL ("http://127.0.0.1:9000/mcp").
    mcp_servers: str = ""


@dataclass
class Config:
    vad: VadConfig = field(default_factory=VadConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    livekit: LiveKitConfig = field(default_factory=LiveKitConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build a Config: defaults < TOML file < environment < `overrides` ("section.field": value)."""
    config = Config()
    if path is not None:
        _apply(config, _read_toml(Path(path)), source=str(path))
    env = os.environ if env is None else env
    from_env: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        section, _, name = key[len(ENV_PREFIX) :].lower().partition("_")
        if section not in SECTIONS or not name:
            continue  # not a config setting (VOICECORE_CONFIG, VOICECORE_LOG_LEVEL, ...)
        from_env.setdefault(section, {})[name] = value
    _apply(config, from_env, source="environment")
    nested: dict[str, dict[str, Any]] = {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = dotted.partition(".")
        nested.setdefault(section, {})[name] = value
    _apply(config, nested, source="command line")
    turn = config.turn
    if not 0 < turn.end_unlikely < turn.end_likely <= 1:
        raise ConfigError(
            f"turn.end_unlikely ({turn.end_unlikely}) and turn.end_likely ({turn.end_likely}) must be "
            "probabilities with 0 < end_unlikely < end_likely <= 1"
        )
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _apply(config: Config, values: Mapping[str, Any], source: str) -> None:
    for section, settings in values.items():
        if section not in SECTIONS:
            raise ConfigError(f"{source}: unknown section [{section}]; known: {', '.join(SECTIONS)}")
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{source}: [{section}] must be a table of settings")
        target = getattr(config, section)
        hints = typing.get_type_hints(type(target))
        for name, raw in settings.items():
            if name not in hints:
                known = ", ".join(hints)
                raise ConfigError(f"{source}: unknown setting {section}.{name}; known: {known}")
            setattr(target, name, _coerce(raw, hints[name], f"{section}.{name}", source))


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    base = next(a for a in hint.__args__ if a is not type(None)) if optional else hint
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none"))):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if base is int and isinstance(value, float):
            raise ValueError(value)
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {base.__name__}") from None
