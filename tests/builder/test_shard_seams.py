"""Sharded builds never end silent: a shard comes only from a launcher that started several copies of the command;
workers that derive different builds say what differs and stop; a late worker finds its build published; a
one-process build leaves no shards behind."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest
from helpers.files import REPO, make_origin, one_error, tone, write_wav

from leak_lightning.builder import build as build_module
from leak_lightning.builder.build import build_dataset
from leak_lightning.builder.shards import SHARDS, Shard, claim, difference, launcher_shard
from leak_lightning.data import schema
from leak_lightning.data.h5 import load_segments, read_info

BATCH = {"SLURM_JOB_ID": "41", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_NODEID": "0",
         "SLURM_LOCALID": "0"}  # what a batch script's own lines see in an allocation of 4 tasks


def srun(procid: int, tasks: int) -> dict[str, str]:
    """What srun sets in each task of a step (on top of the batch script's environment)."""
    return {**BATCH, "SLURM_NTASKS": str(tasks), "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": str(tasks),
            "SLURM_PROCID": str(procid)}


TORCHRUN = {"TORCHELASTIC_RUN_ID": "build1", "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1"}


@pytest.mark.parametrize("env, expected, why", [
    (TORCHRUN, (5, 8), "torchrun"),
    ({k: v for k, v in TORCHRUN.items() if k != "TORCHELASTIC_RUN_ID"}, None, "torchrun did not start this"),
    (BATCH, None, "SLURM_NTASKS=4 is the allocation's, but no srun step started this process"),
    (srun(3, 4), (3, 4), "srun step"),
    ({**{k: v for k, v in srun(1, 2).items() if k != "SLURM_STEP_ID"}, "SLURM_STEPID": "0"}, (1, 2),
     "srun step"),  # the older name
    (srun(0, 1), None, "srun step: SLURM_PROCID 0 of SLURM_STEP_NUM_TASKS 1"),
    ({**srun(1, 2), **TORCHRUN}, (5, 8), "torchrun"),  # torchrun under srun: its ranks span every node
    ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_NTASKS": "1",
      "SLURM_PROCID": "0"}, (2, 3), "SLURM array task 7"),
    ({}, None, "no launcher"),
])
def test_a_shard_comes_only_from_a_launcher_that_started_several_copies(env, expected, why, ll_records, caplog):
    caplog.set_level(logging.INFO, logger="leak_lightning")
    shard = Shard.resolve(None, None, env)
    assert (None if shard is None else (shard.index, shard.count)) == expected
    said = [r.getMessage() for r in ll_records]
    assert len(said) == 1 and why in said[0], said
    assert said[0].startswith("building the whole corpus in this process: " if expected is None else
                              f"building shard {expected[0]} of {expected[1]} (from ")


def test_an_array_task_s_share_is_split_again_over_its_step_s_tasks():
    seen = []
    for task in (10, 12, 14):  # --array=10-14:2 and `srun -n 2` in each
        for procid in (0, 1):
            env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_STEP": "2",
                   "SLURM_ARRAY_TASK_COUNT": "3", **srun(procid, 2)}
            _, count, index = launcher_shard(env)
            assert count == 6
            seen.append(index)
    assert seen == list(range(6))  # in array-task order, each task's two shards side by side


def derivation(options: dict, rows: list[list]) -> dict:
    return {"options": {"classes": ["LEAK", "NORMAL"], "features": {"n_mels": 64, "sample_rate": 4096},
                        "duplicates": "error", **options}, "recordings": rows}


def test_the_difference_names_the_options_and_the_recordings():
    row = ["TRAINING", "LEAK/a.wav", "LEAK", 100, 1]
    base = [row, ["TRAINING", "LEAK/b.wav", "LEAK", 100, 1], ["TESTING", "NORMAL/c.wav", "NORMAL", 100, 1],
            ["TESTING", "NORMAL/d.wav", "NORMAL", 100, 1]]
    assert (difference(derivation({}, base), derivation({"features": {"n_mels": 32, "sample_rate": 4096},
                                                         "duplicates": "first"}, base))
            == "options differ (duplicates 'error' here, 'first' there; features.n_mels 64 here, 32 there)")
    mine = [["TRAINING", "LEAK/a.wav", "LEAK", 100, 2],  # rewritten
            ["VALIDATION", "LEAK/b.wav", "LEAK", 100, 1],  # in another split
            ["TESTING", "NORMAL/d.wav", "LEAK", 100, 1],  # relabelled
            *[["TRAINING", f"LEAK/new{i}.wav", "LEAK", 100, 1] for i in range(5)]]  # and NORMAL/c.wav gone
    assert difference(derivation({}, mine), derivation({}, base)) == (
        "5 recording(s) only this worker sees: LEAK/new0.wav, LEAK/new1.wav, LEAK/new2.wav and 2 more; "
        "1 recording(s) only the other sees: NORMAL/c.wav; 1 recording(s) with another size or modification "
        "time: LEAK/a.wav; 2 recording(s) in another split or label: LEAK/b.wav, NORMAL/d.wav")
    assert "not recorded" in difference(derivation({}, base), None)


@pytest.fixture
def corpus(tmp_path) -> Path:
    make_origin(tmp_path / "in", per_label=2)
    return tmp_path / "in"


def add_recording(root: Path) -> str:
    write_wav(root / "TRAINING" / "LEAK" / "zz_added.wav", tone(350, 10, 4096, seed=77))
    return "TRAINING/LEAK/zz_added.wav"


def build_ids(out: Path) -> list[str]:
    return sorted(p.name for p in (out / SHARDS).iterdir())


def test_a_worker_that_sees_another_corpus_stops_at_its_start_saying_what_was_added(corpus, tmp_path):
    out = tmp_path / "out"
    build_dataset(corpus, out, progress=False, num_shards=2, shard_index=0)
    [first] = build_ids(out)
    added = add_recording(corpus)  # between the two workers' starts
    with pytest.raises(ValueError) as stopped:
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=1)
    [second] = [b for b in build_ids(out) if b != first]
    message = str(stopped.value)
    assert message.startswith(f"this worker (shard 1 of 2 of build {second[:12]}) and the worker of shard 0 of 2 of "
                              f"build {first[:12]} (")
    assert f"derive different builds: 1 recording(s) only this worker sees: {added}; every worker must see" in message
    assert f"if {out / SHARDS / first} is an abandoned earlier attempt, remove it" in message
    assert "\n" not in message
    assert not (out / schema.MANIFEST).exists()
    assert not list((out / SHARDS / second).glob("*.H5"))  # stopped before building anything


def test_a_finished_worker_does_not_wait_for_a_shard_claimed_by_another_build(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    commit = build_module.write_record

    def another_worker_starts_meanwhile(writers, output, build_id, shard, record):
        other = Shard(1, 2)
        folder = out / SHARDS / ("f" * 32)
        folder.mkdir(parents=True, exist_ok=True)
        claim(out, "f" * 32, other, derivation({}, []))
        commit(writers, output, build_id, shard, record)

    monkeypatch.setattr(build_module, "write_record", another_worker_starts_meanwhile)
    with pytest.raises(ValueError, match=r"this worker \(shard 0 of 2 of build \w{12}\) and the worker of shard 1 of 2 "
                                         r"of build f{12} \(.*claim-00001-of-00002.json\) derive different builds"):
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=0)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="derive different builds"):  # its shard is kept, and it says so again
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=0)


def test_workers_given_different_shard_counts_stop(corpus, tmp_path):
    out = tmp_path / "out"
    build_dataset(corpus, out, progress=False, num_shards=2, shard_index=0)
    with pytest.raises(ValueError, match=r"this worker \(shard 1 of 3 of build \w{12}\) and the worker of shard 0 of 2 "
                                         r"of the same build \(.*\) were given different shard counts \(3 vs 2\)"):
        build_dataset(corpus, out, progress=False, num_shards=3, shard_index=1)


def test_a_requeued_worker_after_a_copying_join_has_nothing_to_do(corpus, tmp_path, ll_records, caplog):
    caplog.set_level(logging.INFO, logger="leak_lightning")
    out = tmp_path / "out"
    for i in (0, 1):
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=i, copy=True)
    manifest = (out / schema.MANIFEST).read_bytes()
    assert not (out / SHARDS).exists()
    ll_records.clear()
    again = build_dataset(corpus, out, progress=False, num_shards=2, shard_index=1, copy=True)  # no --overwrite
    assert not (out / SHARDS).exists() and (out / schema.MANIFEST).read_bytes() == manifest
    rows = {s: json.loads(manifest)["files"][n]["rows"] for s, n in schema.SPLIT_FILES.items()}
    assert again.files == rows and sum(rows.values()) == 12
    assert any("is already built and published" in r.getMessage() for r in ll_records)


def test_a_worker_of_the_published_build_says_so_when_a_sibling_claimed_a_newer_one(corpus, tmp_path):
    out = tmp_path / "out"
    for i in (0, 1):
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=i, copy=True)
    published = json.loads((out / schema.MANIFEST).read_text())["build_id"]
    added = corpus / add_recording(corpus)
    build_dataset(corpus, out, progress=False, num_shards=2, shard_index=0, overwrite=True)  # claims the new build
    [newer] = build_ids(out)
    added.unlink()  # the other worker's stale view of the folder: the published build's corpus
    with pytest.raises(ValueError) as err:  # "nothing to do" would leave the newer build waiting for shard 1
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=1, overwrite=True)
    line = str(err.value)
    assert f"build {published[:12]}" in line and f"build {newer[:12]}" in line and "derive different builds" in line


def test_one_process_overwrite_removes_the_shards_of_the_joined_build(corpus, tmp_path):
    out = tmp_path / "out"
    for i in (0, 1):
        build_dataset(corpus, out, progress=False, num_shards=2, shard_index=i)
    [joined] = build_ids(out)
    add_recording(corpus)
    build_dataset(corpus, out, progress=False, num_shards=2, shard_index=0, overwrite=True)  # the published build
    assert joined in build_ids(out) and len(build_ids(out)) == 2  # is no other worker: not a disagreement
    build_dataset(corpus, out, progress=False, overwrite=True)
    assert not (out / SHARDS).exists()
    for name in schema.SPLIT_FILES.values():
        with h5py.File(out / name) as f:
            assert not f[schema.SEGMENTS].is_virtual
        assert len(load_segments(read_info(out / name))) > 0


# ---- real processes, with the environment a launcher sets ------------------------------------------------------

def build_process(corpus: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in (
        "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")}
    return subprocess.run([sys.executable, "-m", "leak_lightning", "build", "--input", str(corpus), "--output",
                           str(out), "--progress", "false"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**clean, **env, "NO_COLOR": "1"})


@pytest.mark.slow
def test_a_plain_line_of_a_batch_script_builds_the_whole_corpus(corpus, tmp_path):
    done = build_process(corpus, tmp_path / "out", BATCH)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "building the whole corpus in this process: SLURM_NTASKS=4 is the allocation's" in done.stderr
    assert (tmp_path / "out" / schema.MANIFEST).is_file() and not (tmp_path / "out" / SHARDS).exists()


# Worker 0 of an srun step that holds its finished shard until the other worker has claimed its own: a worker
# that starts while another is building, as on a cluster, without timing.
HELD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from leak_lightning.builder import build
    from leak_lightning.cli import main
    out = Path(sys.argv[1])
    commit = build.write_record
    def held(*args, **kw):
        print("held", flush=True)
        deadline = time.monotonic() + 120  # a second worker that never claims: fail, not hang
        while len(list((out / "shards").glob("*/claim-00001-of-00002.json"))) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        commit(*args, **kw)
    build.write_record = held
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.slow
def test_two_srun_workers_that_see_different_corpora_both_exit_2_naming_both_builds(corpus, tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    first = subprocess.Popen([sys.executable, "-c", HELD, str(out), "build", "--input", str(corpus), "--output",
                              str(out), "--progress", "false"], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**env, **srun(0, 2), "NO_COLOR": "1"})
    try:
        held = first.stdout.readline()  # worker 0 has derived its build and built its shard
        assert held == "held\n", first.communicate()[1][-3000:]
        added = add_recording(corpus)
        second = build_process(corpus, out, srun(1, 2))
        _, err_first = first.communicate(timeout=300)
    finally:
        first.kill()
    line = one_error(second.returncode, second.stderr)
    assert f"1 recording(s) only this worker sees: {added}" in line
    line_first = one_error(first.returncode, err_first)
    assert "1 recording(s) only the other sees: " + added in line_first
    ids = build_ids(out)
    assert len(ids) == 2 and all(b[:12] in line and b[:12] in line_first for b in ids)
    assert not (out / schema.MANIFEST).exists()
