"""Plain helpers for the tests: tiny WAV corpora, split copies, in-process CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[2]


def tone(freq: float, seconds: float, sr: int, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A sine plus a little noise, float32 mono."""
    t = np.arange(int(round(seconds * sr))) / sr
    noise = np.random.default_rng(seed).standard_normal(len(t)) * 0.01
    return (amp * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)

def write_wav(path: Path, data: np.ndarray, sr: int = 4096, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, subtype=subtype)
    return path

def make_pool(root: Path, labels=("LEAK", "NORMAL"), sensors: int = 10, per_sensor: int = 2,
              seconds: float = 10.0) -> list[Path]:
    """ROOT/<LABEL>/S<label><n>~R<r>~ts~g.wav with a label-specific tone."""
    paths = []
    for li, label in enumerate(labels):
        for s in range(sensors):
            for r in range(per_sensor):
                name = f"S{label[:2]}{s:03d}~R{r:02d}~20251119T1015{r:02d}~g12.wav"
                data = tone(300 + 400 * li, seconds, 4096, seed=s * 100 + r)
                paths.append(write_wav(root / label / name, data))
    return paths

def make_origin(root: Path, labels=("LEAK", "NORMAL"), per_label: int = 3) -> list[Path]:
    """ROOT/{TRAINING,VALIDATION,TESTING}/<LABEL>/*.wav, sensors distinct per split."""
    paths = []
    for si, split in enumerate(("TRAINING", "VALIDATION", "TESTING")):
        for li, label in enumerate(labels):
            for k in range(per_label):
                name = f"S{si}{li}{k:02d}~R00~20251119T101500~g12.wav"
                paths.append(write_wav(root / split / label / name, tone(300 + 400 * li, 10, 4096, seed=si * 100 + k)))
    return paths

def data_args(h5: dict[str, Path]) -> list[str]:
    return ["--data.train_h5", str(h5["train"]), "--data.val_h5", str(h5["val"]),
            "--data.test_h5", str(h5["test"])]

def first_files(src: Path, dst: Path, n: int) -> Path:
    """A copy of split `src` holding only its first `n` files (a file of its own: no build id or counts)."""
    import h5py

    from leak_lightning.data import schema

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key, ds in f.items():
            g.create_dataset(key, data=ds[:n], dtype=ds.dtype, fletcher32=ds.fletcher32)
        own = {k: v for k, v in f.attrs.items() if k not in (schema.ATTR_BUILD_ID, schema.ATTR_LABEL_COUNTS)}
        g.attrs.update(own)
    return dst

def cli_exit(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stderr). For errors that need no real process."""
    from leak_lightning.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, capsys.readouterr().err

def one_error(code: int, err: str) -> str:
    """The one `[ERROR]` line of a command that stopped with exit 2 and no traceback."""
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


def start_paused(args: list[str], ready: Path, what: str) -> subprocess.Popen:
    """`python ARGS` as a real process (tests/ importable) that pauses and announces it by creating `ready`;
    returns once the file is there: the test waits for that state, never for a time."""
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "tests"),
                                                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"timed out waiting for the {what}'s pause"
        time.sleep(0.02)
    return proc
