"""Test doubles loaded by training subprocesses through the CLI (tests/ is put on PYTHONPATH)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L

from leak_lightning.checkpoint.io import AtomicCheckpointIO
from leak_lightning.training.callbacks.interrupt import GracefulInterrupt


def _announce(ready: str) -> None:
    """Write our pid to `ready` in one step: the test polls for the file and reads it at once, so it
    must never see the file created but still empty (a rename is atomic; write_text is not)."""
    tmp = Path(f"{ready}.{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, ready)


def _announce_and_wait(trainer: L.Trainer, ready: str, timeout: float = 60.0) -> None:
    """Tell the test we are at the chosen point, then hold there until its real signal arrives."""
    _announce(ready)
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, GracefulInterrupt))
    deadline = time.monotonic() + timeout
    while guard.received is None and time.monotonic() < deadline:
        time.sleep(0.005)


class PauseAt(L.Callback):
    """Pauses rank `rank` at a train step, a validation batch or inside a checkpoint save.

    where: "train" (after optimizer step `step`), "val" (first validation batch of epoch `epoch`),
    "save" (while the `nth` checkpoint of the run is being assembled).
    """

    def __init__(self, ready: str, where: str = "train", step: int = 1, epoch: int = 0, nth: int = 1,
                 rank: int = 0) -> None:
        self.ready, self.where, self.step, self.epoch, self.nth, self.rank = ready, where, step, epoch, nth, rank
        self._saves = 0
        self._done = False

    def _hit(self, trainer, condition: bool) -> None:
        if condition and not self._done and trainer.global_rank == self.rank:
            self._done = True
            _announce_and_wait(trainer, self.ready)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._hit(trainer, self.where == "train" and trainer.global_step == self.step)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._hit(trainer, self.where == "val" and not trainer.sanity_checking
                  and trainer.current_epoch == self.epoch)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._saves += 1
        self._hit(trainer, self.where == "save" and self._saves == self.nth)


class SlowCheckpointIO(AtomicCheckpointIO):
    """Atomic writes through a slow file: the `nth` save announces itself half-way, then crawls."""

    def __init__(self, ready: str, nth: int = 2) -> None:
        super().__init__()
        self.ready, self.nth, self._saves = ready, nth, 0

    def _open_tmp(self, tmp: Path):
        self._saves += 1
        return _SlowFile(open(tmp, "wb"), self.ready if self._saves == self.nth else None)


class _SlowFile:
    def __init__(self, f, ready: str | None) -> None:
        self.f, self.ready, self.written = f, ready, 0

    def write(self, data) -> int:
        n = self.f.write(data)
        self.written += n
        if self.ready and self.written > 1024:
            self.f.flush()
            _announce(self.ready)
            time.sleep(60)  # the test SIGKILLs us here, mid-write
        return n

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


class FullDiskCheckpointIO(AtomicCheckpointIO):
    """Atomic writes that hit "No space left on device" from the `nth` save on (an injected full disk)."""

    def __init__(self, nth: int = 2) -> None:
        super().__init__()
        self.nth, self._saves = nth, 0

    def _open_tmp(self, tmp: Path):
        self._saves += 1
        f = open(tmp, "wb")
        return _FullFile(f) if self._saves >= self.nth else f


class _FullFile(_SlowFile):
    def __init__(self, f) -> None:
        super().__init__(f, None)

    def write(self, data) -> int:
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def run_paused_build(ready: str, argv: list[str], nth: int = 2) -> None:
    """`python -m leak_lightning build ARGV` that announces itself before its `nth` batch is finished
    (earlier batches' rows already written to the temporary split) and holds there until a signal
    arrives or `<ready>.go` appears; then exits as the real command does."""
    import sys

    from leak_lightning.builder import pipeline
    from leak_lightning.cli import main

    finish, calls = pipeline.BatchBuilder._finish, []

    def paused(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == nth:
            _announce(ready)
            go, deadline = Path(f"{ready}.go"), time.monotonic() + 120
            while not go.exists() and time.monotonic() < deadline:
                time.sleep(0.01)  # a SIGINT/SIGTERM interrupts the sleep: the build unwinds from here
        return finish(self, *args, **kwargs)

    pipeline.BatchBuilder._finish = paused
    sys.argv = ["leak_lightning", "build", *argv]
    main(["build", *argv])


def _hold(ready: str) -> None:
    _announce(ready)
    time.sleep(120)  # the test SIGKILLs us here


def run_paused_export(ready: str, argv: list[str], where: str) -> None:
    """`python -m leak_lightning export ARGV` that holds just before or just after its files are committed."""
    from leak_lightning.cli import main
    from leak_lightning.inference import export

    commit = export._commit

    def paused(*args) -> None:
        if where == "before":
            _hold(ready)
        commit(*args)
        if where == "after":
            _hold(ready)

    export._commit = paused
    main(["export", *argv])
