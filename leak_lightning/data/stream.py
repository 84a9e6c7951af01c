"""Streaming for splits too large to cache: whole per-file chunks, a shuffle buffer, lazy handles."""

from __future__ import annotations

from collections.abc import Iterator

import h5py
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import schema
from .h5 import SplitInfo


class StreamSplit(IterableDataset):
    """Yields (x, y, start) batches read a file-chunk at a time.

    Training: files shuffled per epoch (seeded), shared out by rank then worker, and segments
    mixed in a buffer of `buffer_files` files. Evaluation: this rank's block of files in order.
    The h5py handle is opened inside each worker on first use, never pickled or forked.
    """

    def __init__(self, info: SplitInfo, targets: np.ndarray, batch_size: int, train: bool, seed: int,
                 rank: int, world: int, buffer_files: int = 16) -> None:
        self.info, self.batch_size, self.train = info, batch_size, train
        self.targets = targets.astype(np.float32)
        self.seed, self.rank, self.world, self.buffer_files = seed, rank, world, buffer_files
        self.epoch = 0
        self._h5: h5py.File | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_h5": None}

    def _files(self) -> np.ndarray:
        n = self.info.num_files
        if not self.train:
            return np.arange(n * self.rank // self.world, n * (self.rank + 1) // self.world)
        order = np.random.default_rng(self.seed * 100_003 + self.epoch).permutation(n)
        return order[self.rank: n // self.world * self.world: self.world]

    def _read(self, files: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._h5 is None:
            self._h5 = h5py.File(self.info.path, "r")
        ds = self._h5[schema.SEGMENTS]
        spf = self.info.segments_per_file
        x = np.concatenate([ds[int(i)].reshape(spf, *self.info.segment_shape[2:]) for i in files])
        y = np.repeat(self.targets[files], spf, axis=0)
        return x.astype(np.float16, copy=False), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        worker = get_worker_info()
        wid, nw = (worker.id, worker.num_workers) if worker else (0, 1)
        files = self._files()
        spf = self.info.segments_per_file
        if not self.train:  # contiguous groups of whole files, tagged with their first segment
            per = max(1, self.batch_size // spf)
            for g, lo in enumerate(range(0, len(files), per)):
                if g % nw == wid:
                    x, y = self._read(files[lo: lo + per])
                    yield torch.from_numpy(x), torch.from_numpy(y), int(files[lo]) * spf
            return
        yield from self._shuffled(files[wid::nw])

    def _shuffled(self, files: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        for lo in range(0, len(files), self.buffer_files):
            x, y = self._read(files[lo: lo + self.buffer_files])
            perm = rng.permutation(len(x))
            for b in range(0, len(x), self.batch_size):
                idx = perm[b: b + self.batch_size]
                yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx]), -1
