"""Shared output folders are not a way in: another user's link (or file) planted at a name we create is
never followed or written through.

A real second user (`nobody`, in a real process) plants the links in a folder of mode 0777 WITHOUT the
sticky bit: with it, the kernel's fs.protected_symlinks would already stop root from following another
user's link and hide what the code does. The victim is a file of ours outside the folder.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.files import REPO, make_pool, tone, write_wav

from leak_lightning.runtime.fileio import (
    check_writable_file,
    remove_stale_temporaries,
    replacing,
    write_atomic,
)
from leak_lightning.runtime.rundir import DataLock, FolderLock, check_writable


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="planting links as another user needs root (to become nobody)"),
    pytest.mark.skipif(NOBODY is None, reason="no user 'nobody' on this system to plant the links"),
]
PRECIOUS = b"a file of ours that no one else may make us overwrite\n"


def as_nobody(folder: Path, *argv: str) -> None:
    """Run `argv` as user nobody in `folder` (entered before the switch: the ancestors stay private)."""
    subprocess.run(argv, cwd=folder, user=NOBODY.pw_uid, group=NOBODY.pw_gid, extra_groups=[], check=True,
                   capture_output=True)


def plant(folder: Path, name: str, target: Path) -> Path:
    as_nobody(folder, "ln", "-s", str(target), name)
    link = folder / name
    assert link.is_symlink() and link.lstat().st_uid == NOBODY.pw_uid
    return link


@pytest.fixture(autouse=True)
def _no_lock_outlives_a_test():
    yield
    FolderLock.release_all()  # a failed check must not leave a lock held for the next test


@pytest.fixture
def shared(tmp_path) -> Path:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o777)  # world-writable, no sticky bit (see the module's docstring)
    return folder


@pytest.fixture
def victim(tmp_path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_bytes(PRECIOUS)
    return path


def untouched(victim: Path, *links: Path) -> bool:
    """The victim holds its bytes and every planted link is still there, as planted."""
    return victim.read_bytes() == PRECIOUS and all(
        link.is_symlink() and link.lstat().st_uid == NOBODY.pw_uid and Path(os.readlink(link)) == victim
        for link in links)


# ---- locks ------------------------------------------------------------------------------------------

def test_a_link_planted_at_the_folder_lock_is_refused_by_name(shared, victim):
    link = plant(shared, ".lock", victim)
    with pytest.raises(ValueError, match=rf"^{link} is a symbolic link: someone else's file in a shared folder; "
                                         "remove it or use another folder$"):
        FolderLock(shared, "--output").acquire()
    assert untouched(victim, link) and FolderLock.held == []


def test_another_users_lock_file_is_refused_and_left_as_found(shared):
    as_nobody(shared, "sh", "-c", "printf theirs > .lock")
    with pytest.raises(ValueError, match=rf"^{shared / '.lock'} belongs to user nobody: someone else's file"):
        FolderLock(shared, "--output").acquire()
    assert (shared / ".lock").read_bytes() == b"theirs" and FolderLock.held == []


@pytest.mark.parametrize("kind", ["read", "build"])
def test_a_link_planted_at_the_data_lock_is_refused_by_name(shared, victim, kind):
    link = plant(shared, DataLock.NAME, victim)
    lock = DataLock(shared)
    with pytest.raises(ValueError, match=rf"^{link} is a symbolic link: someone else's file"):
        lock.read("python -m leak_lightning fit") if kind == "read" else lock.build()
    assert untouched(victim, link) and DataLock.held == []


def test_a_link_planted_at_a_readers_note_is_refused_and_nothing_stays_held(shared, victim):
    link = plant(shared, f".reader.tmp-{os.getpid()}", victim)  # this process's note name
    with pytest.raises(ValueError, match=rf"^{link} is a symbolic link: someone else's file"):
        DataLock(shared).read("python -m leak_lightning fit")
    assert untouched(victim, link) and DataLock.held == []
    DataLock(shared).build().release()  # the shared lock taken before the note was let go


def test_a_lock_renamed_over_by_someone_else_is_not_removed_at_release(shared):
    lock = FolderLock(shared, "--output").acquire()
    as_nobody(shared, "sh", "-c", "printf theirs > mine && mv mine .lock")  # 0777, no sticky bit: allowed
    lock.release()
    assert (shared / ".lock").read_bytes() == b"theirs"


# ---- probes and temporaries -------------------------------------------------------------------------

def test_the_run_dir_probe_ignores_links_at_its_old_names(shared, victim):
    pid = os.getpid()
    links = [plant(shared, name, victim) for name in (f".write-test-{pid}", f".write-test.tmp-{pid}")]
    check_writable(shared)
    assert untouched(victim, *links)
    assert sorted(p.name for p in shared.iterdir()) == sorted(link.name for link in links)  # no probe left


def old_temporaries(*names: str) -> list[str]:
    """Every name the former scheme gave this process's temporaries (`.NAME.tmp-PID`)."""
    return [f".{name}.tmp-{os.getpid()}" for name in names]


def test_write_atomic_never_writes_through_a_link_at_the_temporary_name(shared, victim):
    links = [plant(shared, name, victim) for name in old_temporaries("out.csv")]
    write_atomic(shared / "out.csv", lambda f: f.write("path,leak\na.wav,1\n"))
    assert untouched(victim, *links)
    out = shared / "out.csv"
    assert not out.is_symlink() and out.read_text() == "path,leak\na.wav,1\n"
    assert sorted(p.name for p in shared.iterdir()) == sorted(["out.csv", *(link.name for link in links)])


def test_a_plain_open_inside_replacing_is_safe(shared, victim):
    """The checkpoint writer opens the yielded name with a plain open(tmp, "wb"): the name must be one no one
    could plant a link at."""
    links = [plant(shared, name, victim) for name in old_temporaries("last.ckpt")]
    with replacing(shared / "last.ckpt") as tmp:
        private = tmp.parent.stat().st_mode & 0o777
        with open(tmp, "wb") as f:
            f.write(b"weights")
    assert untouched(victim, *links) and (shared / "last.ckpt").read_bytes() == b"weights"
    assert tmp.parent != shared and private == 0o700 and not tmp.parent.exists()


def test_the_hdf5_temporary_ignores_a_link_at_its_old_name(shared, victim):
    from leak_lightning.audio.features import FeatureConfig
    from leak_lightning.builder.writer import SplitWriter

    links = [plant(shared, name, victim) for name in old_temporaries("TRAINING_DATASET.H5")]
    cfg = FeatureConfig(n_mels=8)
    writer = SplitWriter(shared / "TRAINING_DATASET.H5", cfg, ["LEAK", "NORMAL"])
    writer.append(np.zeros((1, *cfg.segment_shape), np.float16), np.array([1], np.int16), ["a.wav"], [""])
    final = writer.commit()
    assert untouched(victim, *links) and final.is_file() and not final.is_symlink()
    assert sorted(p.name for p in shared.iterdir()) == sorted([final.name, *(link.name for link in links)])


@pytest.mark.parametrize("how", ["write_atomic", "check_writable_file"])
def test_an_output_name_that_is_someone_elses_link_is_refused(shared, victim, how):
    link = plant(shared, "predictions.csv", victim)
    with pytest.raises(ValueError, match=rf"{link} is a symbolic link: someone else's file in a shared folder"):
        if how == "write_atomic":
            write_atomic(link, lambda f: f.write("x"))
        else:
            check_writable_file(link, "--output")
    assert untouched(victim, link)
    assert [p.name for p in shared.iterdir()] == ["predictions.csv"]  # no temporary left either


def test_only_our_own_dead_writers_temporaries_are_swept(shared):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours_file = shared / f".a.csv.tmp-{dead.pid}"
    ours_file.write_text("left by a killed save")
    ours_folder = shared / f".b.ckpt.tmp-{dead.pid}-abcd1234"  # the private folder of a killed save
    ours_folder.mkdir()
    (ours_folder / "b.ckpt").write_bytes(b"half")
    alive = shared / f".c.csv.tmp-{os.getppid()}-abcd1234"
    alive.mkdir()
    as_nobody(shared, "sh", "-c", f"printf theirs > .d.csv.tmp-{dead.pid}")
    removed = remove_stale_temporaries(shared)
    assert sorted(removed) == sorted([ours_file, ours_folder])
    assert sorted(p.name for p in shared.iterdir()) == sorted([alive.name, f".d.csv.tmp-{dead.pid}"])


# ---- the two cases seen, through the real commands --------------------------------------------------

@pytest.mark.slow
def test_build_refuses_a_link_planted_at_its_lock(tmp_path, shared, victim, run_cli):
    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    link = plant(shared, ".lock", victim)
    r = run_cli("build", "--input", tmp_path / "in", "--output", shared, "--progress", "false")
    errors = [line for line in r.stderr.splitlines() if "[ERROR]" in line]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"{link} is a symbolic link: someone else's file in a shared folder" in errors[0]
    assert untouched(victim, link) and [p.name for p in shared.iterdir()] == [".lock"]


def test_a_build_ignores_links_at_its_old_temporary_names(tmp_path, shared, victim):
    from leak_lightning.builder.build import build_dataset
    from leak_lightning.data import schema

    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    names = [*schema.SPLIT_FILES.values(), schema.MANIFEST, schema.SKIP_REPORT, schema.FLAG_REPORT]
    links = [plant(shared, name, victim) for name in old_temporaries(*names)]
    build_dataset(tmp_path / "in", shared, progress=False)
    assert untouched(victim, *links)
    assert json.loads((shared / schema.MANIFEST).read_text())["files"].keys() == set(schema.SPLIT_FILES.values())


@pytest.mark.slow
def test_predict_never_writes_its_csv_through_a_planted_link(tmp_path, shared, victim, trained_run):
    """The real command; a shell that `exec`s it keeps its PID, so the former temporary names are known."""
    write_wav(tmp_path / "wavs" / "good.wav", tone(500, 10, 4096))
    argv = [sys.executable, "-m", "leak_lightning", "predict", "--ckpt_path",
            str(trained_run / "checkpoints" / "best.ckpt"), "--data.predict_path", str(tmp_path / "wavs"),
            "--output", str(shared / "predictions.csv"), "--trainer.default_root_dir", str(tmp_path / "run"),
            "--console.log_file", "null"]
    proc = subprocess.Popen(["sh", "-c", 'read go && exec "$@"', "sh", *argv], cwd=REPO, stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "NO_COLOR": "1"})
    names = [f".{name}.tmp-{proc.pid}" for name in ("predictions.csv", "predictions_sensors.csv")]
    links = [plant(shared, name, victim) for name in names]
    _, err = proc.communicate("go\n", timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert untouched(victim, *links)
    out = shared / "predictions.csv"
    assert not out.is_symlink() and out.read_text(encoding="utf-8").splitlines()[1].startswith("good.wav,")
