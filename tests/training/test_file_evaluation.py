"""File-level evaluation as an update/compute/reset object, against hand-computed files; pos_weight "auto"
linked from the data by the CLI, against the split's labels counted by hand."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch
from helpers.files import REPO, first_files
from helpers.models import classifier

from leak_lightning.models.decision import DecisionOptions, DecisionRule
from leak_lightning.training.file_metrics import FileEvaluation

# 3 files of 2 long windows × 2 short segments; classes (OTHER, LEAK), OTHER = 1 - LEAK
LEAK = torch.tensor([0.9, 0.7, 0.8, 0.6,  # a leak: windows 0.8, 0.7 → mean 0.75, found at 0.5
                     0.2, 0.4, 0.1, 0.3,  # clear: windows 0.3, 0.2 → mean 0.25
                     0.4, 0.2, 0.5, 0.3])  # a leak: windows 0.3, 0.4 → mean 0.35, missed at 0.5
TRUTH = [1, 0, 1]
PROBS = torch.stack([1 - LEAK, LEAK], dim=1)  # (12, 2)
TARGETS = torch.eye(2)[torch.tensor(TRUTH).repeat_interleave(4)]  # (12, 2)


def same_process(t: torch.Tensor, op: str) -> torch.Tensor:
    return t  # one process: every rank's rows are its own


def evaluation() -> FileEvaluation:
    return FileEvaluation(num_classes=2, num_long=2, num_short=2, leak_index=1, leak_name="LEAK")


def compute(ev: FileEvaluation, rule: DecisionRule | None = None, sweep: bool = False) -> dict[str, float]:
    rule = rule or DecisionRule(DecisionOptions("mean"))  # threshold 0.5, identity calibration
    ev.compute(rule, same_process, torch.device("cpu"), "val", sweep=sweep)
    return ev.result.metrics


def test_update_then_compute_equals_the_files_by_hand():
    ev = evaluation()
    ev.update(0, PROBS, TARGETS)
    m = compute(ev)
    # decisions (1, 0, 0) against truth (1, 0, 1): tp 1, fp 0, fn 1
    assert m["file_leak_precision"] == 1.0 and m["file_leak_recall"] == 0.5
    assert m["file_leak_f1"] == pytest.approx(2 / 3)
    assert m["file_leak_auroc"] == 1.0  # both leaks (0.75, 0.35) above the clear file (0.25)
    assert m["file_accuracy"] == pytest.approx(2 / 3)  # the missed leak's top class is OTHER (0.65)
    assert (m["files_scored"], m["files_partial"]) == (3, 0)
    # one file per bin: |0.75 - 1| + |0.25 - 0| + |0.35 - 1| over 3 files
    assert m["file_leak_ece_uncalibrated"] == pytest.approx(1.15 / 3, abs=1e-6)
    assert m["threshold"] == 0.5
    r = ev.result
    assert r.stage == "val" and r.files.tolist() == [0, 1, 2]
    torch.testing.assert_close(r.windows, torch.tensor([[0.8, 0.7], [0.3, 0.2], [0.3, 0.4]]))
    torch.testing.assert_close(r.file_scores, torch.tensor([0.75, 0.25, 0.35]))
    torch.testing.assert_close(r.file_probs, torch.tensor([[0.25, 0.75], [0.75, 0.25], [0.65, 0.35]]))
    assert r.decisions.tolist() == [True, False, False] and r.decision_cutoff == 0.5
    assert r["targets"].argmax(-1).tolist() == TRUTH  # read by name too, as the plots do


def test_updates_over_two_batches_in_any_order_equal_one():
    one, two = evaluation(), evaluation()
    one.update(0, PROBS, TARGETS)
    two.update(6, PROBS[6:], TARGETS[6:])  # the later rows first, split inside file 1
    two.update(0, PROBS[:6], TARGETS[:6])
    assert compute(two) == compute(one)
    for key in ("files", "windows", "file_probs", "file_probability", "decision_scores", "decisions"):
        assert torch.equal(two.result[key], one.result[key]), key


def test_a_file_scored_in_part_is_left_out():
    ev = evaluation()
    ev.update(0, PROBS[:10], TARGETS[:10])  # file 2's last two segments never came
    m = compute(ev)
    assert (m["files_scored"], m["files_partial"]) == (2, 1)
    assert ev.result.files.tolist() == [0, 1] and m["file_leak_f1"] == 1.0


def test_reset_and_compute_empty_the_tables():
    ev = evaluation()
    ev.update(0, torch.rand(12, 2), TARGETS)
    ev.reset()
    ev.update(0, PROBS[:8], TARGETS[:8])  # files 0 and 1 only: file 2 was scored before the reset
    fresh = evaluation()
    fresh.update(0, PROBS[:8], TARGETS[:8])
    assert compute(ev) == compute(fresh)
    assert ev.result.files.tolist() == [0, 1]
    m = compute(ev)  # nothing updated since the last compute
    assert m["files_scored"] == 0 and math.isnan(m["file_leak_f1"])


def test_compute_with_sweep_fits_the_rule_on_the_files():
    ev = evaluation()
    ev.update(0, PROBS, TARGETS)
    rule = DecisionRule(DecisionOptions("mean"))
    m = compute(ev, rule, sweep=True)
    # means 0.75, 0.35 (leaks) and 0.25: every grid threshold 0.26 … 0.35 separates them; the middle is 0.31
    assert float(rule.threshold) == pytest.approx(0.31)
    assert m["threshold"] == pytest.approx(0.31) and m["file_leak_f1"] == 1.0
    assert rule.threshold_stats.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("truth", [[1, 1, 1], [0, 0, 0]], ids=["only leaks", "no leak"])
def test_a_split_of_one_kind_keeps_the_rule_and_says_why(truth, ll_records):
    """With leaks only (or none) every threshold gives the same F1: the rule must stay as trained, not move."""
    ev = evaluation()
    ev.update(0, PROBS, torch.eye(2)[torch.tensor(truth).repeat_interleave(4)])
    rule = DecisionRule(DecisionOptions("mean"))
    before = {k: v.clone() for k, v in rule.state_dict().items()}
    compute(ev, rule, sweep=True)
    for name, value in rule.state_dict().items():
        torch.testing.assert_close(value, before[name], equal_nan=True)
    assert any("the leak F1/AUROC are undefined (NaN) and the threshold is not swept" in r.getMessage()
               for r in ll_records)


def labels_by_hand(path) -> tuple[list[int], int]:
    with h5py.File(path, "r") as f:
        labels, names = f["labels"][:], f.attrs["labels_json"]
    counts = np.bincount(labels, minlength=len(json.loads(names)))
    return counts.tolist(), len(labels)


def test_pos_weight_auto_is_linked_from_the_training_split(small_h5, tmp_path, ll_records):
    from leak_lightning.cli.leak_cli import LeakCLI

    train = first_files(small_h5["train"], tmp_path / "train.h5", 31)  # unbalanced: some classes few or none
    counts, files = labels_by_hand(train)
    assert len(set(counts)) > 1
    want = [round((files - c) / max(c, 1), 4) for c in counts]
    cli = LeakCLI(args=["fit", "--config", str(REPO / "configs/demo_frame.yaml"), "--data.train_h5", str(train),
                        "--data.val_h5", str(small_h5["val"]), "--trainer.fast_dev_run", "true",
                        "--trainer.default_root_dir", str(tmp_path / "run"), "--model.pos_weight", "auto"])
    assert cli.model.loss_fn.pos_weight.tolist() == pytest.approx(want)
    assert not {"train_class_counts", "train_files"} & set(cli.model.hparams)  # not saved: the weights are
    assert f"pos_weight auto from the training split ({files} files): {want}" in " ".join(
        r.getMessage() for r in ll_records)


def test_pos_weight_auto_without_counts_from_python_is_one_line():
    model = classifier(pos_weight="auto")
    with pytest.raises(ValueError, match=r"^pos_weight='auto' needs the training split's class counts: pass "
                                         r"train_class_counts=data.train_class_counts and train_files="):
        model.setup("fit")
    model = classifier(pos_weight="auto", train_class_counts=[1, 3, 0], train_files=4)
    model.setup("fit")
    assert model.loss_fn.pos_weight.tolist() == [3.0, pytest.approx(1 / 3, abs=1e-4), 4.0]


def test_pos_weight_auto_without_a_training_split_from_the_cli_is_one_line():
    model = classifier(pos_weight="auto", train_class_counts=None, train_files=0)  # what the CLI links then
    with pytest.raises(ValueError, match=r"^--model.pos_weight auto needs the training split's class counts: "
                                         r"set data.train_h5$"):
        model.setup("fit")


@pytest.mark.slow
def test_a_resumed_run_keeps_the_weights_it_started_with(small_h5, tmp_path):
    from leak_lightning.cli.leak_cli import LeakCLI

    train = first_files(small_h5["train"], tmp_path / "train.h5", 31)
    counts, files = labels_by_hand(train)
    started = [round((files - c) / max(c, 1), 4) for c in counts]
    common = ["--config", str(REPO / "configs/demo_frame.yaml"), "--data.val_h5", str(small_h5["val"]),
              "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.limit_train_batches", "2",
              "--console.log_file", "null"]
    LeakCLI(args=["fit", *common, "--data.train_h5", str(train), "--model.pos_weight", "auto",
                  "--trainer.max_epochs", "1"])
    # the whole split (14 files per class: 4.0 each) would give other weights; the checkpoint's stay
    cli = LeakCLI(args=["fit", *common, "--data.train_h5", str(small_h5["train"]), "--ckpt_path", "last",
                        "--resume_on_changed_data", "true", "--trainer.max_epochs", "2"])
    assert cli.model.loss_fn.pos_weight.tolist() == pytest.approx(started)
    assert started != [4.0] * len(counts)
