"""Writing files so that a killed run never leaves half of one.

Every result, cache entry and checkpoint merlib writes goes through :func:`atomic_path`: the
bytes go to a temporary sibling and a rename puts them in place, so a reader sees the old file or
the new one. Resume relies on it: a fold counts as finished when its ``predictions.csv`` exists.

Base layer: imports nothing from merlib.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

TMP_SUFFIX = ".tmp"  # caches drop ``*.tmp`` files a killed run left


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to; renamed onto ``path`` when the block ends
    without an error, removed when it raises. The process id in its name keeps two processes
    writing the same file (a retried fold, two cache workers) from sharing a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``text`` into ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """``data`` into ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
