"""`export` writes its files as one set: after a kill at any point the folder holds the old set or the new
one, and what can be checked before the slow export is one line (exit 2) before it starts."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
from helpers.files import cli_exit, one_error, start_paused

from leak_lightning.inference.export import export


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_complete_set(folder: Path, stem: str = "best") -> dict:
    """The sidecar names exactly the files of its set, and each of them is there."""
    sidecar = json.loads((folder / f"{stem}.json").read_text())
    named = sorted(entry["file"] for entry in sidecar["files"].values())
    mine = [n for n in listing(folder) if n.startswith(f"{stem}_")]
    assert mine == named, (mine, named)
    return sidecar


@pytest.fixture
def ckpt(trained_run, tmp_path) -> Path:
    dst = tmp_path / "run" / "checkpoints" / "best.ckpt"
    dst.parent.mkdir(parents=True)
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", dst)
    return dst


def test_re_export_without_the_frontend_drops_its_stale_file(ckpt, tmp_path):
    out = tmp_path / "export"
    export(ckpt, "torchscript", with_frontend=True, output=out)
    assert listing(out) == ["best.json", "best_network.pt", "best_with_frontend.pt"]
    export(ckpt, "torchscript", with_frontend=False, output=out)
    assert listing(out) == ["best.json", "best_network.pt"]
    assert list(assert_complete_set(out)["files"]) == ["network"]
    assert not list(tmp_path.glob(".export*")) and not (tmp_path / "run" / "lightning_logs").exists()


def test_other_checkpoints_sets_stay_and_stale_temporaries_go(ckpt, tmp_path):
    out = tmp_path / "export"
    last = ckpt.with_name("last.ckpt")
    shutil.copy(ckpt, last)
    export(last, "torchscript", output=out)
    before = {n: (out / n).read_bytes() for n in listing(out)}
    (out / ".best.json.tmp-99999999").write_text("left by a killed export")  # no such process
    (tmp_path / ".export.tmp-99999999").mkdir()
    export(ckpt, "torchscript", with_frontend=True, output=out)
    assert listing(out) == ["best.json", "best_network.pt", "best_with_frontend.pt", "last.json", "last_network.pt"]
    assert {n: (out / n).read_bytes() for n in before} == before  # last's set untouched
    assert_complete_set(out, "best") and assert_complete_set(out, "last")
    assert not list(tmp_path.glob(".export*"))


@pytest.mark.slow
def test_the_fallback_commit_without_an_atomic_swap(ckpt, tmp_path, monkeypatch):
    from leak_lightning.inference import export as export_module

    monkeypatch.setattr(export_module, "exchange", lambda a, b: False)
    out = tmp_path / "export"
    export(ckpt, "torchscript", with_frontend=True, output=out)
    export(ckpt, "torchscript", output=out)
    assert listing(out) == ["best.json", "best_network.pt"] and not list(tmp_path.glob(".export*"))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before", "after"])
def test_a_kill_around_the_commit_leaves_the_old_or_the_new_set(ckpt, tmp_path, where):
    out = tmp_path / "export"
    export(ckpt, "torchscript", with_frontend=True, output=out)
    old = {n: (out / n).read_bytes() for n in listing(out)}
    ready = tmp_path / "ready"
    argv = ["--ckpt_path", str(ckpt), "--format", "torchscript", "--output", str(out)]
    code = f"import helpers; helpers.run_paused_export({str(ready)!r}, {argv!r}, {where!r})"
    proc = start_paused(["-c", code], ready, "export")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    if where == "before":  # the new set was staged, not committed: the old set, byte for byte
        assert {n: (out / n).read_bytes() for n in listing(out)} == old
    else:
        assert listing(out) == ["best.json", "best_network.pt"]
        assert list(assert_complete_set(out)["files"]) == ["network"]
    export(ckpt, "torchscript", output=out)  # the next export sweeps what the killed one left
    assert not list(tmp_path.glob(".export*")), listing(tmp_path)


def test_an_output_that_is_a_file_is_one_line(ckpt, tmp_path, capsys):
    target = tmp_path / "export.onnx"
    target.write_text("")
    line = one_error(*cli_exit(capsys, "export", "--ckpt_path", ckpt, "--output", target))
    assert f"--output {target} is a file, not a folder" in line


def test_a_folder_with_other_files_is_refused(ckpt, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    line = one_error(*cli_exit(capsys, "export", "--ckpt_path", ckpt, "--output", tmp_path / "mine"))
    assert "holds files that are not exports (notes.txt)" in line
    assert listing(tmp_path / "mine") == ["notes.txt"]


def test_a_name_too_long_is_one_line_before_exporting(ckpt, tmp_path, capsys):
    long = ckpt.with_name("b" * 245 + ".ckpt")  # a legal name; the export names add 13+ bytes
    shutil.copy(ckpt, long)
    line = one_error(*cli_exit(capsys, "export", "--ckpt_path", long, "--output", tmp_path / "out"))
    assert "longer than this file system takes (255)" in line and "shorter" in line
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_read_only_file_system_is_one_line_before_exporting(ckpt, mount, capsys):
    point = mount("ro,size=1m")
    line = one_error(*cli_exit(capsys, "export", "--ckpt_path", ckpt, "--output", point / "export"))
    assert "cannot write there (Read-only file system)" in line


def test_a_disk_too_small_is_one_line_before_exporting(ckpt, mount, capsys):
    point = mount("size=1m")
    line = one_error(*cli_exit(capsys, "export", "--ckpt_path", ckpt, "--with-frontend", "--output",
                               point / "export"))
    assert "not enough free space" in line and listing(point) == []


@pytest.mark.parametrize("fmt", ["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_a_disk_that_fills_while_exporting_keeps_the_old_set(ckpt, mount, capsys, monkeypatch, fmt):
    from leak_lightning.inference import export as export_module

    point = mount("size=1500k")
    out = point / "export"
    monkeypatch.setattr(export_module, "check_free_space", lambda *a: None)  # let it start, then fill up
    export(ckpt, fmt, output=out)  # 0.73 MB: fits; the new set (1.46 MB) does not
    old = {n: (out / n).read_bytes() for n in listing(out)}
    line = one_error(*cli_exit(capsys, "export", "--ckpt_path", ckpt, "--format", fmt,
                               "--with-frontend", "--output", out))
    assert "No space left on device while writing the export; nothing was replaced" in line, line
    assert {n: (out / n).read_bytes() for n in listing(out)} == old and listing(point) == ["export"]
