"""The run directory: where a run's checkpoints, logs and reports live (no Lightning here)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RUN_DIR = "runs"


def checkpoint_dir(root: str | Path | None) -> Path:
    """Where a run's best.ckpt and last.ckpt live: <run dir>/checkpoints."""
    return Path(root or DEFAULT_RUN_DIR) / "checkpoints"


def check_writable(root: str | Path | None) -> None:
    """The run directory must be creatable and writable before anything runs in it."""
    folder = Path(root or DEFAULT_RUN_DIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--trainer.default_root_dir {folder}: cannot write there ({err.strerror or err}); "
                         "choose a writable folder") from None
