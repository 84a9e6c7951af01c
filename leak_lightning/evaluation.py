"""File-level aggregation and the threshold sweep (pure torch; tested against hand-computed cases).

A long window's leak probability is the mean over its short segments. A file's score is the
fraction of its long windows at or above the threshold ("vote") or the mean window
probability ("mean"). In vote mode a file is a leak when that fraction reaches
`vote_fraction`; in mean mode when the mean reaches the threshold.
"""

from __future__ import annotations

from typing import Literal

import torch

Aggregation = Literal["vote", "mean"]
DEFAULT_GRID = torch.linspace(0.01, 0.99, 99)


def window_probs(segment_probs: torch.Tensor, num_long: int, num_short: int) -> torch.Tensor:
    """(F·L·S,) segment probabilities of one class → (F, L) long-window probabilities."""
    return segment_probs.reshape(-1, num_long, num_short).mean(dim=-1)


def file_decisions(windows: torch.Tensor, thresholds: torch.Tensor, mode: Aggregation,
                   vote_fraction: float = 0.5) -> torch.Tensor:
    """(F, L) windows, (K,) thresholds → (K, F) bool leak decisions, one row per threshold."""
    t = thresholds.to(windows)
    if mode == "vote":
        votes = (windows[None] >= t[:, None, None]).float().mean(dim=-1)  # (K, F)
        return votes >= vote_fraction
    return windows.mean(dim=-1)[None] >= t[:, None]


def f1_per_threshold(decisions: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(K, F) decisions, (F,) bool truth → (K,) F1 (0 where it is undefined)."""
    truth = truth.bool()[None]
    tp = (decisions & truth).sum(-1).float()
    fp = (decisions & ~truth).sum(-1).float()
    fn = (~decisions & truth).sum(-1).float()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.zeros_like(tp))


def sweep_threshold(windows: torch.Tensor, truth: torch.Tensor, mode: Aggregation,
                    vote_fraction: float = 0.5, grid: torch.Tensor | None = None) -> tuple[float, float]:
    """Best (threshold, F1) on the grid; among equal F1s the middle of the plateau (robust)."""
    grid = DEFAULT_GRID if grid is None else grid
    f1 = f1_per_threshold(file_decisions(windows, grid, mode, vote_fraction), truth)
    best = f1.max()
    ties = torch.nonzero(f1 >= best - 1e-12).flatten()
    i = int(ties[len(ties) // 2])
    return float(grid[i]), float(best)
