"""LeakClassifier: multi-label BCE on segments, metrics at segment and file level, the recording's answer.

The network, the optimizer and the schedule are injected (LightningCLI `class_path`/`init_args`; the
defaults are in configs/); the module owns what turns them into a leak detector: the checkpoint's
contract (classes, frontend), the loss, augmentation, and the decision rule fitted on validation.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MultilabelAUROC, MultilabelAveragePrecision, MultilabelF1Score

from ..audio.features import FeatureConfig
from ..checkpoint.contract import SECTION, ModelContract
from ..checkpoint.io import load_checkpoint, refuse_foreign_code, safe_unpickling, unusable
from ..checkpoint.migrations import current_hparams, migrate_state
from ..checkpoint.record import write_decision_record
from ..inference.scorer import WindowScorer, WindowScores, score_segments, site_line
from ..models.augment import Augmentation, SpectrumAugment
from ..models.compiled import CompiledNet, CompileOptions
from ..models.decision import DecisionOptions, DecisionRule
from ..models.evaluation import FileScores
from ..models.optim import AdamW, CosineToEnd
from ..models.recording import PooledFrames
from .file_metrics import FileEvaluation

log = logging.getLogger(__name__)
_NO_SCALER = ("32-true", "32", "bf16-mixed", "bf16-true", "64-true", "64")


def default_optimizer(params: Iterable) -> torch.optim.Optimizer:
    return AdamW(params, lr=1e-3, weight_decay=1e-2)


def default_scheduler(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return CosineToEnd(optimizer, min_lr_ratio=0.01)


class LeakClassifier(L.LightningModule):
    """A network on log-mel segments, trained multi-label, deciding per recording whether the pipe leaks.

    Args:
        net: the network, (B, n_mels, T) → (B, classes) logits (default: models.LeakCNN; its `num_classes`,
            `n_mels` and `t_frames` are linked from the data); or a recording-level one (models.RecordingNet,
            `whole_recordings = True`): (R, F, n_mels, T) whole recordings → (recording logits, frame logits),
            trained on recording batches of the same files and deciding from its recording probability.
        optimizer: called with the parameters (default: models.optim.AdamW, lr 1e-3, weight decay 1e-2).
        scheduler: called with the optimizer, stepped every optimizer step (default: models.optim.CosineToEnd,
            whose length is set to the run's steps here).
        class_names: the data's classes (linked from the data; a checkpoint keeps them).
        feature_config: the frontend the data was built with (linked; a checkpoint keeps it).
        leak_class_name: the class whose recording-level decision is the product (chosen by name).
        pos_weight: per-class positive weights of the BCE loss; "auto": each class's negatives over its
            positives in the training split (set when `fit` starts; a checkpoint keeps them).
        train_class_counts: the training split's files per class (in `class_names` order), for pos_weight
            "auto" (linked from the data by the CLI; from Python, the data module's `train_class_counts`). Not
            a hyper-parameter: a checkpoint keeps the weights.
        train_files: the training split's files in all, with train_class_counts (linked; from Python, the data
            module's `train_files`; 0: no training split).
        augment: training-time augmentation of the log-mel batches (models/augment.py), masks included.
        decision: how window probabilities become a recording's decision (models/decision.py).
        compile: torch.compile of the network (models/compiled.py; on by default when training on CUDA).
        grad_clip: clip the gradients' global norm to this (None: no clipping). Training steps the
            optimizer itself, so Lightning's --trainer.gradient_clip_val does not apply.
    """

    def __init__(self, net: nn.Module, optimizer: OptimizerCallable = default_optimizer,
                 scheduler: LRSchedulerCallable = default_scheduler, class_names: list[str] | None = None,
                 feature_config: dict | None = None, leak_class_name: str = "LEAK",
                 pos_weight: list[float] | Literal["auto"] | None = None, train_class_counts: list[int] | None = None,
                 train_files: int | None = None, augment: Augmentation = Augmentation(),
                 decision: DecisionOptions = DecisionOptions(), compile: CompileOptions = CompileOptions(),
                 grad_clip: float | None = None) -> None:
        super().__init__()
        # From LightningCLI the hyper-parameters are the config (net, optimizer and scheduler as class_path and
        # init_args): a checkpoint rebuilds the same module from them.
        with warnings.catch_warnings():  # a net built in Python is saved by its weights (state_dict); that is enough
            warnings.filterwarnings("ignore", message=r"Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters(ignore=["train_class_counts", "train_files"])
        if not class_names or feature_config is None:
            raise ValueError("class_names and feature_config come from the data (LeakDataModule) or a checkpoint")
        if leak_class_name not in class_names:
            raise ValueError(f"leak_class_name {leak_class_name!r} is not one of the dataset's classes "
                             f"{class_names}; set --model.leak_class_name to one of them")
        self.net = net
        self.optimizer, self.scheduler = optimizer, scheduler
        self.class_names, self.leak_index = list(class_names), class_names.index(leak_class_name)
        self.features = FeatureConfig.from_dict(feature_config)
        self.compile_options = _as(compile, CompileOptions)
        f = self.features
        self.augment = SpectrumAugment(_as(augment, Augmentation), f.n_mels, f.f_min, f.f_max or f.sample_rate / 2,
                                       self.leak_index)
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(pos_weight, len(class_names)))
        self._train_counts = train_class_counts, train_files  # for pos_weight "auto", when `fit` starts
        decision = _as(decision, DecisionOptions)
        if self.whole_recordings and decision.aggregation != "mean":
            # one number per recording decides: its pooled probability; a vote over windows has nothing to read
            decision = DecisionOptions(aggregation="mean")
        self.decision = DecisionRule(decision)  # fitted on validation, kept in checkpoints
        self.automatic_optimization = False  # training_step steps the optimizer itself (blocks of steps)
        # no per-step host sync: torchmetrics' NaN checks read the value back, "disable" skips them
        self.losses = nn.ModuleDict({f"{s}_loss": MeanMetric(nan_strategy="disable") for s in ("train", "val", "test")})
        self.val_metrics = segment_metrics(len(class_names))
        self.test_metrics = segment_metrics(len(class_names))
        # validate/test per file (the reports read its `result`)
        self.file_eval = FileEvaluation(len(class_names), f.num_long, f.num_short, self.leak_index, leak_class_name,
                                        self.whole_recordings)
        self.compiled: CompiledNet | None = None
        self.site: dict | None = None  # the site a checkpoint was adapted to (`adapt`), when it was

    @property
    def whole_recordings(self) -> bool:
        """Whether the network hears whole recordings (RecordingNet): its batches are whole files, its decision
        the pooled recording probability."""
        return bool(getattr(self.net, "whole_recordings", False))

    @property
    def segments_per_file(self) -> int:
        return self.features.num_long * self.features.num_short

    # ---- forward, through torch.compile when asked --------------------------------------------
    def compiles(self, stage: str) -> bool:
        """Whether `stage` runs the network through torch.compile: asked for, or by default training on CUDA."""
        if self.compile_options.enabled is not None:
            return bool(self.compile_options.enabled)
        return self._on_cuda() and stage == "fit"

    def _on_cuda(self) -> bool:
        if self.device.type == "cuda":
            return True
        try:
            trainer = self.trainer
        except RuntimeError:  # the public property's answer when no Trainer is attached
            return False
        return trainer.strategy.root_device.type == "cuda"

    def setup(self, stage: str) -> None:
        if self._on_cuda():
            torch.set_float32_matmul_precision("high")  # TF32 matmuls: the float32 parts of a bf16-mixed step
        if stage == "fit" and self.hparams.get("pos_weight") == "auto":
            self._weigh_classes()
        if self.compiles(stage) and self.compiled is None:
            self.compiled = CompiledNet(self.net, self.compile_options.mode, self.compile_options.cache)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.compiled(x) if self.compiled is not None else self.net(x)

    def _weigh_classes(self) -> None:
        """pos_weight "auto": negatives over positives of each class in the training split (a resumed run
        restores the weights it started with, after this)."""
        counts, files = self._train_counts
        if files is None:  # not linked: the CLI always links a number (0 without a training split)
            raise ValueError("pos_weight='auto' needs the training split's class counts: pass "
                             "train_class_counts=data.train_class_counts and train_files=data.train_files "
                             "(a LeakDataModule with train_h5) to LeakClassifier")
        if counts is None or not files:
            raise ValueError("--model.pos_weight auto needs the training split's class counts: set data.train_h5")
        weights = [round((files - c) / max(c, 1), 4) for c in counts]
        self.loss_fn.pos_weight.copy_(torch.tensor(weights))
        log.info("loss: BCE with pos_weight auto from the training split (%d files): %s", files, weights)

    # ---- training -------------------------------------------------------------------------
    def running_train_loss(self) -> torch.Tensor | None:
        """The mean training loss of the epoch so far, over all ranks (a collective: call it on every rank)."""
        metric = self.losses["train_loss"]
        return metric.compute() if metric.update_count else None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """One optimizer step per batch: a batch, or a block of them (`data.steps_per_call`).

        Manual optimization, so that a block costs Lightning's per-step machinery (hooks, loops,
        logging, progress bar) once for all its steps; the update is the same as Lightning's own.
        """
        xs, ys, _ = batch
        if torch.is_tensor(xs):
            xs, ys = [xs], [ys]
        opt, sched = self.optimizers(), self.lr_schedulers()
        trainer, clip = self.trainer, self.hparams.get("grad_clip")
        # Inside a block, all steps but the last skip Lightning's backward and optimizer-step hooks
        # (callbacks see one step per block), where the precision needs no loss scaler.
        quick = len(xs) > 1 and str(trainer.precision) in _NO_SCALER
        for i, (x, y) in enumerate(zip(xs, ys)):
            if 0 < trainer.max_steps <= trainer.global_step:
                break  # a block may reach --trainer.max_steps part-way
            loss = self.step_loss(x, y)
            opt.zero_grad(set_to_none=True)
            if quick and i < len(xs) - 1:
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(self.parameters(), clip)
                opt._on_before_step()  # the progress counts behind trainer.global_step (lightning_private.py)
                opt.optimizer.step()
                opt._on_after_step()
            else:
                self.manual_backward(loss)
                if clip:
                    self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
                opt.step()
            sched.step()
            self.losses["train_loss"].update(loss.detach(), len(x))
            self._log_step(loss)
        return loss

    def step_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch: augmentation (in training mode), network, BCE with pos_weight. A
        recording-level network's batch is whole files (`spf` segments each, contiguous): its loss is the
        recordings' BCE plus `frame_weight` times its frames' (each frame labelled as its recording)."""
        if not self.whole_recordings:
            x, y = self.augment(x, y)
            return self.loss_fn(self(x).float(), y)
        spf = self.segments_per_file
        x, y = self.augment(x, y, per=spf)
        recordings, frames = self(x.reshape(-1, spf, *x.shape[1:]))
        weight = float(getattr(self.net, "frame_weight", 0.0))
        loss = self.loss_fn(recordings.float(), y[::spf])
        return loss + weight * self.loss_fn(frames.reshape(-1, frames.shape[-1]).float(), y) if weight else loss

    def _log_step(self, loss: torch.Tensor) -> None:
        # The step loss every log_every_n_steps, straight to the loggers: one host sync per n steps, not
        # self.log's per-step bookkeeping (the learning rate: LearningRateMonitor, added by the CLI).
        every, step = self.trainer.log_every_n_steps, self.trainer.global_step
        if self.loggers and every and step % every == 0:
            for logger in self.loggers:
                logger.log_metrics({"train/loss_step": float(loss.detach())}, step=step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # --trainer.max_steps inside an epoch would end the run before any validation: no metric for
        # early stopping, no best.ckpt. Asking to stop lets Lightning validate first (as early stopping does).
        trainer = self.trainer
        if 0 < trainer.max_steps <= trainer.global_step and not trainer.should_stop:
            trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        if self.losses["train_loss"].update_count:
            self.log("train/loss", self.losses["train_loss"].compute(), sync_dist=False)
        self.losses["train_loss"].reset()

    def _total_steps(self) -> int:
        """Optimizer steps this run makes: the length of the schedule."""
        t = self.trainer
        calls = int(t.estimated_stepping_batches)  # Lightning steps (blocks); also builds the train loader
        per_epoch = getattr(t.train_dataloader, "optimizer_steps", None)
        if per_epoch is None or t.max_epochs is None or t.max_epochs < 0:
            return max(1, calls)
        total = per_epoch * t.max_epochs
        return max(1, min(total, t.max_steps) if t.max_steps > 0 else total)

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
        opt = self.optimizer(self.parameters())
        sched = self.scheduler(opt)
        if isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR):
            sched.T_max = self._total_steps()  # the cosine spans this run's optimizer steps
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    # ---- evaluation -----------------------------------------------------------------------
    # Probabilities are collected from the batches as they come (the batch says where its segments
    # sit in the split), so file-level scores use only what was actually scored and the module needs
    # no data module.
    def _eval_step(self, batch, metrics: MetricCollection, stage: str) -> None:
        x, y, start = batch
        if self.whole_recordings:  # evaluation batches are whole files, in order
            spf = self.segments_per_file
            recordings, frames = self(x.reshape(-1, spf, *x.shape[1:]))
            recordings = recordings.float()
            self.losses[f"{stage}_loss"].update(self.loss_fn(recordings, y[::spf]), len(recordings))
            pooled = torch.sigmoid(recordings), y[::spf]
            logits = frames.reshape(-1, frames.shape[-1]).float()
        else:
            logits = self(x).float()
            self.losses[f"{stage}_loss"].update(self.loss_fn(logits, y), len(x))
            pooled = None, None
        probs = torch.sigmoid(logits)
        with _counting_is_exact():
            metrics.update(probs, y.int())
        self.file_eval.update(int(start), probs, y, *pooled)

    def on_validation_epoch_start(self) -> None:
        self.file_eval.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val", self.val_metrics, sweep=not self.trainer.sanity_checking)

    def on_test_epoch_start(self) -> None:
        self.file_eval.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test", self.test_metrics, sweep=False)

    def _eval_end(self, stage: str, metrics: MetricCollection, sweep: bool) -> None:
        values: dict[str, torch.Tensor] = {}
        with _counting_is_exact():
            seg = metrics.compute()
        metrics.reset()
        for key, per_class in seg.items():
            values[f"seg_{key}_macro"] = per_class.nanmean()
            values[f"seg_leak_{key}"] = per_class[self.leak_index]
            for name, v in zip(self.class_names, per_class):
                values[f"seg_{key}/{name}"] = v
        loss = self.losses[f"{stage}_loss"]
        values["loss"] = loss.compute() if loss.update_count else torch.tensor(float("nan"))
        loss.reset()
        values = self.file_eval.compute(
            self.decision, lambda t, op: self.trainer.strategy.reduce(t, reduce_op=op), self.device, stage,
            sweep=sweep, quiet=self.trainer.sanity_checking, more=values, check=partial(self._warn_if_partial, stage))
        for key, v in values.items():
            # identical on every rank already; sync_dist only keeps Lightning's DDP bookkeeping quiet
            self.log(f"{stage}/{key}", v.float() if torch.is_tensor(v) else float(v), sync_dist=True)

    def _warn_if_partial(self, stage: str, scores: FileScores) -> None:
        limit = self.trainer.limit_val_batches if stage == "val" else self.trainer.limit_test_batches
        if not len(scores.index):
            log.warning("%s: no file was scored whole, so the file-level metrics are undefined (NaN) and the "
                        "threshold stays at %.2f", stage, float(self.decision.threshold))
        elif scores.partial or limit != 1.0 or self.trainer.fast_dev_run:
            log.warning("%s: file-level metrics cover only the %d file(s) scored whole (limit_%s_batches=%s, "
                        "fast_dev_run=%s); %d partly scored file(s) left out", stage, len(scores.index), stage,
                        limit, self.trainer.fast_dev_run, scores.partial)

    # ---- the checkpoint owns its classes, leak class, frontend and threshold -------------------
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool | None = None, **kwargs) -> LeakClassifier:
        """Lightning's loader with torch's safe unpickler only, as every read of a checkpoint here
        (checkpoint_io.load_checkpoint): `weights_only=False` is not honoured; a refused file is one line.
        Lightning imports and calls the `_instantiator` and class paths the file names: the bytes are read once
        and checked before Lightning builds from those same bytes (no swap between a check and a second read)."""
        where = str(checkpoint_path)
        if isinstance(checkpoint_path, (str, os.PathLike)):
            data = Path(checkpoint_path).read_bytes()
        else:
            data = checkpoint_path.read()
        ckpt = load_checkpoint(io.BytesIO(data))
        if isinstance(ckpt, str):
            raise unusable(where, ckpt)
        refuse_foreign_code(ckpt, where)
        with safe_unpickling():
            return super().load_from_checkpoint(io.BytesIO(data), map_location, hparams_file, strict,
                                                weights_only=True, **kwargs)

    @classmethod
    def for_inference(cls, ckpt: dict, device: torch.device) -> LeakClassifier:
        """An eval-mode, uncompiled model from a checkpoint already read (`checkpoint_io.read_checkpoint`):
        what `load_from_checkpoint` builds, without reading the file a second time."""
        from lightning.pytorch.cli import instantiate_module

        hparams = {k: v for k, v in current_hparams(ckpt["hyper_parameters"]).items() if not k.startswith("_")}
        hparams["compile"] = {"enabled": False}
        model = (cls(**hparams) if isinstance(hparams.get("net"), nn.Module)  # built in Python, not by the CLI
                 else instantiate_module(cls, hparams))
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(device).eval()

    def contract(self) -> ModelContract:
        return ModelContract(tuple(self.class_names), self.hparams.leak_class_name, self.features, "")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the section is written whole at every save, from the model's own contract and rule
        checkpoint[SECTION] = self.contract().section()
        write_decision_record(checkpoint, self.decision, self.whole_recordings)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        migrate_state(checkpoint)
        self.site = (checkpoint.get(SECTION) or {}).get("site")

    def site_line(self) -> str | None:
        """One line on the site this checkpoint was adapted to, or None (inference.scorer.site_line)."""
        return site_line(self.site, self.decision)

    # ---- prediction: raw recordings through the one scoring path (inference.scorer) ------------
    def prepare_predict(self) -> WindowScorer:
        """Score raw windows from here on through a WindowScorer with this model's frontend on its device:
        `predict_step`, `LeakDetector` and the two helpers below. A plain attribute, not a submodule, so the
        frontend's mel buffers never join the checkpoint's state_dict."""
        self.scorer = WindowScorer(self)
        return self.scorer

    def on_predict_start(self) -> None:
        self.prepare_predict()

    def segments_of(self, wave: torch.Tensor) -> torch.Tensor:
        """(W, num_samples) clip-long windows → their (W, L, S, n_mels, T) log-mel segments, float16 as the builder
        stores them (after prepare_predict)."""
        return self.scorer.segments(wave)

    def score_windows(self, wave: torch.Tensor) -> WindowScores:
        """(W, num_samples) clip-long windows → their WindowScores (after prepare_predict)."""
        return self.scorer.score(wave)

    def score_segments(self, seg: torch.Tensor) -> WindowScores:
        """(W, L, S, n_mels, T) segments → their WindowScores (inference.scorer.score_segments)."""
        return score_segments(self, seg)

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        # (W, num_samples) clip-long windows; per window: recording, window number, silent
        wave, owner, index, silent = batch
        scored = self.scorer.score(wave)
        out = {"owner": owner, "index": index, "silent": silent, "windows": scored.leak, "class_probs": scored.classes}
        return out if scored.pooled is None else {**out, "pooled": scored.pooled}

    @torch.no_grad()
    def recording_probabilities(self, pooled: torch.Tensor) -> torch.Tensor:
        """A recording-level network's class probabilities (C,) from its windows' pooled sums (K, 1 + 4·D): merged
        in one pass, so a recording of any length is decided from all its frames in bounded memory."""
        merged = PooledFrames.unpack(PooledFrames.merge(pooled.to(self.device)))
        return torch.sigmoid(self.net.decide(merged).float())[0].cpu()

    def decide_recording(self, inputs: torch.Tensor) -> tuple[float, float, bool, float, float]:
        """What the decision rule reads of one recording: all its long-window leak probabilities (frame model), or
        its one pooled leak probability (recording-level network: `recording_probabilities`) → (its score: the
        mean window, or that probability; the calibrated leak probability; the leak decision; the number the
        decision was made from; the cutoff it was compared with)."""
        flat = inputs.reshape(1, -1)
        score = flat.mean()
        basis, cutoff = self.decision.basis(flat)
        return float(score), float(self.decision.probability(score)), bool(basis[0] >= cutoff), float(basis[0]), cutoff


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


def _as(value, kind: type):
    """A dataclass option given as itself or as a dict (a checkpoint's hyper-parameters)."""
    return value if isinstance(value, kind) else kind(**(value or {}))


def _pos_weight(value, num_classes: int) -> torch.Tensor | None:
    """The loss's positive weights: given, or ones to be set from the training split ("auto")."""
    if value == "auto":
        return torch.ones(num_classes)
    if value is not None and len(value) != num_classes:
        raise ValueError(f"pos_weight has {len(value)} values for {num_classes} classes")
    return torch.tensor(list(value), dtype=torch.float32) if value else None
