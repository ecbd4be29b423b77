"""reuse_freed_memory: glibc keeps freed blocks up to 32 MB in the heap (checked with mallinfo2)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from scorestudio.utils.allocator import USER_SETTINGS, reuse_freed_memory

# A fresh interpreter: the settings are process-wide and the test must see glibc's defaults first.
PROBE = """
import ctypes, torch
from scorestudio.utils.allocator import reuse_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def mapped_while_alive(mb):
    before = libc.mallinfo2().hblks
    t = torch.empty(mb * 2**20 // 4)
    return libc.mallinfo2().hblks - before
print(mapped_while_alive(20), reuse_freed_memory(), mapped_while_alive(20), mapped_while_alive(40))
"""


def glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not glibc_with_mallinfo2(), reason="needs glibc ≥ 2.33 (mallinfo2)")
def test_blocks_up_to_32_mb_come_from_the_heap_after_the_call():
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env=env).stdout.split()
    assert out == ["1", "True", "0", "1"]      # 20 MB: mapped before, from the heap after; 40 MB: mapped


def test_a_users_own_malloc_settings_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert reuse_freed_memory() is False
