"""LeakClassifier: multi-label BCE on segments, metrics at segment and file level."""

from __future__ import annotations

import logging
import os
from typing import Literal

import lightning as L
import torch
from torch import nn

from .contract import SECTION, ModelContract, binding_digest
from .evaluation import Aggregation, calibrate, decision_basis, file_decisions
from .features import FeatureConfig, LogMelFrontend
from .models import LeakCNN
from .models.augment import Augmentation, SpectrumAugment
from .module_eval import EvaluationSteps, segment_metrics

log = logging.getLogger(__name__)
_NO_SCALER = ("32-true", "32", "bf16-mixed", "bf16-true", "64-true", "64")
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


class LeakClassifier(EvaluationSteps, L.LightningModule):
    """Wraps a plain LeakCNN; class names, feature config and class count come from the data.

    Args:
        leak_class_name: the class whose file-level decision is the product (chosen by name).
        pos_weight: per-class positive weights for the BCE loss; "auto": negatives/positives of each
            class in the training split (`class_counts`, linked from the data).
        augment: training-time augmentation of the log-mel batches (models/augment.py); masks are
            `freq_mask` / `time_mask`.
        aggregation: file score from long windows, "vote" (fraction at/above threshold) or "mean".
        vote_fraction: in vote mode, the fraction of leak windows that makes a leak file.
        compile: torch.compile the network; None = when training on CUDA (validation inside `fit`
            uses the compiled network too; standalone validate/test/predict run eager). Failure falls
            back to eager.
        layout: "1d" runs the (3, 1) convolutions of one-frame segments (T = 1) as Conv1d over the mel
            axis: the same function, other kernels (scripts/benchmark_fit.py --layout compares them).
        compile_cache: folder for inductor's compiled kernels (TORCHINDUCTOR_CACHE_DIR; default:
            torch's own, /tmp/torchinductor_<user>): a later run on the machine reuses them.
        compile_mode: torch.compile's mode; "reduce-overhead" replays CUDA graphs (fewer kernel
            launches per step), "max-autotune" also searches kernel configurations.
        fused_adamw: AdamW's fused kernel (one launch per step instead of one per op and tensor
            group); None = on when the parameters live on CUDA. Same update rule either way.
        grad_clip: clip the gradients' global norm to this (None: no clipping). Training steps the
            optimizer itself, so Lightning's --trainer.gradient_clip_val does not apply.
    """

    def __init__(self, num_classes: int, class_names: list[str], feature_config: dict,
                 leak_class_name: str = "LEAK", channels: tuple[int, ...] = (48, 96, 192, 256),
                 hidden: int = 256, dropout: float = 0.3, freq_mask: int = 8, time_mask: int = 0,
                 lr: float = 1e-3, weight_decay: float = 1e-2, min_lr_ratio: float = 0.01,
                 pos_weight: list[float] | Literal["auto"] | None = None, augment: Augmentation = Augmentation(),
                 aggregation: Aggregation = "vote", vote_fraction: float = 0.5, compile: bool | None = None,
                 compile_mode: CompileMode = "default", fused_adamw: bool | None = None,
                 class_counts: list[int] | None = None, train_files: int | None = None,
                 grad_clip: float | None = None, compile_cache: str | None = None,
                 layout: Literal["2d", "1d"] = "2d") -> None:
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
                           hidden, dropout, freq_mask, time_mask, layout)
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
        self.automatic_optimization = False  # training_step steps the optimizer itself (blocks of steps)
        self.val_metrics = segment_metrics(num_classes)
        self.test_metrics = segment_metrics(num_classes)
        self._compiled: nn.Module | None = None
        self._sums: dict[str, tuple[torch.Tensor, int]] = {}
        self._scored: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # evaluation: (first segment, probs, y)
        self.last_results: dict | None = None  # test/validate results for reports

    # ---- forward, with torch.compile when asked and a fallback to eager -------------------
    def compiles(self, stage: str) -> bool:
        """Whether `stage` runs the network through torch.compile: asked for, or by default training on CUDA.

        validate/test/predict default to eager: compiling costs tens of seconds, more than scoring a
        split of ordinary size takes (pass --model.compile true for a very large one).
        """
        if self.hparams.compile is not None:
            return bool(self.hparams.compile)
        on_cuda = self.device.type == "cuda" or (self.trainer is not None
                                                 and self.trainer.strategy.root_device.type == "cuda")
        return on_cuda and stage == "fit"

    def setup(self, stage: str) -> None:
        if self.compiles(stage) and self._compiled is None:
            if self.hparams.compile_cache:  # inductor's on-disk cache: a second run reuses the compiled kernels
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.hparams.compile_cache)
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
        """One optimizer step per batch: a batch, or a block of them (`data.steps_per_call`).

        Manual optimization, so that a block costs Lightning's per-step machinery (hooks, loops,
        logging, progress bar) once for all its steps; the update is the same as Lightning's own.
        """
        xs, ys, _ = batch
        if torch.is_tensor(xs):
            xs, ys = [xs], [ys]
        opt, sched = self.optimizers(), self.lr_schedulers()
        trainer, clip = self.trainer, self.hparams.grad_clip
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
                opt._on_before_step()  # the progress counts behind trainer.global_step
                opt.optimizer.step()
                opt._on_after_step()
            else:
                self.manual_backward(loss)
                if clip:
                    self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
                opt.step()
            sched.step()
            self._accumulate("train/loss", loss, len(x))
            self._log_step(loss)
        return loss

    def step_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch: augmentation (in training mode), network, BCE with pos_weight."""
        x, y = self.augment(x, y)
        return self.loss_fn(self(x).float(), y)

    def _log_step(self, loss: torch.Tensor) -> None:
        # The step loss and learning rate every log_every_n_steps, straight to the loggers: one host
        # sync per n steps, not self.log's per-step bookkeeping.
        every, step = self.trainer.log_every_n_steps, self.trainer.global_step
        if self.loggers and every and step % every == 0:
            metrics = {"train/loss_step": float(loss.detach()), "lr": self.trainer.optimizers[0].param_groups[0]["lr"]}
            for logger in self.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # --trainer.max_steps inside an epoch would end the run before any validation: no metric for
        # early stopping, no best.ckpt. Asking to stop lets Lightning validate first (as early stopping does).
        trainer = self.trainer
        if 0 < trainer.max_steps <= trainer.global_step and not trainer.should_stop:
            trainer.should_stop = True

    def on_train_epoch_end(self) -> None:
        mean = self._mean("train/loss")
        if mean is not None:
            self.log("train/loss", mean, sync_dist=True)

    def _total_steps(self) -> int:
        """Optimizer steps this run makes: the length of the cosine schedule."""
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
        fused = self.hparams.fused_adamw
        if fused is None:
            fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                fused=fused or None)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=self._total_steps(), eta_min=self.hparams.lr * self.hparams.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ---- the checkpoint owns its classes, leak class, frontend and threshold -------------------
    @classmethod
    def for_inference(cls, ckpt: dict, device: torch.device) -> LeakClassifier:
        """An eval-mode, uncompiled model from a checkpoint already read (`read_checkpoint`): what
        `load_from_checkpoint` builds, without reading the file a second time."""
        hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")}  # _instantiator
        model = cls(**{**hparams, "compile": False})
        model.on_load_checkpoint(ckpt)
        model.load_state_dict(ckpt["state_dict"])
        return model.to(device).eval()

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
        checkpoint[SECTION]["binding"] = binding_digest(checkpoint)  # last: it covers all of the above

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints from before calibration: identity calibration, unknown threshold statistics
        state = checkpoint.get("state_dict", {})
        state.setdefault("calibration", torch.tensor([1.0, 0.0]))
        state.setdefault("threshold_stats", torch.tensor([float("nan"), float("nan")]))
        # checkpoints from automatic optimization count their steps there: carry the count over, or a
        # resumed run would start again at global step 0
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        auto = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
        manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
        if auto and manual is not None and manual["total"]["completed"] == 0 and auto["total"]["completed"] > 0:
            loop["epoch_loop.manual_optimization.optim_step_progress"] = auto

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

    def decide_recording(self, windows: torch.Tensor) -> tuple[float, float, bool, float, float]:
        """All long-window leak probabilities of one recording → (mean score, calibrated leak probability,
        leak decision, the number the decision was made from, the cutoff it was compared with)."""
        flat = windows.reshape(1, -1)
        score = flat.mean()
        basis, cutoff = decision_basis(flat, float(self.threshold), self.hparams.aggregation,
                                       self.hparams.vote_fraction)
        return (float(score), float(calibrate(score, *self.calibration.tolist())), bool(basis[0] >= cutoff),
                float(basis[0]), cutoff)

    def _decide(self, windows: torch.Tensor) -> torch.Tensor:
        return file_decisions(windows, self.threshold[None], self.hparams.aggregation,
                              self.hparams.vote_fraction)[0]
