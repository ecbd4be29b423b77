"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A crash or Ctrl-C in the middle of a write leaves the previous file intact, never a truncated
one, because ``os.replace`` within one file system is atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; it replaces ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True, default=float)
        handle.write("\n")


def update_json(path: str | os.PathLike, data: dict) -> dict:
    """Merge ``data`` into the JSON object at ``path`` (created if missing); returns the result."""
    path = Path(path)
    current = json.loads(path.read_text()) if path.is_file() else {}
    current.update(data)
    write_json(path, current)
    return current
