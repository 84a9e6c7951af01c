"""File-level evaluation of a validate/test pass as one object: `update` per batch, `compute` at the epoch's
end, `reset` before the next (the torchmetrics protocol), with the computed result kept for the reports.

Not a `torchmetrics.Metric`: its state is the split's rows placed where the batches say they sit, gathered by
ONE sum-reduce that every rank joins (`SegmentTable`); a Metric's list state is synced by an all-gather that a
rank which scored nothing skips (an empty list has no tensor to gather), which hangs the other ranks. And its
`compute` fits the decision rule on validation (a side effect on the model's rule), where a Metric's
`compute` is expected to be a cached, repeatable function of the state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models.decision import DecisionRule, SegmentTable
from ..models.evaluation import DEFAULT_GRID, FileScores, expected_calibration_error, file_metrics, score_files

log = logging.getLogger(__name__)
Reduce = Callable[[torch.Tensor, str], torch.Tensor]


@dataclass
class FileResults:
    """What one validate/test pass computed: every metric by name (those given to `compute` included) and, per
    file scored whole (CPU tensors, F rows, by `files`), what the reports, CSV and plots show."""

    stage: str
    metrics: dict[str, float]
    files: torch.Tensor  # (F,) the files' row numbers in the split
    file_probs: torch.Tensor  # (F, C) mean class probabilities
    file_scores: torch.Tensor  # (F,) mean window leak probability
    file_probability: torch.Tensor  # (F,) that, calibrated
    decision_scores: torch.Tensor  # (F,) the number each decision is made from
    decision_cutoff: float  # what it is compared with
    decisions: torch.Tensor  # (F,) bool
    windows: torch.Tensor  # (F, L) leak probability per long window (per recording: one)
    targets: torch.Tensor  # (F, C)

    def __getitem__(self, key: str):
        """`result["files"]`: plots.report_figures reads a result by name, as it reads a dict."""
        return getattr(self, key)


class FileEvaluation:
    """Segment probabilities of a pass → per-file scores → file-level metrics (and, on validation, the decision
    rule's threshold and calibration).

    Args:
        num_classes, num_long, num_short: the data's classes and segments per file (long × short windows).
        leak_index, leak_name: the leak class.
        whole_recordings: the network scores whole recordings (RecordingNet): its decision reads one pooled
            probability per recording, given to `update` as `recordings`.
    """

    def __init__(self, num_classes: int, num_long: int, num_short: int, leak_index: int, leak_name: str,
                 whole_recordings: bool = False) -> None:
        self.num_long, self.num_short, self.leak_index, self.leak_name = num_long, num_short, leak_index, leak_name
        self.whole_recordings = whole_recordings
        self.scored = SegmentTable(num_classes, num_long * num_short)  # segment probabilities, by row
        self.recorded = SegmentTable(num_classes, 1)  # a recording-level network's, by file
        self.result: FileResults | None = None  # the last pass computed
        self._warned_small_val = False  # once per run: it is the validation set's size that is the issue

    def update(self, start: int, probs: torch.Tensor, targets: torch.Tensor,
               recordings: torch.Tensor | None = None, recording_targets: torch.Tensor | None = None) -> None:
        """A batch's (N, C) segment probabilities and targets, whose first segment is row `start` of the split;
        for a recording-level network also its (R, C) recording probabilities and targets (whole files)."""
        self.scored.add(start, probs, targets)
        if recordings is not None:
            self.recorded.add(start // (self.num_long * self.num_short), recordings, recording_targets)

    def reset(self) -> None:
        self.scored.reset()
        self.recorded.reset()

    def compute(self, rule: DecisionRule, reduce: Reduce, device: torch.device, stage: str, *, sweep: bool,
                quiet: bool = False, more: dict[str, torch.Tensor] | None = None,
                check: Callable[[FileScores], None] | None = None) -> dict[str, torch.Tensor]:
        """Every rank's scores on every rank (a collective: call it on every rank) → the metric values by name.
        With `sweep`, fit `rule` first (when the files have both leaks and others). `more` (segment-level values)
        joins the values; `check` sees the file scores first (a warning about partly scored files); `quiet`
        (Lightning's sanity check) leaves the warnings out. Keeps the result in `result`; the tables are emptied."""
        probs, targets, seen = self.scored.gather(reduce, device)
        scores = score_files(probs, targets, seen, self.num_long, self.num_short, self.leak_index)
        if self.whole_recordings:  # a collective too: every rank runs the same network, so every rank joins it
            scores = recording_scores(*self.recorded.gather(reduce, device), self.leak_index, scores.partial)
        if check is not None and not quiet:
            check(scores)
        leaks, n = int(scores.targets[:, self.leak_index].sum()), len(scores.index)
        if not quiet and n and not 0 < leaks < n:
            log.warning("%s: %d of the %d files scored are %s: the leak F1/AUROC are undefined (NaN)%s", stage, leaks,
                        n, self.leak_name, " and the threshold is not swept" * sweep)
        truth = scores.targets[:, self.leak_index].bool()
        sweep = sweep and 0 < leaks < n
        if sweep:
            self.fit(rule, scores, truth, leaks)
        decided = rule.decide(scores.windows)
        values = file_metrics(scores, decided, self.leak_index)
        if sweep:
            rule.record(values["file_leak_precision"], values["file_leak_recall"])
        mean_score = scores.windows.mean(-1)
        probability = rule.probability(mean_score)
        values["file_leak_ece"] = torch.tensor(expected_calibration_error(probability, truth))
        values["file_leak_ece_uncalibrated"] = torch.tensor(expected_calibration_error(mean_score, truth))
        values.update(more or {})
        values["threshold"] = rule.threshold.clone()
        basis, cutoff = rule.basis(scores.windows)
        self.result = FileResults(
            stage=stage, metrics={k: float(v) for k, v in values.items()}, files=scores.index.cpu(),
            file_probs=scores.class_scores.cpu(), file_scores=mean_score.cpu(), file_probability=probability.cpu(),
            decision_scores=basis.cpu(), decision_cutoff=cutoff, decisions=decided.cpu(),
            windows=scores.windows.cpu(), targets=scores.targets.cpu())
        return values

    def fit(self, rule: DecisionRule, scores: FileScores, truth: torch.Tensor, leaks: int) -> None:
        """The threshold (best file F1 on validation) and the calibration; a warning when they are uncertain."""
        t = rule.fit(scores.windows, truth)
        if len(rule.sweeps) > 1:
            log.debug("reading chosen on validation: %s (%s)", rule.reading_text(), "; ".join(
                f"{s['aggregation']} {s['vote_fraction'] or ''}: F1 {s['f1']:.3f} on {s['plateau']} thresholds"
                for s in rule.sweeps))
        edge = t <= float(DEFAULT_GRID[0]) + 1e-6 or t >= float(DEFAULT_GRID[-1]) - 1e-6
        if (edge or leaks < 20) and not self._warned_small_val:
            self._warned_small_val = True
            log.warning("the threshold (%.2f%s) was swept on only %d %s file(s) among %d: it is uncertain; "
                        "use a validation split with 20 or more leak files", t, ", at the edge of the sweep" * edge,
                        leaks, self.leak_name, len(truth))


def recording_scores(probs: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor, leak_index: int,
                     partial: int) -> FileScores:
    """A recording-level network's (N, C) recording probabilities and targets, (N,) scored → FileScores whose
    "windows" are what its decision reads: one number per recording, its pooled leak probability."""
    return FileScores(index=torch.nonzero(seen).flatten(), windows=probs[seen][:, leak_index: leak_index + 1],
                      class_scores=probs[seen], targets=targets[seen], partial=partial)
