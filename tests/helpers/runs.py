"""Training runs as real processes for the signal, resume and fault tests: started in their own session (signals
never reach pytest), paused at a state they announce, interrupted and resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from helpers.files import REPO, data_args

TESTS = REPO / "tests"  # helpers/, for the training processes started here


def fit_cmd(h5, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "leak_lightning", "fit", "--config", str(REPO / "configs/demo_frame.yaml"),
            *data_args(h5), "--trainer.default_root_dir", str(run), "--data.batch_size", "512",
            "--trainer.max_epochs", "3", "--trainer.deterministic", "true", "--console.log_file", "null", *extra]


def start(cmd: list[str]) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def pause(ready: Path, **kw) -> list[str]:
    spec = {"class_path": "helpers.PauseAt", "init_args": {"ready": str(ready), **kw}}
    return ["--trainer.callbacks", json.dumps([spec])]


def wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            tail = proc.stdout.read()[-4000:]
            raise AssertionError(f"process ended (rc={proc.returncode}) before the pause:\n{tail}")
        assert time.monotonic() < deadline, "timed out waiting for the pause"
        time.sleep(0.02)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def callback_states(path: Path) -> dict[str, dict]:
    """Early-stopping and best-checkpoint bookkeeping, without run-specific paths."""
    states = torch.load(path, map_location="cpu", weights_only=False)["callbacks"]
    out: dict[str, dict] = {}
    for key, st in states.items():
        if key.startswith("EarlyStopping"):
            out["es"] = {"wait": st["wait_count"], "best": float(st["best_score"]), "stopped": st["stopped_epoch"]}
        if key.startswith("LeakCheckpoint"):
            out["ckpt"] = {"best": float(st["best_model_score"]), "current": float(st["current_score"])}
    assert out.keys() == {"es", "ckpt"}, list(states)
    return out


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def interrupt_and_resume(h5, run: Path, sig: int, code: int, extra: tuple[str, ...] = (), **where) -> str:
    ready = run / "ready"
    proc = start(fit_cmd(h5, run, *extra, *pause(ready, **where)))
    wait_ready(proc, ready)
    os.kill(proc.pid, sig)
    rc, out = finish(proc)
    assert rc == code, out[-4000:]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert f"saved {run / 'checkpoints' / 'last.ckpt'}" in out and "--ckpt_path last" in out
    rc, out2 = finish(start(fit_cmd(h5, run, *extra, "--ckpt_path", "last")), timeout=300)
    assert rc == 0, out2[-4000:]
    return out + out2
