"""Atomic file writes: a crash or an error never leaves half a file behind; a folder locked for one process."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import VertedgeError


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (same suffixes) that replaces `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A prefix, not a suffix, so writers that pick a format by extension (ITK, PIL) still see it.
    tmp = path.with_name(f".part-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented UTF-8 JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def lock_exclusively(path: str | os.PathLike[str], busy: str) -> IO[str]:
    """Open `path` (created if absent) and lock it for this process alone; VertedgeError(`busy`) when
    another process holds it. The lock lasts until the file is closed or the process ends, however it ends."""
    lock = open(path, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise VertedgeError(busy) from None
    return lock
