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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        best = self.best_model_score  # every_n_train_steps saves top-k here
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._report_if_new_best(trainer, best)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        best = self.best_model_score
        super().on_train_epoch_end(trainer, pl_module)
        self._report_if_new_best(trainer, best)
        self._keep_last_current(trainer, at_train_epoch_end=True)

    def on_validation_end(self, trainer, pl_module) -> None:
        best = self.best_model_score
        super().on_validation_end(trainer, pl_module)
        self._report_if_new_best(trainer, best)
        self._keep_last_current(trainer, at_train_epoch_end=False)

    def _keep_last_current(self, trainer, at_train_epoch_end: bool) -> None:
        # No public API writes last.ckpt on demand, and a second public ModelCheckpoint cannot either: 2.6
        # writes last only in a step that saved a top-k file. Three private methods (runtime/lightning_private)
        # keep Lightning's own rules: skip a step saved already (a new best writes last.ckpt too), save in the
        # hook Lightning saves in (epoch end or validation end), and the same bookkeeping as its own saves.
        if (self.save_last is True and not self._should_skip_saving_checkpoint(trainer)
                and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end):
            self._save_last_checkpoint(trainer, _name_metrics(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning 2.6 writes last.ckpt here even under fast_dev_run, which then blocks the next
        # fit as "an earlier run": a dry run writes no checkpoint
        if not trainer.fast_dev_run:
            super().on_train_end(trainer, pl_module)

    def _report_if_new_best(self, trainer, before) -> None:
        """Log a new best by name and value, and let hp_metric follow it. Public attributes only: Lightning
        assigns `best_model_score` a new object (the value it saved best.ckpt for) exactly when it saves one."""
        if self.best_model_score is before:
            return
        # hp_metric: the best value so far of this callback's monitor (the metric that chooses best.ckpt), which
        # TensorBoard's HPARAMS tab shows beside the run's hyper-parameters
        if self.best_model_score is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"hp_metric": float(self.best_model_score)}, step=trainer.global_step)
        if trainer.is_global_zero and self.best_model_path:
            log.info("new best %s=%.4f → %s", self.monitor, float(self.best_model_score), self.best_model_path,
                     extra={"colour": "success"})


def _name_metrics(trainer) -> dict[str, torch.Tensor]:
    """The metrics a checkpoint's file name may use, as ModelCheckpoint formats them: the logged ones, with
    the epoch and step as integers."""
    metrics = dict(trainer.callback_metrics)
    for key, value in (("epoch", trainer.current_epoch), ("step", trainer.global_step)):
        given = metrics.get(key)
        metrics[key] = given.int() if isinstance(given, torch.Tensor) else torch.tensor(value)
    return metrics


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
