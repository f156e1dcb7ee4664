"""Process memory: freed arrays given back to the system between stages, and the peak resident size."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


def release_freed_memory() -> bool:
    """Give the heap's freed blocks back to the system (glibc ``malloc_trim``): after a stage that made
    and dropped many large temporaries, so the next stage's arrays do not add to them. Returns whether
    anything was released; a no-op (False) elsewhere."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim  # noqa: B018 - musl and others have no malloc_trim
    except (OSError, AttributeError):
        return None
    return libc


def peak_rss_kb() -> int:
    """This process's peak resident memory in KiB.

    Linux's ``VmHWM`` belongs to the running program alone; ``ru_maxrss`` survives ``exec`` and so
    would count the parent's memory at the time it started the child.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource  # POSIX only; Windows has neither

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
