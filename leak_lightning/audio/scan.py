"""Find audio files under a folder, and say why each entry named like one cannot be read.

`Path.rglob` + `is_file()` drops dangling links, symlink loops, FIFOs and folders named
`x.wav` without a word; here each becomes an `Unusable` entry with its reason, so the build's
skip report and predict's CSV account for every name a user sees. Nothing is opened while
scanning (opening a FIFO would block).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

WAV_SUFFIXES = (".wav", ".wave")
# Every container libsndfile decodes that sensors and archives use: the builder and predict read the
# same list, so every such file in an input is a row or a listed skip, never passed over in silence.
AUDIO_SUFFIXES = (*WAV_SUFFIXES, ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".caf",
                  ".w64", ".rf64")


@dataclass(frozen=True)
class Unusable:
    path: Path
    reason: str


def printable(path: str | Path) -> str:
    """A path as text that always encodes: undecodable bytes of a file name show as \\xNN escapes.

    Linux file names are bytes; Python keeps undecodable ones as surrogates, which UTF-8 writers
    (HDF5 strings, CSV, log files) refuse.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _stat(path: Path) -> os.stat_result | str:
    try:
        return path.stat()  # follows links
    except FileNotFoundError:
        return "dangling symlink: its target does not exist"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop: the link points back to itself"
        return f"cannot stat: {err.strerror or err}"


def scan_audio(folder: Path, suffixes: tuple[str, ...] = AUDIO_SUFFIXES) -> tuple[list[Path], list[Unusable]]:
    """Audio files below `folder` (sorted) and the unusable entries named like audio files.

    Symlinked folders are followed once: a link back to a folder already scanned is reported
    (a loop, or the same recordings twice), not followed again.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    files: list[Path] = []
    problems: list[Unusable] = []
    seen: set[tuple[int, int]] = set()

    def walk(d: Path, st: os.stat_result) -> None:
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as err:
            problems.append(Unusable(d, f"folder cannot be listed ({err.strerror or err}): its recordings are not "
                                        "read; give this user read and search permission on it (chmod a+rx)"))
            return
        for entry in entries:
            path = Path(entry.path)
            named_like_audio = path.suffix.lower() in suffixes
            info = _stat(path)
            if isinstance(info, str):
                if named_like_audio or entry.is_symlink():
                    problems.append(Unusable(path, info))
                continue
            if stat.S_ISDIR(info.st_mode):
                if entry.name.startswith("."):
                    continue
                if named_like_audio:
                    problems.append(Unusable(path, "a folder named like an audio file (its contents are scanned)"))
                if (info.st_dev, info.st_ino) in seen:
                    problems.append(Unusable(path, "link to a folder already scanned (a loop, or the same "
                                                   "recordings twice): not scanned again"))
                    continue
                walk(path, info)
            elif named_like_audio:
                if stat.S_ISREG(info.st_mode):
                    files.append(path)
                else:
                    problems.append(Unusable(path, f"{_kind(info.st_mode)}, not a regular file: never opened"))

    walk(folder, folder.stat())
    return sorted(files), problems
