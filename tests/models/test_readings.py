"""The reading of a recording's windows is chosen on validation among readings that include its floor (a high vote
fraction: "90 % of the windows reach t" is "the 10th-percentile window reaches t"), kept as state in checkpoints,
and re-chosen by `adapt` per site. Every expected threshold, F1 and plateau below is worked out by hand on the grid
0.01 … 0.99 (grid value k/100 is index k - 1). Window values sit 0.005 off the grid so that no window equals a
grid threshold in float32."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers.files import REPO
from helpers.models import classifier

from leak_lightning.checkpoint.contract import SECTION, binding_digest, check_integrity
from leak_lightning.checkpoint.io import read_checkpoint
from leak_lightning.checkpoint.migrations import migrate_state
from leak_lightning.inference import adapt
from leak_lightning.models.decision import DecisionOptions, DecisionRule, reading_state
from leak_lightning.models.evaluation import sweep
from leak_lightning.training.module import LeakClassifier

# A faint leak under passing noise: a leak's 10 windows all sit at 0.305 (steady, low); a recording without a leak
# has half its windows at 0.905 (traffic) and half at 0.0.
LEAK_ROW, OTHER_ROW = [0.305] * 10, [0.905] * 5 + [0.0] * 5
FLOOR = torch.tensor([LEAK_ROW] * 3 + [OTHER_ROW] * 3)
FLOOR_TRUTH = torch.tensor([True] * 3 + [False] * 3)
# By hand, per reading:
# vote 0.5: t <= 0.30 (30 grid values): every recording reaches half → 3 found, 3 false alarms: F1 6/9;
#   0.31 … 0.90: only the others (half their windows) → F1 0. Best 2/3, plateau 30, threshold ties[15] = 0.16.
# vote 0.75 and vote 0.9: t <= 0.30: the leaks (all windows) and no other (half < 0.75): F1 1; above: none. Plateau 30.
# mean: leaks 0.305, others 0.4525: t <= 0.30 all → 2/3; 0.31 … 0.45 the others only → 0. Plateau 30.


def f1(decided: torch.Tensor, truth: torch.Tensor) -> float:
    tp = int((decided & truth).sum())
    wrong = int((decided != truth).sum())
    return 2 * tp / (2 * tp + wrong)


def test_the_floor_separates_what_the_majority_cannot():
    majority = DecisionRule(DecisionOptions("vote", 0.5))
    assert majority.fit(FLOOR, FLOOR_TRUTH) == pytest.approx(0.16)
    assert f1(majority.decide(FLOOR), FLOOR_TRUTH) == pytest.approx(2 / 3)
    rule = DecisionRule(DecisionOptions("auto", fractions=(0.5, 0.9)))
    assert rule.fit(FLOOR, FLOOR_TRUTH) == pytest.approx(0.16)
    assert (rule.aggregation, rule.vote_fraction) == ("vote", 0.9)
    assert rule.decide(FLOOR).tolist() == FLOOR_TRUTH.tolist()
    assert rule.reading_text() == "a leak when 90 % of its windows reach 0.16"
    swept = {(s["aggregation"], s["vote_fraction"]): (round(s["f1"], 6), s["plateau"]) for s in rule.sweeps}
    third = round(2 / 3, 6)
    assert swept == {("vote", 0.5): (third, 30), ("vote", 0.9): (1.0, 30), ("mean", None): (third, 30)}


def test_equal_f1_and_plateau_take_the_earlier_candidate():
    rule = DecisionRule()  # "auto" over vote 0.5, 0.75, 0.9, mean: 0.75 and 0.9 both F1 1 on 30 thresholds
    assert rule.options.aggregation == "auto"
    rule.fit(FLOOR, FLOOR_TRUTH)
    assert (rule.aggregation, rule.vote_fraction, float(rule.threshold)) == ("vote", 0.75, pytest.approx(0.16))


def test_equal_f1_takes_the_widest_plateau_even_when_later():
    # leak [0.455, 0.455]: mean 0.455, both windows reach t <= 0.45; other [0.405, 0.0]: mean 0.2025, half its
    # windows reach t <= 0.40. vote 0.5: F1 1 for 0.41 … 0.45 (5 thresholds); mean: 0.21 … 0.45 (25): mean, at
    # ties[12] = 0.33; the earlier vote would decide at 0.43.
    windows = torch.tensor([[0.455, 0.455], [0.455, 0.455], [0.405, 0.0], [0.405, 0.0]])
    truth = torch.tensor([True, True, False, False])
    assert (sweep(windows, truth, "vote", 0.5).plateau, sweep(windows, truth, "mean").plateau) == (5, 25)
    rule = DecisionRule(DecisionOptions("auto", fractions=(0.5,)))
    assert rule.fit(windows, truth) == pytest.approx(0.33)
    assert (rule.aggregation, rule.vote_fraction) == ("mean", None)
    assert rule.reading_text() == "a leak when its mean window reaches 0.33"
    assert rule.decide(windows).tolist() == truth.tolist()


def test_a_fixed_reading_is_never_changed_by_fitting():
    for options, threshold, reading in ((DecisionOptions("vote", 0.5), 0.16, [0.0, 0.5]),
                                        (DecisionOptions("mean"), 0.16, [1.0, 0.0])):
        rule = DecisionRule(options)
        assert rule.fit(FLOOR, FLOOR_TRUTH) == pytest.approx(threshold)
        assert rule.reading.tolist() == reading and rule.describe()["chosen_on"] == "fixed"
        assert len(rule.sweeps) == 1


def test_the_reading_is_state_and_beats_the_options():
    model = classifier(["LEAK", "NORMAL"])  # "auto": vote at vote_fraction until validation chooses
    assert model.decision.options.aggregation == "auto"
    state = model.state_dict()
    assert state["decision.reading"].tolist() == [0.0, 0.5]
    state["decision.reading"] = reading_state("mean", None)
    state["decision.threshold"] = torch.tensor(0.4)
    model.load_state_dict(state)
    row = torch.tensor(OTHER_ROW)  # mean 0.4525 reaches 0.4; half its windows (vote 0.9 would not)
    assert model.decide_recording(row)[2:] == (True, pytest.approx(0.4525), pytest.approx(0.4))


def state_without_reading(decision: dict | None, threshold: float = 0.6) -> dict:
    """A checkpoint as fit wrote it before the reading was state (0.2's or today's): no `decision.reading`."""
    model = classifier(["LEAK", "NORMAL"], decision=decision or {})
    state = {k: v for k, v in model.state_dict().items() if k != "decision.reading"}
    state["decision.threshold"] = torch.tensor(threshold)
    hp = dict(model.hparams)
    if decision is None:
        hp.pop("decision")
    return {"state_dict": state, "hyper_parameters": hp}


WINDOWS = torch.tensor([[0.65, 0.65, 0.1, 0.1],   # half reach 0.6: a leak by majority; mean 0.375
                        [0.65, 0.1, 0.1, 0.1],    # a quarter: not
                        [0.95, 0.95, 0.95, 0.7],  # all: a leak; mean 0.8875
                        [0.55, 0.55, 0.55, 0.55]])  # none: not (mean 0.55)


@pytest.mark.parametrize("decision, reading, want", [
    (None, [0.0, 0.5], [True, False, True, False]),  # named none: vote 0.5
    ({"aggregation": "vote", "vote_fraction": 0.5}, [0.0, 0.5], [True, False, True, False]),
    ({"aggregation": "vote", "vote_fraction": 0.25}, [0.0, 0.25], [True, True, True, False]),
    ({"aggregation": "mean"}, [1.0, 0.0], [False, False, True, False])])
def test_a_checkpoint_without_a_reading_loads_strict_and_decides_as_before(decision, reading, want):
    ckpt = state_without_reading(decision)
    model = LeakClassifier.for_inference(ckpt, torch.device("cpu"))  # migrates, then loads strict
    assert ckpt["state_dict"]["decision.reading"].tolist() == reading
    assert model.decision.decide(WINDOWS).tolist() == want


def test_a_flat_0_2_checkpoint_reads_its_own_fraction():
    ckpt = {"state_dict": {"threshold": torch.tensor(0.6)},
            "hyper_parameters": {"num_classes": 2, "class_names": ["LEAK", "NORMAL"], "aggregation": "vote",
                                 "vote_fraction": 0.25, "feature_config": classifier(["LEAK", "NORMAL"]).hparams[
                                     "feature_config"]}}
    migrate_state(ckpt)
    assert ckpt["state_dict"]["decision.reading"].tolist() == [0.0, 0.25]
    rule = DecisionRule()
    rule.load_state_dict({k.removeprefix("decision."): v for k, v in ckpt["state_dict"].items()})
    assert rule.decide(WINDOWS).tolist() == [True, True, True, False]
    real, _ = read_checkpoint(REPO / "tests" / "fixtures" / "format1_tiny.ckpt")  # 0.2.0 with vote_fraction 0.25
    migrate_state(real)
    assert real["state_dict"]["decision.reading"].tolist() == [0.0, 0.25]


def digest_before_the_reading(ckpt: dict) -> str:
    """The binding digest as written before `reading` joined the decision buffers (contract.binding_digest of
    0.3, restated): the section, hyper-parameters, shapes, three decision buffers and the training split."""
    section = {k: v for k, v in ckpt[SECTION].items() if k != "binding"}
    state = ckpt["state_dict"]
    payload = {"section": section, "hyper_parameters": ckpt.get("hyper_parameters") or {},
               "shapes": {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")},
               "decision": {k: state[f"decision.{k}"].tolist()
                            for k in ("threshold", "calibration", "threshold_stats")},
               "training": {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=repr).encode()).hexdigest()


def test_a_digest_written_before_the_reading_still_verifies():
    ckpt = {"state_dict": state_without_reading({})["state_dict"],
            "hyper_parameters": {"class_names": ["LEAK", "NORMAL"], "num_classes": 2},
            SECTION: {"format_version": 2, "class_names": ["LEAK", "NORMAL"], "threshold": 0.6}}
    ckpt[SECTION]["binding"] = digest_before_the_reading(ckpt)
    assert binding_digest(ckpt) == ckpt[SECTION]["binding"]
    check_integrity(ckpt, "old.ckpt")
    with_reading = {**ckpt, "state_dict": {**ckpt["state_dict"], "decision.reading": reading_state("mean", None)}}
    with pytest.raises(ValueError, match="old.ckpt: the checkpoint's contract does not match its digest"):
        check_integrity(with_reading, "old.ckpt")  # a reading slipped into a file is caught
    with_reading[SECTION] = {**ckpt[SECTION], "binding": binding_digest(with_reading)}
    check_integrity(with_reading, "new.ckpt")
    with_reading["state_dict"]["decision.reading"] = reading_state("vote", 0.9)  # same shape, another reading
    with pytest.raises(ValueError, match="new.ckpt: the checkpoint's contract does not match its digest"):
        check_integrity(with_reading, "new.ckpt")


def test_describe_is_plain_json_and_rebuilds_the_rule():
    rule = DecisionRule(DecisionOptions("auto", fractions=(0.5, 0.9)))
    rule.fit(FLOOR, FLOOR_TRUTH)
    described = rule.describe()
    assert described == {"aggregation": "vote", "vote_fraction": 0.9, "threshold": 0.16, "chosen_on": "validation",
                         "candidates": [{"aggregation": "vote", "vote_fraction": 0.5},
                                        {"aggregation": "vote", "vote_fraction": 0.9},
                                        {"aggregation": "mean", "vote_fraction": None}]}
    again = DecisionRule.from_description(json.loads(json.dumps(described)))
    assert again.describe() == described
    assert torch.equal(again.reading, rule.reading) and torch.equal(again.threshold, rule.threshold)
    assert again.decide(FLOOR).tolist() == rule.decide(FLOOR).tolist()
    fixed = DecisionRule(DecisionOptions("mean"))
    assert DecisionRule.from_description(fixed.describe()).describe() == {
        "aggregation": "mean", "vote_fraction": None, "threshold": 0.5, "chosen_on": "fixed",
        "candidates": [{"aggregation": "mean", "vote_fraction": None}]}


def test_a_site_gets_its_own_reading_by_cross_validation():
    base = DecisionRule()  # as validation left it: the majority at 0.5 (a leak's windows there were loud)
    base.threshold.fill_(0.5)
    windows = [torch.tensor(LEAK_ROW)] * 6 + [torch.tensor(OTHER_ROW)] * 6
    truth = torch.tensor([True] * 6 + [False] * 6)
    rule, before, after, kept, fold = adapt.refit_rule(windows, truth, base, folds=3, seed=0)
    # base: no leak has half its windows at 0.5, every other has: 0 found, 6 false alarms
    assert (before["found"], before["false_alarms"], before["f1"]) == (0, 6, 0.0)
    # every fold (4 leaks, 4 others) is FLOOR over again: vote 0.75 at 0.16, all held-out recordings right
    assert (after["found"], after["false_alarms"], after["f1"]) == (6, 0, 1.0) and not kept
    assert (rule.aggregation, rule.vote_fraction, float(rule.threshold)) == ("vote", 0.75, pytest.approx(0.16))
    assert base.reading.tolist() == [0.0, 0.5]  # the base rule itself is left as it was


def test_a_kept_base_rule_keeps_its_reading():
    base = DecisionRule()
    base.reading.copy_(reading_state("vote", 0.9))
    base.threshold.fill_(0.2)
    windows = [torch.tensor(LEAK_ROW)] * 3 + [torch.tensor(OTHER_ROW)] * 3
    rule, before, after, kept, _ = adapt.refit_rule(windows, FLOOR_TRUTH, base, folds=3, seed=0)
    assert before["f1"] == 1.0 and kept  # the base already reads the floor: adapting cannot beat it
    assert rule.describe() == base.describe()


def test_one_value_per_recording_works_with_every_function():
    """A recording-level model gives one pooled probability per recording: a list of 1-element tensors.
    Leaks 0.905, 0.705; others 0.405, 0.205: mean F1 1 for 0.41 … 0.70 (30 thresholds), ties[15] = 0.56."""
    values = [torch.tensor([0.905]), torch.tensor([0.705]), torch.tensor([0.405]), torch.tensor([0.205])]
    truth = torch.tensor([True, True, False, False])
    for options in (DecisionOptions("mean"), DecisionOptions()):  # "auto": one window, every reading alike
        rule = DecisionRule(options)
        assert rule.fit(values, truth) == pytest.approx(0.56)
        assert rule.decide(values).tolist() == truth.tolist()
        basis, cutoff = rule.basis(values)
        assert (basis >= cutoff).tolist() == truth.tolist()
        assert rule.probability(torch.cat(values)).shape == (4,)
    assert (rule.aggregation, rule.vote_fraction) == ("vote", 0.5)  # the tie goes to the first candidate
    assert DecisionRule(DecisionOptions("mean")).basis(values)[0].tolist() == pytest.approx([0.905, 0.705, 0.405,
                                                                                             0.205])


@pytest.mark.parametrize("options, message", [
    (dict(aggregation="median"), "decision.aggregation 'median': use 'vote', 'mean' or 'auto'"),
    (dict(fractions=()), "decision.fractions is empty"),
    (dict(fractions=(0.5, 0.0)), r"decision.fractions \[0.5, 0.0\]: 0.0 is not a share in \(0, 1\]"),
    (dict(fractions=(1.5,)), r"decision.fractions \[1.5\]: 1.5 is not a share"),
    (dict(fractions=(0.9, True)), "True is not a share"),
    (dict(fractions=(0.9, 0.9)), "a fraction is named twice"),
    (dict(vote_fraction=0.0), r"decision.vote_fraction 0.0: use a share in \(0, 1\]")])
def test_an_impossible_choice_is_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        DecisionOptions(**options)


def test_fractions_from_a_config_list_become_a_tuple():
    assert DecisionOptions(fractions=[0.6, 0.8]).candidates() == [("vote", 0.6), ("vote", 0.8), ("mean", None)]


def test_the_cli_takes_the_candidates(small_h5, tmp_path):
    from helpers.files import REPO, data_args

    from leak_lightning.cli.leak_cli import LeakCLI

    cli = LeakCLI(run=False, args=["--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
                                   "--trainer.default_root_dir", str(tmp_path), "--model.decision.aggregation", "auto",
                                   "--model.decision.fractions", "[0.6, 0.95]"])
    assert cli.model.decision.options == DecisionOptions("auto", 0.5, (0.6, 0.95))
    assert cli.model.decision.options.candidates() == [("vote", 0.6), ("vote", 0.95), ("mean", None)]


def test_the_report_figures_describe_the_reading_not_the_options():
    import matplotlib

    matplotlib.use("Agg")
    from leak_lightning.training.callbacks.reports import report_figures

    model = classifier(["OTHER", "LEAK"])  # options: "auto", vote_fraction 0.5; the state below reads the floor
    model.decision.reading.copy_(reading_state("vote", 0.9))
    model.decision.threshold.fill_(0.16)
    basis, cutoff = model.decision.basis(FLOOR)
    results = {"stage": "val", "metrics": {}, "decision_scores": basis, "decision_cutoff": cutoff,
               "files": torch.arange(6), "file_probs": torch.eye(2)[[1, 1, 1, 0, 0, 0]], "file_scores": FLOOR.mean(-1),
               "decisions": model.decision.decide(FLOOR), "windows": FLOOR, "file_probability": FLOOR.mean(-1),
               "targets": torch.eye(2)[[1, 1, 1, 0, 0, 0]]}
    ax = report_figures(model, results)["f1_threshold"].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "the rule used: a leak when at least 90% of its windows reach the threshold",
        "also tried: a leak when at least 50% of its windows reach the threshold",
        "also tried: a leak when at least 75% of its windows reach the threshold",
        "also tried: a leak when its mean window reaches the threshold", "threshold used: 0.16"]
    assert "at least 90% of its windows reach it" in ax.get_xlabel()
    # the F1 drawn for the rule used is the hand-computed one: 1 up to 0.30, 0 above
    used = ax.lines[0].get_ydata()
    assert list(used[:30]) == [1.0] * 30 and not any(used[30:])


def test_auto_is_no_reading_of_its_own():
    from leak_lightning.models.evaluation import decision_basis, file_decisions

    with pytest.raises(ValueError, match="aggregation 'auto' is not a reading of the windows: use 'vote' or 'mean'"):
        file_decisions(FLOOR, torch.tensor([0.5]), "auto")
    with pytest.raises(ValueError, match="aggregation 'auto' is not a reading"):
        decision_basis([FLOOR[0]], 0.5, "auto")
