"""Batch iterables: gather by index from a cached split, or stream whole per-file chunks.

Segments are 128 bytes each; per-sample `__getitem__` through a DataLoader tops out near
60k segments/s while a GPU trains at over a million, so cached splits are gathered a whole
batch at a time by index (no per-sample Python, no worker processes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, int]  # x (B, n_mels, T), y (B, C), first segment index


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: distinct per epoch, the same on every rank and machine."""
    return seed * 100_003 + epoch


@dataclass
class CachedSplit:
    """A split held whole: on the training device, or in (pinned) host memory."""

    segments: torch.Tensor  # (N, n_mels, T) float16
    targets: torch.Tensor  # (F, C) float32, on the same device as segments
    segments_per_file: int

    @property
    def num_segments(self) -> int:
        return self.segments.shape[0]

    def gather(self, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `index` (on segments' device) → (x, y) on `device`."""
        if self.segments.device.type == "cpu":
            # numpy fancy indexing: torch.index_select wins on idle cores but fell far behind with the cores
            # oversubscribed (scripts/benchmark_kernels.py "gather", alone and beside other jobs); the gather is
            # a small part of a step either way, so the worst case decides
            idx = index.numpy()
            x = torch.from_numpy(self.segments.numpy()[idx])
            y = torch.from_numpy(self.targets.numpy()[idx // self.segments_per_file])
            if device.type != "cpu":
                x = x.pin_memory().to(device, non_blocking=True)
                y = y.pin_memory().to(device, non_blocking=True)
            return x, y
        return self.segments[index], self.targets[index // self.segments_per_file]


class ResumableOrder:
    """A seeded per-epoch training order whose position travels in checkpoints.

    LeakDataModule.state_dict stores `snapshot()`; after a restore, `resume_from` makes the
    next epoch iteration start at the saved position if it is still the saved epoch by then.
    `kind` names the order: a position means nothing under another one.
    """

    def __init__(self, seed: int, epoch_fn: Callable[[], int], done_fn: Callable[[], int], kind: str) -> None:
        self.seed, self.epoch_fn, self.done_fn, self.kind = seed, epoch_fn, done_fn, kind
        self._resume: dict | None = None

    def snapshot(self) -> dict:
        return {"epoch": self.epoch_fn(), "position": self.done_fn(), "seed": self.seed, "kind": self.kind}

    def resume_from(self, state: dict) -> None:
        kind = state.get("kind", self.kind)  # older checkpoints did not record it
        if state.get("seed") != self.seed or kind != self.kind:
            log.warning("the checkpoint's batch order (%s, seed %s) differs from this run's (%s, seed %s): "
                        "the resumed epoch restarts on a new order. Keep the cache mode, batch size, "
                        "device count, data.seed and (streaming) data.num_workers to resume mid-epoch",
                        kind, state.get("seed"), self.kind, self.seed)
            return
        self._resume = dict(state)

    def start_position(self, epoch: int) -> int:
        """Batches of `epoch` to skip: the saved position once, if the run resumed inside it."""
        resume, self._resume = self._resume, None
        return resume["position"] if resume is not None and resume["epoch"] == epoch else 0


class TrainBatches(ResumableOrder):
    """Seeded per-epoch shuffles; each DDP rank takes a disjoint, equal share of the permutation.

    With `balance`, an epoch instead draws as many segments, with replacement, each class equally
    likely (a segment's weight is 1 / the number of segments of its file's class): as seeded and as
    resumable as the plain shuffle.

    With `steps_per_call` k > 1 it serves blocks: lists of k batches (the last block may hold fewer),
    for k optimizer steps per Lightning step (LeakClassifier.training_step): Lightning's per-step cost
    is paid once a block. Positions (resume, interrupts) then count blocks.

    With `whole_recordings` the epoch permutes FILES (balanced: draws as many files as there are) and a
    batch is `files_per_batch(batch_size, spf)` whole files, each file's segments contiguous and in stored
    order, so a recording-level model can view x as (files, spf, n_mels, T) and take y[::spf].
    """

    def __init__(self, split: CachedSplit, batch_size: int, seed: int, rank: int, world: int,
                 device: torch.device, epoch_fn: Callable[[], int], done_fn: Callable[[], int],
                 balance: bool = False, steps_per_call: int = 1, whole_recordings: bool = False) -> None:
        kind = (f"gather, batch {batch_size}, {world} rank(s)" + (", class-balanced" if balance else "")
                + (f", {steps_per_call} steps per call" if steps_per_call > 1 else "")
                + (", whole recordings" if whole_recordings else ""))
        super().__init__(seed, epoch_fn, done_fn, kind=kind)
        spf = split.segments_per_file
        self.whole_recordings, self.steps_per_call = whole_recordings, steps_per_call
        # rows a batch holds: whole files in whole-recording mode (data.batch_size stays counted in segments)
        self.batch_size = files_per_batch(batch_size, spf) * spf if whole_recordings else batch_size
        self.split, self.rank, self.world, self.device = split, rank, world, device
        # equal shares: no rank waits at a collective (whole files when files are the unit)
        self.per_rank = split.num_segments // spf // world * spf if whole_recordings else split.num_segments // world
        self.weights = _balanced_weights(split) if balance else None

    @property
    def optimizer_steps(self) -> int:
        """Batches (optimizer steps) per epoch."""
        return math.ceil(self.per_rank / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.optimizer_steps / self.steps_per_call)

    def permutation(self, epoch: int) -> torch.Tensor:
        """This rank's segment order for `epoch` (the same on every machine for a seed)."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        if self.whole_recordings:
            return self._file_permutation(g)
        if self.weights is not None:
            # a file by its class weight, then one of its segments: the same draw as per-segment weights,
            # within multinomial's 2^24 categories (per segment, ~210k files would exceed them)
            n, spf = self.split.num_segments, self.split.segments_per_file
            files = torch.multinomial(self.weights, n, replacement=True, generator=g)
            perm = files * spf + torch.randint(spf, (n,), generator=g)
        else:
            perm = torch.randperm(self.split.num_segments, generator=g)
        return perm[self.rank: self.per_rank * self.world: self.world]

    def _file_permutation(self, g: torch.Generator) -> torch.Tensor:
        """Whole files: this rank's share of a file order, each file's segments in stored order."""
        spf = self.split.segments_per_file
        files = self.split.num_segments // spf
        if self.weights is not None:
            order = torch.multinomial(self.weights, files, replacement=True, generator=g)
        else:
            order = torch.randperm(files, generator=g)
        mine = order[self.rank: self.per_rank // spf * self.world: self.world]
        return (mine[:, None] * spf + torch.arange(spf)).reshape(-1)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch_fn()
        start = self.start_position(epoch)
        order = self.permutation(epoch).to(self.split.segments.device)
        k = self.steps_per_call
        for block in range(start, len(self)):
            batches = [self.split.gather(order[b * self.batch_size: (b + 1) * self.batch_size], self.device)
                       for b in range(block * k, min((block + 1) * k, self.optimizer_steps))]
            if k == 1:
                yield *batches[0], -1
            else:
                yield [x for x, _ in batches], [y for _, y in batches], -1


def files_per_batch(batch_size: int, segments_per_file: int) -> int:
    """Whole recordings in a training batch of `batch_size` segments (one at least)."""
    return max(1, batch_size // segments_per_file)


def _balanced_weights(split: CachedSplit) -> torch.Tensor:
    """Per file: 1 / files of its class (a file's class is its first target), float64 on the CPU."""
    label = split.targets.cpu().argmax(-1)  # (F,)
    counts = torch.bincount(label, minlength=split.targets.shape[1]).double()
    return 1.0 / counts[label]


class EvalBatches:
    """This rank's contiguous block of whole files, in order; yields the block's segment offsets."""

    def __init__(self, split: CachedSplit, batch_size: int, rank: int, world: int,
                 device: torch.device) -> None:
        self.split, self.device = split, device
        files = split.num_segments // split.segments_per_file
        lo, hi = files * rank // world, files * (rank + 1) // world
        spf = split.segments_per_file
        # whole files per batch, so a batch never splits a file across ranks
        self.batch = max(spf, batch_size // spf * spf)
        self.lo, self.hi = lo * spf, hi * spf

    def __len__(self) -> int:
        return math.ceil((self.hi - self.lo) / self.batch)

    def __iter__(self) -> Iterator[Batch]:
        dev = self.split.segments.device
        for start in range(self.lo, self.hi, self.batch):
            idx = torch.arange(start, min(start + self.batch, self.hi), device=dev)
            x, y = self.split.gather(idx, self.device)
            yield x, y, start


def to_cached(segments: np.ndarray, targets: np.ndarray, segments_per_file: int,
              device: torch.device, pin: bool) -> CachedSplit:
    """Host arrays → CachedSplit on `device` (or pinned host memory when pin is set)."""
    seg = torch.from_numpy(segments)
    tgt = torch.from_numpy(targets.astype(np.float32))
    if device.type != "cpu":
        seg, tgt = seg.to(device), tgt.to(device)
    elif pin:
        seg, tgt = seg.pin_memory(), tgt.pin_memory()
    return CachedSplit(seg, tgt, segments_per_file)
