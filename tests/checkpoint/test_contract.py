"""The checkpoint owns its classes and frontend; file-level metrics cover only what was scored; no untrained model."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers.files import REPO, cli_exit, first_files, one_error

from leak_lightning.builder.build import build_dataset
from leak_lightning.cli import main

REORDERED = ["LEAK", "NORMAL", "BACKGROUND", "CRACK", "UNCLASSIFIED"]


def splits(folder) -> list[str]:
    return ["--data.train_h5", str(folder / "TRAINING_DATASET.H5"), "--data.val_h5",
            str(folder / "VALIDATION_DATASET.H5"), "--data.test_h5", str(folder / "TESTING_DATASET.H5")]


def evaluate(stage: str, data: list[str], run, out, *extra: str) -> dict:
    """validate/test the run's best checkpoint in-process; reports go to `out`."""
    main([stage, "--config", str(REPO / "configs/demo_frame.yaml"), *data, "--trainer.default_root_dir", str(out),
          "--ckpt_path", str(run / "checkpoints" / "best.ckpt"), *extra])
    name = "validate" if stage == "validate" else "test"
    report = json.loads((out / f"{name}_report.json").read_text())
    rows = list(csv.DictReader((out / f"{name}_predictions.csv").open()))
    return {"report": report, "rows": rows}


@pytest.fixture(scope="module")
def other_builds(small_h5, tmp_path_factory):
    """The session's WAVs built again: classes in another order, 3 classes only, and 32 mels."""
    wav = small_h5["train"].parent.parent / "wav"
    root = tmp_path_factory.mktemp("other_builds")
    build_dataset(wav, root / "reordered", labels=REORDERED, progress=False)
    three = root / "wav3"
    for split in ("TRAINING", "VALIDATION", "TESTING"):
        for label in ("CRACK", "LEAK", "NORMAL"):
            shutil.copytree(wav / split / label, three / split / label)
    build_dataset(three, root / "three", progress=False)
    from leak_lightning.audio.features import FeatureConfig

    build_dataset(wav, root / "mels32", features=FeatureConfig(n_mels=32), progress=False)
    return root


def test_the_checkpoint_carries_its_contract(trained_run):
    ckpt = torch.load(trained_run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    section = ckpt["leak_lightning"]
    assert section["class_names"] == ["BACKGROUND", "CRACK", "LEAK", "NORMAL", "UNCLASSIFIED"]
    assert section["leak_class_name"] == "LEAK" and section["feature_config"]["n_mels"] == 64
    assert section["format_version"] == 2 and section["threshold"] == pytest.approx(
        float(ckpt["state_dict"]["decision.threshold"]))


def test_same_classes_in_another_order_are_remapped_by_name(small_h5, trained_run, other_builds, tmp_path):
    original = evaluate("test", splits(small_h5["train"].parent), trained_run, tmp_path / "a")
    reordered = evaluate("test", splits(other_builds / "reordered"), trained_run, tmp_path / "b")
    assert original["report"]["class_names"] == reordered["report"]["class_names"]  # the checkpoint's order
    for key, value in original["report"]["metrics"].items():
        assert reordered["report"]["metrics"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key
    assert original["rows"] == reordered["rows"]  # per file: true label, scores, decision


@pytest.mark.parametrize("build, fragment", [
    ("three", "classes ['CRACK', 'LEAK', 'NORMAL'] differ from the classes ['BACKGROUND', 'CRACK', 'LEAK', "
              "'NORMAL', 'UNCLASSIFIED']"),
    ("mels32", "built with n_mels=32, but the checkpoint"),
])
def test_another_class_set_or_frontend_is_one_line(trained_run, other_builds, tmp_path, capsys, build, fragment):
    code, err = cli_exit(capsys, "test", "--config", REPO / "configs/demo_frame.yaml", *splits(other_builds / build),
                         "--trainer.default_root_dir", tmp_path, "--ckpt_path", trained_run / "checkpoints/best.ckpt")
    line = one_error(code, err)
    assert fragment in line and str(trained_run / "checkpoints/best.ckpt") in line
    assert not (tmp_path / "test_report.json").exists()


def test_limited_validation_scores_only_the_files_it_saw(small_h5, trained_run, tmp_path):
    data = splits(small_h5["train"].parent)
    full = evaluate("validate", data, trained_run, tmp_path / "full", "--data.eval_batch_size", "320")
    part = evaluate("validate", data, trained_run, tmp_path / "part", "--data.eval_batch_size", "320",
                    "--trainer.limit_val_batches", "3")
    # 320 segments = 4 whole files per batch: 3 batches score the first 12 of the 20 files
    assert part["report"]["files"] == {"in_split": 20, "scored": 12, "partly_scored_left_out": 0, "not_scored": 8}
    assert [r["path"] for r in part["rows"]] == [r["path"] for r in full["rows"][:12]]
    # F1 over those 12 files (leak files among them), by hand from the run's own per-file decisions (a validate
    # sweeps its threshold on the files it scored: on 12 files it may pick another one than on all 20)
    seen = part["rows"]
    tp = sum(r["leak_decision"] == "1" and r["true_label"] == "LEAK" for r in seen)
    fp = sum(r["leak_decision"] == "1" and r["true_label"] != "LEAK" for r in seen)
    fn = sum(r["leak_decision"] == "0" and r["true_label"] == "LEAK" for r in seen)
    assert tp + fn > 0, [r["true_label"] for r in seen]
    assert part["report"]["metrics"]["file_leak_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    # two batches hold no leak file: F1 is undefined there, NaN, never a silent 0
    none = evaluate("validate", data, trained_run, tmp_path / "none", "--data.eval_batch_size", "320",
                    "--trainer.limit_val_batches", "2")
    assert all(r["true_label"] != "LEAK" for r in full["rows"][:8])
    assert none["report"]["metrics"]["file_leak_f1"] != none["report"]["metrics"]["file_leak_f1"]


def test_evaluation_without_ckpt_path_uses_the_runs_best_checkpoint(small_h5, trained_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", out / "checkpoints")
    main(["test", "--config", str(REPO / "configs/demo_frame.yaml"), *splits(small_h5["train"].parent),
          "--trainer.default_root_dir", str(out)])
    assert f"no --ckpt_path given: using {out / 'checkpoints' / 'best.ckpt'}" in capsys.readouterr().err
    assert json.loads((out / "test_report.json").read_text())["ckpt_path"] == str(out / "checkpoints/best.ckpt")
    code, err = cli_exit(capsys, "validate", "--config", REPO / "configs/demo_frame.yaml",
                         *splits(small_h5["train"].parent), "--trainer.default_root_dir", tmp_path / "empty")
    assert code == 2 and "validate needs a trained model: pass --ckpt_path" in err
    assert not (tmp_path / "empty" / "validate_report.json").exists()


def test_a_checkpoint_from_a_newer_format_is_refused(small_h5, trained_run, tmp_path, capsys):
    ckpt = torch.load(trained_run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    ckpt["leak_lightning"]["format_version"] = 99
    torch.save(ckpt, tmp_path / "future.ckpt")
    code, err = cli_exit(capsys, "test", "--config", REPO / "configs/demo_frame.yaml",
                         *splits(small_h5["train"].parent), "--trainer.default_root_dir", tmp_path, "--ckpt_path",
                         tmp_path / "future.ckpt")
    assert code == 2 and "written by a newer leak_lightning (checkpoint format 99" in err


@pytest.mark.slow
def test_scoring_the_training_recordings_is_said_and_counted(small_h5, trained_run, other_builds, tmp_path,
                                                             ll_records):
    from leak_lightning.data.h5 import read_info

    ckpt = torch.load(trained_run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    trained = ckpt["LeakDataModule"]["training_data"]
    train_files = read_info(small_h5["train"]).num_files
    assert trained["file"] == "TRAINING_DATASET.H5" and trained["files"] == train_files
    assert len(trained["recordings"]) == train_files

    def test_on(folder, split: str, out: str) -> tuple[int | None, list[str]]:
        del ll_records[:]
        data = splits(folder)
        data[-1] = str(folder / f"{split}_DATASET.H5")
        report = evaluate("test", data, trained_run, tmp_path / out)["report"]
        return report["seen_in_training"], [r.getMessage() for r in ll_records if r.levelname == "WARNING"]

    # the very file: known from its build id alone
    seen, warnings = test_on(small_h5["train"].parent, "TRAINING", "same")
    assert seen == train_files and any("is the training split of the checkpoint" in w for w in warnings)
    # the same recordings in another build (here with the classes reordered): found by name and label
    seen, warnings = test_on(other_builds / "reordered", "TRAINING", "rebuilt")
    assert seen == train_files
    assert any(f"{train_files} of {train_files} recordings in" in w and "optimistic" in w for w in warnings)
    # unseen recordings, from either build: nothing said
    for folder in (small_h5["train"].parent, other_builds / "reordered"):
        seen, warnings = test_on(folder, "TESTING", "unseen")
        assert seen == 0 and not any("training split" in w for w in warnings)


def test_fit_refuses_validating_on_its_training_split(small_h5, tmp_path, capsys):
    copy = tmp_path / "copy" / "TRAINING_DATASET.H5"  # a copy elsewhere is the same split (same build)
    copy.parent.mkdir()
    shutil.copy(small_h5["train"], copy)
    own = first_files(small_h5["train"], tmp_path / "own.H5", 6)  # no build id: known as the same file only
    for train, val in ((small_h5["train"], small_h5["train"]), (small_h5["train"], copy), (own, own)):
        code, err = cli_exit(capsys, "fit", "--config", REPO / "configs/demo_frame.yaml", "--data.train_h5",
                             train, "--data.val_h5", val, "--data.test_h5", small_h5["test"],
                             "--trainer.default_root_dir", tmp_path / "run", "--console.log_file", "null")
        assert f"--data.val_h5 {val} is the training split" in one_error(code, err)
        assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def _edited(ckpt_path, tmp_path, name: str, edit) -> Path:
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    edit(ckpt)
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def _swap(names: list[str], a: str = "LEAK", b: str = "NORMAL") -> list[str]:
    return [b if n == a else a if n == b else n for n in names]


def _drop_class(ckpt: dict) -> None:
    for part in (ckpt["leak_lightning"], ckpt["hyper_parameters"]):
        part["class_names"] = [n for n in part["class_names"] if n != "CRACK"]
    ckpt["hyper_parameters"]["num_classes"] = 4
    del ckpt["leak_lightning"]["binding"]  # as if written before checkpoints carried a digest


@pytest.mark.parametrize("name, edit, fragment", [
    ("swapped", lambda c: c["leak_lightning"].update(class_names=_swap(c["leak_lightning"]["class_names"])),
     "does not match its digest"),
    ("both_swapped", lambda c: [p.update(class_names=_swap(p["class_names"]))
                                for p in (c["leak_lightning"], c["hyper_parameters"])], "does not match its digest"),
    ("hparams", lambda c: c["hyper_parameters"].update(aggregation="mean"), "does not match its digest"),
    ("threshold", lambda c: c["state_dict"]["decision.threshold"].fill_(0.99), "does not match its digest"),
    ("dropped", _drop_class, "4 class names ['BACKGROUND', 'LEAK', 'NORMAL', 'UNCLASSIFIED'] but the network "
                             "has 5 outputs"),
    ("lists", lambda c: (c["leak_lightning"].pop("binding"),
                         c["leak_lightning"].update(class_names=_swap(c["leak_lightning"]["class_names"]))),
     "its contract names the classes"),
])
def test_an_edited_checkpoint_is_one_line(small_h5, trained_run, tmp_path, capsys, name, edit, fragment):
    from leak_lightning.checkpoint.io import read_checkpoint

    best = trained_run / "checkpoints/best.ckpt"
    read_checkpoint(best)  # as written by fit: it agrees with itself
    path = _edited(best, tmp_path, f"{name}.ckpt", edit)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        read_checkpoint(path)
    wav = small_h5["train"].parent.parent / "wav" / "TESTING" / "LEAK"
    line = one_error(*cli_exit(capsys, "predict", "--ckpt_path", path, "--data.predict_path", wav,
                               "--trainer.default_root_dir", tmp_path / "run", "--console.log_file", "null"))
    assert fragment in line and str(path) in line


def test_resuming_on_a_changed_training_split_says_what_changed(small_h5, trained_run, tmp_path, capsys):
    wav = tmp_path / "wav"
    shutil.copytree(small_h5["train"].parent.parent / "wav", wav)
    gone = sorted((wav / "TRAINING" / "LEAK").glob("*.wav"))[:2]
    for path in gone:
        path.unlink()
    build_dataset(wav, tmp_path / "fewer", progress=False)
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    args = ["fit", "--config", REPO / "configs/demo_frame.yaml", *splits(tmp_path / "fewer"),
            "--trainer.default_root_dir", run, "--ckpt_path", "last", "--trainer.max_epochs", "2",
            "--console.log_file", "null"]
    line = one_error(*cli_exit(capsys, *args))
    assert "the training split changed" in line and "0 recording(s) added and 2 removed (by their audio)" in line
    assert "--resume_on_changed_data true" in line
    main([str(a) for a in args] + ["--resume_on_changed_data", "true"])  # said so: it goes on
    assert "resuming on a changed training split" in capsys.readouterr().err
    # the same recordings rebuilt (another build id) resume without a word
    build_dataset(small_h5["train"].parent.parent / "wav", tmp_path / "same", progress=False)
    args[3:9] = splits(tmp_path / "same")
    main([str(a) for a in args])
    assert "the training split changed" not in capsys.readouterr().err
