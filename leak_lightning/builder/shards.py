"""A build over several processes or machines: each builds a deterministic share, the last one joins them.

Every worker discovers the same corpus, splits it with the same seed and derives the same build id from it
(`corpus_id`), so the workers need no channel but the output folder. Worker I of N builds the I-th contiguous
share of each split's file list (in the one-process order) into `<output>/shards/<build id>/`, renames its
three files into place and writes its shard record last. The worker that finds every record present joins
them under the output's locks: the shards' content events are replayed in the one-process order (so a copy
across two shards is skipped exactly as one process would), and the three split files are published with
their manifest, as a one-process build publishes them. By default a joined split is an HDF5 virtual dataset
over the shards' segments (nothing copied; its other columns are copied, being small); `copy=True` copies
the segments and removes the shards.

Launchers: `--num_shards N --shard_index I`, or torchrun (RANK, WORLD_SIZE), or a SLURM array
(SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), or SLURM tasks (SLURM_PROCID of
SLURM_NTASKS). The output folder must be one every worker sees (a shared file system).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py

from ..data import schema
from ..features import FeatureConfig
from ..fileio import fsync_dir, write_atomic
from ..rundir import DataLock, FolderLock
from .discover import SPLITS, WavItem
from .pipeline import ContentIndex
from .writer import SplitWriter, publish, write_reports

log = logging.getLogger(__name__)

SHARDS = "shards"  # <output>/shards/<build id>/: the shards' files and records


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @property
    def tag(self) -> str:
        return f"{self.index:05d}-of-{self.count:05d}"

    def share(self, items: list) -> list:
        """The index-th of `count` contiguous shares (in order: joined in shard order, they are the list)."""
        n = len(items)
        return items[n * self.index // self.count: n * (self.index + 1) // self.count]

    @classmethod
    def resolve(cls, num_shards: int | None, shard_index: int | None, env=os.environ) -> Shard | None:
        """This process's shard from the options, else from the launcher's environment; None: one process."""
        if num_shards is not None or shard_index is not None:
            if num_shards is None or shard_index is None:
                raise ValueError("--num_shards and --shard_index go together (e.g. --num_shards 4 --shard_index 0 "
                                 "... 3), or neither: under torchrun or a SLURM array they are read from there")
            source = "--num_shards/--shard_index"
            count, index = num_shards, shard_index
        else:
            found = _from_env(env)
            if found is None:
                return None
            source, count, index = found
        if count < 1:
            raise ValueError(f"{count} shards ({source}): there must be 1 or more")
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} of {count} ({source}): the index must be 0 .. {count - 1}")
        if count == 1:
            return None
        log.info("shard %d of %d (from %s)", index, count, source)
        return cls(index, count)


def _from_env(env) -> tuple[str, int, int] | None:
    def number(name: str) -> int | None:
        value = env.get(name, "")
        return int(value) if value.isdigit() else None

    if (world := number("WORLD_SIZE")) and world > 1 and number("RANK") is not None:
        return "torchrun's RANK/WORLD_SIZE", world, number("RANK")
    if (count := number("SLURM_ARRAY_TASK_COUNT")) and number("SLURM_ARRAY_TASK_ID") is not None:
        # a SLURM array with a step (--array=0-9:2) numbers its tasks 0, 2, 4...: index by position
        step = number("SLURM_ARRAY_TASK_STEP") or 1
        first = number("SLURM_ARRAY_TASK_MIN") or 0
        return "SLURM_ARRAY_TASK_ID", count, (number("SLURM_ARRAY_TASK_ID") - first) // step
    if (tasks := number("SLURM_NTASKS")) and tasks > 1 and number("SLURM_PROCID") is not None:
        return "SLURM_PROCID/SLURM_NTASKS", tasks, number("SLURM_PROCID")
    return None


def corpus_id(splits: dict[str, list[WavItem]], class_names: list[str], cfg: FeatureConfig,
              duplicates: str) -> str:
    """The build id: a digest of what a build is made of (each split's files with their label, size and
    modification time, the classes, the frontend, the duplicates rule). Workers that cannot talk derive the same
    one; a one-process build of the same corpus gets it too; any change to a recording or option changes it."""
    h = hashlib.sha256(json.dumps([schema.FORMAT_VERSION, class_names, json.loads(cfg.to_json()), duplicates])
                       .encode())
    for split in SPLITS:
        for item in splits[split]:
            st = item.path.stat()
            h.update(f"{split}\0{item.rel_path}\0{item.label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def shard_folder(output: Path, build_id: str) -> Path:
    return Path(output) / SHARDS / build_id


def shard_paths(output: Path, build_id: str, shard: Shard) -> dict[str, Path]:
    return {s: shard_folder(output, build_id) / f"{s}.{shard.tag}.H5" for s in SPLITS}


def record_path(output: Path, build_id: str, shard: Shard) -> Path:
    return shard_folder(output, build_id) / f"shard-{shard.tag}.json"


def finished_record(output: Path, build_id: str, shard: Shard) -> dict | None:
    """This shard's record when it was built before and its files are intact (same sizes), else None."""
    try:
        record = json.loads(record_path(output, build_id, shard).read_text())
        files = shard_paths(output, build_id, shard)
        if record["build_id"] == build_id and all(
                files[s].stat().st_size == record["files"][s]["bytes"] for s in SPLITS):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_record(writers: list[SplitWriter], output: Path, build_id: str, shard: Shard, record: dict) -> None:
    """A shard's commit: its three files renamed into place, then its record (written last)."""
    for writer in writers:
        os.replace(writer.tmp_path, writer.final_path)
    fsync_dir(writers[0].final_path.parent)
    record.update(build_id=build_id, shard=shard.index, count=shard.count, files={
        split: {"bytes": w.final_path.stat().st_size, "rows": w.rows} for split, w in zip(SPLITS, writers)})
    write_atomic(record_path(output, build_id, shard), lambda f: json.dump(record, f))


def pending(output: Path, build_id: str, count: int) -> list[int]:
    """The shards whose record is not there yet."""
    return [i for i in range(count) if finished_record(output, build_id, Shard(i, count)) is None]


# ---- the join ------------------------------------------------------------------------------------------------

@dataclass
class _Row:
    shard: int
    path: str  # the row is found by its path (unique in a split) in the shard's /file_paths


def join(output: Path, build_id: str, count: int, manifest: dict, duplicates: str, copy: bool) -> dict:
    """Publish the shards of `build_id` as the output's three splits; returns {split: rows} and the reports.
    The caller holds the output's folder and data locks."""
    shards = [Shard(i, count) for i in range(count)]
    records = [finished_record(output, build_id, s) for s in shards]
    if missing := [s.index for s, r in zip(shards, records) if r is None]:
        raise ValueError(f"{output}: shard(s) {missing} of {count} of build {build_id[:12]} are missing or "
                         "damaged; run those shards again (a finished shard is not rebuilt)")
    kept, found, index = _replay(records, duplicates)
    if index.leaks:
        raise index.leak_error()
    skipped = skip_report(found, records)
    gone = {(e["split"], e["path"]) for e in skipped}
    flagged = [f for r in records for f in r["flagged"] if (f["split"], f["path"]) not in gone]
    for split in SPLITS:
        if not kept[split]:
            raise ValueError(f"no usable file in split {split}: all its files were skipped (see "
                             f"{output / SHARDS / build_id}); fix or replace those recordings")
    writers: list[SplitWriter] = []
    try:
        for split in SPLITS:
            writers.append(_joined_split(output, build_id, shards, split, kept[split], copy))
            writers[-1].finish(build_id)
        publish(writers, output, {**manifest, "shards": None if copy else {
            "folder": f"{SHARDS}/{build_id}", "count": count,
            "files": {f"{split}.{s.tag}.H5": r["files"][split]["bytes"]
                      for s, r in zip(shards, records) for split in SPLITS}}})
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    write_reports(output, skipped, flagged)
    _remove_other_shards(output, keep=None if copy else build_id)
    return {"rows": {split: len(kept[split]) for split in SPLITS}, "skipped": skipped, "flagged": flagged,
            "started": min(r.get("started", time.time()) for r in records)}


def skip_report(found: list[dict], records: list[dict]) -> list[dict]:
    """What the join found skipped, then what each shard skipped, each recording once (a shard that found two
    copies in conflict lists the first, which the replay finds again)."""
    seen: set = set()
    report = []
    for entry in [*found, *(s for r in records for s in r["skipped"])]:
        if (key := (entry["split"], entry["path"])) not in seen:
            seen.add(key)
            report.append(entry)
    return report


def _replay(records: list[dict], duplicates: str) -> tuple[dict[str, list[_Row]], list[dict], ContentIndex]:
    """Every shard's content events through one ContentIndex in the one-process order (split by split,
    shard by shard): the rows a one-process build keeps, and the skips only the whole corpus shows."""
    index = ContentIndex(duplicates)
    kept: dict[str, list[_Row]] = {s: [] for s in SPLITS}
    skipped: list[dict] = []
    for split in SPLITS:
        for record in records:
            for event_split, digest_hex, path, label, stored in record["events"]:
                if event_split != split:
                    continue
                digest = int(digest_hex, 16)
                reason = index.check(digest, split, path, label)
                if reason is None:
                    if not stored:  # a shard skips a subset of what the whole corpus skips
                        raise RuntimeError(f"internal: {path} was skipped in shard {record['shard']} but not "
                                           "in the join; please report it")
                    index.add(digest, split, len(kept[split]), path, label)
                    kept[split].append(_Row(record["shard"], path))
                elif stored:  # a copy or conflict across shards: skipped here as one process would
                    log.warning("skipped %s: %s", path, reason)
                    skipped.append({"split": split, "path": path, "label": label, "reason": reason})
    for split, rows in index.drop.items():  # earlier copies found in conflict later on
        for entry in rows.values():
            log.warning("skipped %s: %s", entry["path"], entry["reason"])
        skipped += list(rows.values())
        kept[split] = [r for i, r in enumerate(kept[split]) if i not in rows]
    return kept, skipped, index


def _joined_split(output: Path, build_id: str, shards: list[Shard], split: str, rows: list[_Row],
                  copy: bool) -> SplitWriter:
    files = {s.index: shard_paths(output, build_id, s)[split] for s in shards}
    first = h5py.File(files[0], "r")
    try:
        cfg = FeatureConfig.from_dict(json.loads(first.attrs[schema.ATTR_CONFIG]))
        labels = json.loads(first.attrs[schema.ATTR_LABELS])
    finally:
        first.close()
    writer = SplitWriter(output / schema.SPLIT_FILES[split], cfg, labels, {"split": split})
    try:
        runs = _runs(files, rows, build_id)
        if not copy:
            writer.virtual_segments([(str(files[i].relative_to(output)), total, lo, hi) for i, total, lo, hi in runs])
        for i, _, lo, hi in runs:
            with h5py.File(files[i], "r") as f:
                for a in range(lo, hi, 256):  # bounded memory: 256 rows at a time
                    b = min(a + 256, hi)
                    seg = f[schema.SEGMENTS][a:b] if copy else None
                    writer.append(seg, f[schema.LABELS][a:b], _text(f[schema.FILE_PATHS][a:b]),
                                  _text(f[schema.SENSOR_IDS][a:b]), f[schema.AUDIO_DIGESTS][a:b].tolist())
    except BaseException:
        writer.discard()
        raise
    return writer


def _runs(files: dict[int, Path], rows: list[_Row], build_id: str) -> list[tuple[int, int, int, int]]:
    """The kept rows as (shard, rows in its file, first row, end row) runs of consecutive rows, in order; every
    shard file must carry this build's id (its record's size alone could match another file)."""
    where: dict[int, dict[str, int]] = {}
    totals: dict[int, int] = {}
    for i, path in files.items():
        with h5py.File(path, "r") as f:
            if str(f.attrs.get(schema.ATTR_BUILD_ID)) != build_id:
                raise ValueError(f"{path}: a shard of build {f.attrs.get(schema.ATTR_BUILD_ID)}, not of build "
                                 f"{build_id[:12]} its folder is named for; run that shard again")
            names = _text(f[schema.FILE_PATHS][()])
        where[i], totals[i] = {p: r for r, p in enumerate(names)}, len(names)
    runs: list[list[int]] = []
    for row in rows:
        r = where[row.shard][row.path]
        if runs and runs[-1][0] == row.shard and runs[-1][3] == r:
            runs[-1][3] = r + 1
        else:
            runs.append([row.shard, totals[row.shard], r, r + 1])
    return [tuple(run) for run in runs]


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _remove_other_shards(output: Path, keep: str | None) -> None:
    """Shards no published split refers to (an earlier build's, or all after a copying join)."""
    folder = Path(output) / SHARDS
    if folder.is_dir():
        for old in folder.iterdir():
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def try_join(output: Path, build_id: str, shard: Shard, manifest: dict, duplicates: str, copy: bool) -> dict | None:
    """After a shard: join when every shard is done and no other worker is joining; None when not this one's turn."""
    if left := pending(output, build_id, shard.count):
        log.info("shard %d of %d done; waiting for shard(s) %s: the last one to finish joins them", shard.index,
                 shard.count, left if len(left) <= 8 else f"{left[:8]} and {len(left) - 8} more")
        return None
    try:
        lock = FolderLock(output, "--output").acquire()
    except ValueError as busy:  # another worker joining (it ends the build), or another build into the output
        log.info("shard %d of %d done; not joined here: %s. Another worker of this build joins the shards; if it "
                 "is another build, run this command again once it ends (a finished shard is not built again)",
                 shard.index, shard.count, str(busy).split(": wait for it")[0])
        return None
    try:
        if _published_build(output) == build_id:
            log.info("shard %d of %d done; the shards were joined by another worker", shard.index, shard.count)
            return None
        data = DataLock(output).build()
        try:
            manifest = {**manifest, "created_at_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            return join(output, build_id, shard.count, manifest, duplicates, copy)
        finally:
            data.release()
    finally:
        lock.release()


def _published_build(output: Path) -> str | None:
    try:
        return json.loads((Path(output) / schema.MANIFEST).read_text()).get("build_id")
    except (OSError, ValueError, AttributeError):
        return None


def events_of(builder_events: list) -> list:
    """The pipeline's content events as JSON (digests in hex: JSON numbers lose 64-bit integers)."""
    return [[split, f"{digest:016x}", path, label, stored] for split, digest, path, label, stored in builder_events]
