"""Real signals to real training processes: graceful interrupt, exact resume, checkpoints that never corrupt.

Every training run is a subprocess in its own session, so signals never reach pytest.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.files import REPO, first_files
from helpers.runs import (
    assert_bitwise_equal,
    callback_states,
    finish,
    fit_cmd,
    interrupt_and_resume,
    pause,
    start,
    wait_ready,
    weights,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(small_h5, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run; its final last.ckpt is what every resumed run must equal."""
    run = tmp_path_factory.mktemp("reference")
    rc, out = finish(start(fit_cmd(small_h5, run)), timeout=300)
    assert rc == 0, out[-4000:]
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("step", [5, 11], ids=["mid-epoch", "epoch-boundary"])  # 11 batches per epoch
def test_sigint_then_resume_is_bitwise_identical(small_h5, tmp_path, reference, step):
    interrupt_and_resume(small_h5, tmp_path, signal.SIGINT, 130, where="train", step=step)
    assert_bitwise_equal(weights(tmp_path / "checkpoints/last.ckpt"), weights(reference))
    # early stopping and best-checkpoint tracking continued instead of restarting
    assert callback_states(tmp_path / "checkpoints/last.ckpt") == callback_states(reference)


def test_sigterm_exits_143_and_resumes_exactly(small_h5, tmp_path, reference):
    interrupt_and_resume(small_h5, tmp_path, signal.SIGTERM, 143, where="train", step=15)
    assert_bitwise_equal(weights(tmp_path / "checkpoints/last.ckpt"), weights(reference))


def test_sigint_during_validation(small_h5, tmp_path, reference):
    interrupt_and_resume(small_h5, tmp_path, signal.SIGINT, 130, where="val", epoch=1)
    assert_bitwise_equal(weights(tmp_path / "checkpoints/last.ckpt"), weights(reference))


def test_streamed_training_resumes_mid_epoch_bitwise(small_h5, tmp_path):
    # 2 workers, 6 batches each per epoch: step 5 stops inside an epoch and inside a round of workers
    stream = ("--data.cache", "stream", "--data.num_workers", "2")
    rc, out = finish(start(fit_cmd(small_h5, tmp_path / "reference", *stream)), timeout=300)
    assert rc == 0, out[-4000:]
    out = interrupt_and_resume(small_h5, tmp_path / "run", signal.SIGINT, 130, stream, where="train", step=5)
    assert "restarts on a new order" not in out
    assert_bitwise_equal(weights(tmp_path / "run/checkpoints/last.ckpt"),
                         weights(tmp_path / "reference/checkpoints/last.ckpt"))


def test_sigint_during_a_checkpoint_save(small_h5, tmp_path):
    out = interrupt_and_resume(small_h5, tmp_path, signal.SIGINT, 130, where="save", nth=2)
    assert "Traceback" not in out


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(small_h5, tmp_path):
    from leak_lightning.checkpoint.io import checkpoint_problem

    ready = tmp_path / "ready"
    plugin = json.dumps({"class_path": "helpers.SlowCheckpointIO", "init_args": {"ready": str(ready), "nth": 3}})
    proc = start(fit_cmd(small_h5, tmp_path, "--trainer.plugins", plugin))
    wait_ready(proc, ready)
    ckpts = tmp_path / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpts.glob("*.ckpt")}
    assert before and any(p.name.startswith(".") for p in ckpts.iterdir())  # a temporary file is half-written
    os.killpg(proc.pid, signal.SIGKILL)
    finish(proc)
    for name, data in before.items():
        assert (ckpts / name).read_bytes() == data
        assert checkpoint_problem(ckpts / name) is None
    rc, out = finish(start(fit_cmd(small_h5, tmp_path, "--ckpt_path", "last")), timeout=300)
    assert rc == 0, out[-4000:]


def test_corrupted_last_falls_back_to_newest_valid(small_h5, tmp_path):
    rc, out = finish(start(fit_cmd(small_h5, tmp_path, "--trainer.max_epochs", "1")), timeout=300)
    assert rc == 0, out[-4000:]
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    rc, out = finish(start(fit_cmd(small_h5, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")),
                     timeout=300)
    assert rc == 0, out[-4000:]
    assert f"checkpoint {last} is unusable" in out
    assert f"resuming from {tmp_path / 'checkpoints' / 'best.ckpt'} instead" in out
    for p in (tmp_path / "checkpoints").glob("*.ckpt"):
        p.write_bytes(b"garbage")
    rc, out = finish(start(fit_cmd(small_h5, tmp_path, "--trainer.max_epochs", "1", "--ckpt_path", "last")),
                     timeout=300)
    assert rc == 0, out[-4000:]
    assert "no usable checkpoint" in out and "starting a new run" in out


def ddp_args() -> list[str]:
    return ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]


def group_gone(pgid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("to_group", [False, True], ids=["rank0-only", "whole-group"])
def test_ddp_interrupt_does_not_hang(small_h5, tmp_path, to_group):
    from leak_lightning.checkpoint.io import checkpoint_problem

    ready = tmp_path / "ready"
    # ranks vote every 2 batches (and at an epoch's last): a signal at step 3 stops them at step 4
    proc = start(fit_cmd(small_h5, tmp_path, *ddp_args(), "--interrupt.vote_every", "2",
                         *pause(ready, where="train", step=3)))
    wait_ready(proc, ready, timeout=180)
    (os.killpg if to_group else os.kill)(proc.pid, signal.SIGINT)
    rc, out = finish(proc, timeout=120)
    assert rc == 130, out[-4000:]
    assert group_gone(proc.pid), "a rank is still running"
    assert checkpoint_problem(tmp_path / "checkpoints" / "last.ckpt") is None
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4


def test_ddp_interrupt_in_validation_with_uneven_shares_resumes(small_h5, tmp_path):
    # 7 validation files, one per batch: rank 0 has 3 batches, rank 1 has 4; 6 steps per epoch
    val = first_files(small_h5["val"], tmp_path / "val7.h5", 7)
    args = [*ddp_args(), "--data.val_h5", str(val), "--data.eval_batch_size", "80", "--trainer.max_epochs", "2"]
    ready = tmp_path / "ready"
    run = tmp_path / "run"
    proc = start(fit_cmd(small_h5, run, *args, *pause(ready, where="val", epoch=0)))
    wait_ready(proc, ready, timeout=180)
    os.kill(proc.pid, signal.SIGINT)  # rank 0 only
    rc, out = finish(proc, timeout=120)
    assert rc == 130, out[-4000:]
    assert group_gone(proc.pid), "a rank is still running"
    assert torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
    rc, out = finish(start(fit_cmd(small_h5, run, *args, "--ckpt_path", "last")), timeout=300)
    assert rc == 0, out[-4000:]
    assert torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 12


def test_blocks_of_steps_resume_exactly_and_train_the_same_model(small_h5, tmp_path, reference):
    # 11 batches per epoch in blocks of 4 (4, 4, 3): step 8 is a block boundary inside epoch 0
    blocks = ("--data.steps_per_call", "4")
    out = interrupt_and_resume(small_h5, tmp_path, signal.SIGINT, 130, blocks, where="train", step=8)
    assert "restarts on a new order" not in out
    # the same batches, optimizer steps and random draws as one step per call: the same weights
    assert_bitwise_equal(weights(tmp_path / "checkpoints/last.ckpt"), weights(reference))


def test_a_build_into_the_folder_a_fit_reads_is_refused_and_the_fit_goes_on(small_h5, tmp_path):
    import shutil

    data = tmp_path / "data"  # without the hidden files: notes of other tests' runs on the session's data
    shutil.copytree(small_h5["train"].parent, data, ignore=shutil.ignore_patterns(".*"))
    (data / ".reader.tmp-99999999").write_text("{}")  # a note left by a killed reader (no such process)
    h5 = {k: data / p.name for k, p in small_h5.items()}
    ready = tmp_path / "ready"
    proc = start(fit_cmd(h5, tmp_path / "run", "--trainer.max_epochs", "1", *pause(ready, step=2)))
    wait_ready(proc, ready)
    wav = small_h5["train"].parent.parent / "wav"
    build = subprocess.run([sys.executable, "-m", "leak_lightning", "build", "--input", str(wav), "--output",
                            str(data), "--overwrite", "true"], cwd=REPO, capture_output=True, text=True,
                           env={**os.environ, "NO_COLOR": "1"}, timeout=300)
    errors = [line for line in build.stderr.splitlines() if "[ERROR]" in line]
    assert build.returncode == 2 and len(errors) == 1, build.stderr[-3000:]
    assert f"its splits are being read by PID {proc.pid}" in errors[0] and "leak_lightning fit" in errors[0]
    proc.send_signal(signal.SIGINT)  # the paused fit stops cleanly, as any interrupted run does
    rc, out = finish(proc)
    assert rc == 130, out[-3000:]
    assert not [p.name for p in data.iterdir() if p.name.startswith(".")]  # its lock and note went with it


def test_a_damaged_last_falls_back_to_best_and_resumes_to_the_end(small_h5, tmp_path):
    """SIGTERM mid-epoch, resume to the end, cut last.ckpt, resume with more epochs from best.ckpt (saved at an
    epoch's end): every step exits cleanly and the added epoch trains (the crash sequence of the lineage issue)."""
    run, ready = tmp_path / "run", tmp_path / "ready"
    proc = start(fit_cmd(small_h5, run, "--trainer.max_epochs", "4", *pause(ready, step=3)))
    wait_ready(proc, ready)
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 143, out[-3000:]
    rc, out = finish(start(fit_cmd(small_h5, run, "--ckpt_path", "last", "--trainer.max_epochs", "2")))
    assert rc == 0, out[-3000:]
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    rc, out = finish(start(fit_cmd(small_h5, run, "--ckpt_path", "last", "--trainer.max_epochs", "3")))
    assert rc == 0 and "resuming from" in out and "best.ckpt instead" in out, out[-3000:]
    assert "Traceback" not in out and "Epoch 002" in out, out[-3000:]


def test_early_stopping_waits_for_an_epoch_with_validation_but_not_for_a_misspelt_monitor():
    from types import SimpleNamespace

    from leak_lightning.training.callbacks.checkpointing import LeakEarlyStopping

    es = LeakEarlyStopping(monitor="val/loss", mode="min")
    trainer = SimpleNamespace(callback_metrics={})
    assert es._has_metric(trainer)  # never seen: Lightning's strict check speaks (a misspelt name)
    es.best_score = torch.tensor(0.2)  # seen in an earlier epoch: this one just had no validation
    assert not es._has_metric(trainer)
    assert es._has_metric(SimpleNamespace(callback_metrics={"val/loss": torch.tensor(0.1)}))
