"""`adapt`'s seams with the rest: the checkpoint's own training recordings, the output's lock and transaction,
names checked before scoring, Ctrl-C; and the one rule for where a checkpoint's outputs go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from helpers.files import cli_exit, one_error, start_paused

from leak_lightning import LeakDetector
from leak_lightning.checkpoint.contract import default_output, run_dir_of
from leak_lightning.checkpoint.io import read_checkpoint
from leak_lightning.inference import adapt
from leak_lightning.runtime.fileio import file_digest

# `python -c` runner: adapt paused at a named point ("scoring": before any recording is scored, holding the
# output's lock; "published": the new checkpoint renamed into place, its report not yet), until a signal
PAUSED_ADAPT = """
import sys, time
from helpers import _announce
from leak_lightning.inference import adapt
from leak_lightning.cli import main

ready, where, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

def hold():
    _announce(ready)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)

if where == "scoring":
    scored = adapt._scored
    def paused(*args, **kwargs):
        hold()
        return scored(*args, **kwargs)
    adapt._scored = paused
else:
    save = adapt.AtomicCheckpointIO.save_checkpoint
    def paused(self, *args, **kwargs):
        save(self, *args, **kwargs)
        hold()
    adapt.AtomicCheckpointIO.save_checkpoint = paused
main(["adapt", *argv])
"""


def paused_adapt(tmp_path: Path, where: str, argv: list) -> subprocess.Popen:
    """A real `adapt` process held at `where`; returns once it is there."""
    ready = tmp_path / f"ready-{where}"
    proc = start_paused(["-c", PAUSED_ADAPT, str(ready), where, *map(str, argv)], ready, "adapt")
    assert int(ready.read_text()) == proc.pid
    return proc


def test_a_checkpoints_outputs_go_to_its_run_or_beside_it():
    assert run_dir_of("/r/checkpoints/best.ckpt") == Path("/r") and run_dir_of("/r/sites/n.ckpt") == Path("/r")
    assert run_dir_of("/data/models/foo.ckpt") is None and run_dir_of("foo.ckpt") is None
    assert default_output("/r/checkpoints/best.ckpt", "export") == Path("/r/export")
    assert default_output("/r/checkpoints/d7.ckpt", "predictions.csv", own=True) == Path(
        "/r/checkpoints/d7_predictions.csv")
    assert default_output("/data/models/foo.ckpt", "export") == Path("/data/models/foo_export")
    assert default_output("foo.ckpt", "predictions.csv") == Path("foo_predictions.csv")  # beside it, not ../


def test_the_checkpoints_training_recordings_are_counted_said_and_left_out(small_h5, trained_run, site, tmp_path,
                                                                           ll_records):
    base = trained_run / "checkpoints" / "best.ckpt"
    given = tmp_path / "in"
    shutil.copytree(site, given)
    training = small_h5["train"].parent.parent / "wav" / "TRAINING"
    for label in ("LEAK", "NORMAL"):  # 3 of each under other names: the same audio all the same
        for k, p in enumerate(sorted((training / label).glob("*.wav"))[:3]):
            shutil.copy(p, given / label / f"renamed-{k}.wav")
    report = adapt.adapt_checkpoint(str(base), str(given), "mixed", output=str(tmp_path / "m.ckpt"), folds=3)
    assert report["seen_in_training"] == 6 and report["recordings"] == 12
    assert sorted(Path(s["path"]).name for s in report["skipped"]
                  if s["status"] == "in the training split of the checkpoint") == sorted(
        f"renamed-{k}.wav" for k in range(3) for _ in range(2))
    assert not [r for r in report["rows"] if "renamed" in r["path"]]
    # the base rule's figures are the site's own recordings only, decided one by one as predict does
    det = LeakDetector.from_checkpoint(base, device="cpu")
    answers = [(det.predict(p).leak, p.parent.name == "LEAK") for p in site.rglob("*.wav")]
    assert report["before"]["found"] == sum(a and t for a, t in answers)
    assert report["before"]["false_alarms"] == sum(a and not t for a, t in answers)
    said = [r.getMessage() for r in ll_records if "training split of the checkpoint" in r.getMessage()]
    assert len(said) == 1 and "6 of 18 recordings" in said[0] and "optimistic" in said[0], said
    ckpt, _ = read_checkpoint(tmp_path / "m.ckpt")
    assert ckpt["leak_lightning"]["site"]["seen_in_training"] == 6


def test_the_report_is_inside_the_checkpoint_and_the_json_names_it(trained_run, site, tmp_path):
    out = tmp_path / "n.ckpt"
    adapt.adapt_checkpoint(str(trained_run / "checkpoints" / "best.ckpt"), str(site), "north", output=str(out),
                           folds=3)
    ckpt, _ = read_checkpoint(out)
    inside = ckpt["leak_lightning"]["site"]["report"]
    beside = json.loads((tmp_path / "n_adapt_report.json").read_text())
    assert beside.pop("checkpoint_sha256") == file_digest(out)
    assert beside == json.loads(json.dumps(inside)) and inside["site"] == "north"
    assert not list(tmp_path.glob(".*"))  # no temporary or lock left


def test_a_checkpoint_is_published_before_its_report_and_never_beside_another(tmp_path, monkeypatch):
    import errno

    from leak_lightning.checkpoint.io import AtomicCheckpointIO

    out, report = tmp_path / "x.ckpt", tmp_path / "x_adapt_report.json"
    out.write_bytes(b"north's checkpoint")
    report.write_text("north's report")
    new = {"leak_lightning": {"site": {"report": {"site": "south", "threshold": 0.25}}}}
    save = AtomicCheckpointIO.save_checkpoint

    def full_disk(self, checkpoint, path, storage_options=None):
        assert not report.exists()  # while the new checkpoint is written, no report that could be another's
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", full_disk)
    with pytest.raises(OSError):
        adapt._publish({"site": "south", "_checkpoint": new}, out, report)
    assert out.read_bytes() == b"north's checkpoint" and report.read_text() == "north's report"  # both kept
    seen = []
    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint",
                        lambda self, c, p, storage_options=None: (seen.append(report.exists()), save(self, c, p)))
    adapt._publish({"site": "south", "_checkpoint": new}, out, report)
    assert seen == [False]
    assert json.loads(report.read_text()) == {"site": "south", "threshold": 0.25, "checkpoint_sha256": file_digest(out)}


def test_a_link_planted_at_the_report_while_scoring_is_never_read_or_copied(tmp_path):
    secret = tmp_path / "private" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("TOP SECRET")
    secret.chmod(0o600)
    out, report = tmp_path / "x.ckpt", tmp_path / "x_adapt_report.json"
    report.symlink_to(secret)  # planted after the names were checked, before publishing
    new = {"leak_lightning": {"site": {"report": {"site": "south"}}}}
    with pytest.raises(ValueError, match=r"x_adapt_report\.json is a symbolic link"):
        adapt._publish({"site": "south", "_checkpoint": new}, out, report)
    assert report.is_symlink() and secret.read_text() == "TOP SECRET" and not out.exists()


def test_a_site_name_too_long_for_the_file_system_is_refused_before_scoring(trained_run, site, tmp_path, capsys,
                                                                             monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    monkeypatch.setattr(adapt, "_adapted", lambda *a, **k: pytest.fail("scored before the names were checked"))
    code, err = cli_exit(capsys, "adapt", "--ckpt_path", run / "checkpoints" / "best.ckpt", "--input", site,
                         "--site", "s" * 250)
    line = one_error(code, err)
    assert "_adapt_report.json: the name is 268 bytes, longer than this file system takes (255)" in line
    assert "use a shorter --site" in line and not (run / "sites").exists()


@pytest.mark.slow
def test_a_second_adapt_into_the_same_output_says_who_holds_it(trained_run, site, tmp_path, capsys):
    out = tmp_path / "x.ckpt"
    argv = ["--ckpt_path", trained_run / "checkpoints" / "best.ckpt", "--input", site, "--site", "x", "--output",
            out, "--folds", "3"]
    first = paused_adapt(tmp_path, "scoring", argv)
    try:
        line = one_error(*cli_exit(capsys, "adapt", *argv, "--overwrite", "true"))
        assert f"is in use by PID {first.pid}" in line and "or use another --output" in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_adapt_is_one_line(trained_run, site, tmp_path, sig, status):
    out = tmp_path / "x.ckpt"
    proc = paused_adapt(tmp_path, "scoring", ["--ckpt_path", trained_run / "checkpoints" / "best.ckpt", "--input",
                                              site, "--site", "x", "--output", out, "--folds", "3"])
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert proc.returncode == status and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"adapt interrupted ({sig.name})" in errors[0]
    assert not out.exists() and not list(tmp_path.glob(".x.ckpt*"))  # no checkpoint, temporary or lock left


@pytest.mark.slow
def test_a_kill_between_the_checkpoint_and_its_report_leaves_no_other_sites_report(trained_run, site, tmp_path):
    out, report = tmp_path / "x.ckpt", tmp_path / "x_adapt_report.json"
    base = trained_run / "checkpoints" / "best.ckpt"
    adapt.adapt_checkpoint(str(base), str(site), "north", output=str(out), folds=3)
    assert json.loads(report.read_text())["site"] == "north"
    proc = paused_adapt(tmp_path, "published", ["--ckpt_path", base, "--input", site, "--site", "south", "--output",
                                                out, "--folds", "3", "--overwrite", "true"])
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    ckpt, _ = read_checkpoint(out)
    assert ckpt["leak_lightning"]["site"]["name"] == "south"
    assert ckpt["leak_lightning"]["site"]["report"]["site"] == "south"  # its report travels inside it
    assert not report.exists()  # north's report is not left beside south's checkpoint


@pytest.mark.slow
def test_site_checkpoints_predict_beside_themselves_and_nothing_lands_in_the_cwd(trained_run, site, tmp_path,
                                                                                  monkeypatch):
    from leak_lightning.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    (run / "predictions.csv").write_text("the base model's answers\n")
    adapt.adapt_checkpoint(str(run / "checkpoints/best.ckpt"), str(site), "d7", folds=3,
                           output=str(run / "checkpoints" / "d7.ckpt"))
    main(["predict", "--ckpt_path", str(run / "checkpoints" / "d7.ckpt"), "--data.predict_path", str(site / "LEAK")])
    assert (run / "predictions.csv").read_text() == "the base model's answers\n"  # the site record decides
    assert (run / "checkpoints" / "d7_predictions.csv").is_file()
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "predictions.csv"]  # its config and log apart
    # a checkpoint outside a run: every output beside it, named after it; the current directory untouched
    models, here = tmp_path / "models", tmp_path / "here"
    models.mkdir()
    here.mkdir()
    shutil.copy(run / "checkpoints" / "best.ckpt", models / "foo.ckpt")
    monkeypatch.chdir(here)
    main(["predict", "--ckpt_path", str(models / "foo.ckpt"), "--data.predict_path", str(site / "LEAK")])
    adapt.adapt_checkpoint(str(models / "foo.ckpt"), str(site), "east", folds=3)
    with pytest.raises(SystemExit) as done:
        main(["export", "--ckpt_path", str(models / "foo.ckpt"), "--format", "torchscript"])
    assert done.value.code == 0
    assert sorted(p.name for p in models.iterdir()) == ["foo.ckpt", "foo_export", "foo_predictions.csv",
                                                        "foo_predictions_sensors.csv", "foo_reports", "foo_sites"]
    assert sorted(p.name for p in (models / "foo_reports").iterdir()) == ["config.yaml", "train.log"]
    assert sorted(p.name for p in (models / "foo_sites").iterdir()) == ["east.ckpt", "east_adapt_report.json"]
    assert (models / "foo_export" / "foo.json").is_file()
    assert not list(here.iterdir()) and not list(tmp_path.parent.glob("export"))


def test_a_checkpoint_in_a_read_only_folder_predicts_with_its_records_beside_the_output(trained_run, site, tmp_path,
                                                                                        capsys, mount):
    from helpers.files import cli_exit, one_error

    from leak_lightning.cli import main

    models = mount("size=8m")  # an installed or shared model folder: written once, then read-only
    shutil.copy(trained_run / "checkpoints" / "best.ckpt", models / "m.ckpt")
    subprocess.run(["mount", "-o", "remount,ro", str(models)], check=True)
    out = tmp_path / "answers" / "p.csv"
    main(["predict", "--ckpt_path", str(models / "m.ckpt"), "--data.predict_path", str(site / "LEAK"),
          "--output", str(out)])
    assert out.is_file() and sorted(p.name for p in (tmp_path / "answers" / "p_reports").iterdir()) == [
        "config.yaml", "train.log"]
    code, err = cli_exit(capsys, "predict", "--ckpt_path", str(models / "m.ckpt"), "--data.predict_path",
                         str(site / "LEAK"))
    line = one_error(code, err)
    assert "m_reports: cannot write there (Read-only file system)" in line and "--trainer.default_root_dir" in line
    assert "--output FILE" in line
