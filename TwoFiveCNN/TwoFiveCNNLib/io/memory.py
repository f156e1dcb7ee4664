"""Process memory: the peak resident size, and freed arrays given back to the system at once."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
ARRAY_MMAP_THRESHOLD = 1 << 20


def return_large_blocks_to_the_system() -> bool:
    """Serve every allocation over 1 MiB by its own mapping (glibc, Linux), so a freed array leaves the
    process at once instead of waiting in the heap.

    glibc raises its mapping threshold after each large free, up to 32 MiB, so the arrays of one
    study (up to tens of MB each) pile up in the heap and the next study's peak adds to them; a
    fixed threshold keeps a command-line process's peak the size of one study. For a whole
    process (the command line), not for Slicer's. Returns whether the setting took.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, ARRAY_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


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
