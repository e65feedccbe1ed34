"""The `voicecore` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from voicecore.config import Config, load_config
from voicecore.errors import VoicecoreError
from voicecore.redaction import hide, log_redacted, redact

app = typer.Typer(
    help="voicecore: a self-hosted, low-latency voice agent. Every model runs in this process.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML config file (also VOICECORE_CONFIG).", envvar="VOICECORE_CONFIG"
    ),
]


def _config(path: Path | None, **flags: Any) -> Config:
    return load_config(path, overrides=flags)


def _fail(error: Exception) -> None:
    typer.echo(redact(f"voicecore: error: {error}"), err=True)
    raise typer.Exit(2)


@app.command()
def talk(
    input: Annotated[Path, typer.Argument(help="A WAV recording of the user (any rate, mono/stereo).")],
    out: Annotated[Path | None, typer.Option(help="Write the agent's spoken reply here (WAV).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
    llm_engine: Annotated[
        str | None, typer.Option(help="LLM engine: llama.cpp (default) or vllm (GPU, or its CPU build).")
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="LLM: .gguf path or hub id.")] = None,
    stt_model: Annotated[str | None, typer.Option(help="Whisper: path or hub id.")] = None,
    voice: Annotated[str | None, typer.Option(help="Piper voice .onnx path.")] = None,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            help="The agent: a Python file or module holding a voicecore.Agent "
            "(examples/tutor.py, package.module:name).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Talk to the agent with a recording: it is fed in real time, then silence, through the
    whole pipeline. Prints what you said, what the agent answered, and the latency of each stage."""
    _logging(verbose)
    from voicecore.agent import load_agent
    from voicecore.audio.wav import load_for_recognition, write_wav
    from voicecore.pipeline import load_models
    from voicecore.talk import talk as run_talk

    try:
        cfg = _config(
            config,
            **{
                "llm.engine": llm_engine, "llm.model": llm_model, "stt.model": stt_model,
                "tts.voice": voice, "agent.definition": agent,
            },
        )  # fmt: skip
        definition = load_agent(cfg.agent.definition) if cfg.agent.definition else None
        audio = load_for_recognition(input)
        models = load_models(cfg)
    except VoicecoreError as e:
        _fail(e)
    try:
        result = asyncio.run(run_talk(models, cfg, audio, agent=definition))
    finally:
        models.close()
    if out is not None:
        write_wav(out, result.reply_audio)
    turns = [t.as_dict() for t in result.turns]
    if as_json:
        payload = {
            "user_transcript": " ".join(result.user_transcripts),
            "reply_text": result.reply_text,
            "reply_wav": str(out) if out else None,
            "reply_seconds": round(result.reply_audio.duration, 3),
            "turns": turns,
        }
        typer.echo(json.dumps(payload, indent=2))
        return
    typer.echo(f"you:   {' '.join(result.user_transcripts) or '(no words heard)'}")
    typer.echo(f"agent: {result.reply_text or '(no reply)'}")
    for turn in result.turns:
        typer.echo(f"turn {turn.turn} latency (ms after the end of your speech):")
        for stage, ms in turn.latencies_ms().items():
            typer.echo(f"  {stage:<17} {'-' if ms is None else f'{ms:8.1f}'}")
    if out is not None:
        typer.echo(f"reply audio: {out} ({result.reply_audio.duration:.2f} s)")


@app.command()
def history(
    file: Annotated[
        Path | None, typer.Argument(help="The turn log (default: metrics.turn_log from config).")
    ] = None,
    config: ConfigOption = None,
    room: Annotated[str | None, typer.Option(help="Only this room.")] = None,
    limit: Annotated[int, typer.Option(help="The last N turns (0: all).")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Read back the completed turns `serve --turn-log` saved: who said what, what the agent
    said as it was heard, latencies, interruptions."""
    from voicecore.history import read_history

    try:
        path = file or (Path(p) if (p := _config(config).metrics.turn_log) else None)
        if path is None:
            raise VoicecoreError("no turn log: pass a file, or set metrics.turn_log / --turn-log")
        turns, bad = read_history(path)
    except VoicecoreError as e:
        _fail(e)
    if room is not None:
        turns = [t for t in turns if t.get("room") == room]
    if limit > 0:
        turns = turns[-limit:]
    for t in turns:
        if as_json:
            typer.echo(json.dumps(t))
            continue
        v2v = (t.get("latency_ms") or {}).get("voice_to_voice")
        where = f"{t.get('room', '-')}/{t.get('participant', '-')}"
        flag = " (interrupted)" if t.get("interrupted") else ""
        typer.echo(f"{where} turn {t.get('turn')}: {v2v if v2v is not None else '-'} ms{flag}")
        typer.echo(f"  user:  {t.get('user_text', '')}")
        typer.echo(f"  agent: {t.get('agent_text', '')}")
    if bad:
        typer.echo(f"({bad} unreadable line(s) skipped: a write cut short by a crash)", err=True)


@app.command()
def doctor(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Report the packages, models and accelerators voicecore finds."""
    from voicecore.doctor import report

    try:
        data = report(_config(config))
    except VoicecoreError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    typer.echo(f"python {data['python']} on {data['platform']}, {data['cpu_count']} CPUs")
    typer.echo("packages:")
    for name, version in data["packages"].items():
        typer.echo(f"  {name:<22} {version or 'not installed'}")
    typer.echo("models:")
    for stage, entry in data["models"].items():
        where = entry.get("path") or entry.get("configured")
        state = "ok" if entry.get("present") else ("hub id" if entry["source"] == "hub id" else "MISSING")
        typer.echo(f"  {stage:<4} {state:<7} {entry['source']:<8} {where}")
    acc = data["accelerators"]
    typer.echo("accelerators:")
    typer.echo(f"  GPUs: {', '.join(acc['gpus']) or 'none'}")
    typer.echo(f"  onnxruntime providers: {', '.join(acc['onnxruntime_providers'])}")
    typer.echo(f"  CTranslate2 CUDA devices: {acc['ctranslate2_cuda_devices']}")
    typer.echo(f"  llama.cpp GPU offload: {acc['llama_cpp_gpu_offload']}")
    typer.echo(f"engines: LLM {data['engines']['llm']}, STT on {data['engines']['stt_device']}")
    typer.echo(f"  LLM runs: {data['engines']['llm_runs']}")


UrlOption = Annotated[
    str | None, typer.Option("--url", help="LiveKit server, ws(s)://host:port (else LIVEKIT_URL).")
]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", help="LiveKit API key (else LIVEKIT_API_KEY).")
]
ApiSecretOption = Annotated[
    str | None,
    typer.Option(
        "--api-secret",
        help="LiveKit API secret (else LIVEKIT_API_SECRET; prefer the environment: "
        "flags are visible to other users of the machine).",
    ),
]


@app.command()
def serve(
    room: Annotated[
        str | None,
        typer.Option(
            help="Join this one room. Without it, register as a LiveKit agent worker "
            "and take the rooms LiveKit dispatches."
        ),
    ] = None,
    dev: Annotated[
        bool,
        typer.Option(
            "--dev",
            help="Local development: start livekit-server --dev if no LiveKit URL is set, accept its "
            "public devkey/secret, and hand out tokens over HTTP without a key.",
        ),
    ] = False,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    api_secret: ApiSecretOption = None,
    agent_name: Annotated[str | None, typer.Option(help="Agent name that dispatch requests ask for.")] = None,
    max_jobs: Annotated[
        int | None, typer.Option(help="Most rooms this process serves at once (worker mode).")
    ] = None,
    max_conversations: Annotated[
        int | None,
        typer.Option(help="People listened to at once (all rooms) before the worker is full; 0: CPU cores."),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds turns in progress get to finish on Ctrl-C/SIGTERM before leaving."),
    ] = None,
    greeting: Annotated[
        str | None, typer.Option(help="Said to each person who joins (default: nothing).")
    ] = None,
    http: Annotated[
        bool | None,
        typer.Option("--http/--no-http", help="Serve the talk page, the token API, health and metrics."),
    ] = None,
    http_host: Annotated[
        str | None, typer.Option(help="Address for HTTP (default 127.0.0.1: this machine only).")
    ] = None,
    http_port: Annotated[int | None, typer.Option(help="Port for HTTP (default 8080; 0: any free).")] = None,
    config: ConfigOption = None,
    llm_engine: Annotated[
        str | None, typer.Option(help="LLM engine: llama.cpp (default) or vllm (GPU, or its CPU build).")
    ] = None,
    llm_model: Annotated[str | None, typer.Option(help="LLM: .gguf path or hub id.")] = None,
    stt_model: Annotated[str | None, typer.Option(help="Whisper: path or hub id.")] = None,
    voice: Annotated[str | None, typer.Option(help="Piper voice .onnx path.")] = None,
    turn_log: Annotated[
        Path | None,
        typer.Option(
            help="Save every finished turn (who, what was said, what the agent said as heard, "
            "latencies) to this JSONL file, owner-only; `voicecore history` reads it."
        ),
    ] = None,
    no_turn_log: Annotated[
        bool,
        typer.Option("--no-turn-log", help="Save no turns, whatever the config file or environment says."),
    ] = False,
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            help="The agent every room gets: a Python file or module holding a voicecore.Agent "
            "(examples/tutor.py, package.module:name); rooms pick others from agent.profiles.",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Be the agent in LiveKit rooms until Ctrl-C: one room (--room), or every room LiveKit
    dispatches to this worker; and serve the talk page at http://127.0.0.1:8080/. Models are
    loaded once and shared by all rooms."""
    _logging(verbose)
    from voicecore import memory
    from voicecore.metrics import TurnLog
    from voicecore.pipeline import load_models
    from voicecore.rtc.devserver import LocalLiveKit
    from voicecore.rtc.token import DEV_API_KEY, DEV_API_SECRET, credentials, refuse_dev_keys
    from voicecore.service import ServeOptions, run

    memory.limit_arenas()  # before any thread allocates: a long run's RSS stays flat
    local: LocalLiveKit | None = None
    try:
        cfg = _config(
            config,
            **{
                "livekit.url": url,
                "livekit.api_key": api_key,
                "livekit.api_secret": api_secret,
                "livekit.agent_name": agent_name,
                "livekit.max_jobs": max_jobs,
                "livekit.max_conversations": max_conversations,
                "livekit.drain_timeout": drain_timeout,
                "livekit.greeting": greeting,
                "http.enabled": http,
                "http.host": http_host,
                "http.port": http_port,
                "llm.engine": llm_engine,
                "llm.model": llm_model,
                "stt.model": stt_model,
                "tts.voice": voice,
                "metrics.turn_log": str(turn_log) if turn_log else None,
                "agent.definition": agent,
            },
        )
        hide(cfg.livekit.api_secret, cfg.http.api_key, os.environ.get("LIVEKIT_API_SECRET"))
        if no_turn_log:
            cfg.metrics.turn_log = None
        if cfg.metrics.turn_log:
            TurnLog(cfg.metrics.turn_log)  # a path that cannot be appended to fails here, not later
        if dev:
            _quiet_dev_key_warnings()
        if dev and not (cfg.livekit.url or os.environ.get("LIVEKIT_URL")):
            local = LocalLiveKit(usual_ports=True)
            creds = local.start()
            _say(f"started livekit-server --dev on {creds.ws_url} (keys {DEV_API_KEY}/{DEV_API_SECRET})")
        elif dev:
            lk = cfg.livekit
            lk.api_key = lk.api_key or os.environ.get("LIVEKIT_API_KEY") or DEV_API_KEY
            lk.api_secret = lk.api_secret or os.environ.get("LIVEKIT_API_SECRET") or DEV_API_SECRET
            creds = credentials(lk)
        else:
            creds = credentials(cfg.livekit)
            refuse_dev_keys(creds)
        options = ServeOptions(room=room, dev=dev)
        asyncio.run(run(cfg, creds, lambda: load_models(cfg), options, notify=_say))
    except VoicecoreError as e:
        _fail(e)
    except (KeyboardInterrupt, asyncio.CancelledError):
        # A second Ctrl-C (or SIGTERM) stops at once instead of waiting for rooms to close.
        _say("stopped without waiting for rooms to close")
        raise typer.Exit(130) from None
    finally:
        if local is not None:
            local.close()


@app.command()
def token(
    room: Annotated[str, typer.Option(help="Room the token lets its holder join.")],
    identity: Annotated[str, typer.Option(help="Participant identity, unique in the room.")],
    name: Annotated[str | None, typer.Option(help="Display name (default: the identity).")] = None,
    ttl_hours: Annotated[float, typer.Option(help="Hours the token stays valid.")] = 6.0,
    api_key: ApiKeyOption = None,
    api_secret: ApiSecretOption = None,
    config: ConfigOption = None,
) -> None:
    """Print a join token for a person (publish a microphone, hear the agent)."""
    import datetime

    from voicecore.rtc.token import credentials, user_token

    try:
        cfg = _config(config, **{"livekit.api_key": api_key, "livekit.api_secret": api_secret})
        creds = credentials(cfg.livekit, need_url=False)
    except VoicecoreError as e:
        _fail(e)
    ttl = datetime.timedelta(hours=ttl_hours)
    typer.echo(user_token(creds, room, identity, name or identity, ttl=ttl))


def _quiet_dev_key_warnings() -> None:
    """PyJWT warns on every token signed with the 6-byte dev secret; --dev chose it knowingly."""
    import warnings

    from jwt.warnings import InsecureKeyLengthWarning

    warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)


def _say(line: str) -> None:
    typer.echo(redact(f"voicecore: {line}"))


def _logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else os.environ.get("VOICECORE_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log_redacted()


def main() -> None:
    try:
        app()
    except VoicecoreError as e:  # pragma: no cover - commands catch their own
        print(f"voicecore: error: {e}", file=sys.stderr)
        exit_past_livekit(2)
    except SystemExit as e:  # every command ends here, with its exit status
        exit_past_livekit(e.code)


def exit_past_livekit(code: int | str | None) -> None:
    """End the process with `code`. Once the LiveKit SDK is loaded (`serve`), past the
    interpreter's shutdown: its native runtime sometimes panics while Python tears down its
    objects ("panic in a function that cannot unwind", 1 run in ~20 of the LiveKit tests), and
    a `serve` that drained and left every room cleanly would exit 134 instead of 0. By then the
    rooms are left, the turn log fsync'd line by line and the local livekit-server stopped."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    status = int(code or 0)
    if "livekit.rtc" not in sys.modules:
        sys.exit(status)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()
