"""Prediction input: WAV recordings cut into clip-long windows, decoded like the builder does."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..builder.decode import ClipSpec, load_or_reason
from ..builder.discover import wavs_under

log = logging.getLogger(__name__)


def find_wavs(root: Path) -> list[Path]:
    """A WAV file, or every WAV under a folder (sorted)."""
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"--data.predict_dir {root}: no such file or folder")
    wavs = wavs_under(root)
    if not wavs:
        raise ValueError(f"--data.predict_dir {root}: no .wav files found")
    return wavs


def windows_of(clip: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """(N,) recording → (W, num_samples) windows; a trailing piece shorter than one long window is
    dropped unless it is the whole recording, the last kept one is zero-padded."""
    n = spec.num_samples
    count = max(1, len(clip) // n + (len(clip) % n >= spec.long_window))
    out = np.zeros((count, n), dtype=np.float32)
    for i in range(count):
        piece = clip[i * n: (i + 1) * n]
        out[i, : len(piece)] = piece
    return out


class WavWindows:
    """Yields (windows (W, num_samples), file index (W,)) for a few files at a time.

    Threads, not the builder's processes: prediction runs on far fewer files, and soundfile
    releases the GIL while decoding. Unusable files are recorded in `skipped`.
    """

    def __init__(self, paths: list[Path], spec: ClipSpec, files_per_batch: int = 32, workers: int = 4) -> None:
        self.paths, self.spec, self.files_per_batch, self.workers = paths, spec, files_per_batch, workers
        self.skipped: dict[int, str] = {}

    def __len__(self) -> int:
        return math.ceil(len(self.paths) / self.files_per_batch)

    def _decode(self, path: Path) -> np.ndarray | str:
        clip = load_or_reason(path, self.spec, whole=True)
        return clip if isinstance(clip, str) else windows_of(clip, self.spec)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        with ThreadPoolExecutor(self.workers) as pool:
            for lo in range(0, len(self.paths), self.files_per_batch):
                chunk = range(lo, min(lo + self.files_per_batch, len(self.paths)))
                waves, owners = [], []
                for i, result in zip(chunk, pool.map(self._decode, [self.paths[i] for i in chunk])):
                    if isinstance(result, str):
                        log.warning("skipped %s: %s", self.paths[i], result)
                        self.skipped[i] = result
                        continue
                    waves.append(result)
                    owners += [i] * len(result)
                if waves:
                    yield torch.from_numpy(np.concatenate(waves)), torch.tensor(owners)
