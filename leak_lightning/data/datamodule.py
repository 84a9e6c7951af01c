"""LeakDataModule: validated HDF5 splits, cached on the device when they fit, else RAM, else streamed."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from ..builder.decode import ClipSpec
from .batches import CachedSplit, EvalBatches, TrainBatches, to_cached
from .h5 import (
    SplitInfo,
    check_compatible,
    load_segments,
    load_targets,
    read_file_paths,
    read_info,
    scan_segments,
)
from .predict import WavWindows, find_wavs
from .stream import StreamBatches, StreamSplit

log = logging.getLogger(__name__)
CacheMode = Literal["auto", "device", "ram", "stream"]


def _available_ram() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class LeakDataModule(L.LightningDataModule):
    """Training/validation/test splits from the builder's HDF5 files.

    Args:
        train_h5, val_h5, test_h5: split files (any may be None for stages that don't use it).
        batch_size: segments per training batch.
        eval_batch_size: segments per evaluation batch (rounded down to whole files).
        cache: "device" holds a split on the training device, "ram" in (pinned) host memory,
            "stream" reads per-file chunks with `num_workers` workers; "auto" picks the first that fits.
        seed: base of the per-epoch shuffle seeds.
        predict_dir: a WAV file or folder for `predict` (recordings are cut into clip-long windows).
        num_workers: DataLoader workers, used only when streaming.
        max_cache_fraction: share of free device memory / available RAM a cached split may take.
    """

    def __init__(self, train_h5: str | None = None, val_h5: str | None = None, test_h5: str | None = None,
                 batch_size: int = 8192, eval_batch_size: int | None = None, cache: CacheMode = "auto",
                 seed: int = 0, num_workers: int = 2, max_cache_fraction: float = 0.5,
                 predict_dir: str | None = None) -> None:
        super().__init__()
        self.paths = {"train": train_h5, "val": val_h5, "test": test_h5}
        if not any(self.paths.values()):
            raise ValueError("no dataset given: set data.train_h5 / data.val_h5 / data.test_h5")
        if seed < 0:
            raise ValueError(f"data.seed={seed}: the shuffle seed must be 0 or more")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.cache, self.seed, self.num_workers = cache, seed, num_workers
        self.max_cache_fraction = max_cache_fraction
        self.predict_dir = predict_dir
        self.predict_input: WavWindows | None = None
        # Metadata only (cheap): the CLI links class names and features into the model from here.
        self.infos: dict[str, SplitInfo] = {k: read_info(p) for k, p in self.paths.items() if p}
        check_compatible(list(self.infos.values()))
        self.info = next(iter(self.infos.values()))
        self.splits: dict[str, CachedSplit | StreamSplit] = {}
        self.modes: dict[str, str] = {}
        self._train_batches: TrainBatches | StreamBatches | None = None
        self._resume: dict | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.info.class_names)

    @property
    def feature_config(self) -> dict:
        return asdict(self.info.features)

    def targets(self, stage: str) -> torch.Tensor:
        """Per-file targets (F, C) float32 of a set-up split, whole (not this rank's share)."""
        split = self.splits[stage]
        return split.targets if isinstance(split, CachedSplit) else torch.from_numpy(split.targets)

    def file_paths(self, stage: str) -> list[str]:
        return read_file_paths(self.infos[stage])

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _choose_mode(self, info: SplitInfo, device: torch.device) -> str:
        nbytes = info.num_segments * info.segment_shape[2] * info.segment_shape[3] * 2
        if self.cache != "auto":
            return self.cache
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes < self.max_cache_fraction * free:
                return "device"
        # every rank holds its own copy in RAM
        if nbytes * self._rank_world()[1] < self.max_cache_fraction * _available_ram():
            return "device" if device.type == "cpu" else "ram"
        return "stream"

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage, [])
        device = self._device()
        for name in wanted:
            if name in self.splits:
                continue
            if name not in self.infos:
                raise ValueError(f"stage {stage!r} needs data.{name}_h5, which is not set")
            info = self.infos[name]
            mode = self._choose_mode(info, device)
            targets = load_targets(info)
            if mode == "stream":
                scan_segments(info)
                batch = self.batch_size if name == "train" else self.eval_batch_size
                self.splits[name] = StreamSplit(info, targets, batch, name == "train", self.seed,
                                                *self._rank_world(), roles=self.num_workers)
            else:
                target_device = device if mode == "device" else torch.device("cpu")
                self.splits[name] = to_cached(load_segments(info), targets, info.segments_per_file,
                                              target_device, pin=mode == "ram" and device.type == "cuda")
            self.modes[name] = mode
            log.info("%s split: %d files, %d segments, cache=%s (%s)", name, info.num_files,
                     info.num_segments, mode, info.path)

    def _loader(self, name: str):
        split = self.splits[name]
        rank, world = self._rank_world()
        cuda = self._device().type == "cuda"
        if name != "train":
            if isinstance(split, StreamSplit):  # its order has no epoch or position
                return StreamBatches(split, self.num_workers, cuda, lambda: 0, lambda: 0)
            return EvalBatches(split, self.eval_batch_size, rank, world, self._device())
        loop = self.trainer.fit_loop.epoch_loop if self.trainer is not None else None

        def epoch() -> int:
            return self.trainer.current_epoch if self.trainer is not None else 0

        def done() -> int:  # batches whose optimizer step is done (saves happen after it)
            return loop.batch_progress.current.processed if loop is not None else 0

        if isinstance(split, StreamSplit):
            batches = StreamBatches(split, self.num_workers, cuda, epoch, done)
        else:
            batches = TrainBatches(split, self.batch_size, self.seed, rank, world, self._device(), epoch, done)
        if self._resume is not None:
            batches.resume_from(self._resume)
            self._resume = None
        self._train_batches = batches
        return batches

    def _setup_predict(self) -> None:
        if not self.predict_dir:
            raise ValueError("predict needs --data.predict_dir (a WAV file or a folder of WAVs)")
        if self._rank_world()[1] > 1:
            raise ValueError("predict runs on one device; use --trainer.devices 1")
        spec = ClipSpec.of(self.info.features)
        self.predict_input = WavWindows(find_wavs(Path(self.predict_dir)), spec, workers=max(1, self.num_workers))
        log.info("predict: %d recordings under %s", len(self.predict_input.paths), self.predict_dir)

    def predict_dataloader(self):
        return self.predict_input

    # Sampler position in checkpoints. Lightning restores the data module before it first asks for
    # the train loader; its own stateful-loader restore can be skipped when `configure_optimizers`
    # reads `estimated_stepping_batches` (the loader is then built before the states are loaded).
    def state_dict(self) -> dict:
        return {"train_sampler": self._train_batches.snapshot()} if self._train_batches is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume = state_dict.get("train_sampler")
        if self._resume is not None and self._train_batches is not None:
            self._train_batches.resume_from(self._resume)
            self._resume = None

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")
