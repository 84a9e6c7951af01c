"""From scored segments to a recording's answer: the decision rule and the table of scored segments.

Both are declared parts of LeakClassifier (no Lightning here): `DecisionRule` holds what validation
decides and the checkpoint keeps (threshold, its validation precision/recall, the Platt calibration);
`SegmentTable` collects an evaluation's probabilities where the batches say they sit in the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..evaluation import Aggregation, calibrate, decision_basis, file_decisions, fit_platt, sweep_threshold


@dataclass(frozen=True)
class DecisionOptions:
    """How a recording's long-window leak probabilities become its decision.

    Args:
        aggregation: "vote": a leak when at least `vote_fraction` of the windows reach the threshold;
            "mean": a leak when the mean window probability reaches it.
        vote_fraction: in vote mode, the share of leak windows that makes a leak recording.
    """

    aggregation: Aggregation = "vote"
    vote_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.aggregation not in ("vote", "mean"):
            raise ValueError(f"decision.aggregation {self.aggregation!r}: use 'vote' or 'mean'")
        if not 0 < self.vote_fraction <= 1:
            raise ValueError(f"decision.vote_fraction {self.vote_fraction}: use a share in (0, 1]")


class DecisionRule(nn.Module):
    """The threshold, its validation statistics and the calibration, as buffers (saved in checkpoints)."""

    def __init__(self, options: DecisionOptions = DecisionOptions()) -> None:
        super().__init__()
        self.options = options
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("threshold_stats", torch.tensor([float("nan"), float("nan")]))  # precision, recall
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # Platt (a, b)

    def basis(self, windows: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(F, L) window probabilities → (F,) the number each decision is made from, and its cutoff."""
        return decision_basis(windows, float(self.threshold), self.options.aggregation, self.options.vote_fraction)

    def decide(self, windows: torch.Tensor) -> torch.Tensor:
        """(F, L) window probabilities → (F,) leak decisions."""
        return file_decisions(windows, self.threshold[None], self.options.aggregation,
                              self.options.vote_fraction)[0]

    def probability(self, score: torch.Tensor) -> torch.Tensor:
        """The calibrated leak probability of a mean window score."""
        return calibrate(score, *self.calibration.tolist())

    def fit(self, windows: torch.Tensor | list[torch.Tensor], truth: torch.Tensor) -> float:
        """The threshold with the best file F1, and the Platt calibration of the mean score; returns the threshold.
        `windows`: (F, L), or a list of F recordings' windows when their lengths differ."""
        t, _ = sweep_threshold(windows, truth, self.options.aggregation, self.options.vote_fraction)
        self.threshold.fill_(t)
        means = torch.stack([w.mean() for w in windows]) if isinstance(windows, list) else windows.mean(-1)
        self.calibration.copy_(torch.tensor(fit_platt(means.cpu(), truth.cpu())))
        return t

    def record(self, precision: torch.Tensor, recall: torch.Tensor) -> None:
        self.threshold_stats.copy_(torch.stack([precision, recall]))


class SegmentTable:
    """An evaluation's segment probabilities and targets, placed by their row in the split.

    Written by hand rather than as a torchmetrics list state: a rank that scored nothing has an empty list,
    which skips the collective the other ranks enter (a hang); here every rank joins one sum-reduce.
    """

    def __init__(self, num_classes: int, segments_per_file: int) -> None:
        self.num_classes, self.segments_per_file = num_classes, segments_per_file
        self.parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (first row, probs, targets)

    def add(self, start: int, probs: torch.Tensor, targets: torch.Tensor) -> None:
        self.parts.append((start, probs, targets))

    def reset(self) -> None:
        self.parts = []

    def gather(self, reduce: Callable[[torch.Tensor, str], torch.Tensor], device: torch.device):
        """Every rank's rows on every rank (a collective: call it on every rank) → (N, C) probabilities,
        (N, C) targets, (N,) scored; N rounded up to whole files. Empties the table."""
        spf, c = self.segments_per_file, self.num_classes
        end = max((start + len(p) for start, p, _ in self.parts), default=0)
        n = int(reduce(torch.tensor(end, device=device), "max"))
        table = torch.zeros(math.ceil(n / spf) * spf, 2 * c + 1, device=device)
        for start, p, y in self.parts:
            table[start: start + len(p)] = torch.cat([p, y.to(p.dtype), torch.ones_like(p[:, :1])], dim=1)
        self.reset()
        table = reduce(table, "sum")  # every row was scored by at most one rank
        return table[:, :c], table[:, c: 2 * c], table[:, -1] > 0
