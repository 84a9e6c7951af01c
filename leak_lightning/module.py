"""LeakClassifier: multi-label BCE on segments, metrics at segment and file level."""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Literal

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision, MultilabelF1Score

from .contract import SECTION, ModelContract
from .evaluation import (
    DEFAULT_GRID,
    Aggregation,
    FileScores,
    calibrate,
    expected_calibration_error,
    file_decisions,
    file_metrics,
    fit_platt,
    score_files,
    sweep_threshold,
)
from .features import FeatureConfig, LogMelFrontend
from .models import LeakCNN
from .models.augment import Augmentation, SpectrumAugment

log = logging.getLogger(__name__)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


def _pos_weight(value, num_classes: int, counts: list[int] | None, files: int | None) -> list[float] | None:
    """Explicit per-class weights, or "auto": each class's negatives over positives in the training split."""
    if value == "auto":
        if counts is None or not files:
            raise ValueError("--model.pos_weight auto needs the training split's class counts: set data.train_h5")
        weights = [round((files - c) / max(c, 1), 4) for c in counts]
        log.info("loss: BCE with pos_weight auto from the training split (%d files): %s", files, weights)
        return weights
    if value is not None and len(value) != num_classes:
        raise ValueError(f"pos_weight has {len(value)} values for {num_classes} classes")
    return list(value) if value else None


def _segment_metrics(num_classes: int) -> MetricCollection:
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


class LeakClassifier(L.LightningModule):
    """Wraps a plain LeakCNN; class names, feature config and class count come from the data.

    Args:
        leak_class_name: the class whose file-level decision is the product (chosen by name).
        pos_weight: per-class positive weights for the BCE loss; "auto": negatives/positives of each
            class in the training split (`class_counts`, linked from the data).
        augment: training-time augmentation of the log-mel batches (models/augment.py); masks are
            `freq_mask` / `time_mask`.
        aggregation: file score from long windows, "vote" (fraction at/above threshold) or "mean".
        vote_fraction: in vote mode, the fraction of leak windows that makes a leak file.
        compile: torch.compile the network; None = on CUDA only. Failure falls back to eager.
        compile_mode: torch.compile's mode; "reduce-overhead" replays CUDA graphs (fewer kernel
            launches per step), "max-autotune" also searches kernel configurations.
        fused_adamw: AdamW's fused kernel (one launch per step instead of one per op and tensor
            group); None = on when the parameters live on CUDA. Same update rule either way.
    """

    def __init__(self, num_classes: int, class_names: list[str], feature_config: dict,
                 leak_class_name: str = "LEAK", channels: tuple[int, ...] = (48, 96, 192, 256),
                 hidden: int = 256, dropout: float = 0.3, freq_mask: int = 8, time_mask: int = 0,
                 lr: float = 1e-3, weight_decay: float = 1e-2, min_lr_ratio: float = 0.01,
                 pos_weight: list[float] | Literal["auto"] | None = None, augment: Augmentation = Augmentation(),
                 aggregation: Aggregation = "vote", vote_fraction: float = 0.5, compile: bool | None = None,
                 compile_mode: CompileMode = "default", fused_adamw: bool | None = None,
                 class_counts: list[int] | None = None, train_files: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        if len(class_names) != num_classes:
            raise ValueError(f"class_names {class_names} has {len(class_names)} entries, "
                             f"expected {num_classes}")
        if leak_class_name not in class_names:
            raise ValueError(f"leak_class_name {leak_class_name!r} is not one of the dataset's classes "
                             f"{class_names}; set --model.leak_class_name to one of them")
        self.leak_index = class_names.index(leak_class_name)
        self.features = FeatureConfig.from_dict(feature_config)
        self.net = LeakCNN(num_classes, self.features.n_mels, self.features.t_frames, tuple(channels),
                           hidden, dropout, freq_mask, time_mask)
        aug = augment if isinstance(augment, Augmentation) else Augmentation(**augment)
        f = self.features
        self.augment = SpectrumAugment(aug, f.n_mels, f.f_min, f.f_max or f.sample_rate / 2, self.leak_index)
        self.pos_weights = _pos_weight(pos_weight, num_classes, class_counts, train_files)
        self.loss_fn = nn.BCEWithLogitsLoss(
            pos_weight=torch.tensor(self.pos_weights, dtype=torch.float32) if self.pos_weights else None)
        # decided on validation, saved in checkpoints: the threshold, its validation precision and
        # recall, and the Platt calibration (a, b) of the file leak score
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("threshold_stats", torch.tensor([float("nan"), float("nan")]))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))
        self.val_metrics = _segment_metrics(num_classes)
        self.test_metrics = _segment_metrics(num_classes)
        self._compiled: nn.Module | None = None
        self._sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._scored: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # evaluation: (first segment, probs, y)
        self.last_results: dict | None = None  # test/validate results for reports

    # ---- forward, with torch.compile when asked and a fallback to eager -------------------
    def setup(self, stage: str) -> None:
        use = self.hparams.compile
        if use is None:
            use = self.device.type == "cuda" or (self.trainer is not None
                                                 and self.trainer.strategy.root_device.type == "cuda")
        if use and self._compiled is None:
            # not a registered submodule: parameters stay under `net.` in checkpoints
            object.__setattr__(self, "_compiled", torch.compile(self.net, mode=self.hparams.compile_mode))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            try:
                return self._compiled(x)
            except Exception as err:  # compile errors surface at the first call
                log.warning("torch.compile failed (%s: %s); continuing in eager mode",
                            type(err).__name__, str(err).splitlines()[0] if str(err) else "")
                object.__setattr__(self, "_compiled", None)
        return self.net(x)

    # ---- training -------------------------------------------------------------------------
    def _accumulate(self, name: str, value: torch.Tensor, count: int) -> None:
        # a device-side running sum (one fused op) and a Python count: no per-step self.log,
        # .item() or host-to-device copy in the hot loop
        total, n = self._sums.get(name, (0.0, 0))
        self._sums[name] = (value.detach().float() * count + total, n + count)

    def _mean(self, name: str, pop: bool = True) -> torch.Tensor | None:
        """Mean over all ranks of an accumulated value (a collective: call it on every rank)."""
        if name not in self._sums:
            return None
        total, n = self._sums.pop(name) if pop else self._sums[name]
        s = torch.stack([total, torch.tensor(float(n), device=total.device)])
        s = self.trainer.strategy.reduce(s, reduce_op="sum")
        return s[0] / s[1].clamp(min=1)

    def running_train_loss(self) -> torch.Tensor | None:
        return self._mean("train/loss", pop=False)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        x, y = self.augment(x, y)
        loss = self.loss_fn(self(x).float(), y)
        self._accumulate("train/loss", loss, len(x))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        trainer = self.trainer
        # --trainer.max_steps inside an epoch would end the run before any validation: no metric for
        # early stopping, no best.ckpt. Asking to stop lets Lightning validate first (as early stopping does).
        if 0 < trainer.max_steps <= trainer.global_step and not trainer.should_stop:
            trainer.should_stop = True
        # The step loss and learning rate every log_every_n_steps, straight to the loggers: one host
        # sync per n steps, not self.log's per-step bookkeeping.
        every = trainer.log_every_n_steps
        if self.loggers and every and trainer.global_step % every == 0:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            metrics = {"train/loss_step": float(loss.detach()),
                       "lr": trainer.optimizers[0].param_groups[0]["lr"]}
            for logger in self.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_epoch_end(self) -> None:
        mean = self._mean("train/loss")
        if mean is not None:
            self.log("train/loss", mean, sync_dist=True)

    def _total_steps(self) -> int:
        """Optimizer steps this run makes: the length of the cosine schedule."""
        return max(1, int(self.trainer.estimated_stepping_batches))

    def on_train_start(self) -> None:
        # A resumed run keeps its saved scheduler. Run longer (more epochs, a smaller batch) and its
        # cosine would end early, then climb back to the full rate: stretch it so the decay
        # continues from the current rate to this run's end.
        if self.trainer.ckpt_path is None:
            return
        total = self._total_steps()
        for config in self.trainer.lr_scheduler_configs:
            sched = config.scheduler
            if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max != total:
                log.info("learning-rate schedule stretched from %d to %d steps for this run's length",
                         sched.T_max, total)
                sched.T_max = total

    def configure_optimizers(self):
        fused = self.hparams.fused_adamw
        if fused is None:
            fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                fused=fused or None)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self._total_steps(), eta_min=self.hparams.lr * self.hparams.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

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
        self.last_results = {"stage": stage, "metrics": {k: float(v) for k, v in values.items()},
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

    # ---- the checkpoint owns its classes, leak class, frontend and threshold -------------------
    def contract(self) -> ModelContract:
        return ModelContract(tuple(self.hparams.class_names), self.hparams.leak_class_name, self.features, "")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[SECTION] = self.contract().section(float(self.threshold))
        a, b = self.calibration.tolist()
        precision, recall = self.threshold_stats.tolist()
        checkpoint[SECTION].update(
            threshold_validation={"precision": precision, "recall": recall},
            calibration={"method": "platt", "a": a, "b": b,
                         "input": "logit of the mean long-window leak probability, clamped to [1e-4, 1 - 1e-4]"})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints from before calibration: identity calibration, unknown threshold statistics
        state = checkpoint.get("state_dict", {})
        state.setdefault("calibration", torch.tensor([1.0, 0.0]))
        state.setdefault("threshold_stats", torch.tensor([float("nan"), float("nan")]))

    # ---- prediction: raw recordings through the same frontend as the builder ----------------
    def prepare_predict(self) -> None:
        # not registered: its mel buffers would otherwise join the checkpoint's state_dict
        object.__setattr__(self, "_frontend", LogMelFrontend(self.features).to(self.device))

    def on_predict_start(self) -> None:
        self.prepare_predict()

    def score_windows(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, num_samples) clip-long windows → leak probability per long window (W, L), class probabilities (W, C)."""
        seg = self._frontend(wave).half()  # stored as float16 by the builder: the model saw those values
        n_windows, n_long, n_short = seg.shape[:3]
        logits = self(seg.reshape(-1, *seg.shape[-2:])).float()
        probs = torch.sigmoid(logits).reshape(n_windows, n_long, n_short, -1)
        return probs[..., self.leak_index].mean(2), probs.mean((1, 2))

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        # (W, num_samples) clip-long windows; per window: recording, window number, silent
        wave, owner, index, silent = batch
        windows, class_probs = self.score_windows(wave)
        return {"owner": owner, "index": index, "silent": silent, "windows": windows, "class_probs": class_probs}

    def decide_recording(self, windows: torch.Tensor) -> tuple[float, float, bool]:
        """All long-window leak probabilities of one recording → (mean score, calibrated leak probability,
        leak decision)."""
        flat = windows.reshape(1, -1)
        score = flat.mean()
        return float(score), float(calibrate(score, *self.calibration.tolist())), bool(self._decide(flat)[0])

    def _decide(self, windows: torch.Tensor) -> torch.Tensor:
        return file_decisions(windows, self.threshold[None], self.hparams.aggregation,
                              self.hparams.vote_fraction)[0]
