"""Decoder processes that write clips straight into shared-memory batch buffers.

Processes, not threads: soundfile makes several short GIL-releasing calls per file, and a thread
pool stalled on GIL hand-offs while the GPU waited (measure with scripts/benchmark_build.py --workers,
and scripts/gpu_check.sh on a GPU machine).
Each worker takes a slice of a batch and fills rows of a buffer the parent created.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np

from ..audio.decode import SILENT, ClipSpec, clip_or_reason

_views: list[np.ndarray] = []  # in a worker: the parent's buffers
_blocks: list[SharedMemory] = []


def _exit_with_parent(parent: int) -> None:
    # A SIGKILLed builder (OOM killer, kill -9) cannot shut its pool down; without this the
    # workers would wait forever on their task queue, holding the terminal's pipes open.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _attach(names: list[str], shape: tuple[int, int], parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    # One intra-op thread per worker: the workers already fill every core.
    os.environ["OMP_NUM_THREADS"] = "1"
    # Ctrl-C reaches the whole process group; the parent decides how to stop and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in names:
        # Spawned workers share the parent's resource tracker, so attaching registers nothing
        # new and the parent's unlink() stays the one release of the block.
        shm = SharedMemory(name=name)
        _blocks.append(shm)
        _views.append(np.ndarray(shape, dtype=np.float32, buffer=shm.buf))


SILENT_REASON = ("silent: no signal (digital silence or a constant; a dead sensor or channels that cancel "
                 "in the downmix)")


def audio_digest(samples: np.ndarray) -> int:
    """A recording's identity by content: the first 8 bytes of the sha256 of its decoded clip (mono float32 at
    the feature rate).

    Decoded samples rather than file bytes: a copy renamed, re-wrapped (other metadata chunks) or
    losslessly re-encoded (WAV → FLAC) is the same audio and must count as the same recording.
    """
    # sha256 over the buffer in place (no copy): the CPU's SHA instructions make it faster than blake2b
    # (scripts/benchmark_kernels.py, "audio digest")
    raw = np.ascontiguousarray(samples, dtype=np.float32)
    return int.from_bytes(hashlib.sha256(raw).digest()[:8], "little")


def decode_rows(buffer: int, start: int, paths: list[str],
                spec: ClipSpec) -> list[tuple[str | None, tuple[str, ...], int]]:
    """Decode files into rows start.. of a buffer (zero-padded); per file (skip reason or None, quality
    flags, audio digest or 0)."""
    out, results = _views[buffer], []
    for row, path in enumerate(paths, start):
        clip = clip_or_reason(Path(path), spec)
        if isinstance(clip, str):
            results.append((clip, (), 0))
        elif SILENT in clip.flags:  # a row of -200 dB would teach the model that a dead sensor is a class
            results.append((SILENT_REASON, clip.flags, 0))
        else:
            out[row, : len(clip.samples)] = clip.samples
            out[row, len(clip.samples):] = 0.0
            results.append((None, clip.flags, audio_digest(clip.samples)))
    return results


class DecoderPool:
    """`prefetch` shared (batch, num_samples) float32 buffers and the processes that fill them."""

    def __init__(self, workers: int, batch_size: int, spec: ClipSpec, prefetch: int) -> None:
        self.spec, self.workers = spec, workers
        shape = (batch_size, spec.num_samples)
        nbytes = batch_size * spec.num_samples * 4
        self._blocks = [SharedMemory(create=True, size=nbytes) for _ in range(prefetch)]
        self.views = [np.ndarray(shape, dtype=np.float32, buffer=b.buf) for b in self._blocks]
        # spawn: the parent may hold CUDA and threads, neither of which survives a fork.
        self._pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_attach,
                                         initargs=([b.name for b in self._blocks], shape, os.getpid()))

    def submit(self, buffer: int, paths: list[str]) -> list[Future]:
        """Split a batch over the workers; futures resolve to lists of (skip reason, flags, digest)."""
        step = max(1, math.ceil(len(paths) / self.workers))
        return [self._pool.submit(decode_rows, buffer, i, paths[i: i + step], self.spec)
                for i in range(0, len(paths), step)]

    def close(self) -> None:
        for _ in range(50):
            try:
                self._pool.shutdown(wait=True, cancel_futures=True)
                break
            except RuntimeError:  # "cannot join thread before it is started": a Ctrl-C landed while the
                time.sleep(0.1)  # pool was starting its manager thread, which is up a moment later
        else:
            for child in mp.active_children():
                child.terminate()
        self.views.clear()
        for block in self._blocks:  # unlink first: it needs no buffer released, and frees the memory
            try:
                block.unlink()
            except OSError:  # already gone
                pass
            try:
                block.close()
            except BufferError:  # a view is still referenced (an error's traceback): freed with it
                pass
