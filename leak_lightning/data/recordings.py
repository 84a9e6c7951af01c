"""Prediction input: recordings cut into clip-long windows, decoded like the builder does, in bounded memory."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..audio.decode import ClipSpec, WindowReader, reason_of
from ..audio.scan import Unusable, printable, scan_audio

log = logging.getLogger(__name__)
LIST_SUFFIXES = (".txt", ".lst")


def find_recordings(target: Path, suffixes: tuple[str, ...]) -> tuple[list[Path], list[Unusable]]:
    """An audio file, every audio file under a folder, or the paths listed in a text file (one per line)."""
    if target.is_dir():
        found, problems = scan_audio(target, suffixes)
        if not found and not problems:
            raise ValueError(f"--data.predict_path {target}: no audio files ({', '.join(suffixes)}) found; "
                             "point it at recordings or set --data.predict_suffixes")
        return found, problems
    if target.is_file() and target.suffix.lower() in LIST_SUFFIXES:
        lines = [line.strip() for line in target.read_text(errors="surrogateescape").splitlines()]
        listed = [Path(line) if Path(line).is_absolute() else target.parent / line
                  for line in lines if line and not line.startswith("#")]
        if not listed:
            raise ValueError(f"--data.predict_path {target}: the list names no recordings")
        return listed, []
    if target.is_file() or target.is_symlink():
        return [target], []
    raise FileNotFoundError(f"--data.predict_path {target}: no such file or folder")


@dataclass
class RecordingStatus:
    reason: str | None = None  # why it could not be scored at all
    flags: set[str] = field(default_factory=set)
    times: list[tuple[float, float]] = field(default_factory=list)  # each window's (start, end) in seconds


class WindowStream:
    """Yields (windows (W, num_samples), recording index (W,), window index (W,), silent (W,)).

    Decoder threads (soundfile and the resampler release the GIL) each read one recording
    window block by window block into a bounded queue, so memory stays at a few batches
    however long a recording is. `status[i]` says, once iteration ends, how recording i went.
    No `__len__`: the number of windows is known only once read (headers are not trusted), and
    Lightning stops a loader after `len()` batches.
    """

    def __init__(self, paths: list[Path], spec: ClipSpec, windows_per_batch: int = 64, workers: int = 2,
                 block: int = 16) -> None:
        self.paths, self.spec = paths, spec
        self.windows_per_batch, self.workers, self.block = windows_per_batch, max(1, workers), block
        self.status: dict[int, RecordingStatus] = {}

    def _read(self, i: int, out: queue.Queue, stop: threading.Event) -> None:
        reader = WindowReader(self.paths[i], self.spec, self.block)
        status = RecordingStatus()
        try:
            first = 0
            for windows, silent in reader:
                if not _put(out, (i, first, windows, silent), stop):
                    return
                first += len(windows)
            status.flags = reader.flags
        except Exception as err:  # one recording never ends the run
            status.reason = reason_of(err)
            log.warning("skipped %s: %s", printable(self.paths[i]), status.reason)
        finally:
            status.times = reader.times
            self.status[i] = status
            _put(out, (i, None, None, None), stop)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        out: queue.Queue = queue.Queue(maxsize=2 * self.workers)
        stop = threading.Event()
        pending: list[tuple[int, int, np.ndarray, np.ndarray]] = []
        size, done = 0, 0
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="predict-decode")
        try:
            for i in range(len(self.paths)):
                pool.submit(self._read, i, out, stop)
            while done < len(self.paths):
                item = out.get()
                if item[1] is None:
                    done += 1
                    continue
                pending.append(item)
                size += len(item[2])
                if size >= self.windows_per_batch:
                    yield _collate(pending)
                    pending, size = [], 0
            if pending:
                yield _collate(pending)
        finally:
            stop.set()  # a consumer that stopped early must not leave decoders blocked on a full queue
            pool.shutdown(wait=True, cancel_futures=True)


def _put(out: queue.Queue, item, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _collate(blocks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    owner = np.concatenate([np.full(len(w), i) for i, _, w, _ in blocks])
    index = np.concatenate([np.arange(first, first + len(w)) for _, first, w, _ in blocks])
    wave = np.concatenate([w for _, _, w, _ in blocks])
    silent = np.concatenate([s for *_, s in blocks])
    return (torch.from_numpy(wave), torch.from_numpy(owner), torch.from_numpy(index),
            torch.from_numpy(silent))
