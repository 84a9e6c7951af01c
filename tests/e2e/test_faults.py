"""Real faults: full disks, concurrent runs, damaged bytes, killed saves and ranks. Nothing mixed, half-written
or silently corrupt is left, and each fault is one line naming the file and what to do."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.files import REPO, cli_exit, data_args, make_pool, one_error
from helpers.runs import finish, fit_cmd, pause, start, wait_ready

from leak_lightning.builder import writer as writer_module
from leak_lightning.builder.build import build_dataset
from leak_lightning.checkpoint.io import checkpoint_problem
from leak_lightning.cli import main
from leak_lightning.data import schema
from leak_lightning.data.datamodule import LeakDataModule
from leak_lightning.runtime.rundir import FolderLock

NAMES = tuple(schema.SPLIT_FILES.values())


@pytest.fixture
def tmpfs(tmp_path):
    """A 6 MiB tmpfs (a real full disk); skipped where mounting needs privileges we lack."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def build_snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}


# ---- 1. builds are transactional -----------------------------------------------------------------

def test_a_build_publishes_all_splits_with_a_manifest(tmp_path):
    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    manifest = json.loads((tmp_path / "out" / schema.MANIFEST).read_text())
    assert sorted(manifest["files"]) == sorted(NAMES)
    for name, entry in manifest["files"].items():
        with h5py.File(tmp_path / "out" / name) as f:
            assert f.attrs[schema.ATTR_BUILD_ID] == manifest["build_id"]
            assert f[schema.SEGMENTS].fletcher32 and f[schema.LABELS].fletcher32
            counts = np.bincount(f[schema.LABELS][()], minlength=2)
        assert entry["bytes"] == (tmp_path / "out" / name).stat().st_size
        assert list(entry["label_counts"].values()) == counts.tolist()


def test_a_write_error_mid_build_keeps_the_old_dataset(tmp_path, capsys, monkeypatch):
    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    before = build_snapshot(tmp_path / "out")
    appended = []

    def append_then_fail(self, *args):
        appended.append(1)
        if len(appended) == 2:  # the second batch: the first split is half written
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, *args)

    original = writer_module.SplitWriter.append
    monkeypatch.setattr(writer_module.SplitWriter, "append", append_then_fail)
    line = one_error(*cli_exit(capsys, "build", "--input", tmp_path / "in", "--output", tmp_path / "out",
                               "--overwrite", "true", "--batch_size", "4", "--num_workers", "1"))
    assert f"{tmp_path / 'out'}: No space left on device while writing the dataset; nothing was replaced" in line
    assert build_snapshot(tmp_path / "out") == before  # old splits, old manifest, old reports
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]


def test_a_full_disk_is_one_line_and_the_old_dataset_survives(tmp_path, tmpfs):
    make_pool(tmp_path / "in", sensors=100, per_sensor=2)  # ~2 MB of splits
    out = tmpfs / "out"
    build_dataset(tmp_path / "in", out, progress=False)
    before = build_snapshot(out)
    (tmpfs / "filler").write_bytes(b"\0" * (shutil.disk_usage(tmpfs).free - 600_000))
    # a real process on a really full disk (the free-space check is skipped to reach the write)
    code = ("import leak_lightning.builder.build as b; b._check_free_space = lambda *a: None; "
            "from leak_lightning.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code, "build", "--input", str(tmp_path / "in"), "--output", str(out),
                        "--overwrite", "true", "--batch_size", "8", "--num_workers", "1"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 2, r.stderr[-3000:]  # it was a segfault (139) after 40-128 traceback lines
    line = one_error(r.returncode, r.stderr)
    assert "No space left on device while writing the dataset" in line
    assert build_snapshot(out) == before and not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert not (out / ".lock").exists()  # the lock goes with the build, however it ends
    (tmpfs / "filler").unlink()
    out2 = tmpfs / "out2"
    (tmpfs / "filler").write_bytes(b"\0" * (shutil.disk_usage(tmpfs).free - 300_000))
    r = subprocess.run([sys.executable, "-m", "leak_lightning", "build", "--input", str(tmp_path / "in"),
                        "--output", str(out2)], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "NO_COLOR": "1"})
    line = one_error(r.returncode, r.stderr)
    assert f"{out2}: not enough free space for the dataset: about" in line and "needed for 400 files" in line


def test_a_split_from_another_build_is_refused(tmp_path):
    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    build_dataset(tmp_path / "in", tmp_path / "a", progress=False)
    build_dataset(tmp_path / "in", tmp_path / "b", progress=False, seed=3)
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "a", mixed)
    shutil.copy(tmp_path / "b" / NAMES[1], mixed / NAMES[1])  # what an interrupted --overwrite leaves
    paths = {k: str(mixed / n) for k, n in zip(("train_h5", "val_h5", "test_h5"), NAMES)}
    with pytest.raises(ValueError, match=f"{mixed / NAMES[1]}: comes from another build than {mixed / 'dataset.json'}"):
        LeakDataModule(**paths)
    (mixed / schema.MANIFEST).unlink()  # copied without its manifest: the splits still disagree
    with pytest.raises(ValueError, match="comes from another build than .*TRAINING_DATASET.H5"):
        LeakDataModule(**paths)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "a", cut)
    with open(cut / NAMES[2], "ab") as f:  # a copy that went wrong (a cut one HDF5 itself refuses)
        f.write(b"\0" * 100)
    with pytest.raises(ValueError, match="bytes but .*dataset.json says .*a damaged or incomplete copy"):
        LeakDataModule(test_h5=str(cut / NAMES[2]))


# ---- 2. one run, one build at a time in a folder ------------------------------------------------

@pytest.mark.slow
def test_a_second_fit_into_a_running_directory_is_refused(small_h5, tmp_path):
    ready = tmp_path / "ready"
    first = start(fit_cmd(small_h5, tmp_path / "run", *pause(ready, where="train", step=2)))
    try:
        wait_ready(first, ready)
        for extra in ((), ("--ckpt_path", "last"), ("--overwrite", "true")):
            second = start(fit_cmd(small_h5, tmp_path / "run", *extra))
            rc, out = finish(second)
            errors = [line for line in out.splitlines() if "[ERROR]" in line]
            assert rc == 2 and len(errors) == 1, out[-3000:]
            assert f"{tmp_path / 'run'} is in use by PID {first.pid}" in errors[0]
    finally:
        first.send_signal(signal.SIGINT)  # the first run goes on undisturbed, and saves on Ctrl-C
        rc, out = finish(first)
    assert rc == 130 and checkpoint_problem(tmp_path / "run" / "checkpoints" / "last.ckpt") is None
    rc, out = finish(start(fit_cmd(small_h5, tmp_path / "run", "--ckpt_path", "last")), timeout=300)
    assert rc == 0, out[-3000:]  # released when its holder exited


def test_a_second_build_into_one_folder_is_refused(tmp_path, capsys):
    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    with FolderLock(tmp_path / "out", "--output"):
        line = one_error(*cli_exit(capsys, "build", "--input", tmp_path / "in", "--output", tmp_path / "out"))
    assert f"{tmp_path / 'out'} is in use by PID {os.getpid()}" in line
    assert not (tmp_path / "out" / NAMES[0]).exists()


# ---- 3. damaged data is refused, named by file and row -----------------------------------------

def flip_in_chunk(path: Path, dataset: str, chunk: int, nbytes: int = 1, zero: bool = False, at: int = 40) -> None:
    """Flip (or zero) bytes inside one stored chunk, `at` bytes into it: a disk or copy error."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + at)
        data = fh.read(nbytes)
        fh.seek(info.byte_offset + at)
        fh.write(bytes(nbytes) if zero else bytes(b ^ 0x5A for b in data))


@pytest.fixture
def copy_h5(small_h5, tmp_path) -> dict[str, Path]:
    out = tmp_path / "h5"
    shutil.copytree(small_h5["train"].parent, out)
    return {"train": out / NAMES[0], "val": out / NAMES[1], "test": out / NAMES[2]}


@pytest.mark.parametrize("nbytes", [1, 16])
def test_flipped_feature_bytes_are_refused_with_the_row(copy_h5, nbytes):
    flip_in_chunk(copy_h5["train"], schema.SEGMENTS, 17, nbytes)
    for cache in ("device", "stream"):
        dm = LeakDataModule(train_h5=str(copy_h5["train"]), val_h5=str(copy_h5["val"]), cache=cache)
        expected = (rf"{copy_h5['train']}: /segments_mel row 17 \(a checksum mismatch\) cannot be read \(.*\); "
                    r"the file is damaged: rebuild it or copy it again")
        with pytest.raises(ValueError, match=expected):
            dm.setup("fit")


def test_a_zeroed_block_over_the_labels_is_refused(copy_h5):
    flip_in_chunk(copy_h5["val"], schema.LABELS, 0, nbytes=4096, zero=True, at=0)
    with pytest.raises(ValueError, match=rf"{copy_h5['val']}: /labels rows 0\.\.19 \(a checksum mismatch\)"):
        LeakDataModule(train_h5=str(copy_h5["train"]), val_h5=str(copy_h5["val"])).setup("fit")


def test_origin_files_without_checksums_load_with_one_warning_but_impossible_values_are_refused(
        small_h5, tmp_path, ll_records):
    origin = tmp_path / "ORIGIN.H5"
    with h5py.File(small_h5["test"]) as f, h5py.File(origin, "w") as g:
        for key in (schema.SEGMENTS, schema.LABELS):
            g[key] = f[key][()]  # contiguous, no filters: the origin builder's layout
        for key in (schema.ATTR_CONFIG, schema.ATTR_LABELS, schema.ATTR_LABEL2ID):
            g.attrs[key] = f.attrs[key]
    dm = LeakDataModule(test_h5=str(origin))
    dm.setup("test")
    warnings = [r.getMessage() for r in ll_records if r.levelname == "WARNING"]
    assert warnings == [f"{origin} has no checksums (built by the origin builder or before leak_lightning 0.2): "
                        "damage on disk would go unnoticed; rebuild it to add them"]
    with h5py.File(origin, "r+") as g:
        row = g[schema.SEGMENTS][3]
        row[5, 1, 10, 0] = 13272.0  # what a flipped exponent bit makes of a dB value
        g[schema.SEGMENTS][3] = row
    with pytest.raises(ValueError, match=r"row 3 holds values from .* to 13272.0 dB, outside the -200..187 dB"):
        LeakDataModule(test_h5=str(origin)).setup("test")


def test_labels_that_disagree_with_the_recorded_counts_are_refused(copy_h5):
    with h5py.File(copy_h5["test"], "r+") as f:
        labels = f[schema.LABELS][()]
        labels[:] = 0  # a consistent, checksummed, but wrong label column (every file BACKGROUND)
        f[schema.LABELS][:] = labels
    with pytest.raises(ValueError, match="/labels counts .* differ from the .* the builder recorded"):
        LeakDataModule(test_h5=str(copy_h5["test"])).setup("test")


# ---- 4. errors that used to be tracebacks ---------------------------------------------------------

def test_unreadable_metadata_is_one_line(copy_h5, monkeypatch):
    def broken(self, name):
        raise RuntimeError("Unable to synchronously check link existence (bad object header)")

    monkeypatch.setattr(h5py.Group, "__contains__", broken)
    with pytest.raises(ValueError, match=rf"{copy_h5['val']}: its metadata cannot be read \(Unable to synchronously"):
        LeakDataModule(val_h5=str(copy_h5["val"]))


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_is_one_line(small_h5, tmp_path):
    plugin = json.dumps({"class_path": "helpers.FullDiskCheckpointIO", "init_args": {"nth": 3}})
    rc, out = finish(start(fit_cmd(small_h5, tmp_path, "--trainer.plugins", plugin, "--console.log_file",
                                   "train.log")), timeout=300)
    line = one_error(rc, out)
    assert "cannot save checkpoint" in line and "No space left on device" in line and "--ckpt_path last" in line
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in ckpts.iterdir() if ".tmp-" in p.name] == []
    assert all(checkpoint_problem(p) is None for p in ckpts.glob("*.ckpt"))  # the earlier saves survive
    assert "Traceback" in (tmp_path / "train.log").read_text()  # the details went to the run's log


def test_stale_temporaries_of_dead_savers_are_removed(small_h5, tmp_path, capsys):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ckpts / f".last.ckpt.tmp-{dead.pid}"
    stale.write_bytes(b"x" * 1000)
    alive = ckpts / f".best.ckpt.tmp-{os.getppid()}"  # a live process's save in progress: left alone
    alive.write_bytes(b"y")
    main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(tmp_path), "--trainer.max_steps", "1", "--console.log_file", "null"])
    assert not stale.exists() and alive.exists()
    assert f"removed 1 temporary file(s) left by killed checkpoint saves: {stale.name}" in capsys.readouterr().err


# ---- 6. DDP ranks and resumed options -------------------------------------------------------------

@pytest.mark.slow
def test_a_killed_ddp_rank_is_one_line_with_the_resume_command(small_h5, tmp_path):
    ready = tmp_path / "ready"
    ddp = ["--trainer.devices", "2", "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp"]
    # 6 steps per epoch on 2 ranks: at step 8, epoch 0's last.ckpt is on disk
    proc = start(fit_cmd(small_h5, tmp_path, *ddp, *pause(ready, where="train", step=8, rank=1)))
    wait_ready(proc, ready, timeout=180)
    os.kill(int(ready.read_text()), signal.SIGKILL)  # rank 1 dies (OOM killer, lost node)
    rc, out = finish(proc, timeout=120)
    line = one_error(rc, out)
    assert "a DDP rank stopped" in line and "--ckpt_path last" in line
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} (saved " in line
    assert checkpoint_problem(tmp_path / "checkpoints" / "last.ckpt") is None


@pytest.mark.slow
def test_a_model_option_the_checkpoint_overrides_is_named(small_h5, tmp_path, capsys):
    args = ["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.max_steps", "2", "--console.log_file", "null"]
    main(args)
    capsys.readouterr()
    main([*args, "--trainer.max_steps", "3", "--ckpt_path", "last", "--model.net.channels", "[8, 8, 8, 8]"])
    err = capsys.readouterr().err
    assert "--model.net.channels [8, 8, 8, 8] is not used: the checkpoint's hyper-parameters rule " \
           "(net.channels=[24, 48, 96, 128])" in err
    ckpt = torch.load(tmp_path / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3 and ckpt["hyper_parameters"]["net"]["init_args"]["channels"] == [24, 48, 96, 128]


# ---- 4. nothing is replaced under a reader ---------------------------------------------------------

def test_a_build_never_replaces_splits_being_read(tmp_path):
    from leak_lightning.runtime.rundir import DataLock

    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    out = tmp_path / "out"
    build_dataset(tmp_path / "in", out, progress=False)
    before = build_snapshot(out)
    reader = DataLock(out).read("python -m leak_lightning fit --config x.yaml")
    with pytest.raises(ValueError, match=rf"{out}: its splits are being read by PID {os.getpid()} on .* \(python -m "
                                         r"leak_lightning fit --config x.yaml\): a build would replace them"):
        build_dataset(tmp_path / "in", out, overwrite=True, progress=False)
    assert build_snapshot(out) == before
    second = DataLock(out).read("another reader")  # readers share
    second.release()
    reader.release()
    assert not [p for p in out.iterdir() if p.name in (DataLock.NAME, ".lock") or ".reader" in p.name]
    builder = DataLock(out).build()  # and while a build holds the folder, no reader starts
    with pytest.raises(ValueError, match=rf"{out} is being rebuilt .*: wait for the build to finish"):
        DataLock(out).read("python -m leak_lightning test")
    builder.release()
    build_dataset(tmp_path / "in", out, overwrite=True, progress=False)


def test_a_streamed_split_replaced_during_a_run_stops_it(small_h5, tmp_path):
    from leak_lightning.data.h5 import load_targets, read_info
    from leak_lightning.data.stream import StreamSplit

    folder = tmp_path / "data"
    shutil.copytree(small_h5["train"].parent, folder)
    info = read_info(folder / NAMES[0])
    split = StreamSplit(info, load_targets(info), batch_size=160, train=True, seed=0, rank=0, world=1)
    split._read(np.arange(2))  # this run's file: reads
    fresh = StreamSplit(info, load_targets(info), batch_size=160, train=True, seed=0, rank=0, world=1)
    other = tmp_path / "other.H5"
    shutil.copy(small_h5["val"], other)
    os.replace(other, folder / NAMES[0])  # a rebuild renames a new file over it
    with pytest.raises(ValueError, match=r"was replaced since this run loaded it \(build .* → .*\): its rows no "
                                         r"longer match the labels"):
        fresh._read(np.arange(2))  # a worker of the next epoch opens the path again
    split._read(np.arange(2))  # a handle opened before still reads the file this run loaded


def test_a_readers_note_copied_with_its_folder_names_no_one(tmp_path):
    from leak_lightning.runtime.rundir import DataLock

    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    reader = DataLock(tmp_path / "out").read("python -m leak_lightning fit")
    shutil.copytree(tmp_path / "out", tmp_path / "copy")  # the note (a live PID) travels with the copy
    reader.release()
    assert list((tmp_path / "copy").glob(".reader.tmp-*")) and DataLock(tmp_path / "copy").readers() == []
    build_dataset(tmp_path / "in", tmp_path / "copy", overwrite=True, progress=False)  # no one reads the copy
