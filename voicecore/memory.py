"""The serving process's heap policy (glibc): few malloc arenas, big blocks mapped, free pages
handed back.

By default glibc gives each thread that allocates under contention an arena of its own, up to
eight per core, and never returns their free pages; a voice agent's native threads (LiveKit's
runtime, onnxruntime, ctranslate2, llama.cpp) come and go with rooms, so freed memory scatters
over those arenas. glibc also raises its mmap threshold each time a mapped block is freed, so
later big blocks (kept LLM contexts) land in the heap, which rarely shrinks. Hence one arena per
core, a fixed threshold (above the models' per-call scratch buffers, below kept LLM contexts),
and a trim after each room. Elsewhere (musl, macOS) all of this does nothing. The measurements:
docs/decisions.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from dataclasses import dataclass
from functools import cache

M_ARENA_MAX = -8  # glibc's mallopt parameter numbers
M_MMAP_THRESHOLD = -3
# Blocks this big or bigger get pages of their own, returned when freed. Not lower: every
# block above it is mapped and faulted in afresh each time, and Whisper's per-call buffers (up
# to a few MB) must not be, or every transcription pays for it.
MMAP_THRESHOLD = 4 << 20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


@dataclass(frozen=True)
class HeapStats:
    """The C heap (every native allocation, Python's objects included) in bytes."""

    in_use: int  # handed out from the arenas
    free: int  # held by the arenas, unused: fragmentation, or trimmable
    mapped: int  # big blocks with pages of their own (returned when freed)


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if hasattr(libc, "mallinfo2"):  # glibc 2.33 and later
        libc.mallinfo2.restype = _MallInfo2
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_arenas(arenas: int | None = None) -> bool:
    """Cap malloc arenas (default: one per core) and fix the mmap threshold. Call before threads
    start allocating; True if applied (MALLOC_ARENA_MAX in the environment, when set, wins)."""
    libc = _glibc()
    if libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(libc.mallopt(M_ARENA_MAX, arenas or os.cpu_count() or 2) and mapped)


def trim() -> None:
    """Hand the heap's free pages back to the OS (a few ms: call it from a thread)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def release() -> int:
    """After a room has closed: collect the garbage it left and hand the freed pages back; the
    count of objects collected. A room's objects refer to each other (tasks, callbacks, futures),
    so reference counting alone does not free them, and Python's full collection, which does,
    runs by itself only once enough objects have outlived the younger generations: rarely, in a
    long-running server. It holds the GIL while it runs (briefly, with start-up objects frozen
    out of its walk: `freeze`)."""
    found = gc.collect()
    trim()
    return found


def freeze() -> None:
    """Move everything alive now (modules, models, settings: there for good) out of the garbage
    collector's sight, so that its collections walk only what rooms have made since."""
    gc.collect()
    gc.freeze()


def heap_stats() -> HeapStats | None:
    """glibc's mallinfo2; None elsewhere. It walks the arenas' free lists: cheap for what `serve`
    holds, slower only for a heap fragmented into very many free blocks."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    info = libc.mallinfo2()
    return HeapStats(in_use=info.uordblks, free=info.fordblks, mapped=info.hblkhd)
