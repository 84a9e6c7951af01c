"""Shared fixtures: tiny WAV corpora written into tmp_path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("NO_COLOR", "1")


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


@pytest.fixture
def run_cli():
    """Run `python -m leak_lightning ARGS` in a fresh process; returns CompletedProcess."""
    def run(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        return subprocess.run([sys.executable, "-m", "leak_lightning", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout, env=env, **kw)

    return run


@pytest.fixture(scope="session")
def small_h5(tmp_path_factory) -> dict[str, Path]:
    """A tiny synthetic dataset built once per session: {'train'|'val'|'test': path}."""
    from leak_lightning.builder.build import build_dataset
    from leak_lightning.synthetic import make_dataset

    root = tmp_path_factory.mktemp("small")
    make_dataset(root / "wav", layout="origin", files_per_label=20, sensors_per_label=6, seed=1)
    build_dataset(root / "wav", root / "h5", progress=False)
    return {"train": root / "h5" / "TRAINING_DATASET.H5", "val": root / "h5" / "VALIDATION_DATASET.H5",
            "test": root / "h5" / "TESTING_DATASET.H5"}


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


@pytest.fixture(scope="session")
def trained_run(small_h5, tmp_path_factory) -> Path:
    """A demo-config model trained once per session (in-process, 2 epochs): its run directory."""
    from leak_lightning.cli import main

    run = tmp_path_factory.mktemp("trained")
    main(["fit", "--config", str(REPO / "configs/demo.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(run), "--trainer.max_epochs", "2", "--data.batch_size", "512", "--console.log_file", "null"])
    assert (run / "checkpoints" / "best.ckpt").is_file()
    return run


@pytest.fixture
def mount(tmp_path):
    """Mount a tmpfs with the given options (a real read-only or full file system); root only."""
    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)],
                                               capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def cli_exit(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI in-process; (exit code, stderr). For errors that need no real process."""
    from leak_lightning.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in args])
    return exit_.value.code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _fresh_logging():
    """An in-process CLI run puts its handler on that test's captured stderr: drop it afterwards, so a
    later test's log lines never go to a closed stream (a "Logging error" traceback in its output)."""
    yield
    logger = logging.getLogger("leak_lightning")
    for handler in list(logger.handlers):
        if getattr(handler, "_leak_lightning", False):
            logger.removeHandler(handler)
    logger.propagate = True


def one_error(code: int, err: str) -> str:
    """The one `[ERROR]` line of a command that stopped with exit 2 and no traceback."""
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    return errors[0]


@pytest.fixture
def ll_records():
    """Records logged under `leak_lightning` (its logger does not propagate to pytest's caplog)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("leak_lightning")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
