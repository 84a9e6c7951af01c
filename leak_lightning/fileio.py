"""Atomic file replacement shared by the builder, the reports and the checkpoints (no torch, no Lightning)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


def temp_sibling(path: Path) -> Path:
    """A hidden temporary name beside `path`: same directory, so `os.replace` onto `path` is atomic."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name to write; on success it replaces `path`, and it never outlives the block."""
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[IO[str]], object]) -> None:
    """Write a text file through `write(f)` under a temporary name, then rename it into place."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as f:
        write(f)
