"""Checkpoints that never corrupt, finding a usable one to resume from, and early stopping."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ..fileio import fsync_dir, replacing

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the target directory, fsync, then `os.replace` into place.

    A crash or SIGKILL during a save leaves the previous checkpoint untouched and loadable;
    Lightning's default writes the final path directly.
    """

    def _open_tmp(self, tmp: Path):
        return open(tmp, "wb")

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp, self._open_tmp(tmp) as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(path.parent)  # make the rename itself durable
        except (OSError, RuntimeError) as err:  # a full disk shows as either, through torch.save's zip writer
            from ..logs import bytes_human
            from .interrupt import resume_command

            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            free = shutil.disk_usage(path.parent).free
            if free < 2**26:  # the zip writer's own words ("unexpected pos ...") would not say so
                reason = f"the disk is full: {bytes_human(free)} free"
            raise ValueError(f"cannot save checkpoint {path} ({reason}); the checkpoints already in {path.parent} "
                             f"are intact: free some space, then resume with: {resume_command()}") from err


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
        if self.best_model_score is not None:  # TensorBoard's hparams view: the best monitored value so far
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


def load_checkpoint(path: Path) -> dict | str:
    """The checkpoint at `path`, or why it cannot be used (one line)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, unpickling error, empty file, not a checkpoint at all...
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        return "not a complete Lightning training checkpoint"
    return ckpt


def read_checkpoint(path: str | Path, flag: str = "--ckpt_path"):
    """(checkpoint dict, its ModelContract) of a file written by `fit`, read once; else one line naming it."""
    from ..contract import ModelContract

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such checkpoint file")
    ckpt = load_checkpoint(path)
    if isinstance(ckpt, str):
        raise ValueError(f"{flag} {path}: not a usable checkpoint ({ckpt}); pick one written by "
                         "`python -m leak_lightning fit`")
    return ckpt, ModelContract.from_checkpoint(ckpt, path)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it loads and looks like a Lightning checkpoint."""
    ckpt = load_checkpoint(path)
    return ckpt if isinstance(ckpt, str) else None


def newest_valid_checkpoint(folder: Path, preferred: Path | None = None) -> Path | None:
    """`preferred` if it is valid, else the newest valid *.ckpt in `folder`; problems are logged by name."""
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if preferred is not None:
        candidates = [preferred] + [c for c in candidates if c != preferred]
    for path in candidates:
        if not path.is_file():
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is unusable (%s); trying an older one", path, problem)
    return None
