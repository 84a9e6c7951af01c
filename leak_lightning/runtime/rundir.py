"""The run directory: where a run's checkpoints, logs and reports live (no Lightning here)."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

DEFAULT_RUN_DIR = "runs"


def checkpoint_dir(root: str | Path | None) -> Path:
    """Where a run's best.ckpt and last.ckpt live: <run dir>/checkpoints."""
    return Path(root or DEFAULT_RUN_DIR) / "checkpoints"


def check_writable(root: str | Path | None, what: str = "--trainer.default_root_dir",
                   fix: str = "choose a writable folder") -> None:
    """The run directory must be creatable and writable before anything runs in it."""
    import tempfile

    from .fileio import TMP_MARK

    folder = Path(root or DEFAULT_RUN_DIR)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # mkstemp: O_EXCL at a random name, so nothing planted in a shared folder is written through;
        # the mark lets a killed process's probe be swept like any temporary
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".write-test{TMP_MARK}{os.getpid()}-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{what} {folder}: cannot write there ({err.strerror or err}); {fix}") from None


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
        DataLock.release_all()

    def acquire(self) -> FolderLock:
        import fcntl
        import json

        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = _flock_at(self.path, fcntl.LOCK_EX)
        except BlockingIOError:
            raise ValueError(f"{self.folder} is in use by {_holder(self.path)}: wait for it to finish, or use "
                             f"another {self.what}") from None
        holder = _who(command_line())
        os.ftruncate(fd, 0)  # only now: _flock_at checked the file is a plain file of ours
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        FolderLock.held.append(self)
        return self

    def release(self) -> None:
        if self._fd is not None:
            _unlink_if_same(self.path, self._fd)  # while still held: a waiting process then re-opens a new file
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            FolderLock.held.remove(self)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class DataLock:
    """Readers and the builder of one data folder: `<folder>/.data.lock`.

    fit/validate/test hold it shared while they read splits from the folder (`read`), a build holds
    it exclusively while it may replace them (`build`): a build never replaces a split under a
    running reader, and a reader never starts on a folder being rebuilt. Each reader leaves a
    `.reader.tmp-PID` note (PID, host, command) for the builder's message; the note of a process
    that is gone is swept like any temporary. The last holder out removes the lock file. A folder
    that cannot be written (read-only data) takes no lock: no build can replace anything there.
    """

    NAME = ".data.lock"
    held: list[DataLock] = []

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.note = self.folder / f".reader.tmp-{os.getpid()}"
        self._fd: int | None = None
        self._note_fd: int | None = None  # kept open: release removes the note only if it is still this one

    def _open_locked(self, mode: int) -> int | None:
        """A descriptor holding `mode` (BlockingIOError when another holds the other kind), or None where the
        folder cannot be written."""
        try:
            return _flock_at(self.path, mode)
        except BlockingIOError:
            raise
        except OSError:
            return None

    def read(self, command: str) -> DataLock:
        import fcntl
        import json

        try:
            self._fd = self._open_locked(fcntl.LOCK_SH)
        except BlockingIOError:
            raise ValueError(f"{self.folder} is being rebuilt ({_holder(self.folder / '.lock')}): wait for the "
                             "build to finish, then start again") from None
        if self._fd is not None:
            from .fileio import remove_stale_temporaries

            remove_stale_temporaries(self.folder)  # notes (and temporaries) of processes that were killed
            DataLock.held.append(self)
            try:
                self._write_note(json.dumps({**_who(command), "folder": self._folder_id()}))
            except BaseException:  # someone else's file at our note's name: refused, and nothing held
                self.release()
                raise
        return self

    def _write_note(self, text: str) -> None:
        """The note (the folder's identity inside: a note copied with the folder is not ours); a folder we
        cannot write goes without one."""
        from .fileio import open_own

        with contextlib.suppress(OSError):
            fd = open_own(self.note, os.O_WRONLY | os.O_CREAT)
            self._note_fd = fd
            os.ftruncate(fd, 0)
            os.write(fd, text.encode())

    def _folder_id(self) -> list[int]:
        st = os.stat(self.folder)
        return [st.st_dev, st.st_ino]

    def readers(self) -> list[str]:
        """The live readers' notes in this folder (notes copied in from elsewhere, or of dead processes, left out)."""
        import json

        from .fileio import pid_alive

        found = []
        for note in sorted(self.folder.glob(".reader.tmp-*")):
            try:
                h = json.loads(_read_plain(note))
            except (OSError, ValueError):
                continue
            pid = h.get("pid") if isinstance(h, dict) else None
            if isinstance(pid, int) and pid > 0 and h.get("folder") == self._folder_id() and pid_alive(pid):
                found.append(_holder(note))
        return found

    def build(self) -> DataLock:
        import fcntl

        try:
            self._fd = self._open_locked(fcntl.LOCK_EX)
        except BlockingIOError:
            who = "; ".join(self.readers()) or "another process"
            raise ValueError(f"{self.folder}: its splits are being read by {who}"
                             ": a build would replace them under it; wait for it to finish, or build into another "
                             "--output") from None
        if self._fd is not None:
            DataLock.held.append(self)
        return self

    def release(self) -> None:
        import fcntl

        if self._fd is None:
            return
        if self._note_fd is not None:
            _unlink_if_same(self.note, self._note_fd)
            os.close(self._note_fd)
            self._note_fd = None
        try:  # the last one out (no other holder: the upgrade succeeds) removes the file
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _unlink_if_same(self.path, self._fd)
        except BlockingIOError:
            pass
        os.close(self._fd)
        self._fd = None
        DataLock.held.remove(self)

    @classmethod
    def release_all(cls) -> None:
        for lock in list(cls.held):
            lock.release()


def _flock_at(path: Path, mode: int) -> int:
    """An open descriptor on `path` holding flock `mode`, without waiting (BlockingIOError when held).

    A holder removes the file as it releases: a lock taken on the removed file between our open and
    our flock guards nothing, so the one at the path is taken again. The lock file is never reached through
    a link, and must be a plain file of ours (the folder may be shared): ValueError naming it otherwise.
    """
    import fcntl

    from .fileio import open_own

    while True:
        fd = open_own(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            return fd
        os.close(fd)


def _unlink_if_same(path: Path, fd: int) -> None:
    """Remove `path` only while it still names our open file: someone may have renamed theirs over it."""
    from .fileio import same_file

    if same_file(path, fd):
        path.unlink(missing_ok=True)


def _read_plain(path: Path) -> str:
    """A note's text, never through a link nor from a FIFO someone planted (which would hang a plain read)."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, encoding="utf-8") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a plain file")
        return f.read()


def command_line() -> str:
    import sys

    argv = ["python -m leak_lightning", *sys.argv[1:]] if sys.argv[0].endswith("__main__.py") else sys.argv
    return " ".join(argv)


def _who(command: str) -> dict:
    import socket
    import time

    return {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _holder(note: Path) -> str:
    import json

    try:
        h = json.loads(_read_plain(note))
        return f"PID {h['pid']} on {h['host']} since {h['started']} ({h['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def resume_command() -> str:
    """This process's command line with `--ckpt_path last` (replacing any earlier one)."""
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--ckpt_path":
            skip = True
            continue
        if not a.startswith("--ckpt_path="):
            args.append(a)
    return shlex.join(["python", "-m", "leak_lightning", *args, "--ckpt_path", "last"])
