"""Several processes: a lost DDP rank reported once; a build sharded over workers equals a one-process build;
predict over ranks writes the rows of one process."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers.files import REPO, make_origin, make_pool, one_error, tone, write_wav

from leak_lightning.builder.build import build_dataset
from leak_lightning.builder.shards import Shard, finished_record
from leak_lightning.cli import main
from leak_lightning.data import schema
from leak_lightning.data.h5 import load_segments, read_info

# Rank 0's observer thread, as Lightning's launcher starts it, over two real children: one killed, one alive.
OBSERVER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from leak_lightning.runtime import distributed
    dead = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    distributed.watch_ranks(sys.argv[1], "fit")
    if sys.argv[2] == "main-first":
        distributed.claim_report()
    _ChildProcessObserver(main_pid=os.getpid(), child_processes=[dead, alive], sleep_period=0)._run()
    alive.wait()  # killed by the observer, as Lightning does
    print("observer returned; the other child", alive.returncode, flush=True)
""")


def run_observer(root, order: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", OBSERVER, str(root), order], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_dead_child_rank_seen_by_the_observer_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    code, out = run_observer(tmp_path, "observer-first")
    line = one_error(code, out)  # Lightning alone: SIGKILL of rank 0 itself (-9), no words
    assert "a DDP rank stopped, so the run cannot go on (rank 1 killed by SIGKILL)" in line
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} (saved " in line and "--ckpt_path last" in line
    assert "observer returned" not in out


@pytest.mark.slow
def test_the_observer_stands_aside_when_the_main_thread_reports(tmp_path):
    code, out = run_observer(tmp_path, "main-first")
    assert code == 0 and "[ERROR]" not in out, out
    assert f"observer returned; the other child {-9}" in out  # the live child was still stopped


# ---- a build over several workers -----------------------------------------------------------------------------

def corpus(root: Path) -> Path:
    """A pool with copies whose originals land in other shards (in another split, and under another label) and
    one unreadable name."""
    make_pool(root, sensors=10, per_sensor=3)
    shutil.copy(root / "LEAK/SLE000~R00~20251119T101500~g12.wav", root / "LEAK/zcopy.wav")
    shutil.copy(root / "NORMAL/SNO002~R00~20251119T101500~g12.wav", root / "NORMAL/SNO009~R09~20251119T101509~g12.wav")
    (root / "LEAK" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    # the same audio under another label, in a later shard: both copies are skipped, the first one after the fact
    shutil.copy(root / "LEAK/SLE001~R01~20251119T101501~g12.wav", root / "NORMAL/SNO008~R07~20251119T101507~g12.wav")
    return root


def same_build(a: Path, b: Path, skipped: int = 5) -> None:
    """Every split of two builds: every dataset equal row for row, every attribute but the creation time."""
    assert json.loads((a / schema.MANIFEST).read_text())["build_id"] == \
        json.loads((b / schema.MANIFEST).read_text())["build_id"]
    for name in schema.SPLIT_FILES.values():
        with h5py.File(a / name) as fa, h5py.File(b / name) as fb:
            assert sorted(fa) == sorted(fb)
            for key in fa:
                assert fa[key].shape == fb[key].shape and np.array_equal(fa[key][()], fb[key][()]), (name, key)
            attrs = {k for k in fa.attrs if k != schema.ATTR_CREATED}
            assert attrs == {k for k in fb.attrs if k != schema.ATTR_CREATED}
            assert all(str(fa.attrs[k]) == str(fb.attrs[k]) for k in attrs), name
    reports = [[(e["split"], e["path"].rsplit("/", 2)[-1]) for e in json.loads((x / schema.SKIP_REPORT).read_text())]
               for x in (a, b)]
    assert sorted(reports[0]) == sorted(reports[1]) and len(set(reports[1])) == len(reports[1]) == skipped


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("one")
    corpus(root / "in")
    build_dataset(root / "in", root / "out", progress=False, duplicates="first")
    return root / "in", root / "out"


@pytest.mark.parametrize("copy", [False, True])
def test_three_shards_join_to_the_one_process_build_row_for_row(one_process, tmp_path, copy, caplog):
    source, reference = one_process
    out = tmp_path / "out"
    for i in (2, 0, 1):  # finishing in any order: the last one joins
        summary = build_dataset(source, out, progress=False, duplicates="first", num_shards=3, shard_index=i, copy=copy)
        assert (out / schema.MANIFEST).is_file() == (i == 1)
    assert summary.files == {s: len(h5py.File(reference / n)[schema.LABELS]) for s, n in schema.SPLIT_FILES.items()}
    same_build(reference, out)
    with h5py.File(out / schema.SPLIT_FILES["TRAINING"]) as f:
        assert f[schema.SEGMENTS].is_virtual != copy
    assert (out / "shards").exists() != copy  # a copying join leaves no shards behind
    info = read_info(out / schema.SPLIT_FILES["VALIDATION"])
    assert info.checksummed  # the shards' fletcher32 guards a virtual split's reads
    np.testing.assert_array_equal(load_segments(info), load_segments(read_info(reference / info.path.name)))
    caplog.clear()
    caplog.set_level(logging.INFO)
    build_dataset(source, out, progress=False, duplicates="first", num_shards=3, shard_index=0, copy=copy,
                  overwrite=True)  # run again: a finished shard is not rebuilt
    if not copy:
        assert "is already built" in caplog.text and "were joined by another worker" in caplog.text
        with open(next((out / "shards").glob("*/TESTING.00002-of-00003.H5")), "ab") as fh:
            fh.write(b"\0")  # a shard whose file changed since its record: built again when its command runs again
        assert finished_record(out, json.loads((out / schema.MANIFEST).read_text())["build_id"], Shard(2, 3)) is None
        caplog.clear()
        build_dataset(source, out, progress=False, duplicates="first", num_shards=3, shard_index=2, overwrite=True)
        assert "Building shard 2 of 3" in caplog.text
        same_build(reference, out)


def test_a_joined_split_whose_shard_is_missing_or_damaged_is_refused(one_process, tmp_path):
    source, _ = one_process
    out = tmp_path / "out"
    for i in range(3):
        build_dataset(source, out, progress=False, duplicates="first", num_shards=3, shard_index=i)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # the folder with its shards travels: still reads
    split = moved / schema.SPLIT_FILES["TESTING"]
    assert read_info(split).num_files > 0
    shard = next((moved / "shards").glob("*/TESTING.00001-of-00003.H5"))
    shard.rename(shard.with_suffix(".gone"))  # HDF5 alone would read its rows as fill values
    with pytest.raises(ValueError, match=rf"{split}: its segments are in {shard}, which is missing .* copy the "
                                         r"dataset folder with its shards/ folder, or rebuild with --copy"):
        read_info(split)
    shard.with_suffix(".gone").rename(shard)
    intact = shard.read_bytes()
    with open(shard, "ab") as fh:  # a copy that went wrong (HDF5 itself still opens it)
        fh.write(b"\0" * 100)
    with pytest.raises(ValueError, match=rf"{shard}: is {len(intact) + 100} bytes but {moved / 'dataset.json'} says "
                                         rf"{len(intact)}: a damaged or incomplete copy"):
        read_info(split)
    shard.write_bytes(intact)
    with h5py.File(shard) as f:
        first = f[schema.SEGMENTS].id.get_chunk_info(0).byte_offset
        name = f[schema.FILE_PATHS][0].decode()
    with h5py.File(split) as f:
        row = [p.decode() for p in f[schema.FILE_PATHS][()]].index(name)
    with open(shard, "r+b") as fh:  # one flipped bit in the shard's first row
        fh.seek(first + 100)
        byte = fh.read(1)[0]
        fh.seek(first + 100)
        fh.write(bytes([byte ^ 1]))
    with pytest.raises(ValueError, match=rf"{split}: /segments_mel row {row} \(stored in {shard} row 0: a checksum "
                                         r"mismatch\) cannot be read"):
        load_segments(read_info(split))


def test_a_shard_file_of_another_build_is_refused_by_the_join(one_process, tmp_path):
    source, _ = one_process
    out = tmp_path / "out"
    for i in (0, 1):
        build_dataset(source, out, progress=False, duplicates="first", num_shards=3, shard_index=i)
    record = next((out / "shards").glob("*/shard-00000-of-00003.json"))
    shard = record.parent / "VALIDATION.00000-of-00003.H5"
    with h5py.File(shard, "r+") as f:  # another build's file under this build's name
        f.attrs[schema.ATTR_BUILD_ID] = "f" * 32
    entry = json.loads(record.read_text())
    entry["files"]["VALIDATION"]["bytes"] = shard.stat().st_size  # and a record that agrees on its size
    record.write_text(json.dumps(entry))
    with pytest.raises(ValueError, match=rf"{shard}: a shard of build f{{32}}, not of build {record.parent.name[:12]}"):
        build_dataset(source, out, progress=False, duplicates="first", num_shards=3, shard_index=2)
    assert not (out / schema.MANIFEST).exists()


def test_a_leak_between_splits_across_shards_stops_the_join_as_it_stops_one_process(tmp_path):
    made = make_origin(tmp_path / "in", per_label=4)
    first = sorted(p for p in made if "TRAINING" in p.parts)[0]
    shutil.copy(first, tmp_path / "in" / "TESTING" / first.parent.name / "zz.wav")  # last of TESTING: shard 1 of 2
    with pytest.raises(ValueError) as one:
        build_dataset(tmp_path / "in", tmp_path / "one", progress=False)
    assert "1 recording(s) hold the same audio as a recording of an earlier split" in str(one.value)
    out = tmp_path / "out"
    build_dataset(tmp_path / "in", out, progress=False, num_shards=2, shard_index=0)
    with pytest.raises(ValueError) as joined:  # each shard alone sees no leak; the join does
        build_dataset(tmp_path / "in", out, progress=False, num_shards=2, shard_index=1)
    assert str(joined.value) == str(one.value)
    assert not (out / schema.MANIFEST).exists() and not list(out.glob("*.H5"))


def test_the_build_id_is_the_corpus_and_its_options(tmp_path):
    from leak_lightning.audio.features import FeatureConfig
    from leak_lightning.builder.discover import discover, label_mapping
    from leak_lightning.builder.shards import corpus_id

    make_pool(tmp_path / "in", sensors=3, per_sensor=1)

    def build_id(**change) -> str:
        splits, _ = discover(tmp_path / "in", (0.7, 0.2, 0.1), change.get("seed", 0))
        names = label_mapping({it.label for v in splits.values() for it in v}, change.get("labels"))
        return corpus_id(splits, names, change.get("features", FeatureConfig()), change.get("duplicates", "error"))

    first = build_id()
    assert build_id() == first  # what workers that cannot talk rely on
    changed = [build_id(seed=5), build_id(labels=["NORMAL", "LEAK"]), build_id(features=FeatureConfig(n_mels=32)),
               build_id(duplicates="first")]
    wav = next((tmp_path / "in" / "LEAK").iterdir())
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))  # a recording rewritten
    changed.append(build_id())
    wav.rename(wav.parent.parent / "NORMAL" / wav.name)  # relabelled
    changed.append(build_id())
    assert len({first, *changed}) == len(changed) + 1


def test_a_conflict_inside_one_shard_is_reported_once():
    from leak_lightning.builder.shards import _replay, skip_report

    a = {"split": "TRAINING", "path": "LEAK/a.wav", "label": "LEAK", "reason": "conflicting labels: ..."}
    b = {"split": "TRAINING", "path": "NORMAL/b.wav", "label": "NORMAL", "reason": "conflicting labels: ..."}
    records = [{"shard": 0, "skipped": [a, b], "events": [  # a stored, then dropped when b turned up
        ["TRAINING", "00000000000000ff", "LEAK/a.wav", "LEAK", True],
        ["TRAINING", "00000000000000ff", "NORMAL/b.wav", "NORMAL", False],
        ["TRAINING", "0000000000000001", "LEAK/c.wav", "LEAK", True]]}]
    kept, found, _ = _replay(records, "error")
    assert [r.path for r in kept["TRAINING"]] == ["LEAK/c.wav"]
    assert [(e["split"], e["path"]) for e in skip_report(found, records)] == [("TRAINING", "LEAK/a.wav"),
                                                                              ("TRAINING", "NORMAL/b.wav")]


@pytest.mark.parametrize("env, expected", [
    ({"RANK": "2", "WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "r1"}, (2, 4)),  # torchrun
    ({"RANK": "2", "WORLD_SIZE": "4"}, None),  # not started by torchrun: the variables alone are not a launch
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2",
      "SLURM_ARRAY_TASK_COUNT": "3"}, (2, 3)),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2"}, (1, 2)),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, None),  # a plain line of a batch script: no srun step
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),  # one task: one process
    ({"RANK": "0", "WORLD_SIZE": "1"}, None),
    ({}, None),
])
def test_a_workers_shard_comes_from_its_launcher(env, expected):
    shard = Shard.resolve(None, None, env)
    assert (None if shard is None else (shard.index, shard.count)) == expected


def test_shard_options_are_checked():
    with pytest.raises(ValueError, match="--num_shards and --shard_index go together"):
        Shard.resolve(3, None, {})
    with pytest.raises(ValueError, match=r"shard index 3 of 3 \(--num_shards/--shard_index\): the index must be "
                                         r"0 \.\. 2"):
        Shard.resolve(3, 3, {})
    assert [len(Shard(i, 3).share(list(range(10)))) for i in range(3)] == [3, 3, 4]
    assert sum((Shard(i, 4).share(list(range(10))) for i in range(4)), []) == list(range(10))


# ---- predict over several ranks -----------------------------------------------------------------------------

def test_each_rank_predicts_a_disjoint_share_that_covers_every_recording(small_h5, tmp_path):
    from types import SimpleNamespace

    from leak_lightning.data.datamodule import LeakDataModule

    for k in range(7):
        write_wav(tmp_path / f"r{k}.wav", tone(500, 10, 4096, seed=k))
    shares = []
    for rank in range(3):
        dm = LeakDataModule(test_h5=str(small_h5["test"]), predict_path=str(tmp_path))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        dm._setup_predict()
        assert [p.name for p in dm.predict_input.paths] == [f"r{i}.wav" for i in dm.predict_index]
        shares.append(dm.predict_index)
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]


@pytest.mark.slow
def test_predict_on_two_ranks_with_nothing_to_read_is_one_line_before_any_rank_starts(trained_run, tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "-m", "leak_lightning", "predict", "--ckpt_path",
                        str(trained_run / "checkpoints/best.ckpt"), "--data.predict_path", str(tmp_path / "empty"),
                        "--output", str(tmp_path / "p.csv"), "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                        "--trainer.strategy", "ddp", "--console.log_file", "null"],
                       cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
    assert f"--data.predict_path {tmp_path / 'empty'}: no audio files" in one_error(r.returncode, r.stderr)
    assert "Initializing distributed" not in r.stderr  # no rank was started to say it again


@pytest.mark.slow
def test_predict_on_two_ranks_writes_the_rows_of_one_process(small_h5, trained_run, tmp_path):
    folder = tmp_path / "wavs"
    for night in range(3):
        write_wav(folder / f"S0012~R{night:04d}~2025111{night}T021500~g12.wav", tone(500, 10, 4096, seed=night))
    for k in range(4):
        write_wav(folder / f"S0007~R{k:04d}~2025111{k}T021500~g12.wav", tone(900, 10 + 5 * k, 4096, seed=k))
    write_wav(folder / "loose.wav", tone(500, 10, 4096))
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    outputs = {}
    for ranks in (1, 2):
        out = tmp_path / f"ranks{ranks}.csv"
        r = subprocess.run([sys.executable, "-m", "leak_lightning", "predict", "--ckpt_path",
                            str(trained_run / "checkpoints/best.ckpt"), "--data.predict_path", str(folder), "--output",
                            str(out), "--trainer.devices", str(ranks), "--trainer.accelerator", "cpu",
                            *(["--trainer.strategy", "ddp"] if ranks > 1 else []), "--console.log_file", "null"],
                           cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        # named once, by the rank that read it (rank 1 of 2: the 8th of 9 in order), never as an error
        assert r.stderr.count("broken.wav: not readable as audio") == 1 and "[ERROR]" not in r.stderr
        outputs[ranks] = out.read_bytes(), out.with_name(f"{out.stem}_sensors.csv").read_bytes()
    assert outputs[1] == outputs[2]
    rows = list(csv.DictReader(io.StringIO(outputs[2][0].decode())))
    assert len(rows) == 9 and sum(row["status"].startswith("skipped") for row in rows) == 1


# ---- the multi-node recipe, run: two torchrun "nodes" on one machine ------------------------------------------

def on_two_nodes(rdzv_id: str, *args: str) -> list[str]:
    """docs/design.md's torchrun command on two nodes (one process each) with a local c10d rendezvous: both outputs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend",
           "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", rdzv_id, "-m", "leak_lightning", *args]
    nodes = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "NO_COLOR": "1"}) for _ in range(2)]
    outs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-2000:] for o in outs)
    return outs


@pytest.mark.slow
def test_build_fit_and_predict_across_two_torchrun_nodes(tmp_path):
    from synthetic import make_dataset

    make_dataset(tmp_path / "wav", layout="origin", files_per_label=8, sensors_per_label=3, seed=1)
    build_dataset(tmp_path / "wav", tmp_path / "one", progress=False)
    outs = on_two_nodes("build", "build", "--input", str(tmp_path / "wav"), "--output", str(tmp_path / "h5"))
    assert sum("joined 2 shards" in o for o in outs) == 1  # one of the two nodes joined
    same_build(tmp_path / "one", tmp_path / "h5", skipped=0)
    splits = [f"--data.{k}_h5={tmp_path / 'h5' / n}" for k, n in zip(("train", "val", "test"),
                                                                     schema.SPLIT_FILES.values())]
    nodes = ["--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
             "--trainer.strategy", "ddp"]
    outs = on_two_nodes("fit", "fit", "--config", str(REPO / "configs/demo_frame.yaml"), *splits,
                        "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
                        "--console.log_file", "null", *nodes)
    assert "device: CPU, 2 process(es)" in outs[0] and "training finished after 1 epochs" in outs[0]
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    on_two_nodes("predict", "predict", "--ckpt_path", str(best), "--data.predict_path", str(tmp_path / "wav"),
                 "--output", str(tmp_path / "two.csv"), "--console.log_file", "null", *nodes)
    main(["predict", "--ckpt_path", str(best), "--data.predict_path", str(tmp_path / "wav"), "--output",
          str(tmp_path / "one.csv"), "--console.log_file", "null"])
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert len((tmp_path / "one.csv").read_text().splitlines()) == 41
