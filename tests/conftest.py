"""Shared fixtures: tiny WAV corpora written into tmp_path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.browser import browser  # noqa: F401  (the headless Chromium fixture, for the page tests)
from helpers.files import REPO, data_args

os.environ.setdefault("NO_COLOR", "1")


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
    from synthetic import make_dataset

    from leak_lightning.builder.build import build_dataset

    root = tmp_path_factory.mktemp("small")
    make_dataset(root / "wav", layout="origin", files_per_label=20, sensors_per_label=6, seed=1)
    build_dataset(root / "wav", root / "h5", progress=False)
    return {"train": root / "h5" / "TRAINING_DATASET.H5", "val": root / "h5" / "VALIDATION_DATASET.H5",
            "test": root / "h5" / "TESTING_DATASET.H5"}


@pytest.fixture(scope="session")
def trained_run(small_h5, tmp_path_factory) -> Path:
    """A demo-config model trained once per session (in-process, 2 epochs): its run directory."""
    from leak_lightning.cli import main

    run = tmp_path_factory.mktemp("trained")
    main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(run), "--trainer.max_epochs", "2", "--data.batch_size", "512", "--console.log_file", "null"])
    assert (run / "checkpoints" / "best.ckpt").is_file()
    return run


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A small labelled site the detector never heard (resonances 30 % higher, machinery), once per module."""
    from synthetic import Conditions, make_dataset

    root = tmp_path_factory.mktemp("site") / "district"
    make_dataset(root, layout="pool", labels=("LEAK", "NORMAL", "BACKGROUND"), files_per_label=4,
                 sensors_per_label=2, seed=5, conditions=Conditions(resonance_scale=1.3, background="machinery"))
    return root


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
