"""The decision rule for every aggregation and vote fraction, against a reference written here from the rule's
definition: a recording is a leak when the share of its windows at or above the threshold reaches the vote
fraction (vote), or when its mean window probability reaches the threshold (mean); the threshold is the
middle of the best-F1 plateau of the grid 0.01 … 0.99."""

from __future__ import annotations

import pytest
import torch
from helpers.models import classifier

from leak_lightning.models.decision import DecisionOptions, DecisionRule
from leak_lightning.models.evaluation import fit_platt

# 8 recordings × 4 windows; the first 4 leak. Chosen so that every rule below picks another threshold.
WINDOWS = torch.tensor([
    [0.95, 0.90, 0.85, 0.80],
    [0.90, 0.70, 0.30, 0.20],
    [0.65, 0.60, 0.15, 0.10],
    [0.55, 0.25, 0.20, 0.05],
    [0.50, 0.10, 0.05, 0.05],
    [0.45, 0.40, 0.35, 0.05],
    [0.30, 0.20, 0.10, 0.10],
    [0.75, 0.05, 0.05, 0.05],
])
TRUTH = torch.tensor([True, True, True, True, False, False, False, False])
# 0.01 … 0.99 as float32, as the windows are: a window equal to a grid value compares equal, as in the code
GRID = torch.linspace(0.01, 0.99, 99).tolist()
RULES = [("vote", 0.25), ("vote", 0.5), ("vote", 0.75), ("vote", 1.0), ("mean", 0.5)]


def reference_decisions(windows: torch.Tensor, t: float, aggregation: str, fraction: float) -> list[bool]:
    out = []
    for row in windows.tolist():
        if aggregation == "vote":
            out.append(sum(w >= t for w in row) / len(row) >= fraction)
        else:
            out.append(sum(row) / len(row) >= t)
    return out


def reference_threshold(windows, truth, aggregation, fraction) -> float:
    grid = GRID
    f1s = []
    for t in grid:
        d = reference_decisions(windows, t, aggregation, fraction)
        tp = sum(a and b for a, b in zip(d, truth.tolist()))
        fp = sum(a and not b for a, b in zip(d, truth.tolist()))
        fn = sum(b and not a for a, b in zip(d, truth.tolist()))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    best = max(f1s)
    ties = [t for t, f in zip(grid, f1s) if f >= best - 1e-12]
    return ties[len(ties) // 2]


def test_the_rules_pick_different_thresholds_on_this_data():
    picked = {rule: reference_threshold(WINDOWS, TRUTH, *rule) for rule in RULES}
    assert len(set(picked.values())) == len(RULES), picked  # so a rule ignored somewhere shows


@pytest.mark.parametrize("aggregation, fraction", RULES)
def test_the_rule_fits_and_decides_as_its_definition(aggregation, fraction):
    rule = DecisionRule(DecisionOptions(aggregation, fraction))
    t = rule.fit(WINDOWS, TRUTH)
    want = reference_threshold(WINDOWS, TRUTH, aggregation, fraction)
    assert t == pytest.approx(want, abs=1e-6) and float(rule.threshold) == pytest.approx(want, abs=1e-6)
    assert rule.decide(WINDOWS).tolist() == reference_decisions(WINDOWS, float(rule.threshold), aggregation, fraction)
    basis, cutoff = rule.basis(WINDOWS)
    assert cutoff == pytest.approx(fraction if aggregation == "vote" else float(rule.threshold))
    assert ((basis >= cutoff).tolist() == rule.decide(WINDOWS).tolist())
    # the calibration maps a recording's mean window probability (what predict reports as leak_score)
    mean_fit, max_fit = fit_platt(WINDOWS.mean(-1), TRUTH), fit_platt(WINDOWS.max(-1).values, TRUTH)
    assert rule.calibration.tolist() == pytest.approx(list(mean_fit)) and mean_fit != pytest.approx(max_fit)


@pytest.mark.parametrize("aggregation, fraction", RULES)
def test_recordings_of_different_lengths_are_decided_one_by_one(aggregation, fraction):
    ragged = [WINDOWS[0], WINDOWS[1, :2], torch.cat([WINDOWS[2], WINDOWS[2]]), WINDOWS[3, :1], WINDOWS[4],
              WINDOWS[5, :3], WINDOWS[6], torch.cat([WINDOWS[7], WINDOWS[7, :1]])]
    rule = DecisionRule(DecisionOptions(aggregation, fraction))
    t = rule.fit(ragged, TRUTH)
    grid = GRID
    f1s = []
    for g in grid:
        d = [reference_decisions(w[None], g, aggregation, fraction)[0] for w in ragged]
        tp = sum(a and b for a, b in zip(d, TRUTH.tolist()))
        wrong = sum(a != b for a, b in zip(d, TRUTH.tolist()))
        f1s.append(2 * tp / (2 * tp + wrong) if tp else 0.0)
    ties = [g for g, f in zip(grid, f1s) if f >= max(f1s) - 1e-12]
    assert t == pytest.approx(ties[len(ties) // 2], abs=1e-6)
    assert rule.decide(ragged).tolist() == [reference_decisions(w[None], t, aggregation, fraction)[0] for w in ragged]


@pytest.mark.parametrize("aggregation, fraction", RULES)
def test_a_window_exactly_at_the_threshold_counts_and_a_share_exactly_at_the_fraction_decides(aggregation, fraction):
    rule = DecisionRule(DecisionOptions(aggregation, fraction))
    rule.threshold.fill_(0.5)
    k = round(fraction * 4)
    at = torch.tensor([[0.5] * k + [0.0] * (4 - k)])  # a share of exactly `fraction` of windows at 0.5
    below = torch.tensor([[0.4999] * k + [0.0] * (4 - k)])
    if aggregation == "vote":
        assert rule.decide(at).tolist() == [True] and rule.decide(below).tolist() == [False]
    else:
        assert rule.decide(torch.full((1, 4), 0.5)).tolist() == [True]
        assert rule.decide(torch.full((1, 4), 0.4999)).tolist() == [False]


@pytest.mark.parametrize("aggregation, fraction", RULES)
def test_the_module_decides_a_recording_with_its_configured_rule(aggregation, fraction):
    model = classifier(["LEAK", "NORMAL"], decision={"aggregation": aggregation, "vote_fraction": fraction})
    assert model.decision.options == DecisionOptions(aggregation, fraction)
    model.decision.threshold.fill_(0.5)
    for row in WINDOWS:
        score, _, leak, basis, cutoff = model.decide_recording(row)
        assert leak == reference_decisions(row[None], 0.5, aggregation, fraction)[0]
        assert score == pytest.approx(float(row.mean()))
        assert cutoff == pytest.approx(fraction if aggregation == "vote" else 0.5)


def test_the_cli_passes_the_rule_to_the_module(small_h5, tmp_path):
    from helpers.files import REPO, data_args

    from leak_lightning.cli.leak_cli import LeakCLI

    cli = LeakCLI(run=False, args=["--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
                                   "--trainer.default_root_dir", str(tmp_path), "--model.decision.aggregation", "mean",
                                   "--model.decision.vote_fraction", "0.75"])
    assert cli.model.decision.options == DecisionOptions("mean", 0.75)


@pytest.mark.parametrize("options", [dict(aggregation="median"), dict(vote_fraction=0.0), dict(vote_fraction=1.5)])
def test_an_impossible_rule_is_refused(options):
    with pytest.raises(ValueError, match="decision."):
        DecisionOptions(**options)
