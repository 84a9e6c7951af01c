"""Ctrl-C / SIGTERM: finish the batch, save `last.ckpt` with the full state, exit 130 / 143.

The first signal only sets a flag. At the next batch boundary every rank votes (any rank that
saw a signal stops them all), the checkpoint is saved collectively and the process exits. A
second Ctrl-C exits at once. Lightning's OnExceptionCheckpoint is not used: it can hang under
DDP when only rank 0 receives the signal.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading

import lightning as L
import numpy as np
import torch

from ...runtime.rundir import checkpoint_dir, resume_command

log = logging.getLogger(__name__)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def _rng_state() -> dict:
    # tensors and plain Python values only, so `torch.load(weights_only=True)` accepts the checkpoint
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    np.random.set_state(n)  # else numpy's own tuple, as saved until 53b6c01 (checkpoint_io.EARLIER_TYPES)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rewind_to_before_validation(checkpoint: dict) -> None:
    """Record the loops as they stood after the epoch's last training batch, before validation.

    Weights, optimizer and RNG do not change during validation, so this is the exact state a
    save at that last `on_train_batch_end` would hold; the resumed run then validates from the
    start instead of resuming a half-run validation whose per-file scores were not saved.
    """
    fit = checkpoint["loops"]["fit_loop"]
    train = fit["epoch_loop.batch_progress"]
    for scope in ("total", "current"):
        train[scope]["completed"] = train[scope]["processed"] - 1
    val = fit["epoch_loop.val_loop.batch_progress"]
    for key in ("ready", "started", "processed", "completed"):
        val["total"][key] -= val["current"][key]
        val["current"][key] = 0


class GracefulInterrupt(L.Callback):
    """Saves a resumable `last.ckpt` on SIGINT/SIGTERM at the next batch boundary (train or val).

    The random-number state of every library is saved with it, so a resumed run on the same
    hardware continues bit for bit.

    Args:
        vote_every: under DDP the ranks agree every this many batches (a blocking all-reduce each
            time), so a stop comes at most this many batches after the signal. One process decides
            at every batch, without a collective.
    """

    def __init__(self, vote_every: int = 8) -> None:
        if vote_every < 1:
            raise ValueError(f"interrupt.vote_every={vote_every}: must be 1 or more")
        self.vote_every = vote_every
        self.received: int | None = None
        self._previous: dict = {}
        self._rng_to_restore: dict | None = None
        self._rewind = False
        self._val_votes = 0  # validation batches every rank has (DDP): the ones that vote

    # ---- signals ---------------------------------------------------------------------------
    def _handler(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            os.write(2, b"\nsecond Ctrl-C: aborting now, without saving\n")
            os._exit(130)
        if self.received is None:
            self.received = signum
            os.write(2, f"\n{signal.Signals(signum).name} received: saving at the next batch boundary "
                        "(Ctrl-C again to abort at once)\n".encode())

    def on_fit_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handler)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    # ---- batch boundaries ------------------------------------------------------------------
    def _votes(self, batch_idx: int, last: int, world: int) -> bool:
        """Every batch alone; under DDP every `vote_every` batches and at the last one (same on every rank)."""
        return world == 1 or (batch_idx + 1) % self.vote_every == 0 or batch_idx + 1 == last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._votes(batch_idx, trainer.num_training_batches, trainer.world_size):
            self._maybe_stop(trainer)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        # Whole files per batch: ranks may hold different numbers of validation batches, and a
        # vote is a collective, so only the batches that every rank has vote. A signal during the
        # rest of validation is acted on at the next training batch.
        mine = sum(trainer.num_val_batches)
        if trainer.world_size > 1 and trainer.state.fn == "fit" and not trainer.sanity_checking:
            mine = int(trainer.strategy.reduce(torch.tensor(mine, device=pl_module.device), reduce_op="min"))
        self._val_votes = mine

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if (trainer.state.fn == "fit" and not trainer.sanity_checking and batch_idx < self._val_votes
                and self._votes(batch_idx, self._val_votes, trainer.world_size)):
            self._maybe_stop(trainer, in_validation=True)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._rewind:
            _rewind_to_before_validation(checkpoint)

    def _maybe_stop(self, trainer: L.Trainer, in_validation: bool = False) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:  # one tiny collective per vote: every rank must agree
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self.received or signal.SIGTERM
        path = checkpoint_dir(trainer.default_root_dir) / "last.ckpt"
        self._rewind = in_validation
        # the whole state (optimizer, loops, callbacks) to resume from; said, so Lightning does not log that it chose
        trainer.save_checkpoint(path, weights_only=False)
        trainer.strategy.barrier("interrupt-saved")
        if trainer.is_global_zero:
            log.warning("interrupted at epoch %d, step %d: saved %s", trainer.current_epoch, trainer.global_step,
                        path)
            log.warning("resume with: %s", resume_command())
        raise SystemExit(EXIT_CODES.get(signum, 130))

    # ---- exact resume ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rng": _rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict.get("rng")

    def on_train_start(self, trainer, pl_module) -> None:
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
