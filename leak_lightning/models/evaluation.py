"""File-level aggregation and the threshold sweep (pure functions of tensors; tested against hand-computed cases).

A long window's leak probability is the mean over its short segments. A file's score is the
fraction of its long windows at or above the threshold ("vote") or the mean window
probability ("mean"). In vote mode a file is a leak when that fraction reaches
`vote_fraction`; in mean mode when the mean reaches the threshold. A high vote fraction reads the
recording's floor: "90 % of the windows reach t" is "the 10th percentile of the windows reaches t".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torchmetrics.functional.classification import binary_auroc

Aggregation = Literal["vote", "mean"]
DEFAULT_GRID = torch.linspace(0.01, 0.99, 99)


def window_probs(segment_probs: torch.Tensor, num_long: int, num_short: int) -> torch.Tensor:
    """(F·L·S,) segment probabilities of one class → (F, L) long-window probabilities."""
    return segment_probs.reshape(-1, num_long, num_short).mean(dim=-1)


def file_decisions(windows: torch.Tensor | list[torch.Tensor], thresholds: torch.Tensor, mode: Aggregation,
                   vote_fraction: float = 0.5) -> torch.Tensor:
    """(F, L) windows, (K,) thresholds → (K, F) bool leak decisions, one row per threshold. Recordings of
    different lengths come as a list of F 1-D tensors (all windows of each): decided one by one."""
    _check_reading(mode)
    if isinstance(windows, (list, tuple)):
        columns = [file_decisions(w.reshape(1, -1), thresholds, mode, vote_fraction)[:, 0] for w in windows]
        return torch.stack(columns, 1) if columns else torch.zeros(len(thresholds), 0, dtype=torch.bool)
    t = thresholds.to(windows)
    if mode == "vote":
        votes = (windows[None] >= t[:, None, None]).float().mean(dim=-1)  # (K, F)
        return votes >= vote_fraction
    return windows.mean(dim=-1)[None] >= t[:, None]


def decision_basis(windows: torch.Tensor | list[torch.Tensor], threshold: float, mode: Aggregation,
                   vote_fraction: float = 0.5) -> tuple[torch.Tensor, float]:
    """(F, L) windows → the (F,) numbers the decisions are made from and the cutoff they are compared with:
    vote: the fraction of windows at or above the threshold against `vote_fraction`; mean: the mean
    window against the threshold. A file is a leak when its number reaches the cutoff. Recordings of
    different lengths come as a list of F 1-D tensors."""
    _check_reading(mode)
    if isinstance(windows, (list, tuple)):
        cutoff = float(vote_fraction) if mode == "vote" else float(threshold)
        parts = [decision_basis(w.reshape(1, -1), threshold, mode, vote_fraction)[0] for w in windows]
        return (torch.cat(parts) if parts else torch.zeros(0)), cutoff
    if mode == "vote":
        return (windows >= threshold).float().mean(dim=-1), float(vote_fraction)
    return windows.mean(dim=-1), float(threshold)


def _check_reading(mode: str) -> None:
    # any other word would silently decide by the mean
    if mode not in ("vote", "mean"):
        raise ValueError(f"aggregation {mode!r} is not a reading of the windows: use 'vote' or 'mean' (with 'auto', "
                         "the reading a fitted DecisionRule chose: rule.aggregation, rule.vote_fraction)")


def decision_counts(decisions: torch.Tensor, truth: torch.Tensor) -> tuple[int, int, int, int]:
    """(leaks found, leaks missed, false alarms, recordings rightly left clear)."""
    d, t = decisions.bool(), truth.bool()
    return int((d & t).sum()), int((~d & t).sum()), int((d & ~t).sum()), int((~d & ~t).sum())


def f1_per_threshold(decisions: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(K, F) decisions, (F,) bool truth → (K,) F1 (0 where it is undefined)."""
    truth = truth.bool()[None]
    tp = (decisions & truth).sum(-1).float()
    fp = (decisions & ~truth).sum(-1).float()
    fn = (~decisions & truth).sum(-1).float()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


@dataclass(frozen=True)
class Sweep:
    """One reading's threshold sweep: the threshold chosen, its F1, and the plateau (how many grid thresholds
    reach that F1: how far a new site's scores may move before the decisions get worse)."""

    threshold: float
    f1: float
    plateau: int


def sweep(windows: torch.Tensor | list[torch.Tensor], truth: torch.Tensor, mode: Aggregation,
          vote_fraction: float = 0.5, grid: torch.Tensor | None = None) -> Sweep:
    """The best F1 on the grid; among equal F1s the threshold in the middle of the plateau (robust)."""
    grid = DEFAULT_GRID if grid is None else grid
    f1 = f1_per_threshold(file_decisions(windows, grid, mode, vote_fraction), truth)
    best = f1.max()
    ties = torch.nonzero(f1 >= best - 1e-12).flatten()
    i = int(ties[len(ties) // 2])
    return Sweep(float(grid[i]), float(best), len(ties))


def sweep_threshold(windows: torch.Tensor | list[torch.Tensor], truth: torch.Tensor, mode: Aggregation,
                    vote_fraction: float = 0.5, grid: torch.Tensor | None = None) -> tuple[float, float]:
    """Best (threshold, F1) on the grid; among equal F1s the middle of the plateau (robust)."""
    s = sweep(windows, truth, mode, vote_fraction, grid)
    return s.threshold, s.f1


@dataclass(frozen=True)
class FileScores:
    """File-level view of the scored segments: only files whose every segment was scored count."""

    index: torch.Tensor  # (F,) the files' row numbers in the split
    windows: torch.Tensor  # (F, L) leak probability per long window (mean of its short segments)
    class_scores: torch.Tensor  # (F, C) mean probability per class over the file's segments
    targets: torch.Tensor  # (F, C) the files' multi-hot targets
    partial: int  # files with only some segments scored (e.g. --trainer.limit_val_batches): left out


def score_files(segment_probs: torch.Tensor, segment_targets: torch.Tensor, seen: torch.Tensor,
                num_long: int, num_short: int, leak_index: int) -> FileScores:
    """(N, C) segment probabilities and targets, (N,) bool scored → FileScores.

    N covers whole files (a multiple of L·S; segments of file f are rows f·L·S … (f+1)·L·S − 1).
    A file only part of which was scored is left out rather than scored on zeros.
    """
    spf = num_long * num_short
    num_files, num_classes = segment_probs.shape[0] // spf, segment_probs.shape[1]
    seen = seen.reshape(num_files, spf)
    full, some = seen.all(dim=1), seen.any(dim=1)
    probs = segment_probs.reshape(num_files, spf, num_classes)[full]  # (F, L·S, C)
    return FileScores(
        index=torch.nonzero(full).flatten(),
        windows=window_probs(probs[..., leak_index].reshape(-1), num_long, num_short),
        class_scores=probs.mean(dim=1),
        targets=segment_targets.reshape(num_files, spf, num_classes)[full][:, 0],
        partial=int((some & ~full).sum()),
    )


def file_metrics(scores: FileScores, decisions: torch.Tensor, leak_index: int) -> dict[str, torch.Tensor]:
    """File-level leak F1/precision/recall (at the decisions), AUROC (of the mean window score) and
    top-class accuracy. A metric whose denominator is empty is NaN, not 0: precision with no leak
    decision, recall (and F1 unless there are false alarms) with no leak file, all of them with no file."""
    truth = scores.targets[:, leak_index].bool()
    d = decisions.bool()
    tp, fp, fn = (d & truth).sum().float(), (d & ~truth).sum().float(), (~d & truth).sum().float()
    nan = torch.tensor(float("nan"), device=tp.device)
    n = len(truth)

    def ratio(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a / b if b > 0 else nan

    return {
        "file_leak_f1": ratio(2 * tp, 2 * tp + fp + fn),
        "file_leak_precision": ratio(tp, tp + fp),
        "file_leak_recall": ratio(tp, tp + fn),
        "file_leak_auroc": binary_auroc(scores.windows.mean(-1), truth.int()) if 0 < truth.sum() < n else nan,
        "file_accuracy": (scores.class_scores.argmax(-1) == scores.targets.argmax(-1)).float().mean() if n else nan,
        "files_scored": torch.tensor(float(n), device=tp.device),
        "files_partial": torch.tensor(float(scores.partial), device=tp.device),
    }


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.double().clamp(1e-4, 1 - 1e-4)
    return torch.log(p) - torch.log1p(-p)


def fit_platt(scores: torch.Tensor, truth: torch.Tensor, prior: float = 1.0, steps: int = 50) -> tuple[float, float]:
    """Platt scaling of file scores: P(leak) = sigmoid(a·logit(score) + b), fit on validation files.

    Newton steps on the mean log-loss plus `prior`/n·((a - 1)² + b²), which keeps a tiny or perfectly
    separable validation set from driving a to infinity (the prior is the identity map). Each step is
    halved until the objective does not rise: scores at 0 or 1 (logits ±9.2) with a confident mistake
    among them make the curvature at the start tiny, and full steps overshot: scores (0, 0, 0.25, 0.6, 1, 1, 1)
    with truth (0, 1, 0, 1, 1, 1, 0) gave a = 15.5 (objective 70.8) where the minimum is a = 0.068 (0.797).
    """
    z, t = _logit(scores), truth.double()
    n = max(len(z), 1)
    identity = torch.tensor([1.0, 0.0], dtype=torch.float64)
    params = identity.clone()
    features = torch.stack([z, torch.ones_like(z)], dim=1)  # (F, 2)
    reg = prior / n

    def objective(w: torch.Tensor) -> float:
        s = features @ w
        return float((torch.nn.functional.softplus(s) - t * s).mean() + reg * ((w - identity) ** 2).sum())

    for _ in range(steps):
        p = torch.sigmoid(features @ params)
        grad = features.T @ (p - t) / n + 2 * reg * (params - identity)
        hess = (features.T * (p * (1 - p))) @ features / n + 2 * reg * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        bound = objective(params) + 1e-12  # the slack: near the minimum a full step's change is below rounding
        while objective(params - step) > bound and float(step.abs().max()) > 1e-12:
            step = step / 2
        params = params - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(params[0]), float(params[1])


def calibrate(scores: torch.Tensor, a: float, b: float) -> torch.Tensor:
    return torch.sigmoid(a * _logit(scores) + b).to(scores.dtype)


def expected_calibration_error(probs: torch.Tensor, truth: torch.Tensor, bins: int = 10) -> float:
    """Σ over equal-width probability bins of (share of files) · |mean probability − share of leaks|.

    Bin k holds k/bins <= p < (k+1)/bins and the last bin also p = 1.0. The edges k/bins are compared in the
    probabilities' own dtype (k/bins rounded to it), so a float32 0.7 or 0.9 lies in the bin it starts,
    as by hand (float32(0.9)·10 in float64 is 8.99999976: floor(p·bins) put it in the 0.8 bin).

    Not torchmetrics' BinaryCalibrationError (n_bins=bins, norm="l1"): its norm and weights are these,
    but its binning is not. (1) It gives p = 1.0 an extra bin of its own (bucketize over all bins + 1
    edges): probabilities (0.95, 1.0) with truth (1, 0) give 0.525 there and 0.475 here, one [0.9, 1]
    bin of mean 0.975 against 1 leak in 2. (2) Its edges are torch.linspace(0, 1, bins + 1) in the input's
    dtype, whose float64 0.3 edge is 0.30000000000000004: a float64 0.3 falls in the 0.2 bin, so
    (0.3, 0.25) with truth (1, 0) gives 0.225 there and 0.475 here. (3) It applies a sigmoid when any value
    lies outside [0, 1]. Clamping 1.0 below 1 before calling it would fix (1) only to within an ulp.
    """
    if not len(probs):
        return float("nan")
    # on the CPU: bincount with weights has no deterministic CUDA kernel (--trainer.deterministic true)
    p = probs.detach().flatten().cpu()
    p = p if p.is_floating_point() else p.double()
    edges = (torch.arange(1, bins, dtype=torch.float64, device=p.device) / bins).to(p.dtype)
    which = torch.bucketize(p, edges, right=True)  # 0 .. bins - 1; p = 1.0 (and above) in the last bin
    confidence = torch.bincount(which, weights=p.double(), minlength=bins)  # per bin: Σ p
    leaks = torch.bincount(which, weights=truth.detach().flatten().cpu().double(), minlength=bins)  # per bin: Σ truth
    # Σ_k (n_k / n) · |Σp/n_k − Σt/n_k| = Σ_k |Σp − Σt| / n (empty bins add 0)
    return float((confidence - leaks).abs().sum() / len(p))
