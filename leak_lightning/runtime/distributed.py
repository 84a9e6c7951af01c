"""Runs over several processes: who reports a lost DDP rank, and which share of the work a process owns.

Lightning's DDP launcher starts ranks 1.. as children of rank 0 and watches them from a thread of rank 0
(`_ChildProcessObserver`, every 5 s). When a child dies it SIGKILLs every process, rank 0 included: the
user sees exit -9 and no word of where the run stands. Rank 0's main thread usually learns of the loss
first (gloo's "connection closed by peer") and says it in one line; which of the two comes first is a
race. `watch_ranks()` makes both ends say the same thing: the first to claim the report writes the one
line with the resume command and the process exits 2; the other stands aside.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

REPORT = threading.Lock()  # held by whichever of rank 0's threads reports a lost rank
_STATE: dict = {"root": None, "subcommand": None}


def watch_ranks(root: str | None, subcommand: str) -> None:
    """Route Lightning's child-process observer through `_lost_rank` (idempotent)."""
    # private: nothing public observes the child ranks (lightning_private.py)
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

    _STATE.update(root=root, subcommand=subcommand)
    _ChildProcessObserver._terminate_all = _lost_rank


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _lost_rank(observer) -> None:
    """The observer found a dead child rank: stop the others as Lightning does, then report once and exit 2
    (unless rank 0's main thread is already reporting; it then exits 2 itself)."""
    from ..checkpoint.io import last_checkpoint_note
    from .logs import fail_line

    for proc in observer._child_processes:
        if proc.poll() is None:
            proc.send_signal(observer._termination_signal)
    if not REPORT.acquire(blocking=False):
        return
    dead = [f"rank {i} {_how(p.returncode)}" for i, p in enumerate(observer._child_processes, 1) if p.returncode]
    note = f"; {last_checkpoint_note(_STATE['root'])}" if _STATE["subcommand"] == "fit" else ""
    code = fail_line(f"a DDP rank stopped, so the run cannot go on ({', '.join(dead)}){note}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # from a thread: the main thread may be stuck in a collective that never returns


def claim_report() -> None:
    """Rank 0's main thread reports a lost rank itself; if the observer already does, wait for its exit."""
    if not REPORT.acquire(blocking=False):
        threading.Event().wait()
