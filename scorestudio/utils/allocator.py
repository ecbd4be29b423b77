"""glibc malloc settings for CPU runs: reuse freed memory instead of faulting in fresh pages.

PyTorch's CPU allocator has no cache: every tensor comes from malloc, and glibc serves a block
above its mmap threshold (128 KB at first, raised as such blocks are freed, up to 32 MB) with
fresh pages from the kernel, which fault in on first touch, and hands it back when it is freed.
A NeRF step allocates the same grid-sized gradients and sample-sized activations (1-15 MB) again
at every step: zero-filling a fresh [2, 8, 48³] gradient took 2.9 ms, about 3x a reused one.
With the mmap threshold at its largest (32 MB) and the heap trimmed only beyond 1 GB, freed blocks
stay in the process and are reused.

Written here because glibc's own switches are environment variables (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``) read when the process starts, which a ``python launch.py`` command
cannot set for itself; ``mallopt`` sets the same values at run time.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3        # mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 * 2**20                         # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 2**30
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")


def reuse_freed_memory() -> bool:
    """Keep freed blocks of up to 32 MB for reuse (see the module docstring). Returns whether the
    settings were applied: only with glibc (Linux), and never when the user set glibc's malloc
    variables (``MALLOC_MMAP_THRESHOLD_=131072`` restores glibc's default, for example)."""
    if not sys.platform.startswith("linux") or any(name in os.environ for name in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):                   # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
