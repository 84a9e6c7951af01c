"""Several processes: a lost DDP rank reported once, in one line, whichever thread of rank 0 sees it first."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers.files import REPO, one_error

# Rank 0's observer thread, as Lightning's launcher starts it, over two real children: one killed, one alive.
OBSERVER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
    from leak_lightning import distributed
    dead = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    distributed.watch_ranks(sys.argv[1], "fit")
    if sys.argv[2] == "main-first":
        distributed.claim_report()
    _ChildProcessObserver(main_pid=os.getpid(), child_processes=[dead, alive], sleep_period=0)._run()
    alive.wait()  # killed by the observer, as Lightning does
    print("observer returned; the other child", alive.returncode, flush=True)
""")


def run_observer(root, order: str) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-c", OBSERVER, str(root), order], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def test_a_dead_child_rank_seen_by_the_observer_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    code, out = run_observer(tmp_path, "observer-first")
    line = one_error(code, out)  # Lightning alone: SIGKILL of rank 0 itself (-9), no words
    assert "a DDP rank stopped, so the run cannot go on (rank 1 killed by SIGKILL)" in line
    assert f"{tmp_path / 'checkpoints' / 'last.ckpt'} (saved " in line and "--ckpt_path last" in line
    assert "observer returned" not in out


def test_the_observer_stands_aside_when_the_main_thread_reports(tmp_path):
    code, out = run_observer(tmp_path, "main-first")
    assert code == 0 and "[ERROR]" not in out, out
    assert f"observer returned; the other child {-9}" in out  # the live child was still stopped
