"""A GGUF's weights as a Hugging Face folder (safetensors, config, tokenizer), the form vLLM reads.

The bundled SmolLM2-135M ships only as a GGUF (Q4_1). With `llm.engine = "vllm"` and no
`llm.model`, transformers unpacks it once into a dense float32 checkpoint with its tokenizer and
chat template (~45 s on 2 cores, ~540 MB), kept in the user's cache directory beside the Q8_0
copy llama.cpp reads (llm/weights.py). The same weights as llama.cpp's, to within Q4_1's own
rounding: both engines answer the bundled questions alike. Needs transformers, gguf and
accelerate (`voicecore[gpu]`; bin/setup-vllm installs them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from voicecore.errors import ConfigError
from voicecore.llm.weights import cache_dir, file_key
from voicecore.models import bundled_gguf

log = logging.getLogger(__name__)


def bundled_hf_folder(cache: Path | None = None) -> Path:
    """The bundled SmolLM2 GGUF as a Hugging Face folder (made now if missing)."""
    return hf_folder(bundled_gguf(), cache)


def hf_folder(gguf: Path, cache: Path | None = None) -> Path:
    """A Hugging Face folder holding `gguf`'s weights, dequantised, made once per file."""
    cache = cache or cache_dir()
    folder = cache / f"{gguf.stem}.hf-{file_key(gguf)}"
    if (folder / "config.json").is_file():
        return folder
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError:
        raise ConfigError(
            f"vLLM reads Hugging Face folders; to convert {gguf.name} for it: pip install 'voicecore[gpu]'"
        ) from None
    log.info("converting %s into a Hugging Face folder for vLLM (once, ~1 min) -> %s", gguf.name, folder)
    cache.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed into place: two processes converting at once
    # both succeed, and neither reads a half-written folder.
    tmp = Path(tempfile.mkdtemp(prefix=folder.name, suffix=".part", dir=cache))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with contextlib.suppress(OSError):  # another process was first: its folder is the same
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


if __name__ == "__main__":  # bin/setup-vllm: convert ahead, print where
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(bundled_hf_folder())
