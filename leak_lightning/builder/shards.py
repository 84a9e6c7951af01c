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

Launchers: `--num_shards N --shard_index I`, or torchrun (RANK of WORLD_SIZE, with TORCHELASTIC_RUN_ID), or a
SLURM array (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), or the tasks of an srun step
(SLURM_PROCID of SLURM_STEP_NUM_TASKS); a plain line of a batch script builds the whole corpus. The output folder
must be one every worker sees (a shared file system). Each worker claims its shard when it starts; one that finds
another unpublished build's claims (other recordings or options), or this build's under another shard count,
stops with one line saying what differs, never waiting for shards that cannot come. A late or requeued worker
whose build is already published has nothing to do.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import h5py

from ..audio.features import FeatureConfig
from ..data import schema
from ..runtime.fileio import fsync_dir, replacing, write_atomic
from ..runtime.rundir import DataLock, FolderLock
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
        """This process's shard from the options, else from the launcher's environment; None: one process.
        Either way the log says which, and why."""
        if num_shards is not None or shard_index is not None:
            if num_shards is None or shard_index is None:
                raise ValueError("--num_shards and --shard_index go together (e.g. --num_shards 4 --shard_index 0 "
                                 "... 3), or neither: under torchrun, an srun step or a SLURM array they are read "
                                 "from there")
            source = "--num_shards/--shard_index"
            count, index = num_shards, shard_index
        else:
            source, count, index = launcher_shard(env)
        if count < 1:
            raise ValueError(f"{count} shards ({source}): there must be 1 or more")
        if not 0 <= index < count:
            raise ValueError(f"shard index {index} of {count} ({source}): the index must be 0 .. {count - 1}")
        if count == 1:
            log.info("building the whole corpus in this process: %s", "--num_shards 1" if num_shards else source)
            return None
        log.info("building shard %d of %d (from %s)", index, count, source)
        return cls(index, count)


def launcher_shard(env) -> tuple[str, int, int]:
    """(why, shards, this process's index) from the environment a launcher set; 1 shard: the whole corpus.

    Only a launcher that started several copies of this very command shards it: a SLURM array task, and within
    one, torchrun or an srun step. Not Lightning's SLURMEnvironment/TorchElasticEnvironment detection: the
    former keys on SLURM_NTASKS, which a batch script's own lines also see (with SLURM_PROCID=0) although
    nothing started them several times, and the builder reads an injectable environment and no Lightning.
    """
    def number(name: str) -> int | None:
        value = env.get(name, "")
        return int(value) if value.isdigit() else None

    found = []
    if (count := number("SLURM_ARRAY_TASK_COUNT")) and (task := number("SLURM_ARRAY_TASK_ID")) is not None:
        # a SLURM array with a step (--array=0-9:2) numbers its tasks 0, 2, 4...: index by position
        step = number("SLURM_ARRAY_TASK_STEP") or 1
        found.append((f"SLURM array task {task}", count, (task - (number("SLURM_ARRAY_TASK_MIN") or 0)) // step))
    tasks, why_not = _step_tasks(env, number)
    if tasks is not None:
        found.append(tasks)
    if not found:
        return why_not, 1, 0
    count, index = 1, 0
    for _, n, i in found:  # an array task's share is split again over the tasks its step started
        count, index = count * n, index * n + i
    return " and ".join(source for source, _, _ in found), count, index


def _step_tasks(env, number) -> tuple[tuple[str, int, int] | None, str]:
    """The tasks torchrun or an srun step started (torchrun first: under srun it spans every node), else why
    the environment does not shard this process."""
    world, rank = number("WORLD_SIZE"), number("RANK")
    if env.get("TORCHELASTIC_RUN_ID") is not None and world and rank is not None:  # torch's own torchrun test
        return (f"torchrun: RANK {rank} of WORLD_SIZE {world}", world, rank), ""
    step_tasks, procid = number("SLURM_STEP_NUM_TASKS"), number("SLURM_PROCID")
    in_step = (env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")) is not None and step_tasks
    if in_step and procid is not None:
        return (f"srun step: SLURM_PROCID {procid} of SLURM_STEP_NUM_TASKS {step_tasks}", step_tasks, procid), ""
    if (ntasks := number("SLURM_NTASKS")) and ntasks > 1:
        return None, (f"SLURM_NTASKS={ntasks} is the allocation's, but no srun step started this process (no "
                      "SLURM_STEP_ID/SLURM_STEP_NUM_TASKS: a plain line of a batch script); to build over "
                      f"{ntasks} tasks, start the line with srun, or pass --num_shards/--shard_index")
    if world and world > 1:
        return None, (f"WORLD_SIZE={world} is set, but torchrun did not start this process (no "
                      "TORCHELASTIC_RUN_ID); to build over several processes, start it with torchrun, or pass "
                      "--num_shards/--shard_index")
    return None, ("no --num_shards, and no launcher (torchrun, an srun step, a SLURM array) started this "
                  "command several times")


def recordings(splits: dict[str, list[WavItem]]) -> list[list]:
    """[split, path, label, size, mtime_ns] per recording, in split order: what a build id digests of them."""
    rows = []
    for split in SPLITS:
        for item in splits[split]:
            st = item.path.stat()
            rows.append([split, item.rel_path, item.label, st.st_size, st.st_mtime_ns])
    return rows


def corpus_id(splits: dict[str, list[WavItem]], class_names: list[str], cfg: FeatureConfig,
              duplicates: str, rows: list[list] | None = None) -> str:
    """The build id: a digest of what a build is made of (each split's files with their label, size and
    modification time, the classes, the frontend, the duplicates rule). Workers that cannot talk derive the same
    one; a one-process build of the same corpus gets it too; any change to a recording or option changes it.
    `rows`: `recordings(splits)` when the caller records them too (one stat per file: the two agree)."""
    h = hashlib.sha256(json.dumps([schema.FORMAT_VERSION, class_names, json.loads(cfg.to_json()), duplicates])
                       .encode())
    for split, path, label, size, mtime_ns in recordings(splits) if rows is None else rows:
        h.update(f"{split}\0{path}\0{label}\0{size}\0{mtime_ns}\n".encode())
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
        writer.place()
    fsync_dir(writers[0].final_path.parent)
    record.update(build_id=build_id, shard=shard.index, count=shard.count, files={
        split: {"bytes": w.final_path.stat().st_size, "rows": w.rows} for split, w in zip(SPLITS, writers)})
    write_atomic(record_path(output, build_id, shard), lambda f: json.dump(record, f))


def pending(output: Path, build_id: str, count: int) -> list[int]:
    """The shards whose record is not there yet."""
    return [i for i in range(count) if finished_record(output, build_id, Shard(i, count)) is None]


# ---- workers that must agree --------------------------------------------------------------------------------
# Each worker claims its shard when it starts (not only when it finishes) and its build folder records once what
# the build id was derived from, so a worker that derives another id can say which options or recordings differ.

CORPUS = "corpus.json.gz"  # in a build's folder: {"options": ..., "recordings": [[split, path, label, size,
#                            mtime_ns], ...]}; gzip: a million recordings' rows stay a few MB


def claim(output: Path, build_id: str, shard: Shard, derived: dict) -> None:
    """Record that this worker builds `shard` of `build_id`, and (once per build) what the id was derived from."""
    folder = shard_folder(output, build_id)
    if not (folder / CORPUS).is_file():  # workers of one build write the same content: the last rename wins
        with replacing(folder / CORPUS) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump(derived, f)
    write_atomic(_claim_path(output, build_id, shard), lambda f: json.dump({
        "build_id": build_id, "shard": shard.index, "count": shard.count, "host": socket.gethostname(),
        "pid": os.getpid(), "started": time.time()}, f))


def _claim_path(output: Path, build_id: str, shard: Shard) -> Path:
    return shard_folder(output, build_id) / f"claim-{shard.tag}.json"


def disagreement(output: Path, build_id: str, shard: Shard, derived: dict) -> str | None:
    """One line when another worker claimed or finished a shard of another unpublished build in this output, or
    of this build with another shard count: those shards will never join this worker's. None: no such worker."""
    folder = Path(output) / SHARDS
    published = _published_build(output)
    here = f"this worker (shard {shard.index} of {shard.count} of build {build_id[:12]})"
    for other in sorted(folder.iterdir()) if folder.is_dir() else []:
        if other.name == published or not other.is_dir():
            continue
        for entry in sorted([*other.glob("claim-*.json"), *other.glob("shard-*.json")]):
            try:
                theirs = json.loads(entry.read_text())
                index, count = int(theirs["shard"]), int(theirs["count"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being replaced, or not a worker's record: nothing said about another worker
            fix = (f"if {other} is an abandoned earlier attempt, remove it; a shard already finished here is "
                   "kept")
            if other.name != build_id:
                return (f"{here} and the worker of shard {index} of {count} of build {other.name[:12]} ({entry}) "
                        f"derive different builds: {difference(derived, _derived(other))}; every worker must see "
                        f"the same recordings and options: make them agree and run the workers again, or, {fix}")
            if count != shard.count:
                return (f"{here} and the worker of shard {index} of {count} of the same build ({entry}) were given "
                        f"different shard counts ({shard.count} vs {count}): give every worker the same "
                        f"--num_shards or launch them as one step or array, or, {fix}")
    return None


def _derived(folder: Path) -> dict | None:
    try:
        with gzip.open(folder / CORPUS, "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError, EOFError):
        return None


def difference(here: dict, there: dict | None, shown: int = 3) -> str:
    """What differs between two builds' derivations (options first, then recordings by path), in words."""
    if there is None:
        return "what the other build was derived from is not recorded (an older or damaged folder)"
    mine, theirs = _flat(here["options"]), _flat(there["options"])
    options = [f"{k} {mine.get(k)!r} here, {theirs.get(k)!r} there" for k in sorted({*mine, *theirs})
               if mine.get(k) != theirs.get(k)]
    a = {row[1]: row for row in here["recordings"]}
    b = {row[1]: row for row in there["recordings"]}
    moved = {p for p in a.keys() & b.keys() if a[p][0] != b[p][0] or a[p][2] != b[p][2]}
    changed = [p for p in a.keys() & b.keys() if p not in moved and a[p][3:] != b[p][3:]]
    kinds = [("only this worker sees", sorted(a.keys() - b.keys())), ("only the other sees", sorted(b.keys() -
             a.keys())), ("with another size or modification time", sorted(changed)),
             ("in another split or label", sorted(moved))]
    found = [f"{len(paths)} recording(s) {kind}: {', '.join(paths[:shown])}"
             + (f" and {len(paths) - shown} more" if len(paths) > shown else "") for kind, paths in kinds if paths]
    parts = ([f"options differ ({'; '.join(options)})"] if options else []) + found
    return "; ".join(parts) or "no recorded option or recording differs (the order of the recordings does)"


def _flat(options: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
    remove_shards(output, keep=None if copy else build_id)
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


def remove_shards(output: Path, keep: str | None = None) -> None:
    """Shards no published split refers to: an earlier build's, or all after a copying join or a one-process
    build."""
    folder = Path(output) / SHARDS
    if folder.is_dir():
        for old in folder.iterdir():
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def try_join(output: Path, build_id: str, shard: Shard, manifest: dict, duplicates: str, copy: bool,
             derived: dict) -> dict | None:
    """After a shard: join when every shard is done and no other worker is joining; None when not this one's turn.
    A shard that is known not to come (its worker derived another build) is never waited for."""
    if left := pending(output, build_id, shard.count):
        if conflict := disagreement(output, build_id, shard, derived):
            raise ValueError(conflict)
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
