"""The checkpoint callback that keeps last.ckpt current, and early stopping that can be switched off."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

log = logging.getLogger(__name__)


class LeakCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps `last.ckpt` current and logs each new best checkpoint.

    Lightning 2.6 rewrites `last.ckpt` only in a step that also wrote a top-k checkpoint, so the
    epochs after the latest improvement would be missing from it: a crash would lose them and
    `--ckpt_path last` would name an older model. Here it follows every epoch (and every
    mid-epoch validation).
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._keep_last_current(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        self._keep_last_current(trainer, at_train_epoch_end=False)

    def _keep_last_current(self, trainer, at_train_epoch_end: bool) -> None:
        # skipped when this step was saved already (a new best writes last.ckpt too)
        if (self.save_last is True and not self._should_skip_saving_checkpoint(trainer)
                and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning 2.6 writes last.ckpt here even under fast_dev_run, which then blocks the next
        # fit as "an earlier run": a dry run writes no checkpoint
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _update_best_and_save(self, current, trainer, monitor_candidates) -> None:
        super()._update_best_and_save(current, trainer, monitor_candidates)
        # hp_metric: the best value so far of this callback's monitor (the metric that chooses best.ckpt), which
        # TensorBoard's HPARAMS tab shows beside the run's hyper-parameters
        if self.best_model_score is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"hp_metric": float(self.best_model_score)}, step=trainer.global_step)
        if trainer.is_global_zero and self.best_model_path:
            log.info("new best %s=%.4f → %s", self.monitor, float(self.best_model_score), self.best_model_path,
                     extra={"colour": "success"})


class LeakEarlyStopping(EarlyStopping):
    """EarlyStopping that can be switched off from the command line (`--early_stopping.enabled false`).

    Args:
        enabled: False leaves it out of the trainer (train for max_epochs / max_steps).
    """

    def __init__(self, *args, enabled: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.enabled = enabled

    @property
    def state_key(self) -> str:
        # EarlyStopping's key: checkpoints written before this subclass existed resume its state
        return super().state_key.replace(type(self).__qualname__, "EarlyStopping", 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._has_metric(trainer):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._has_metric(trainer):
            super().on_validation_end(trainer, pl_module)

    def _has_metric(self, trainer) -> bool:
        """An epoch without validation (one resumed at its very end has no batches left) has no monitored
        value: the check waits for the next one instead of stopping the run. A metric never logged at all
        (a misspelt monitor) still stops it, as Lightning's strict check does."""
        if self.monitor in trainer.callback_metrics or not torch.isfinite(self.best_score):
            return True
        log.debug("early stopping: no %s in this epoch (no validation ran); checked at the next one", self.monitor)
        return False
