"""The decision record has one writer (checkpoint.record): fit's saves, adapt and the export sidecar give the same
rule alike, and a format-2 checkpoint written before the writer existed still migrates and verifies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.files import REPO
from helpers.models import classifier

from leak_lightning.checkpoint import describe_rule, write_decision_record
from leak_lightning.checkpoint.contract import SECTION, ModelContract, binding_digest
from leak_lightning.checkpoint.io import read_checkpoint
from leak_lightning.checkpoint.migrations import migrate
from leak_lightning.checkpoint.record import CALIBRATION_INPUT
from leak_lightning.inference.export import _sidecar
from leak_lightning.models.decision import reading_state

OLD = REPO / "tests" / "fixtures" / "format1_tiny.ckpt"


def f32(x: float) -> float:
    return float(np.float32(x))


def fitted_model():
    """A frame model whose rule holds hand-chosen values: a vote of 90 % of windows at 0.37."""
    model = classifier()
    rule = model.decision
    rule.threshold.fill_(0.37)
    rule.calibration.copy_(torch.tensor([2.0, -0.5]))
    rule.threshold_stats.copy_(torch.tensor([0.8, 0.6]))
    rule.reading.copy_(reading_state("vote", 0.9))
    return model


def checkpoint_of(model) -> dict:
    """The parts of a checkpoint the record sits among, as Lightning's save hands them to the module."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["decision.threshold"].fill_(0.5)  # a stale buffer: the writer's rule is the authority
    return {"state_dict": state, "hyper_parameters": dict(model.hparams), SECTION: model.contract().section()}


def test_the_writer_puts_the_rule_its_buffers_and_the_binding_in_the_checkpoint():
    model = fitted_model()
    ckpt = checkpoint_of(model)
    write_decision_record(ckpt, model.decision, per_recording=False)
    section = ckpt[SECTION]
    assert section["threshold"] == f32(0.37)
    assert section["threshold_validation"] == {"precision": f32(0.8), "recall": f32(0.6)}
    assert section["calibration"] == {"method": "platt", "a": 2.0, "b": -0.5, "input": CALIBRATION_INPUT}
    assert section["decides"] == "windows"
    # the default options ("auto"): the reading is chosen on validation among three votes and the mean
    candidates = [{"aggregation": "vote", "vote_fraction": f} for f in (0.5, 0.75, 0.9)]
    assert section["decision"] == {"aggregation": "vote", "vote_fraction": 0.9, "threshold": 0.37,
                                   "chosen_on": "validation",
                                   "candidates": [*candidates, {"aggregation": "mean", "vote_fraction": None}]}
    assert float(ckpt["state_dict"]["decision.threshold"]) == f32(0.37)  # the stale buffer replaced
    assert (section["format_version"], list(section)[-1]) == (2, "binding")
    assert section["binding"] == binding_digest(ckpt)
    assert ModelContract.from_checkpoint(ckpt, "x.ckpt").class_names == ("A", "LEAK", "C")


def test_an_edit_after_the_writer_is_refused():
    model = fitted_model()
    ckpt = checkpoint_of(model)
    write_decision_record(ckpt, model.decision, per_recording=False)
    ckpt["hyper_parameters"]["class_names"] = ["A", "C", "LEAK"]
    with pytest.raises(ValueError, match="does not match its digest"):
        ModelContract.from_checkpoint(ckpt, "x.ckpt")


def test_the_export_sidecar_gives_the_checkpoints_record():
    model = fitted_model()
    ckpt = checkpoint_of(model)
    write_decision_record(ckpt, model.decision, per_recording=model.whole_recordings)
    section = ckpt[SECTION]
    side = _sidecar(Path("m.ckpt"), "onnx", model.contract(), model, {})
    assert (side["threshold"], side["rule"], side["decides"]) == (section["threshold"], section["decision"],
                                                                  section["decides"])
    assert (side["aggregation"], side["vote_fraction"]) == ("vote", 0.9)
    assert {k: side["calibration"][k] for k in ("method", "a", "b")} == {"method": "platt", "a": 2.0, "b": -0.5}
    assert describe_rule(model.decision, True)["decides"] == "recording"


def test_a_format_2_checkpoint_migrates_verifies_and_is_written_again_the_same():
    model = fitted_model()
    ckpt = checkpoint_of(model)
    ckpt["state_dict"]["decision.threshold"].fill_(0.37)
    rule = model.decision
    # format 2 as LeakClassifier.on_save_checkpoint wrote it before the writer (its code, inlined)
    ckpt[SECTION]["threshold"] = float(rule.threshold)
    ckpt[SECTION].update(threshold_validation={"precision": f32(0.8), "recall": f32(0.6)},
                         calibration={"method": "platt", "a": 2.0, "b": -0.5, "input": CALIBRATION_INPUT})
    ckpt[SECTION]["decides"] = "windows"
    ckpt[SECTION]["decision"] = rule.describe()
    ckpt[SECTION]["binding"] = binding_digest(ckpt)
    old_section = dict(ckpt[SECTION])
    migrate(ckpt)
    ModelContract.from_checkpoint(ckpt, "old.ckpt")  # its digest still verifies
    write_decision_record(ckpt, rule, per_recording=False)
    assert ckpt[SECTION] == old_section and list(ckpt[SECTION]) == list(old_section)


def test_a_format_1_checkpoint_written_again_is_format_2_and_verifies():
    from leak_lightning.training.module import LeakClassifier

    ckpt, contract = read_checkpoint(OLD)
    old_threshold = float(ckpt["state_dict"].get("decision.threshold", ckpt["state_dict"].get("threshold")))
    migrate(ckpt)
    model = LeakClassifier.for_inference(ckpt, torch.device("cpu"))
    write_decision_record(ckpt, model.decision, model.whole_recordings)
    again = ModelContract.from_checkpoint(ckpt, "again.ckpt")
    assert again.class_names == contract.class_names and ckpt[SECTION]["format_version"] == 2
    assert ckpt[SECTION]["threshold"] == pytest.approx(old_threshold)
    assert ckpt[SECTION]["decision"]["vote_fraction"] == 0.25  # its stored reading (0.2.0's vote_fraction)


def test_adapt_saves_the_rule_through_the_writer(trained_run, site, tmp_path):
    from leak_lightning.inference import adapt
    from leak_lightning.models.decision import DecisionRule

    out = tmp_path / "s.ckpt"
    report = adapt.adapt_checkpoint(str(trained_run / "checkpoints" / "best.ckpt"), str(site), "s", output=str(out),
                                    folds=3)
    ckpt, _ = read_checkpoint(out)  # the binding holds over the site record too
    state, section = ckpt["state_dict"], ckpt[SECTION]
    # the record as read back from the saved buffers, independently of the writer's rule object
    rule = DecisionRule()
    rule.load_state_dict({k: state[f"decision.{k}"] for k in rule.state_dict()})
    a, b = state["decision.calibration"].tolist()
    precision, recall = state["decision.threshold_stats"].tolist()
    assert section["threshold"] == float(state["decision.threshold"]) == report["threshold"]
    assert section["calibration"] == {"method": "platt", "a": a, "b": b, "input": CALIBRATION_INPUT}
    assert report["calibration"] == {"a": a, "b": b}
    assert section["threshold_validation"] == {"precision": pytest.approx(precision, nan_ok=True),
                                               "recall": pytest.approx(recall, nan_ok=True)}
    assert section["decision"]["aggregation"] == rule.aggregation == report["rule"]["aggregation"]
    assert section["decision"]["threshold"] == report["rule"]["threshold"]
    assert (section["decides"], list(section)[-1]) == ("windows", "binding")
