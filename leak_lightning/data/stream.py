"""Streaming for splits too large to cache: per-file reads in a seeded order that resumes mid-epoch."""

from __future__ import annotations

import math
import multiprocessing as mp
from collections.abc import Callable, Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import schema
from .batches import Batch, ResumableOrder, epoch_seed, files_per_batch
from .h5 import SplitInfo, _damaged, check_same


class StreamSplit(IterableDataset):
    """Yields (x, y, start) batches read from the HDF5 file a whole file-row at a time.

    Training: this rank's share of a seeded per-epoch file permutation is dealt out to `roles`
    streams, one per DataLoader worker. A stream reads its files `buffer_files` at a time,
    shuffles each chunk's segments (seeded by epoch, rank, role and chunk) and cuts the
    concatenation into full batches; only a stream's last batch may be short. The DataLoader
    takes a batch from each worker in turn, so the epoch's batch order follows from the seed
    and the worker count alone, and any stream can start at any batch without reading what
    comes before it: `start_at(position)` resumes an epoch mid-way.
    With `whole_recordings` (training) a chunk's files are shuffled as whole files, each file's segments
    kept together and in stored order, and batches are cut at whole files (`files_per_batch` of them).
    Evaluation: this rank's contiguous block of files, in order, whole files per batch.
    The h5py handle is opened inside each worker on first use, never pickled or forked.
    """

    def __init__(self, info: SplitInfo, targets: np.ndarray, batch_size: int, train: bool, seed: int,
                 rank: int, world: int, roles: int = 1, buffer_files: int = 16,
                 whole_recordings: bool = False) -> None:
        self.info, self.batch_size, self.train = info, batch_size, train
        self.whole_recordings = whole_recordings
        self.targets = targets.astype(np.float32)
        self.seed, self.rank, self.world = seed, rank, world
        self.roles, self.buffer_files = max(1, roles), buffer_files
        self.epoch = 0
        self.skip = [0] * self.roles  # batches of each stream already consumed this epoch
        self.rotation = 0  # the stream DataLoader worker 0 serves
        self._h5: h5py.File | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None}

    # ---- the epoch's layout (cheap: file indices only) --------------------------------------
    def _rank_files(self) -> np.ndarray:
        n = self.info.num_files
        if not self.train:
            return np.arange(n * self.rank // self.world, n * (self.rank + 1) // self.world)
        order = np.random.default_rng(epoch_seed(self.seed, self.epoch)).permutation(n)
        return order[self.rank: n // self.world * self.world: self.world]  # equal shares per rank

    def _eval_files_per_batch(self) -> int:
        return files_per_batch(self.batch_size, self.info.segments_per_file)

    @property
    def train_rows(self) -> int:
        """Segments in a full training batch: whole files in whole-recording mode."""
        if self.whole_recordings:
            return files_per_batch(self.batch_size, self.info.segments_per_file) * self.info.segments_per_file
        return self.batch_size

    def stream_lengths(self) -> list[int]:
        """Training batches of each stream this epoch (the same on every rank)."""
        per_rank = self.info.num_files // self.world
        spf = self.info.segments_per_file
        files = [len(range(r, per_rank, self.roles)) for r in range(self.roles)]
        return [math.ceil(f * spf / self.train_rows) for f in files]

    def __len__(self) -> int:
        if self.train:
            return sum(self.stream_lengths())
        return math.ceil(len(self._rank_files()) / self._eval_files_per_batch())

    def start_at(self, position: int) -> None:
        """Skip the first `position` batches of the epoch as the DataLoader would have served them.

        The loader serves workers round-robin, skipping exhausted ones: batch t of every stream
        that has one, stream 0 first, then batch t + 1, ... Streams whose batch of the interrupted
        round was already served move to the back, so the resumed order continues exactly.
        """
        lengths = self.stream_lengths()
        self.skip, self.rotation = [0] * self.roles, 0
        left, t = position, 0
        while left > 0:
            active = [r for r, n in enumerate(lengths) if n > t]
            if not active:
                raise ValueError(f"position {position} is past the end of the epoch ({sum(lengths)} batches)")
            taken = active[:left]
            for r in taken:
                self.skip[r] += 1
            left -= len(taken)
            if left == 0 and len(taken) < len(active):
                self.rotation = active[len(taken)]
            t += 1

    # ---- reading --------------------------------------------------------------------------
    def _read(self, files: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._h5 is None:
            self._h5 = h5py.File(self.info.path, "r")
            check_same(self.info, self._h5)  # the file this run loaded, not a rebuild since
        ds = self._h5[schema.SEGMENTS]
        spf = self.info.segments_per_file
        try:
            x = np.concatenate([ds[int(i)].reshape(spf, *self.info.segment_shape[2:]) for i in files])
        except (OSError, RuntimeError) as err:  # a checksum mismatch or a disk error since set-up
            raise _damaged(self.info.path, err, f"/{schema.SEGMENTS} rows {files.min()}..{files.max()}") from None
        y = np.repeat(self.targets[files], spf, axis=0)
        return x.astype(np.float16, copy=False), y

    def _chunk(self, files: np.ndarray, role: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._read(files[j * self.buffer_files: (j + 1) * self.buffer_files])
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, role, j])
        if self.whole_recordings:
            spf = self.info.segments_per_file
            perm = (rng.permutation(len(x) // spf)[:, None] * spf + np.arange(spf)).reshape(-1)
        else:
            perm = rng.permutation(len(x))
        return x[perm], y[perm]

    def _stream(self, role: int) -> Iterator[Batch]:
        files = self._rank_files()[role::self.roles]
        total = len(files) * self.info.segments_per_file
        chunk_len = self.buffer_files * self.info.segments_per_file
        chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        rows = self.train_rows  # a multiple of spf in whole-recording mode, as chunks are: batches cut at files
        for b in range(self.skip[role], math.ceil(total / rows)):
            lo, hi = b * rows, min((b + 1) * rows, total)
            first, last = lo // chunk_len, (hi - 1) // chunk_len
            for done in [j for j in chunks if j < first]:
                del chunks[done]
            xs, ys = [], []
            for j in range(first, last + 1):
                if j not in chunks:
                    chunks[j] = self._chunk(files, role, j)
                a, z = max(lo, j * chunk_len) - j * chunk_len, min(hi, (j + 1) * chunk_len) - j * chunk_len
                xs.append(chunks[j][0][a:z])
                ys.append(chunks[j][1][a:z])
            yield torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), -1

    def __iter__(self) -> Iterator[Batch]:
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        if self.train:
            if nw != self.roles:
                raise RuntimeError(f"StreamSplit has {self.roles} streams but runs in {nw} workers")
            yield from self._stream((self.rotation + wid) % self.roles)
            return
        files, spf = self._rank_files(), self.info.segments_per_file
        per = self._eval_files_per_batch()
        for g, lo in enumerate(range(0, len(files), per)):  # groups of whole files, tagged with their first segment
            if g % nw == wid:
                x, y = self._read(files[lo: lo + per])
                yield torch.from_numpy(x), torch.from_numpy(y), int(files[lo]) * spf


def stream_loader(split: StreamSplit, num_workers: int, pin_memory: bool) -> DataLoader:
    # Its own generator: a loader with workers otherwise draws their base seed from the global
    # RNG, which would shift the masking RNG of a resumed run by one draw per loader started.
    gen = torch.Generator().manual_seed(epoch_seed(split.seed, split.epoch))
    # Forked workers, whatever the interpreter's default (spawn where a parent set it; forkserver from Python
    # 3.14): a spawned worker imports torch again, costing memory and start-up time each epoch
    # (scripts/benchmark_stream.py measures a streamed epoch and its peak memory). Workers only read HDF5
    # (opened after the fork), never CUDA.
    fork = mp.get_context("fork") if num_workers and "fork" in mp.get_all_start_methods() else None
    return DataLoader(split, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, generator=gen,
                      multiprocessing_context=fork)


class StreamBatches(ResumableOrder):
    """A StreamSplit behind a fresh DataLoader each epoch, at the epoch's order and position.

    Not a DataLoader itself: Lightning then sizes the epoch by `len()` without warning that an
    IterableDataset's length may be wrong under several workers (here it is exact).
    """

    def __init__(self, split: StreamSplit, num_workers: int, pin_memory: bool,
                 epoch_fn: Callable[[], int], done_fn: Callable[[], int]) -> None:
        super().__init__(split.seed, epoch_fn, done_fn, kind=f"stream, batch {split.batch_size}, "
                         f"{split.world} rank(s), {split.roles} stream(s)" +
                         # the buffer shapes the order too (16 files: named as before budgets, so resumes go on)
                         (f", buffer {split.buffer_files} files" if split.buffer_files != 16 else "") +
                         (", whole recordings" if split.whole_recordings and split.train else ""))
        self.split, self.num_workers, self.pin_memory = split, num_workers, pin_memory

    def __len__(self) -> int:
        return len(self.split)

    @property
    def optimizer_steps(self) -> int:
        return len(self.split)

    def __iter__(self) -> Iterator[Batch]:
        # the split's epoch and start travel to the workers, which are started per epoch
        self.split.epoch = self.epoch_fn()
        self.split.start_at(self.start_position(self.split.epoch))
        yield from stream_loader(self.split, self.num_workers, self.pin_memory)
