"""Platt calibration and the expected calibration error, against hand-computed values and independent fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leak_lightning.models.evaluation import calibrate, expected_calibration_error, fit_platt


def test_platt_calibration_against_a_hand_computed_case():
    # scores whose logits are ±1 with leaks at 3 of 4 above and 1 of 4 below: the maximum-likelihood
    # fit without prior is sigmoid(a·z) with sigmoid(a) = 3/4, a = ln 3, b = 0
    scores = torch.sigmoid(torch.tensor([1.0] * 4 + [-1.0] * 4))
    truth = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    a, b = fit_platt(scores, truth, prior=0.0)
    assert a == pytest.approx(math.log(3), abs=1e-6) and b == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(calibrate(scores, a, b), torch.tensor([0.75] * 4 + [0.25] * 4))
    a, b = fit_platt(scores, truth, prior=1.0)  # the prior pulls towards the identity (a = 1)
    assert 1.0 < a < math.log(3)


def test_expected_calibration_error_by_hand():
    probs = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.2, 0.2])
    truth = torch.tensor([1, 1, 1, 0, 0, 0])
    # bin 0.9: 4 files, mean 0.9, 3/4 leaks → 4/6·0.15; bin 0.2: 2 files, mean 0.2, 0 leaks → 2/6·0.2
    assert expected_calibration_error(probs, truth) == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.2)


# ---- the prior's scale: the objective is mean log-loss + prior/n·((a − 1)² + b²) -------------------------

def bisect(f, lo: float, hi: float) -> float:
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("prior", [0.5, 1.0, 2.0, 8.0])
def test_the_priors_scale_against_its_stationary_point_by_hand(prior):
    # logits ±1, leaks 3 of 4 above and 1 of 4 below, n = 8. By symmetry b = 0, and the mean log-loss is
    # −¾·log σ(a) − ¼·log(1 − σ(a)), whose derivative is σ(a) − ¾. The penalty prior/8·(a − 1)² adds
    # prior/4·(a − 1): the fit solves σ(a) + prior/4·(a − 1) = ¾, a root between 1 and ln 3.
    scores = torch.sigmoid(torch.tensor([1.0] * 4 + [-1.0] * 4, dtype=torch.float64))
    truth = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0])
    by_hand = bisect(lambda a: 1 / (1 + math.exp(-a)) + prior / 4 * (a - 1) - 0.75, 1.0, math.log(3))
    a, b = fit_platt(scores, truth, prior=prior)
    assert a == pytest.approx(by_hand, abs=1e-9) and b == pytest.approx(0.0, abs=1e-9)


def objective(params: np.ndarray, z: np.ndarray, t: np.ndarray, prior: float) -> float:
    """fit_platt's documented objective, written out: mean log-loss plus prior/n·((a − 1)² + b²)."""
    a, b = params
    s = a * z + b
    log_loss = np.mean(np.logaddexp(0.0, s) - t * s)  # −t·log σ(s) − (1 − t)·log(1 − σ(s))
    return float(log_loss + prior / len(z) * ((a - 1) ** 2 + b ** 2))


def gradient_descent(z: np.ndarray, t: np.ndarray, prior: float, steps: int = 20000) -> np.ndarray:
    """An independent fit: plain gradient descent at step 1/L (L bounds the curvature)."""
    params = np.array([1.0, 0.0])
    n = len(z)
    lipschitz = (np.mean(z ** 2) + 1) / 4 + 2 * prior / n
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(params[0] * z + params[1])))
        grad = np.array([np.mean((p - t) * z), np.mean(p - t)]) + 2 * prior / n * (params - [1.0, 0.0])
        params = params - grad / lipschitz
    return params


CASES = {
    # imbalanced, overlapping: b is far from 0
    "imbalanced": ([0.2, 0.35, 0.5, 0.6, 0.7, 0.9, 0.95, 0.4, 0.8, 0.3], [0, 0, 1, 0, 1, 1, 1, 1, 1, 1]),
    # perfectly separable: without a prior a would grow without bound
    "separable": ([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1]),
    # scores of exactly 0 and 1 (their logits are clamped to ±logit(1 − 1e-4))
    "extremes": ([0.0, 0.0, 0.25, 0.6, 1.0, 1.0, 1.0], [0, 1, 0, 1, 1, 1, 0]),
}


@pytest.mark.parametrize("prior", [0.25, 1.0, 4.0])
@pytest.mark.parametrize("case", list(CASES))
def test_platt_fit_is_the_minimum_of_its_objective(case, prior):
    scores, truth = CASES[case]
    clamped = np.clip(np.array(scores, dtype=np.float64), 1e-4, 1 - 1e-4)
    z, t = np.log(clamped) - np.log1p(-clamped), np.array(truth, dtype=np.float64)
    a, b = fit_platt(torch.tensor(scores), torch.tensor(truth), prior=prior)
    # the same minimum as an independent gradient descent
    reference = gradient_descent(z, t, prior)
    assert (a, b) == pytest.approx(tuple(reference), abs=1e-6)
    # and a stationary point of the objective by central differences (no analytic gradient involved)
    h = 1e-5
    for axis in range(2):
        step = np.eye(2)[axis] * h
        fitted = np.array([a, b])
        slope = (objective(fitted + step, z, t, prior) - objective(fitted - step, z, t, prior)) / (2 * h)
        assert abs(slope) < 1e-7, (axis, slope)


def test_calibrate_applies_the_fitted_map():
    scores = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    z = torch.log(scores.double().clamp(1e-4, 1 - 1e-4)) - torch.log1p(-scores.double().clamp(1e-4, 1 - 1e-4))
    torch.testing.assert_close(calibrate(scores, 1.5, -0.5), torch.sigmoid(1.5 * z - 0.5).float())


# ---- the expected calibration error: 10 bins [k/10, (k+1)/10), p = 1.0 in the last -------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_by_hand_with_probabilities_0_and_1(dtype):
    probs = torch.tensor([0.0, 0.0, 0.05, 0.3, 0.35, 0.95, 1.0, 1.0], dtype=dtype)
    truth = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0])
    # bin [0, 0.1): 0, 0, 0.05 (Σp 0.05) with 1 leak → |0.05 − 1| = 0.95; bin [0.3, 0.4): 0.3, 0.35 (Σp 0.65)
    # with 1 leak → 0.35; bin [0.9, 1]: 0.95, 1, 1 (Σp 2.95) with 2 leaks → 0.95. Σ|Σp − Σt| / n = 2.25 / 8
    assert expected_calibration_error(probs, truth) == pytest.approx(2.25 / 8, abs=1e-7)
    assert expected_calibration_error(torch.tensor([1.0, 1.0], dtype=dtype), torch.tensor([1, 0])) == 0.5
    assert expected_calibration_error(torch.tensor([0.0, 0.0], dtype=dtype), torch.tensor([True, False])) == 0.5
    # (0.95, 1.0) against (1, 0): one bin [0.9, 1] of mean 0.975 with 1 leak in 2 → 0.475
    assert expected_calibration_error(torch.tensor([0.95, 1.0], dtype=dtype), torch.tensor([1, 0])) == \
        pytest.approx(0.475, abs=1e-7)


@pytest.mark.parametrize("k", range(1, 10))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_puts_a_probability_at_an_edge_in_the_bin_it_starts(k, dtype):
    # p = k/10 starts bin k; p − 0.05 lies in bin k − 1. Truth (1, 0): apart, |p − 1| + |p − 0.05 − 0| over 2
    # is 0.475 for every k; in one bin it would be |2p − 0.05 − 1| / 2
    probs = torch.tensor([k / 10, k / 10 - 0.05], dtype=dtype)
    assert expected_calibration_error(probs, torch.tensor([1, 0])) == pytest.approx(0.475, abs=1e-6)


def test_ece_with_other_bin_counts_and_no_files():
    # 4 bins: 0.1 | 0.25 | 0.5 | 1.0 one each, truth 0 0 1 1 → (0.1 + 0.25 + 0.5 + 0) / 4
    probs, truth = torch.tensor([0.25, 0.5, 1.0, 0.1]), torch.tensor([0, 1, 1, 0])
    assert expected_calibration_error(probs, truth, bins=4) == pytest.approx(0.2125, abs=1e-7)
    # 1 bin: |mean p − share of leaks| = |0.4625 − 0.5|
    assert expected_calibration_error(probs, truth, bins=1) == pytest.approx(0.0375, abs=1e-7)
    assert math.isnan(expected_calibration_error(torch.tensor([]), torch.tensor([])))


def test_ece_agrees_with_torchmetrics_except_where_its_comment_says():
    from torchmetrics.functional.classification import binary_calibration_error

    g = torch.Generator().manual_seed(0)
    probs = torch.rand(500, generator=g) * 0.999  # no p = 1.0
    truth = (torch.rand(500, generator=g) < probs).long()
    assert expected_calibration_error(probs, truth) == pytest.approx(
        float(binary_calibration_error(probs, truth, n_bins=10, norm="l1")), abs=1e-6)
    # the differences evaluation.expected_calibration_error's docstring gives, with its numbers
    for p, ours, theirs in [([0.95, 1.0], 0.475, 0.525), ([0.3, 0.25], 0.475, 0.225)]:
        probs = torch.tensor(p, dtype=torch.float64)
        assert expected_calibration_error(probs, torch.tensor([1, 0])) == pytest.approx(ours, abs=1e-9)
        assert float(binary_calibration_error(probs, torch.tensor([1, 0]), n_bins=10)) == pytest.approx(theirs)
