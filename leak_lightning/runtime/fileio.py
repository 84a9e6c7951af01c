"""Atomic file replacement shared by the builder, the reports, the exports and the checkpoints (no torch,
no Lightning).

One rule for every file the project writes: it is written inside a private temporary folder beside its
target (`mkdtemp`: mode 0700, an unpredictable `.NAME.tmp-PID-XXXXXXXX` name), fsynced and renamed into
place; before each write the folder's temporaries whose writer process is gone (a kill) are removed.
Output folders may be shared with other users: a name someone else planted there (a symbolic link, their
file) is never followed or written through, and refused in one line naming it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

TMP_MARK = ".tmp-"
_RANDOM = 8  # characters mkdtemp appends to its prefix


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
    for the `.tmp-PID` mark (which alone identifies the temporary's writer). The name is predictable:
    create it only with O_EXCL (or mkdir), never with a plain open; `private_folder` is the safe default.
    """
    mark = f"{TMP_MARK}{os.getpid()}"
    return path.with_name(_fit(f".{path.name}", name_max(path.parent) - len(mark)) + mark)


def _user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def foreign(path: Path, st: os.stat_result) -> ValueError | None:
    """Why `path` (with lstat/fstat result `st`) is not ours to write or remove, as the one-line error; None if it is.

    A symbolic link or another user's file at a name we create is what someone sharing the folder
    planted to make us write through it: refused, and left as found.
    """
    if stat.S_ISLNK(st.st_mode):
        what = "is a symbolic link"
    elif st.st_uid != os.geteuid():
        what = f"belongs to user {_user(st.st_uid)}"
    elif not stat.S_ISREG(st.st_mode):
        what = "is not a plain file"
    elif st.st_nlink != 1:  # a hard link to a file of ours, where fs.protected_hardlinks is off
        what = f"has {st.st_nlink} hard links"
    else:
        return None
    return ValueError(f"{path} {what}: someone else's file in a shared folder; remove it or use another folder")


def open_own(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` for a lock or note we create or share with our own processes: never through a link,
    and only onto a plain file of ours (ValueError naming it otherwise). No O_TRUNC: truncate once checked."""
    if flags & os.O_TRUNC:
        raise ValueError("open_own: O_TRUNC would truncate before the owner check; use os.ftruncate after it")
    # O_NONBLOCK: a FIFO planted at the name must not hang the open (plain files ignore it)
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    while True:
        existed = False
        try:
            if flags & os.O_CREAT and not flags & os.O_EXCL:
                with contextlib.suppress(FileExistsError):  # made just now: ours, whatever owner the file
                    return os.open(path, flags | os.O_EXCL, mode)  # system shows (NFS root_squash)
                existed = True
                fd = os.open(path, flags & ~os.O_CREAT)
            else:
                fd = os.open(path, flags, mode)
            break
        except FileNotFoundError:  # removed between the two opens (a lock's holder let go): create it again;
            if not existed:  # not found at the create itself: its folder is gone, and retrying would spin
                raise
        except OSError as err:  # ELOOP: a link at the last name; EEXIST (O_EXCL): say whose it is
            if err.errno in (errno.ELOOP, errno.EEXIST) and (why := _foreign_at(path)) is not None:
                raise why from None
            raise
    try:
        if (why := foreign(path, os.fstat(fd))) is not None:
            raise why
    except BaseException:
        os.close(fd)
        raise
    return fd


def _foreign_at(path: Path) -> ValueError | None:
    try:
        return foreign(path, os.lstat(path))
    except FileNotFoundError:
        return None


def same_file(path: Path, fd: int) -> bool:
    """`path` still names the file open at `fd` (not a file someone renamed over it since): safe to remove."""
    try:
        here, mine = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)


def check_output_name(path: Path, option: str = "") -> None:
    """An output name that is someone else's symbolic link is refused: replacing it would remove their file,
    and they meant us to write through it. (Our own link at the name is replaced, as any file is.)"""
    try:
        st = os.lstat(path)
    except OSError:  # not there, or its folder is not one (ENOTDIR, ELOOP): the write that follows says so
        return
    if stat.S_ISLNK(st.st_mode) and st.st_uid != os.geteuid():
        raise ValueError(f"{option + ' ' if option else ''}{foreign(path, st)}")


def _temp_prefix(path: Path) -> str:
    mark = f"{TMP_MARK}{os.getpid()}-"
    return _fit(f".{path.name}", name_max(path.parent) - len(mark) - _RANDOM) + mark


@contextlib.contextmanager
def private_folder(path: Path) -> Iterator[Path]:
    """A fresh folder beside `path` that only we can enter (mkdtemp: 0700, a name no one can plant in
    advance); removed with what is left in it at the end, unless it was renamed away meanwhile."""
    folder, ident = make_private(path)
    try:
        yield folder
    finally:
        remove_private(folder, ident)


def make_private(path: Path) -> tuple[Path, tuple[int, int]]:
    """`private_folder` for a temporary that outlives a `with` block: the folder and its identity for
    `remove_private`."""
    folder = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path)))
    st = os.lstat(folder)
    return folder, (st.st_dev, st.st_ino)


def remove_private(folder: Path, ident: tuple[int, int]) -> None:
    """Remove our private folder, only if `folder` still is the one we made (not one renamed into its place)."""
    try:
        st = os.lstat(folder)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == ident and stat.S_ISDIR(st.st_mode):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """Yield a temporary name to write (inside a private folder: no one can plant a link at it); on success
    it replaces `path`, and it never outlives the block."""
    path = Path(path)
    remove_stale_temporaries(path.parent)
    check_output_name(path)
    with private_folder(path) as folder:
        tmp = folder / path.name
        yield tmp
        os.replace(tmp, path)


def write_atomic(path: Path, write: Callable[[IO[str]], object]) -> None:
    """Write a text file through `write(f)` under a temporary name, fsync it, then rename it into place."""
    with replacing(path) as tmp:
        # O_EXCL | O_NOFOLLOW: the private folder is ours, and this holds even if it were not
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        with open(fd, "w", newline="", encoding="utf-8") as f:
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
    """Delete our `.NAME.tmp-PID[-XXXXXXXX]` files and folders whose writer process is gone (a killed save);
    return them. Another user's are left alone: not ours to remove, even when their writer is gone."""
    removed = []
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*{TMP_MARK}*"):
        pid = path.name.rsplit(TMP_MARK, 1)[1].split("-", 1)[0]  # mkdtemp's suffix has no "-"
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if st.st_uid != os.geteuid():
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def check_writable_file(path: Path, option: str, need_bytes: int = 0) -> None:
    """Before slow work whose result goes to `path`: the folder can be made, a file of that name can be
    created in a private temporary folder there (as `replacing` will), the name is not someone else's link,
    and `need_bytes` fit. Raises ValueError, one line."""
    path = Path(path)
    check_output_name(path, option)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(path.name)) > name_max(path.parent):
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), str(path))
        with private_folder(path) as folder:
            os.close(os.open(folder / path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
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
