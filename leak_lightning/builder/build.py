"""The `build` command: validate inputs, run the pipeline per split, commit atomically, report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from ..audio.scan import printable
from ..data import schema
from ..features import FeatureConfig
from ..fileio import remove_stale_temporaries, temp_sibling, write_atomic
from ..rundir import DataLock, FolderLock
from .discover import SPLITS, discover, label_mapping
from .pipeline import BatchBuilder, SplitResult
from .writer import SplitWriter, publish

log = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    outputs: dict[str, Path]
    files: dict[str, int]
    segments: dict[str, int]
    skipped: list[dict]
    seconds: float
    flagged: list[dict] = field(default_factory=list)

    @property
    def files_per_s(self) -> float:
        return (sum(self.files.values()) + len(self.skipped)) / max(self.seconds, 1e-9)


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    return torch.device(device)


def _check_outputs(output: Path, overwrite: bool) -> dict[str, Path]:
    targets = {s: output / name for s, name in schema.SPLIT_FILES.items()}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace "
                              "(the old files stay until the new build has finished) "
                              "or choose another --output")
    return targets


def build_dataset(
    input: Path,
    output: Path,
    features: FeatureConfig = FeatureConfig(),
    labels: list[str] | None = None,
    split_ratios: tuple[float, float, float] = (0.7, 0.2, 0.1),
    seed: int = 0,
    overwrite: bool = False,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    progress: bool = True,
    duplicates: Literal["error", "first"] = "error",
) -> BuildSummary:
    """Build the three HDF5 splits from WAV folders.

    Args:
        input: ROOT/<LABEL>/*.wav (split here, by sensor) or ROOT/{TRAINING,VALIDATION,TESTING}/<LABEL>/*.wav.
        output: folder for the *_DATASET.H5 files and the skip report.
        labels: explicit class order; default is the sorted folder names.
        split_ratios: train/validation/test shares for the single-pool layout.
        batch_size: files per mel batch, which bounds memory (default 64 on CPU, 512 on CUDA).
        num_workers: decoder processes (default: every core with CUDA, half of them on CPU).
        duplicates: the same audio (by content) in two splits: "error" stops the build listing them;
            "first" keeps each only in its first split (TRAINING, VALIDATION, TESTING). Copies within a
            split are skipped; the same audio under two labels is skipped in both places.
    """
    t0 = time.perf_counter()
    output = Path(output)
    targets = _check_outputs(output, overwrite)
    splits, unusable = discover(Path(input), tuple(split_ratios), seed)
    for entry in unusable:
        log.warning("skipped %s: %s", printable(entry.path), entry.reason)
    class_names = label_mapping({it.label for items in splits.values() for it in items}, labels)
    for split, items in splits.items():
        if not items:
            raise ValueError(f"{input}: split {split} received no files; add recordings/sensors "
                             f"or change --split_ratios {list(split_ratios)}")
    output.mkdir(parents=True, exist_ok=True)
    with FolderLock(output, "--output"), _building(output):  # two builds into one folder would mix their splits
        if stale := remove_stale_temporaries(output):
            log.warning("removed %d temporary file(s) left by a killed build: %s", len(stale),
                        ", ".join(p.name for p in stale))
        _check_free_space(output, sum(map(len, splits.values())), features)
        dev = _resolve_device(device)
        cores = os.cpu_count() or 1
        on_cpu = dev.type == "cpu"
        # On CPU the cores are shared between decoders and the mel; measured on 2 cores,
        # an intra-op pool on top of the decoders oversubscribes them (~1,000 vs ~1,500 files/s).
        workers = num_workers or (max(1, cores // 2) if on_cpu else cores)
        batch_size = batch_size or (64 if on_cpu else 512)
        log.info("Building %s → %s on %s: %s files, %d decoder processes, batch %d",
                 input, output, dev, {s: len(v) for s, v in splits.items()}, workers, batch_size)
        threads = torch.get_num_threads()
        if on_cpu:
            torch.set_num_threads(max(1, cores - workers))
        try:
            results = _run_splits(splits, targets, features, class_names, dev, batch_size, workers, progress,
                                   duplicates)
        finally:
            torch.set_num_threads(threads)
        skipped = [{"split": None, "path": printable(e.path.relative_to(input)), "label": None,
                    "reason": e.reason} for e in unusable] + [s for r in results.values() for s in r.skipped]
        flagged = [s for r in results.values() for s in r.flagged]
        write_atomic(output / schema.SKIP_REPORT, lambda f: json.dump(skipped, f, indent=2))
        write_atomic(output / schema.FLAG_REPORT, lambda f: json.dump(flagged, f, indent=2))
    summary = BuildSummary(targets, {s: r.files for s, r in results.items()},
                           {s: r.files * features.num_long * features.num_short for s, r in results.items()},
                           skipped, time.perf_counter() - t0, flagged)
    _log_summary(summary)
    return summary


@contextlib.contextmanager
def _building(output: Path):
    """No running fit/validate/test reads the splits this build will replace, and none starts until it ends."""
    lock = DataLock(output).build()
    try:
        yield
    finally:
        lock.release()


def _check_free_space(output: Path, files: int, cfg: FeatureConfig) -> None:
    """Refuse a build the disk cannot hold before spending hours on it (the old dataset stays until
    the new one is complete, so the new one needs its full size)."""
    from ..logs import bytes_human

    per_file = cfg.num_long * cfg.num_short * cfg.n_mels * cfg.t_frames * 2 + 128  # float16 + chunk index, path
    need = int(files * per_file * 1.02) + 2**18
    free = shutil.disk_usage(output).free
    if need > free:
        raise ValueError(f"{output}: not enough free space for the dataset: about {bytes_human(need)} needed "
                         f"for {files} files, {bytes_human(free)} free; free some space or choose another --output")


def _run_splits(splits, targets, cfg, class_names, dev, batch_size, workers,
                progress, duplicates: str = "error") -> dict[str, SplitResult]:
    label_ids = {name: i for i, name in enumerate(class_names)}
    writers: list[SplitWriter] = []
    results: dict[str, SplitResult] = {}
    builder = BatchBuilder(cfg, label_ids, dev, batch_size, workers, duplicates=duplicates)
    total = sum(len(v) for v in splits.values())
    build_id = uuid.uuid4().hex
    try:
        with tqdm(total=total, unit="file", desc="build", disable=None if progress else True) as bar:
            for split in SPLITS:
                writer = SplitWriter(targets[split], cfg, class_names, {"split": split})
                writers.append(writer)
                results[split] = builder.run(split, splits[split], writer, bar)
        if builder.index.leaks:
            raise builder.index.leak_error()
        for writer, split in zip(writers, SPLITS):
            _drop_conflicts(writer, results[split], builder.index.drop.get(split, {}))
            if results[split].files == 0:
                raise ValueError(f"no usable file in split {split}: all {len(splits[split])} were "
                                 f"skipped (see the warnings above); fix or replace those recordings")
        for writer in writers:
            writer.finish(build_id)
        # all three appear together with dataset.json, or none (a reader refuses a mix)
        publish(writers, targets["TRAINING"].parent, {
            "format_version": schema.FORMAT_VERSION, "build_id": build_id,
            "created_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": list(class_names), "features": json.loads(cfg.to_json())})
    except BaseException:
        for writer in writers:
            writer.discard()
        # an interrupt can land after a split's temporary was created and before its writer was
        # known here (inside h5py's open, say): the temporaries' names are fixed, so remove them by name
        for target in targets.values():
            temp_sibling(target).unlink(missing_ok=True)
        raise
    finally:
        builder.close()
    return results


def _drop_conflicts(writer: SplitWriter, result: SplitResult, rows: dict[int, dict]) -> None:
    """Rows written before a later recording with the same audio and another label turned up."""
    if not rows:
        return
    writer.drop_rows(set(rows))
    result.files -= len(rows)
    for entry in rows.values():
        log.warning("skipped %s: %s", entry["path"], entry["reason"])
    result.skipped += list(rows.values())
    gone = {e["path"] for e in rows.values()}
    result.flagged = [f for f in result.flagged if f["path"] not in gone]


def _log_summary(s: BuildSummary) -> None:
    from ..logs import bytes_human

    for split, path in s.outputs.items():
        log.info("%-10s %6d files %9d segments %10s  %s", split, s.files[split], s.segments[split],
                 bytes_human(path.stat().st_size), path)
    log.info("Built %d files (%d skipped, %d flagged) in %.1fs: %.0f files/s", sum(s.files.values()),
             len(s.skipped), len(s.flagged), s.seconds, s.files_per_s, extra={"colour": "success"})
    if s.skipped or s.flagged:
        folder = next(iter(s.outputs.values())).parent
        log.info("reasons: %s (skipped), %s (kept but clipped or out of range)", folder / schema.SKIP_REPORT,
                 folder / schema.FLAG_REPORT)
