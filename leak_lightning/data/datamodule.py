"""LeakDataModule: validated HDF5 splits, cached on the device when they fit, else RAM, else streamed."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch

from ..audio.decode import ClipSpec
from ..audio.scan import AUDIO_SUFFIXES, printable
from ..checkpoint.contract import ModelContract
from ..runtime.logs import bytes_human, parse_bytes
from ..runtime.rundir import DataLock, command_line
from .batches import CachedSplit, EvalBatches, TrainBatches, files_per_batch, to_cached
from .h5 import (
    SplitInfo,
    check_compatible,
    load_segments,
    load_targets,
    read_file_paths,
    read_info,
    recording_digests,
    scan_segments,
)
from .recordings import WindowStream, find_recordings
from .stream import StreamBatches, StreamSplit

log = logging.getLogger(__name__)
CacheMode = Literal["auto", "device", "ram", "stream"]


def _check_settings(batch_size: int, eval_batch_size: int | None, seed: int, num_workers: int,
                    max_cache_fraction: float, steps_per_call: int) -> None:
    checks = [
        (batch_size >= 1, f"data.batch_size={batch_size}: must be 1 or more segments"),
        (eval_batch_size is None or eval_batch_size >= 1,
         f"data.eval_batch_size={eval_batch_size}: must be 1 or more (or null for data.batch_size)"),
        (seed >= 0, f"data.seed={seed}: the shuffle seed must be 0 or more"),
        (num_workers >= 0, f"data.num_workers={num_workers}: must be 0 or more"),
        (0 < max_cache_fraction <= 1, f"data.max_cache_fraction={max_cache_fraction}: must be in (0, 1]"),
        (steps_per_call >= 1, f"data.steps_per_call={steps_per_call}: must be 1 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def is_training_split(info: SplitInfo, trained: dict | None) -> bool:
    """`info` is the very split `trained` (`LeakDataModule.training_data()`) describes: its build, its file."""
    return bool(trained) and info.build_id is not None and info.build_id == trained.get("build_id") \
        and info.path.name == trained.get("file")


def shared_with_training(info: SplitInfo, trained: dict | None, digests) -> int | None:
    """How many of `info`'s recordings were in the training split described by `trained` (None: unknown).

    `trained` is `LeakDataModule.training_data()`; `digests(kind)` gives `info`'s `recording_digests` of
    that kind (called only when the two files come from different builds: a build refuses the same
    audio in two of its splits).
    """
    if not trained:
        return None
    if info.build_id is not None and info.build_id == trained.get("build_id"):
        return info.num_files if is_training_split(info, trained) else 0
    theirs = trained.get("recordings")
    mine = digests(trained.get("digest_kind", "name"))  # checkpoints before audio digests kept names
    if theirs is None or mine is None:
        return None
    return int(np.isin(mine[1], theirs.numpy().view(np.uint64)).sum())


def segment_bytes(info: SplitInfo) -> int:
    """Bytes of a split's segments (float16): what caching it holds."""
    return info.num_segments * info.segment_shape[2] * info.segment_shape[3] * 2


def stream_bytes(info: SplitInfo, classes: int, batch_size: int, workers: int, files: int) -> int:
    """Bytes streaming `info` holds when each stream reads `files` whole files at a time (0: evaluation, which
    reads the files of one batch at a time).

    Per stream (one per DataLoader worker; forked, so what the process caches is shared, not copied, while
    their buffers are their own): the chunk being served, the next one, and a shuffled copy of a chunk while it
    is made (3 chunks) plus the batch it is cutting; the DataLoader's queue (2 batches a worker); the batch the
    step holds and its pinned copy."""
    streams = max(1, workers)
    row = info.segment_shape[2] * info.segment_shape[3] * 2 + 4 * classes  # float16 segment + float32 targets
    return (3 * streams + 2) * batch_size * row + 3 * streams * files * info.segments_per_file * row


def stream_buffer_files(info: SplitInfo, classes: int, batch_size: int, workers: int, budget: int,
                        others: int = 0, train: bool = True) -> int:
    """Whole files each stream reads at a time so that what streaming holds stays within `budget` bytes less
    `others` (what the process's other splits hold or keep for themselves). Up to 4096 files: the shuffle
    window. Evaluation streams have no buffer (0); they are only checked to fit."""
    fixed = stream_bytes(info, classes, batch_size, workers, 0)
    per_file = stream_bytes(info, classes, batch_size, workers, 1) - fixed if train else 0
    room = budget - others - fixed - per_file  # one file a chunk at least
    if room < 0:
        besides = f" besides the {bytes_human(others)} the process's other splits hold" if others else ""
        raise ValueError(f"data.max_cache_bytes={bytes_human(budget)} is too small to stream {info.path} with batches "
                         f"of {batch_size} segments and {max(1, workers)} stream(s): at least "
                         f"{bytes_human(fixed + per_file)}{besides}; raise it, or lower data.batch_size, "
                         "data.eval_batch_size or data.num_workers")
    return int(min(1 + room // per_file, 4096)) if train else 0


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
        predict_path: for `predict`: an audio file, a folder (searched recursively) or a text file
            listing recordings; each is cut into clip-long windows.
        predict_suffixes: file name endings `predict` reads in a folder (libsndfile decodes them).
        num_workers: DataLoader workers when streaming; decoder threads for `predict`.
        max_cache_fraction: share of free device memory / available RAM a cached split may take.
        max_cache_bytes: one memory budget for the data of this process, all splits together (e.g. 4GB; null:
            none; a whole number of bytes up to 8192 PB). Training is placed first (it is read every epoch), then
            validation, then test: a split is cached when it fits what is left (the splits after it keep the
            least they need to stream), else it is streamed, its buffers sized within what is left (the larger,
            the better the shuffle). Stream workers are forked: they share what is cached, and each worker's
            buffers count. Per process: under DDP every rank holds its own copy, so a node with 8 ranks may use 8
            budgets. Peak memory is this budget plus a fixed overhead (docs/design.md).
        balance: class-balanced sampling of the training split (with replacement, seeded and
            resumable like the plain shuffle); needs a cached split (device or ram).
        steps_per_call: optimizer steps per Lightning step: the loader serves blocks of this many
            batches, so Lightning's per-step cost (hooks, logging, progress bar) is paid once a block.
            Cached splits on one device; streaming and DDP run one step per call.
        whole_recordings: training batches of whole recordings (for a recording-level model): a batch is
            max(1, batch_size // segments per file) files, each file's segments together and in order, the
            epoch a seeded order of files (with balance: files drawn by class weight). null: as the model
            asks (its `whole_recordings` attribute, False when it has none). Evaluation batches are whole
            files in order either way. The resolved value is the `whole_recordings` property.
    """

    def __init__(self, train_h5: str | None = None, val_h5: str | None = None, test_h5: str | None = None,
                 batch_size: int = 8192, eval_batch_size: int | None = None, cache: CacheMode = "auto",
                 seed: int = 0, num_workers: int = 2, max_cache_fraction: float = 0.5,
                 max_cache_bytes: int | str | None = None,
                 predict_path: str | None = None,
                 predict_suffixes: tuple[str, ...] = AUDIO_SUFFIXES,
                 balance: bool = False, steps_per_call: int = 1, whole_recordings: bool | None = None) -> None:
        super().__init__()
        self.paths = {"train": train_h5, "val": val_h5, "test": test_h5}
        if not any(self.paths.values()) and not predict_path:
            raise ValueError("no dataset given: set data.train_h5 / data.val_h5 / data.test_h5 "
                             "(or data.predict_path for predict)")
        _check_settings(batch_size, eval_batch_size, seed, num_workers, max_cache_fraction, steps_per_call)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.cache, self.seed, self.num_workers = cache, seed, num_workers
        self.max_cache_fraction, self.balance, self.steps_per_call = max_cache_fraction, balance, steps_per_call
        self._whole_recordings = whole_recordings
        self._batches_note: str | None = None  # the whole-recording batch size last logged
        self.max_cache_bytes = None if max_cache_bytes is None else parse_bytes(max_cache_bytes, "data.max_cache_bytes")
        self.predict_path, self.predict_suffixes = predict_path, tuple(predict_suffixes)
        self.predict_input: WindowStream | None = None
        self.predict_unusable: list = []
        self.predict_index: list[int] = []  # this rank's recordings, as positions in the whole list
        self._predict_found: tuple[list[Path], list] | None = None
        # Metadata only (cheap): the CLI links class names and features into the model from here.
        # A split file that does not exist is an error only for a stage that reads it: `test` with a
        # config whose training/validation paths point elsewhere (another machine, a new site's data).
        given = {k: p for k, p in self.paths.items() if p}
        self._absent = {k: p for k, p in given.items() if not Path(p).exists()}
        if self._absent and len(self._absent) == len(given) and not predict_path:
            read_info(next(iter(self._absent.values())))  # nothing to read at all: its one line now
        self.infos: dict[str, SplitInfo] = {k: read_info(p) for k, p in given.items() if k not in self._absent}
        if self.infos:
            check_compatible(list(self.infos.values()))
        for info in self.infos.values():
            if not info.checksummed:
                log.warning("%s has no checksums (built by the origin builder or before leak_lightning 0.2): "
                            "damage on disk would go unnoticed; rebuild it to add them", info.path)
        self.contract: ModelContract | None = None
        # per evaluated split: its recordings that were in the model's training data (None: unknown)
        self.seen_in_training: dict[str, int | None] = {}
        self._digests: dict[tuple, tuple[str, np.ndarray] | None] = {}
        self._columns: dict[str, list[int]] = {}  # per split: the data column of each model class
        self._train_counts: list[int] | None = None
        self.splits: dict[str, CachedSplit | StreamSplit] = {}
        self.modes: dict[str, str] = {}
        self._held: dict[str, int] = {}  # bytes each split holds of data.max_cache_bytes (cached, or its streams)
        self._train_batches: TrainBatches | StreamBatches | None = None
        self._resume: dict | None = None
        self._reading: dict[Path, DataLock] = {}  # data folders this module reads (until teardown)

    def __str__(self) -> str:  # Lightning's would build every dataloader to report their sizes
        given = ", ".join(f"{k}={v}" for k, v in {**self.paths, "predict": self.predict_path}.items() if v)
        return f"{type(self).__name__}({given})"

    def bind(self, contract: ModelContract) -> None:
        """Evaluate/resume a checkpoint: its classes and features rule; every split is checked against them.

        A split with the same classes in another order is remapped by name (targets are reordered
        to the checkpoint's columns); another class set or frontend raises one ValueError.
        """
        self._columns = {name: contract.columns_for(info.class_names, info.features, info.path)
                         for name, info in self.infos.items()}
        moved = [str(self.infos[name].path) for name, cols in self._columns.items() if cols != sorted(cols)]
        if moved:
            log.info("classes %s of %s remapped by name to the checkpoint's order %s",
                     self.infos[next(iter(self._columns))].class_names, ", ".join(moved), list(contract.class_names))
        self.contract = contract
        for name in self.infos:
            if name != "train":
                self._compare_with_training(name, contract.training, f"the checkpoint {contract.source}")

    def _check_validation_is_unseen(self) -> None:
        train, val, trained = self.infos["train"], self.infos["val"], self.training_data()
        if train.path.samefile(val.path) or is_training_split(val, trained):
            raise ValueError(f"--data.val_h5 {val.path} is the training split (--data.train_h5 {train.path}): "
                             "validation would choose the checkpoint, threshold and calibration on recordings "
                             "the model trains on; pass the VALIDATION split of that build")
        self._compare_with_training("val", trained, f"--data.train_h5 {train.path}")

    def _recordings(self, name: str, kind: str | None = None) -> tuple[str, np.ndarray] | None:
        if (name, kind) not in self._digests:
            self._digests[(name, kind)] = recording_digests(self.infos[name], kind)
        return self._digests[(name, kind)]

    def training_data(self) -> dict | None:
        """What a checkpoint keeps of its training split: file name, build id and recording digests (by
        content where the split has them)."""
        if "train" not in self.infos:
            return None
        info, found = self.infos["train"], self._recordings("train")
        return {"file": info.path.name, "build_id": info.build_id, "files": info.num_files,
                "digest_kind": None if found is None else found[0],
                "recordings": None if found is None else torch.from_numpy(found[1].view(np.int64))}

    def training_changes(self, trained: dict | None) -> str | None:
        """What differs between this training split and the one a checkpoint was trained on (None: the same
        recordings, or nothing known to compare)."""
        if not trained or "train" not in self.infos:
            return None
        info = self.infos["train"]
        if info.build_id is not None and info.build_id == trained.get("build_id"):
            return None
        kind = trained.get("digest_kind") or "name"
        theirs, mine = trained.get("recordings"), self._recordings("train", kind)
        builds = (f"{info.path} is from build {str(info.build_id)[:8]} ({info.num_files} files), the checkpoint was "
                  f"trained on build {str(trained.get('build_id'))[:8]} ({trained.get('files')} files)")
        if theirs is None or mine is None:
            return f"{builds}; which recordings either holds is unknown"
        theirs = theirs.numpy().view(np.uint64)
        added, removed = np.setdiff1d(mine[1], theirs).size, np.setdiff1d(theirs, mine[1]).size
        if not added and not removed:
            log.info("%s was rebuilt from the same recordings as the checkpoint's training split", info.path)
            return None
        how = "their audio" if kind == "audio" else "file name and label"
        return f"{builds}: {added} recording(s) added and {removed} removed (by {how})"

    def _compare_with_training(self, name: str, trained: dict | None, whose: str) -> None:
        """Evaluating recordings the model was trained on gives optimistic scores: say so, and count them."""
        if self.seen_in_training.get(name) is not None:
            return  # a resumed fit: already compared with the checkpoint's training split
        info = self.infos[name]
        seen = self.seen_in_training[name] = shared_with_training(info, trained,
                                                                  lambda kind: self._recordings(name, kind))
        if is_training_split(info, trained):
            log.warning("%s is the training split of %s: its scores say nothing about recordings the model has "
                        "not heard; evaluate the VALIDATION or TESTING split of that build", info.path, whose)
        elif seen:
            same = ("hold the same audio as" if (trained or {}).get("digest_kind") == "audio" else
                    "have the file name and label of")
            log.warning("%d of %d recordings in %s %s recordings in the training split of %s: these scores are "
                        "optimistic; evaluate recordings the model was not trained on", seen, info.num_files,
                        info.path, same, whose)

    def _require_classes(self) -> None:
        if self.contract is None and not self.infos:
            raise ValueError("no class names: predict without HDF5 files needs a checkpoint (--ckpt_path FILE)")

    @property
    def class_names(self) -> list[str]:
        self._require_classes()
        return list(self.contract.class_names) if self.contract else list(next(iter(self.infos.values())).class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def features(self):
        self._require_classes()
        return self.contract.features if self.contract else next(iter(self.infos.values())).features

    @property
    def feature_config(self) -> dict:
        return asdict(self.features)

    @property
    def train_class_counts(self) -> list[int] | None:
        """Training files per class, in the model's class order (for --model.pos_weight auto)."""
        if "train" not in self.infos:
            return None
        if self._train_counts is None:
            targets = load_targets(self.infos["train"])
            if "train" in self._columns:
                targets = targets[:, self._columns["train"]]
            self._train_counts = targets.sum(axis=0).astype(int).tolist()
        return self._train_counts

    @property
    def train_files(self) -> int | None:
        return self.infos["train"].num_files if "train" in self.infos else None

    def file_paths(self, stage: str) -> list[str]:
        return read_file_paths(self.infos[stage])

    @property
    def whole_recordings(self) -> bool:
        """Training batches are whole recordings: the argument, else what the trainer's model asks for."""
        if self._whole_recordings is not None:
            return self._whole_recordings
        model = self.trainer.lightning_module if self.trainer is not None else None
        return bool(getattr(model, "whole_recordings", False))

    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _held_elsewhere(self, name: str) -> str:
        held = {n: b for n, b in self._held.items() if n != name}
        return "; ".join(f"{n} split {bytes_human(b)}" for n, b in held.items()) or "nothing"

    def _choose_mode(self, info: SplitInfo, device: torch.device, left: int | None = None) -> str:
        """Where `info`'s segments go; `left`: what the budget leaves it (default: the budget less the splits
        already held)."""
        nbytes = segment_bytes(info)
        if left is None and self.max_cache_bytes is not None:
            left = self.max_cache_bytes - sum(self._held.values())
        if self.cache != "auto":
            if left is not None and self.cache != "stream" and nbytes > left:
                shared = f" (it is shared: {bytes_human(max(0, left))} left beside {self._held_elsewhere('')})" \
                    if self._held else ""
                raise ValueError(f"{info.path}: its {bytes_human(nbytes)} of segments do not fit "
                                 f"data.max_cache_bytes={bytes_human(self.max_cache_bytes)} with data.cache "
                                 f"{self.cache}; use data.cache stream (or auto), or a larger budget{shared}")
            return self.cache
        if left is not None and nbytes > left:
            return "stream"
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes < self.max_cache_fraction * free:
                return "device"
        # every rank holds its own copy in RAM
        if nbytes * self._rank_world()[1] < self.max_cache_fraction * _available_ram():
            return "device" if device.type == "cpu" else "ram"
        return "stream"

    def _stream_rows(self, name: str) -> int:
        """Segments in a streamed batch of split `name`: evaluation batches are whole files (as StreamSplit
        groups them)."""
        spf = self.infos[name].segments_per_file
        if name == "train":
            return files_per_batch(self.batch_size, spf) * spf if self.whole_recordings else self.batch_size
        return files_per_batch(self.eval_batch_size, spf) * spf

    def _stream_reserve(self, names: list[str]) -> int:
        """The least the splits `names` need of the budget: to stream, or to be cached where that is less (a
        small split takes less cached than its stream's batches); nothing for a forced cache (checked itself)."""
        if self.cache not in ("auto", "stream"):
            return 0
        need = 0
        for n in (n for n in names if n in self.infos):
            info = self.infos[n]
            rows, files = self._stream_rows(n), int(n == "train")
            stream = stream_bytes(info, len(info.class_names), rows, self.num_workers, files)
            need += stream if self.cache == "stream" else min(stream, segment_bytes(info))
        return need

    def setup(self, stage: str) -> None:
        if stage == "predict":
            self._setup_predict()
            return
        wanted = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"]}.get(stage, [])
        for folder in {self.infos[n].path.parent.resolve() for n in wanted if n in self.infos} - self._reading.keys():
            self._reading[folder] = DataLock(folder).read(command_line())  # no build replaces them meanwhile
        if stage == "fit" and {"train", "val"} <= self.infos.keys() and "train" not in self.splits:
            self._check_validation_is_unseen()
        # One budget for every split this process holds, in this order: training first (read every epoch),
        # the rest take what is left (a later split is kept the least it needs to stream) or stream.
        todo = [n for n in wanted if n not in self.splits]
        for i, name in enumerate(todo):
            if name in self._absent:
                read_info(self._absent[name])  # raises: not found, with the fix
            if name not in self.infos:
                raise ValueError(f"stage {stage!r} needs data.{name}_h5, which is not set")
            self._setup_split(name, self._stream_reserve(todo[i + 1:]))

    def _setup_split(self, name: str, reserve: int) -> None:
        """Cache or stream split `name`, keeping `reserve` bytes of the budget for the splits after it."""
        info, device, budget = self.infos[name], self._device(), self.max_cache_bytes
        others = sum(self._held.values()) + reserve
        left = None if budget is None else budget - others
        mode = self._choose_mode(info, device, left)
        targets = load_targets(info)
        if name in self._columns:  # the checkpoint's class order
            targets = targets[:, self._columns[name]]
        if mode == "stream":
            if self.balance and name == "train":
                raise ValueError(f"{info.path}: data.balance needs the training split cached (data.cache device "
                                 "or ram); it is streamed (too large, or data.cache stream)")
            scan_segments(info)
            train, batch, classes = name == "train", self._stream_rows(name), targets.shape[1]
            buffer = 16  # evaluation streams read the files of one batch at a time, whatever their buffer
            if budget is not None:  # raises when not even the least stream fits what the budget leaves
                files = stream_buffer_files(info, classes, batch, self.num_workers, budget, others, train)
                # all of a stream's files in one chunk is the best shuffle: more would only take others' budget
                streams = max(1, self.num_workers) * self._rank_world()[1]
                buffer = min(files, math.ceil(info.num_files / streams)) if train else buffer
            self.splits[name] = StreamSplit(info, targets, batch, train, self.seed, *self._rank_world(),
                                            roles=self.num_workers, buffer_files=buffer,
                                            whole_recordings=train and self.whole_recordings)
            self._held[name] = stream_bytes(info, classes, batch, self.num_workers, buffer if train else 0)
        else:
            target_device = device if mode == "device" else torch.device("cpu")
            self.splits[name] = to_cached(load_segments(info), targets, info.segments_per_file,
                                          target_device, pin=mode == "ram" and device.type == "cuda")
            self._held[name] = segment_bytes(info)
        self.modes[name] = mode
        over = mode == "stream" and self.cache == "auto" and left is not None and segment_bytes(info) > left
        log.info("%s split: %d files, %d segments, cache=%s%s%s (%s)", name, info.num_files, info.num_segments,
                 mode, self._budget_note(name, info, left if over else None),
                 ", class-balanced sampling" if self.balance and name == "train" else "", printable(info.path))

    def _budget_note(self, name: str, info: SplitInfo, short_of: int | None) -> str:
        """Where split `name` stands in the process's budget, for its one log line; `short_of`: the bytes the
        budget left it when its segments did not fit there."""
        budget = self.max_cache_bytes
        if budget is None:
            return ""
        buffers = f" in buffers of {self.splits[name].buffer_files} files" \
            if self.modes[name] == "stream" and name == "train" else ""
        note = (f", {bytes_human(self._held[name])} of data.max_cache_bytes {bytes_human(budget)}{buffers} "
                f"({bytes_human(budget - sum(self._held.values()))} left)")
        if short_of is not None:
            note += (f", streamed: its {bytes_human(segment_bytes(info))} of segments are "
                     f"{bytes_human(segment_bytes(info) - short_of)} more than the budget leaves it")
        return note

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

        k = self.steps_per_call
        if k > 1 and (isinstance(split, StreamSplit) or world > 1):
            log.warning("data.steps_per_call=%d needs a cached split on one device; this run (%s) takes one "
                        "optimizer step per call", k, "streamed" if isinstance(split, StreamSplit) else "DDP")
            k = 1
        whole = self.whole_recordings  # resolved now: the model may have changed since setup
        if isinstance(split, StreamSplit):
            split.whole_recordings = whole
            batches = StreamBatches(split, self.num_workers, cuda, epoch, done)
        else:
            batches = TrainBatches(split, self.batch_size, self.seed, rank, world, self._device(), epoch, done,
                                   balance=self.balance, steps_per_call=k, whole_recordings=whole)
        spf = self.infos["train"].segments_per_file
        note = (f"training batches: whole recordings, {files_per_batch(self.batch_size, spf)} a batch "
                f"({files_per_batch(self.batch_size, spf) * spf} segments of data.batch_size {self.batch_size}, "
                f"{spf} per recording)") if whole else None
        if note is not None and note != self._batches_note:  # once, though Lightning may build the loader again
            log.info(note)
        self._batches_note = note
        if self._resume is not None:
            batches.resume_from(self._resume)
            self._resume = None
        self._train_batches = batches
        return batches

    def _setup_predict(self) -> None:
        if not self.predict_path:
            raise ValueError("predict needs --data.predict_path (an audio file, a folder, or a text file "
                             "listing recordings)")
        rank, world = self._rank_world()
        found, unusable = self.predict_recordings()  # the same list on every rank
        self.predict_unusable = unusable if rank == 0 else []  # named once
        for entry in self.predict_unusable:
            log.warning("skipped %s: %s", printable(entry.path), entry.reason)
        # several ranks: every world-th recording from this rank's on (long and short ones dealt alike); the
        # PredictionWriter gathers the rows on rank 0, which writes the one CSV
        self.predict_index = list(range(rank, len(found), world))
        self.predict_input = WindowStream([found[i] for i in self.predict_index], ClipSpec.of(self.features),
                                          workers=max(1, self.num_workers))
        log.info("predict: %d recordings under %s%s", len(found), self.predict_path,
                 f", {world} ranks" if world > 1 else "")

    def predict_recordings(self) -> tuple[list[Path], list]:
        """The recordings `predict` reads and the names it cannot (found once; an error is raised here)."""
        if self._predict_found is None:
            self._predict_found = find_recordings(Path(self.predict_path), self.predict_suffixes)
        return self._predict_found

    def predict_dataloader(self):
        return self.predict_input

    def teardown(self, stage: str) -> None:
        for lock in self._reading.values():
            lock.release()
        self._reading.clear()

    # Sampler position in checkpoints. Lightning restores the data module before it first asks for
    # the train loader; its own stateful-loader restore can be skipped when `configure_optimizers`
    # reads `estimated_stepping_batches` (the loader is then built before the states are loaded).
    def state_dict(self) -> dict:
        state = {"train_sampler": self._train_batches.snapshot()} if self._train_batches is not None else {}
        if (trained := self.training_data()) is not None:  # read back by ModelContract.from_checkpoint
            state["training_data"] = trained
        return state

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
