"""The run directory: where a run's checkpoints, logs and reports live (no Lightning here)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_RUN_DIR = "runs"


def checkpoint_dir(root: str | Path | None) -> Path:
    """Where a run's best.ckpt and last.ckpt live: <run dir>/checkpoints."""
    return Path(root or DEFAULT_RUN_DIR) / "checkpoints"


def check_writable(root: str | Path | None) -> None:
    """The run directory must be creatable and writable before anything runs in it."""
    folder = Path(root or DEFAULT_RUN_DIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"--trainer.default_root_dir {folder}: cannot write there ({err.strerror or err}); "
                         "choose a writable folder") from None


class FolderLock:
    """An exclusive lock on a folder for the life of a run or build: `<folder>/.lock`.

    `fcntl.flock` is released by the kernel when the holder exits, however it exits, so a lock
    is never stale; the file keeps the holder's PID, host and command for the message a second
    run gets, and is removed when the lock is released. Only one process of a DDP job takes it
    (rank 0: the others are its children).
    """

    held: list[FolderLock] = []  # locks this process holds (`release_all` at the end of a command)

    def __init__(self, folder: str | Path, what: str, name: str = ".lock") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / name
        self._fd: int | None = None

    @classmethod
    def release_all(cls) -> None:
        for lock in list(cls.held):
            lock.release()

    def acquire(self) -> FolderLock:
        import fcntl
        import json
        import socket
        import sys
        import time

        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                try:
                    h = json.loads(holder)
                    who = f"PID {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
                except (ValueError, KeyError, TypeError):
                    who = "another process"
                raise ValueError(f"{self.folder} is in use by {who}: wait for it to finish, or use another "
                                 f"{self.what}") from None
            # the previous holder removes the file as it releases: a lock taken on the removed file
            # between our open and our flock guards nothing, so take the one at the path again
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
                break
            os.close(fd)
        argv = ["python -m leak_lightning", *sys.argv[1:]] if sys.argv[0].endswith("__main__.py") else sys.argv
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(argv),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        FolderLock.held.append(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still held: a waiting process then re-opens a new file
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            FolderLock.held.remove(self)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
