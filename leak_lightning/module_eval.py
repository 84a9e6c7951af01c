"""Validation and test steps of LeakClassifier: probabilities collected from the batches, file-level
scores of what was scored whole, the threshold and its calibration (a mixin: module.py stays readable)."""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision, MultilabelF1Score

from .evaluation import (
    DEFAULT_GRID,
    FileScores,
    calibrate,
    decision_basis,
    expected_calibration_error,
    file_metrics,
    fit_platt,
    score_files,
    sweep_threshold,
)

log = logging.getLogger("leak_lightning.module")


def segment_metrics(num_classes: int) -> MetricCollection:
    # Binned (201 thresholds): constant memory over millions of segments, exact enough for AP/AUROC.
    return MetricCollection({
        "ap": MultilabelAveragePrecision(num_classes, average="none", thresholds=201),
        "auroc": MultilabelAUROC(num_classes, average="none", thresholds=201),
        "f1": MultilabelF1Score(num_classes, average="none"),
    })


@contextlib.contextmanager
def _counting_is_exact():
    """Lift torch's deterministic mode around metric updates.

    Under it torchmetrics swaps bincount for an N × bins comparison mesh, which for binned
    multilabel curves needs gigabytes per batch. Counts are integers, so bincount is exact anyway.
    """
    was = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if was:
        torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        if was:
            torch.use_deterministic_algorithms(True, warn_only=warn_only)


class EvaluationSteps:
    """validation_step/test_step and their epoch hooks for LeakClassifier (which provides forward,
    loss_fn, features, leak_index, hparams, threshold, calibration, threshold_stats, _decide, _mean)."""

    # ---- evaluation -----------------------------------------------------------------------
    # Probabilities are collected from the batches as they come (the batch says where its
    # segments sit in the split), so file-level scores use only what was actually scored and
    # the module needs no data module.
    def _eval_start(self) -> None:
        self._scored = []

    def _eval_step(self, batch, metrics: MetricCollection, prefix: str) -> None:
        x, y, start = batch
        logits = self(x).float()
        self._accumulate(f"{prefix}/loss", self.loss_fn(logits, y), len(x))
        probs = torch.sigmoid(logits)
        with _counting_is_exact():
            metrics.update(probs, y.int())
        self._scored.append((int(start), probs, y))

    def _gather_scored(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every rank's scored segments placed by index, on every rank (a collective): (N, C)
        probabilities, (N, C) targets, (N,) scored; N rounded up to whole files."""
        spf = self.features.num_long * self.features.num_short
        c = self.hparams.num_classes
        end = max((start + len(p) for start, p, _ in self._scored), default=0)
        n = int(self.trainer.strategy.reduce(torch.tensor(end, device=self.device), reduce_op="max"))
        table = torch.zeros(math.ceil(n / spf) * spf, 2 * c + 1, device=self.device)
        for start, p, y in self._scored:
            table[start: start + len(p)] = torch.cat([p, y.to(p.dtype), torch.ones_like(p[:, :1])], dim=1)
        self._scored = []
        # every segment was scored by at most one rank: a sum gathers the split everywhere
        table = self.trainer.strategy.reduce(table, reduce_op="sum")
        return table[:, :c], table[:, c: 2 * c], table[:, -1] > 0

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val", self.val_metrics, sweep=not self.trainer.sanity_checking)

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test", self.test_metrics, sweep=False)

    def _eval_end(self, stage: str, metrics: MetricCollection, sweep: bool) -> None:
        probs, targets, seen = self._gather_scored()
        scores = score_files(probs, targets, seen, self.features.num_long, self.features.num_short, self.leak_index)
        if not self.trainer.sanity_checking:
            self._warn_if_partial(stage, scores)
        leaks = int(scores.targets[:, self.leak_index].sum())
        if not self.trainer.sanity_checking and len(scores.index) and not 0 < leaks < len(scores.index):
            log.warning("%s: %d of the %d files scored are %s: the leak F1/AUROC are undefined (NaN)%s", stage, leaks,
                        len(scores.index), self.hparams.leak_class_name, " and the threshold is not swept" * sweep)
        truth = scores.targets[:, self.leak_index].bool()
        if sweep and 0 < leaks < len(scores.index):
            self._sweep(scores, truth, leaks)
        decided = self._decide(scores.windows)
        values = file_metrics(scores, decided, self.leak_index)
        if sweep and 0 < leaks < len(scores.index):
            self.threshold_stats.copy_(torch.stack([values["file_leak_precision"], values["file_leak_recall"]]))
        probability = calibrate(scores.windows.mean(-1), *self.calibration.tolist())
        values["file_leak_ece"] = torch.tensor(expected_calibration_error(probability, truth))
        values["file_leak_ece_uncalibrated"] = torch.tensor(expected_calibration_error(scores.windows.mean(-1), truth))
        with _counting_is_exact():
            seg = metrics.compute()
        metrics.reset()
        names = self.hparams.class_names
        for key, per_class in seg.items():
            values[f"seg_{key}_macro"] = per_class.nanmean()
            values[f"seg_leak_{key}"] = per_class[self.leak_index]
            for name, v in zip(names, per_class):
                values[f"seg_{key}/{name}"] = v
        values["loss"] = self._mean(f"{stage}/loss")
        values["threshold"] = self.threshold.clone()
        for key, v in values.items():
            # identical on every rank already; sync_dist only keeps Lightning's DDP bookkeeping quiet
            self.log(f"{stage}/{key}", v.float() if torch.is_tensor(v) else float(v), sync_dist=True)
        basis, cutoff = decision_basis(scores.windows, float(self.threshold), self.hparams.aggregation,
                                       self.hparams.vote_fraction)
        self.last_results = {"stage": stage, "metrics": {k: float(v) for k, v in values.items()},
                             "decision_scores": basis.cpu(), "decision_cutoff": cutoff,
                             "files": scores.index.cpu(), "file_probs": scores.class_scores.cpu(),
                             "file_scores": scores.windows.mean(-1).cpu(), "decisions": decided.cpu(),
                             "windows": scores.windows.cpu(), "file_probability": probability.cpu(),
                             "targets": scores.targets.cpu()}

    def _sweep(self, scores: FileScores, truth: torch.Tensor, leaks: int) -> None:
        """The threshold (best file F1 on validation) and the Platt calibration of the file leak score."""
        t, _ = sweep_threshold(scores.windows, truth, self.hparams.aggregation, self.hparams.vote_fraction)
        self.threshold.fill_(t)
        self.calibration.copy_(torch.tensor(fit_platt(scores.windows.mean(-1).cpu(), truth.cpu())))
        edge = t <= float(DEFAULT_GRID[0]) + 1e-6 or t >= float(DEFAULT_GRID[-1]) - 1e-6
        if (edge or leaks < 20) and not getattr(self, "_warned_small_val", False):
            self._warned_small_val = True  # once per run: it is the validation set's size that is the issue
            log.warning("the threshold (%.2f%s) was swept on only %d %s file(s) among %d: it is uncertain; "
                        "use a validation split with 20 or more leak files", t, ", at the edge of the sweep" * edge,
                        leaks, self.hparams.leak_class_name, len(truth))

    def _warn_if_partial(self, stage: str, scores: FileScores) -> None:
        limit = self.trainer.limit_val_batches if stage == "val" else self.trainer.limit_test_batches
        if not len(scores.index):
            log.warning("%s: no file was scored whole, so the file-level metrics are undefined (NaN) and the "
                        "threshold stays at %.2f", stage, float(self.threshold))
        elif scores.partial or limit != 1.0 or self.trainer.fast_dev_run:
            log.warning("%s: file-level metrics cover only the %d file(s) scored whole (limit_%s_batches=%s, "
                        "fast_dev_run=%s); %d partly scored file(s) left out", stage, len(scores.index), stage,
                        limit, self.trainer.fast_dev_run, scores.partial)
