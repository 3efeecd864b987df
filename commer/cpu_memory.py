"""glibc's malloc told to keep freed activation memory, so every forward pass on CPU does not
page-fault its activations in again (issue 27).

A forward pass allocates activations of several MB each (a token-budget batch of 1,024 positions on
the default backbone: the MLP's intermediate is 1,024 × 1,536 floats, 6 MB) and frees them layer after
layer. glibc serves such sizes with mmap, or from the heap top that it trims back to the system once
more than a threshold is free; both thresholds move with what the process freed before. So the next call maps the memory
again and the kernel zero-fills it page by page: measured on 400 news documents (bundled
checkpoint, float32, one thread), 3.3–3.4 million page faults in 24 model calls, ~570 MB per call,
and the count of the same calls varied 2× between processes with a different allocation history
(the job and the bare loop: 0.53 vs 0.97 million on 100 documents). Fixing the mmap threshold at
glibc's largest (32 MB) and the trim threshold at 1 GB took the same calls to ~0.02 million faults
and their system time from 6–12% of the model's CPU time to ~1%.

Process-wide and once; a no-op off glibc, and where the user set MALLOC_MMAP_THRESHOLD_ or
MALLOC_TRIM_THRESHOLD_ (their setting stands). Memory already freed stays with the process (up to
TRIM_THRESHOLD above what it uses), which a process that has just held those activations can hold again.
"""
from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): larger blocks are always mapped.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_retained: list[bool] = []


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (once per process); whether they are set."""
    if not _retained:
        _retained.append(_set_thresholds())
    return _retained[0]


def thresholds_set() -> bool | None:
    """Whether retain_freed_memory set the thresholds in this process; None if it was not called."""
    return _retained[0] if _retained else None


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux") or any(os.environ.get(name) for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library symbols to look up, or one without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # musl's mallopt is a stub that answers 0: nothing was set.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
