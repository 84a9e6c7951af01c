"""Atomic file replacement shared by the builder, the reports, the exports and the checkpoints (no torch,
no Lightning).

One rule for every file the project writes: it is written under a hidden temporary name beside its
target (`.NAME.tmp-PID`), fsynced and renamed into place; before each write the folder's temporaries
whose writer process is gone (a kill) are removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TMP_MARK = ".tmp-"


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of `folder` (or its nearest existing parent) takes."""
    for candidate in (folder, *folder.parents):
        try:
            return os.pathconf(candidate, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def _fit(name: str, limit: int) -> str:
    raw = os.fsencode(name)
    return name if len(raw) <= limit else os.fsdecode(raw[:limit].decode("utf-8", "ignore").encode())


def temp_sibling(path: Path) -> Path:
    """A hidden temporary name beside `path`: same directory, so `os.replace` onto `path` is atomic.

    A legal name near the file system's limit stays legal: the name part is shortened to leave room
    for the `.tmp-PID` mark (which alone identifies the temporary's writer).
    """
    mark = f"{TMP_MARK}{os.getpid()}"
    return path.with_name(_fit(f".{path.name}", name_max(path.parent) - len(mark)) + mark)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name to write; on success it replaces `path`, and it never outlives the block."""
    remove_stale_temporaries(path.parent)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, write: Callable[[IO[str]], object]) -> None:
    """Write a text file through `write(f)` under a temporary name, fsync it, then rename it into place."""
    with replacing(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def fsync_dir(folder: Path) -> None:
    """Make the renames inside `folder` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete `.NAME.tmp-PID` files and folders whose writer process is gone (a killed save); return them."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*{TMP_MARK}*"):
        pid = path.name.rsplit(TMP_MARK, 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_writable_file(path: Path, option: str, need_bytes: int = 0) -> None:
    """Before slow work whose result goes to `path`: the folder can be made, a file of that name (and of
    its temporary name) can be created there, and `need_bytes` fit. Raises ValueError, one line."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(path.name)) > name_max(path.parent):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
        probe = temp_sibling(path)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{option} {path}: cannot write there ({err.strerror or err}); choose another "
                         "file or folder") from None
    check_free_space(path, need_bytes, option)


def check_free_space(path: Path, need_bytes: int, option: str) -> None:
    """`need_bytes` must fit on the file system that will hold `path` (made or not yet)."""
    where = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if need_bytes and (free := shutil.disk_usage(where).free) < need_bytes:
        raise ValueError(f"{option} {path}: not enough free space (about {need_bytes / 2**20:.1f} MiB needed, "
                         f"{free / 2**20:.1f} MiB free); free some space or choose another place")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`); False where the system or
    the file system lacks it. Python's os module has no binding for it, hence ctypes."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, as hex: how a written set names its members."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
