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
    typer.echo(f"voicecore: error: {error}", err=True)
    raise typer.Exit(2)


@app.command()
def talk(
    input: Annotated[Path, typer.Argument(help="A WAV recording of the user (any rate, mono/stereo).")],
    out: Annotated[Path | None, typer.Option(help="Write the agent's spoken reply here (WAV).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    config: ConfigOption = None,
    llm_model: Annotated[str | None, typer.Option(help="LLM: .gguf path or hub id.")] = None,
    stt_model: Annotated[str | None, typer.Option(help="Whisper: path or hub id.")] = None,
    voice: Annotated[str | None, typer.Option(help="Piper voice .onnx path.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Talk to the agent with a recording: it is fed in real time, then silence, through the
    whole pipeline. Prints what you said, what the agent answered, and the latency of each stage."""
    _logging(verbose)
    from voicecore.audio.wav import load_for_recognition, write_wav
    from voicecore.pipeline import load_models
    from voicecore.talk import talk as run_talk

    try:
        cfg = _config(config, **{"llm.model": llm_model, "stt.model": stt_model, "tts.voice": voice})
        audio = load_for_recognition(input)
        models = load_models(cfg)
    except VoicecoreError as e:
        _fail(e)
    try:
        result = asyncio.run(run_talk(models, cfg, audio))
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


def _logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else os.environ.get("VOICECORE_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> None:
    try:
        app()
    except VoicecoreError as e:  # pragma: no cover - commands catch their own
        print(f"voicecore: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
