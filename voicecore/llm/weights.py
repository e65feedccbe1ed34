"""GGUF weights in a type llama.cpp's CPU backend reads fast: a Q8_0 copy of Q4_1/Q5_0/Q5_1 files.

llama.cpp repacks Q4_0, Q4_K, IQ4_NL and Q8_0 weights at load into layouts its AVX2/AVX512/NEON
matrix kernels stream through; Q4_1 and Q5_x have no such kernels, so a prompt reads much
slower in them (generated tokens cost the same). Q8_0 keeps 255 levels per block of 32 weights
where these types keep 16 or 32, so the copy holds the same weights to within a rounding error
several times smaller than their own. Made once per file, in the user's cache directory; the
original file is never touched. The measurements: docs/decisions.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# llama_ftype values (llama.h) of the types with no fast CPU kernels, by name.
SLOW_ON_CPU = {3: "Q4_1", 8: "Q5_0", 9: "Q5_1"}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "voicecore"


def file_key(path: Path) -> str:
    """Names what is made from `path` in the cache: a new or changed file gets a new name."""
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]


def fast_cpu_copy(path: Path, cache: Path | None = None) -> Path:
    """`path`, or its Q8_0 copy (made now if missing) when its weights are Q4_1, Q5_0 or Q5_1.

    Anything that goes wrong (a read-only cache, a full disk) leaves the original to be used."""
    cache = cache or cache_dir()
    copy = cache / f"{path.stem}.q8_0-{file_key(path)}.gguf"
    if copy.is_file():
        return copy  # made for this very file before: no need to read its type again
    ftype = _file_type(path)
    if ftype not in SLOW_ON_CPU:
        return path
    try:
        cache.mkdir(parents=True, exist_ok=True)
        _convert(path, copy, SLOW_ON_CPU[ftype])
    except OSError as e:
        log.warning("could not write a Q8_0 copy of %s (%s): using the %s weights as they are",
                    path, e, SLOW_ON_CPU[ftype])  # fmt: skip
        return path
    return copy


def _file_type(path: Path) -> int | None:
    """The GGUF's general.file_type, read with the vocabulary only (~0.1 s, no weights)."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # as Llama(verbose=False)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        return None  # not loadable: let the real load say why
    try:
        value = ctypes.create_string_buffer(32)
        if llama_cpp.llama_model_meta_val_str(model, b"general.file_type", value, len(value)) < 0:
            return None
        return int(value.value)
    except ValueError:
        return None
    finally:
        llama_cpp.llama_model_free(model)


def _convert(source: Path, target: Path, source_type: str) -> None:
    """Q8_0 copy of `source` at `target`, written under a temporary name and renamed into place
    (two processes converting at once both succeed; neither reads a half-written file)."""
    import llama_cpp

    log.info("converting %s (%s) to Q8_0 for faster prompts on CPU -> %s", source.name, source_type, target)
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        if llama_cpp.llama_model_quantize(str(source).encode(), tmp.encode(), ctypes.byref(params)) != 0:
            raise OSError(f"llama.cpp could not convert {source}")
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
