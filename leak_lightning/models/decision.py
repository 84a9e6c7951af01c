"""From scored segments to a recording's answer: the decision rule and the table of scored segments.

Both are declared parts of LeakClassifier (no Lightning here): `DecisionRule` holds what validation
decides and the checkpoint keeps (the reading of the windows, the threshold, its validation precision/recall,
the Platt calibration); `SegmentTable` collects an evaluation's probabilities where the batches say they sit
in the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from .evaluation import Aggregation, calibrate, decision_basis, file_decisions, fit_platt, sweep

Reading = tuple[Aggregation, float | None]  # ("vote", the share of windows) or ("mean", None)
VOTE, MEAN = 0.0, 1.0  # the kind in DecisionRule.reading


@dataclass(frozen=True)
class DecisionOptions:
    """How a recording's long-window leak probabilities become its decision.

    Args:
        aggregation: "vote": a leak when at least `vote_fraction` of the windows reach the threshold;
            "mean": a leak when the mean window probability reaches it; "auto": the reading is chosen on
            validation (and by `adapt` per site) among vote at each of `fractions`, and mean.
        vote_fraction: in vote mode, the share of leak windows that makes a leak recording (with "auto",
            the reading until validation has chosen one).
        fractions: with "auto", the vote fractions tried. A high one reads the recording's floor (90 %: its
            10th-percentile window), which hears a steady faint leak under passing noise that a majority misses.
    """

    aggregation: Literal["vote", "mean", "auto"] = "auto"
    vote_fraction: float = 0.5
    fractions: tuple[float, ...] = (0.5, 0.75, 0.9)

    def __post_init__(self) -> None:
        if self.aggregation not in ("vote", "mean", "auto"):
            raise ValueError(f"decision.aggregation {self.aggregation!r}: use 'vote', 'mean' or 'auto' (chosen on "
                             "validation)")
        if not _is_share(self.vote_fraction):
            raise ValueError(f"decision.vote_fraction {self.vote_fraction}: use a share in (0, 1]")
        fractions = tuple(self.fractions)  # a config gives a list
        object.__setattr__(self, "fractions", fractions)
        if not fractions:
            raise ValueError("decision.fractions is empty: give the vote fractions to choose among, "
                             "e.g. [0.5, 0.75, 0.9]")
        if bad := [f for f in fractions if not _is_share(f)]:
            raise ValueError(f"decision.fractions {list(fractions)}: {bad[0]} is not a share in (0, 1]; "
                             "use e.g. [0.5, 0.75, 0.9]")
        if len(set(fractions)) < len(fractions):
            raise ValueError(f"decision.fractions {list(fractions)}: a fraction is named twice; name each once")

    def initial(self) -> Reading:
        """The reading before anything is fitted ("auto": vote at `vote_fraction`)."""
        return ("mean", None) if self.aggregation == "mean" else ("vote", float(self.vote_fraction))

    def candidates(self) -> list[Reading]:
        """The readings `DecisionRule.fit` chooses among, in the order that settles a tie."""
        if self.aggregation == "auto":
            return [("vote", float(f)) for f in self.fractions] + [("mean", None)]
        return [self.initial()]


def _is_share(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


def reading_state(aggregation: str, vote_fraction: float | None) -> torch.Tensor:
    """The `decision.reading` buffer of a reading: (kind, vote fraction); a mean reading keeps 0 as its fraction."""
    if aggregation == "mean":
        return torch.tensor([MEAN, 0.0])
    return torch.tensor([VOTE, float(vote_fraction)])


def _short(value: torch.Tensor) -> float:
    """A float32 buffer's value as the shortest decimal that reads back to the same float32 (0.9, not
    0.8999999761581421): plain in JSON, and deciding with it compares exactly as with the buffer."""
    return float(str(np.float32(value.item())))


class DecisionRule(nn.Module):
    """The reading and threshold, their validation statistics and the calibration, as buffers (saved in
    checkpoints): the reading is state, chosen by `fit`, not config."""

    def __init__(self, options: DecisionOptions = DecisionOptions()) -> None:
        super().__init__()
        self.options = options
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("threshold_stats", torch.tensor([float("nan"), float("nan")]))  # precision, recall
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # Platt (a, b)
        self.register_buffer("reading", reading_state(*options.initial()))  # (kind: 0 vote, 1 mean; vote fraction)
        # the last fit's sweep of every candidate reading (not state: for the log of the run that fitted it)
        self.sweeps: list[dict] = []

    @property
    def aggregation(self) -> Aggregation:
        return "mean" if round(float(self.reading[0])) == MEAN else "vote"

    @property
    def vote_fraction(self) -> float | None:
        return None if self.aggregation == "mean" else _short(self.reading[1])

    def _mode(self) -> tuple[Aggregation, float]:
        fraction = self.vote_fraction
        return self.aggregation, 0.5 if fraction is None else fraction  # a mean reading ignores the fraction

    def basis(self, windows: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """(F, L) window probabilities → (F,) the number each decision is made from, and its cutoff."""
        return decision_basis(windows, float(self.threshold), *self._mode())

    def decide(self, windows: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """(F, L) window probabilities → (F,) leak decisions."""
        return file_decisions(windows, self.threshold[None], *self._mode())[0]

    def probability(self, score: torch.Tensor) -> torch.Tensor:
        """The calibrated leak probability of a mean window score."""
        return calibrate(score, *self.calibration.tolist())

    def fit(self, windows: torch.Tensor | list[torch.Tensor], truth: torch.Tensor) -> float:
        """The reading and threshold with the best file F1, and the Platt calibration of the mean score; returns
        the threshold. `windows`: (F, L), or a list of F recordings' windows when their lengths differ.

        Among readings of equal best F1 the one whose plateau (grid thresholds reaching that F1) is widest: its
        decisions tolerate the largest shift of a new site's scores; then the earlier candidate."""
        swept = [(r, sweep(windows, truth, r[0], 0.5 if r[1] is None else r[1])) for r in self.options.candidates()]
        best = max(s.f1 for _, s in swept)
        reading, chosen = max((rs for rs in swept if rs[1].f1 >= best - 1e-12), key=lambda rs: rs[1].plateau)
        self.sweeps = [{"aggregation": r[0], "vote_fraction": r[1], "threshold": s.threshold, "f1": s.f1,
                        "plateau": s.plateau} for r, s in swept]
        self.reading.copy_(reading_state(*reading))
        self.threshold.fill_(chosen.threshold)
        means = torch.stack([w.mean() for w in windows]) if isinstance(windows, list) else windows.mean(-1)
        self.calibration.copy_(torch.tensor(fit_platt(means.cpu(), truth.cpu())))
        return chosen.threshold

    def record(self, precision: torch.Tensor, recall: torch.Tensor) -> None:
        self.threshold_stats.copy_(torch.stack([precision, recall]))

    def describe(self) -> dict:
        """The rule in plain JSON: the one description the checkpoint section, the export sidecar, reports and
        adapt give."""
        return {"aggregation": self.aggregation, "vote_fraction": self.vote_fraction,
                "threshold": _short(self.threshold),
                "chosen_on": "validation" if self.options.aggregation == "auto" else "fixed",
                "candidates": [{"aggregation": a, "vote_fraction": f} for a, f in self.options.candidates()]}

    @classmethod
    def from_description(cls, described: dict) -> DecisionRule:
        """The rule `describe` gave (its reading, threshold and candidates; not the calibration)."""
        candidates = [(c["aggregation"], c["vote_fraction"]) for c in described["candidates"]]
        if described["chosen_on"] == "validation":
            options = DecisionOptions("auto", fractions=tuple(f for a, f in candidates if a == "vote"))
        else:
            options = DecisionOptions(described["aggregation"], described["vote_fraction"] or 0.5)
        rule = cls(options)
        rule.reading.copy_(reading_state(described["aggregation"], described["vote_fraction"]))
        rule.threshold.fill_(described["threshold"])
        return rule

    def reading_text(self) -> str:
        """One short line: 'a leak when 90 % of its windows reach 0.12'."""
        t = float(self.threshold)
        if self.aggregation == "mean":
            return f"a leak when its mean window reaches {t:.2f}"
        return f"a leak when {100 * self.vote_fraction:.4g} % of its windows reach {t:.2f}"


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
