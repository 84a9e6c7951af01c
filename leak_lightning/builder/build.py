"""The `build` command: validate inputs, run the pipeline per split, commit atomically, report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from ..audio.features import FeatureConfig
from ..audio.scan import printable
from ..data import schema
from ..runtime.fileio import remove_stale_temporaries
from ..runtime.rundir import DataLock, FolderLock
from .discover import SPLITS, discover, label_mapping
from .pipeline import BatchBuilder, SplitResult
from .shards import (
    Shard,
    claim,
    corpus_id,
    disagreement,
    events_of,
    finished_record,
    pending,
    record_path,
    recordings,
    remove_shards,
    shard_folder,
    shard_paths,
    try_join,
    write_record,
)
from .writer import SplitWriter, publish, write_reports

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
    num_shards: int | None = None,
    shard_index: int | None = None,
    copy: bool = False,
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
        num_shards: build over this many workers, each building its share (its shard) of the corpus; the last
            to finish joins the shards into the three splits. Under torchrun, an srun step or a SLURM array it
            and shard_index are read from the launcher's environment (a plain line of a batch script builds the
            whole corpus). The output must be a folder every worker sees; workers that derive different builds
            (other recordings or options) stop with a line saying what differs.
        shard_index: which share this worker builds: 0 .. num_shards - 1.
        copy: when joining shards, copy their segments into the split files and remove the shards (default:
            the splits are HDF5 virtual datasets over <output>/shards/<build id>/, nothing copied).
    """
    t0 = time.perf_counter()
    output = Path(output)
    shard = Shard.resolve(num_shards, shard_index)
    if shard is None:  # a worker checks once it knows its build id: a requeued one may find that build published
        targets = _check_outputs(output, overwrite)
    splits, unusable = discover(Path(input), tuple(split_ratios), seed)
    for entry in unusable:
        log.warning("skipped %s: %s", printable(entry.path), entry.reason)
    class_names = label_mapping({it.label for items in splits.values() for it in items}, labels)
    for split, items in splits.items():
        if not items:
            raise ValueError(f"{input}: split {split} received no files; add recordings/sensors "
                             f"or change --split_ratios {list(split_ratios)}")
    rows = recordings(splits)
    build_id = corpus_id(splits, class_names, features, duplicates, rows)
    manifest = {"format_version": schema.FORMAT_VERSION, "build_id": build_id, "classes": list(class_names),
                "features": json.loads(features.to_json())}
    if shard is not None:
        derived = {"options": {**{k: v for k, v in manifest.items() if k != "build_id"}, "duplicates": duplicates,
                               "seed": seed, "split_ratios": list(split_ratios)}, "recordings": rows}
        if (done := _published(output, build_id, features, t0)) is not None:
            # its build is published, but a sibling worker that already claimed another build (a recording added
            # since) would wait for this one's shard forever: say so, as a worker of that build would
            if conflict := disagreement(output, build_id, shard, derived):
                raise ValueError(conflict)
            return done
        _check_outputs(output, overwrite)
        return _build_shard(output, shard, splits, unusable, input, features, class_names, manifest,
                            (device, batch_size, num_workers, progress, duplicates), copy, t0, derived)
    output.mkdir(parents=True, exist_ok=True)
    with FolderLock(output, "--output"), _building(output):  # two builds into one folder would mix their splits
        if stale := remove_stale_temporaries(output):
            log.warning("removed %d temporary file(s) left by a killed build: %s", len(stale),
                        ", ".join(p.name for p in stale))
        _check_free_space(output, sum(map(len, splits.values())), features)
        dev, cores, workers, batch_size = _pipeline(device, num_workers, batch_size)
        log.info("Building %s → %s on %s: %s files, %d decoder processes, batch %d",
                 input, output, dev, {s: len(v) for s, v in splits.items()}, workers, batch_size)
        results = _with_threads(dev.type == "cpu", cores - workers, lambda: _run_splits(
            splits, targets, features, class_names, dev, batch_size, workers, progress, duplicates, build_id,
            commit=lambda writers, results, events: publish(writers, output, {
                **manifest, "created_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})))
        skipped = _unusable_entries(unusable, input) + [s for r in results.values() for s in r.skipped]
        flagged = [s for r in results.values() for s in r.flagged]
        write_reports(output, skipped, flagged)
        remove_shards(output)  # an earlier joined build's segments: nothing published refers to them now
    summary = _summary(targets, {s: r.files for s, r in results.items()}, features, skipped,
                       time.perf_counter() - t0, flagged)
    _log_summary(summary)
    return summary


def _summary(outputs: dict, files: dict[str, int], features: FeatureConfig, skipped: list[dict], seconds: float,
             flagged: list[dict]) -> BuildSummary:
    per_file = features.num_long * features.num_short
    return BuildSummary(outputs, files, {s: n * per_file for s, n in files.items()}, skipped, seconds, flagged)


def _pipeline(device: str, num_workers: int | None, batch_size: int | None) -> tuple[torch.device, int, int, int]:
    """(device, this worker's cores, decoder processes, files per mel batch) from the options and the machine.
    On CPU the cores are shared between decoders and the mel: an intra-op pool on top of the decoders
    oversubscribes them (scripts/benchmark_build.py --workers)."""
    dev = _resolve_device(device)
    cores = _cores()
    on_cpu = dev.type == "cpu"
    return dev, cores, num_workers or (max(1, cores // 2) if on_cpu else cores), batch_size or (64 if on_cpu else 512)


def _cores() -> int:
    """The cores this worker may use: those it is allowed to run on (SLURM and taskset restrict them), shared
    with the other workers torchrun started on this machine."""
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, allowed // (int(local) if local.isdigit() and int(local) > 0 else 1))


def _with_threads(on_cpu: bool, threads: int, run):
    before = torch.get_num_threads()
    if on_cpu:
        torch.set_num_threads(max(1, threads))
    try:
        return run()
    finally:
        torch.set_num_threads(before)


def _unusable_entries(unusable, input: Path) -> list[dict]:
    return [{"split": None, "path": printable(e.path.relative_to(input)), "label": None, "reason": e.reason}
            for e in unusable]


def _published(output: Path, build_id: str, features: FeatureConfig, t0: float) -> BuildSummary | None:
    """The summary of `build_id` when the output already holds it (a requeued or late worker), else None."""
    try:
        manifest = json.loads((output / schema.MANIFEST).read_text())
        if manifest.get("build_id") != build_id:
            return None
        files = {s: manifest["files"][name]["rows"] for s, name in schema.SPLIT_FILES.items()}
        joined = manifest.get("shards")
        if joined and pending(output, build_id, int(joined["count"])):  # a damaged shard: built again
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    log.info("build %s is already built and published in %s (its shards were joined by another worker, or one "
             "process built it): nothing to do", build_id[:12], output / schema.MANIFEST)
    return _summary({s: output / name for s, name in schema.SPLIT_FILES.items()}, files, features, [],
                    time.perf_counter() - t0, [])


def _build_shard(output: Path, shard: Shard, splits, unusable, input: Path, features: FeatureConfig,
                 class_names: list[str], manifest: dict, options: tuple, copy: bool, t0: float,
                 derived: dict) -> BuildSummary:
    """This worker's share into <output>/shards/<build id>/, then the join if every shard is done."""
    device, batch_size, num_workers, progress, duplicates = options
    build_id = manifest["build_id"]
    folder = shard_folder(output, build_id)
    share = {split: shard.share(items) for split, items in splits.items()}
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()  # wall clock: the joined build's time runs from its first shard's start
    with FolderLock(folder, "--shard_index", name=f".lock-{shard.tag}"):  # one worker per shard
        claim(output, build_id, shard, derived)  # before looking at the others: of two starting at once, one sees
        if conflict := disagreement(output, build_id, shard, derived):  # the other's claim
            raise ValueError(conflict)
        if finished_record(output, build_id, shard) is not None:  # checked under the lock: not built twice
            log.info("shard %d of %d of build %s is already built (%s): not built again", shard.index, shard.count,
                     build_id[:12], record_path(output, build_id, shard))
        else:
            remove_stale_temporaries(folder)
            _check_free_space(folder, sum(map(len, share.values())), features)
            dev, cores, workers, batch = _pipeline(device, num_workers, batch_size)
            log.info("Building shard %d of %d of %s → %s on %s: %s files, %d decoder processes", shard.index,
                     shard.count, input, folder, dev, {s: len(v) for s, v in share.items()}, workers)
            unusable_here = _unusable_entries(unusable, input) if shard.index == 0 else []  # listed once
            _with_threads(dev.type == "cpu", cores - workers, lambda: _run_splits(
                share, shard_paths(output, build_id, shard), features, class_names, dev,
                batch, workers, progress, duplicates, build_id,
                need_files=False, commit=lambda writers, results, events: write_record(writers, output, build_id,
                                                                                     shard, {
                    "skipped": unusable_here + [s for r in results.values() for s in r.skipped],
                    "flagged": [s for r in results.values() for s in r.flagged],
                    "events": events_of(events), "started": started, "finished": time.time()})))
    joined = try_join(output, build_id, shard, manifest, duplicates, copy, derived)
    targets = {s: output / name for s, name in schema.SPLIT_FILES.items()}
    if joined is None:
        record = finished_record(output, build_id, shard) or {"files": {s: {"rows": 0} for s in SPLITS}}
        return _summary({}, {s: record["files"][s]["rows"] for s in SPLITS}, features, record.get("skipped", []),
                        time.perf_counter() - t0, record.get("flagged", []))
    summary = _summary(targets, joined["rows"], features, joined["skipped"], time.time() - joined["started"],
                       joined["flagged"])
    log.info("joined %d shards of build %s%s", shard.count, build_id[:12],
             " (segments copied, shards removed)" if copy else f" (virtual datasets over {folder})")
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
    from ..runtime.logs import bytes_human

    per_file = cfg.num_long * cfg.num_short * cfg.n_mels * cfg.t_frames * 2 + 128  # float16 + chunk index, path
    need = int(files * per_file * 1.02) + 2**18
    free = shutil.disk_usage(output).free
    if need > free:
        raise ValueError(f"{output}: not enough free space for the dataset: about {bytes_human(need)} needed "
                         f"for {files} files, {bytes_human(free)} free; free some space or choose another --output")


def _run_splits(splits, targets, cfg, class_names, dev, batch_size, workers, progress, duplicates: str,
                build_id: str, commit, need_files: bool = True) -> dict[str, SplitResult]:
    """Each split through the pipeline into a temporary file; `commit(writers, results, content events)` puts
    them into place (or, on any error, every temporary is removed)."""
    label_ids = {name: i for i, name in enumerate(class_names)}
    writers: list[SplitWriter] = []
    results: dict[str, SplitResult] = {}
    builder = BatchBuilder(cfg, label_ids, dev, batch_size, workers, duplicates=duplicates)
    total = sum(len(v) for v in splits.values())
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
            if results[split].files == 0 and need_files:
                raise ValueError(f"no usable file in split {split}: all {len(splits[split])} were "
                                 f"skipped (see the warnings above); fix or replace those recordings")
        for writer in writers:
            writer.finish(build_id)
        # all three appear together with dataset.json, or none (a reader refuses a mix)
        commit(writers, results, builder.events)
    except BaseException:
        for writer in writers:
            writer.discard()
        # a writer not yet known here (an interrupt inside h5py's open) removes its private folder itself
        # (SplitWriter's finalizer); a name beside the target is never removed: it may be another user's link
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
    from ..runtime.logs import bytes_human

    for split, path in s.outputs.items():
        log.info("%-10s %6d files %9d segments %10s  %s", split, s.files[split], s.segments[split],
                 bytes_human(path.stat().st_size), path)
    log.info("Built %d files (%d skipped, %d flagged) in %.1fs: %.0f files/s", sum(s.files.values()),
             len(s.skipped), len(s.flagged), s.seconds, s.files_per_s, extra={"colour": "success"})
    if s.skipped or s.flagged:
        folder = next(iter(s.outputs.values())).parent
        log.info("reasons: %s (skipped), %s (kept but clipped or out of range)", folder / schema.SKIP_REPORT,
                 folder / schema.FLAG_REPORT)
