"""Open, validate and load split files written by the builder (or by the origin's builder)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py
import numpy as np
import torch

from ..audio.features import FeatureConfig
from . import schema


@dataclass(frozen=True)
class SplitInfo:
    """Metadata of one split file, read without touching the segment data."""

    path: Path
    num_files: int
    segment_shape: tuple[int, int, int, int]  # (L, S, n_mels, T)
    class_names: list[str]
    features: FeatureConfig
    has_targets: bool
    format_version: int  # 0 for the origin's files
    build_id: str | None = None  # shared by the splits of one build and its dataset.json
    label_counts: dict[str, int] | None = None  # what the builder wrote, checked against /labels
    checksummed: bool = False  # fletcher32 on every numeric dataset it has (HDF5 verifies every read)
    identity: tuple[int, ...] | None = None  # (device, inode, size, mtime ns) when it was read: see `check_same`

    @property
    def segments_per_file(self) -> int:
        return self.segment_shape[0] * self.segment_shape[1]

    @property
    def num_segments(self) -> int:
        return self.num_files * self.segments_per_file


def _fail(path: Path, problem: str, fix: str = "rebuild it with `python -m leak_lightning build`") -> None:
    raise ValueError(f"{path}: {problem}; {fix}")


def _json_attr(f: h5py.File, path: Path, name: str, required: bool = True):
    if name not in f.attrs:
        if required:
            _fail(path, f"attribute {name!r} is missing")
        return None
    try:
        return json.loads(f.attrs[name])
    except (TypeError, json.JSONDecodeError):
        _fail(path, f"attribute {name!r} is not valid JSON")


def _damaged(path: Path, err: Exception, where: str = "") -> ValueError:
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return ValueError(f"{path}: {where or 'the file'} cannot be read ({first}); the file is damaged: rebuild it or "
                      "copy it again")


def read_info(path: str | Path) -> SplitInfo:
    """Check names, ranks, dtypes and attributes; raise ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset file not found; build it with "
                                "`python -m leak_lightning build` or fix the path in the data config")
    st = os.stat(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err}); rebuild it") from None
    try:
        info = dataclasses.replace(_read_info(f, path), identity=(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    except (OSError, RuntimeError, KeyError, TypeError) as err:  # damaged metadata: h5py's own errors
        raise _damaged(path, err, "its metadata") from None
    finally:
        f.close()
    check_manifest(info)
    return info


def _read_info(f: h5py.File, path: Path) -> SplitInfo:
    for name in (schema.SEGMENTS, schema.LABELS):
        if name not in f:
            _fail(path, f"dataset /{name} is missing")
    seg, lab = f[schema.SEGMENTS], f[schema.LABELS]
    if seg.ndim != 5 or seg.dtype.kind != "f":
        _fail(path, f"/{schema.SEGMENTS} must be float [F, L, S, n_mels, T], got {seg.dtype} {seg.shape}")
    if lab.ndim != 1 or lab.dtype.kind not in "iu" or lab.shape[0] != seg.shape[0]:
        _fail(path, f"/{schema.LABELS} must be integer [F={seg.shape[0]}], got {lab.dtype} {lab.shape}")
    classes = _json_attr(f, path, schema.ATTR_LABELS)
    features = FeatureConfig.from_dict(_json_attr(f, path, schema.ATTR_CONFIG))
    has_targets = schema.TARGETS in f
    if has_targets and f[schema.TARGETS].shape != (seg.shape[0], len(classes)):
        _fail(path, f"/{schema.TARGETS} must be [F, C={len(classes)}], got {f[schema.TARGETS].shape}")
    version = int(f.attrs.get(schema.ATTR_VERSION, 0))
    shape = tuple(int(n) for n in seg.shape[1:])
    build_id = f.attrs.get(schema.ATTR_BUILD_ID)
    counts = _json_attr(f, path, schema.ATTR_LABEL_COUNTS, required=False)
    # every dataset that can carry a checksum (variable-length strings cannot): /targets, when there, is what
    # training and the metrics read in place of /labels
    checksummed = all(f[name].fletcher32 for name in (schema.LABELS, schema.TARGETS, schema.AUDIO_DIGESTS)
                      if name in f) and (_sources_checksummed(f, path) if seg.is_virtual else seg.fletcher32)
    if shape[2:] != (features.n_mels, features.t_frames):
        _fail(path, f"segments are {shape} but its config_json implies n_mels={features.n_mels}, "
              f"T={features.t_frames}")
    return SplitInfo(path, int(seg.shape[0]), shape, list(classes), features, has_targets, version,
                     str(build_id) if build_id is not None else None, counts, checksummed)


def _sources_checksummed(f: h5py.File, path: Path) -> bool:
    """A joined split's segments (a virtual dataset over shard files, builder/shards.py) are only as good as its
    sources: HDF5 reads a missing source as fill values without a word, so each must be there, of this build
    and of the right shape. Whether every source carries fletcher32."""
    seg, build_id = f[schema.SEGMENTS], f.attrs.get(schema.ATTR_BUILD_ID)
    checksummed = True
    for name in sorted({m.file_name for m in seg.virtual_sources()}):
        source = _source_path(path, name)
        if not source.is_file():
            _fail(path, f"its segments are in {source}, which is missing (a sharded build's split reads its shards "
                  "in place)", "copy the dataset folder with its shards/ folder, or rebuild with --copy")
        try:
            with h5py.File(source, "r") as src:
                ds = src[schema.SEGMENTS]
                if str(src.attrs.get(schema.ATTR_BUILD_ID)) != str(build_id) or ds.shape[1:] != seg.shape[1:]:
                    _fail(path, f"its shard {source} is from build {src.attrs.get(schema.ATTR_BUILD_ID)} with "
                          f"segments {ds.shape[1:]}, not build {build_id} with {seg.shape[1:]}: a mixed dataset",
                          "rebuild it")
                checksummed &= ds.fletcher32
        except OSError as err:
            raise _damaged(source, err) from None
    return checksummed


def source_row(path: Path, ds: h5py.Dataset, row: int) -> tuple[Path, int] | None:
    """Where row `row` of a virtual dataset is stored: (source file, row there), or None."""
    for m in ds.virtual_sources():
        (lo, *_), (hi, *_) = m.vspace.get_select_bounds()
        if lo <= row <= hi:
            (src_lo, *_), _ = m.src_space.get_select_bounds()
            return _source_path(path, m.file_name), src_lo + row - lo
    return None


def _source_path(path: Path, name: str) -> Path:
    """A virtual dataset's source file: HDF5 resolves a relative name from the virtual file's folder."""
    return Path(name) if Path(name).is_absolute() else path.parent / name


def check_same(info: SplitInfo, f: h5py.File | None = None) -> None:
    """A split opened again during a run (a streaming worker each epoch) must be the file the run loaded:
    a rebuild or a copy over it would pair its rows with the labels loaded at the start."""
    st = os.stat(info.path)
    now = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    build_id = f.attrs.get(schema.ATTR_BUILD_ID) if f is not None else None
    if (info.identity is not None and now != info.identity) or (
            f is not None and info.build_id is not None and str(build_id) != info.build_id):
        raise ValueError(f"{info.path} was replaced since this run loaded it (build {info.build_id} → "
                         f"{build_id if f is not None else 'unknown'}): its rows no longer match the labels loaded "
                         "at the start, so the run stops; start it again on the new data (a checkpoint resumes with "
                         "--ckpt_path last)")


def check_manifest(info: SplitInfo) -> None:
    """Where a build's dataset.json sits beside a split, it must name the split with its build id and size.

    The builder writes dataset.json last: a split from another (or an interrupted) build, or a
    truncated copy, is refused rather than trained on beside the others. (Split files copied
    without their dataset.json are still checked against each other: `check_compatible`.)
    """
    manifest_path = info.path.parent / schema.MANIFEST
    if not manifest_path.is_file():
        return
    try:
        manifest = json.loads(manifest_path.read_text())
        entry = manifest["files"].get(info.path.name)
    except (OSError, ValueError, KeyError, AttributeError):
        _fail(manifest_path, "not a readable dataset manifest")
    if entry is None or info.build_id != manifest.get("build_id"):
        _fail(info.path, f"comes from another build than {manifest_path} (build {info.build_id} against "
              f"{manifest.get('build_id')}): a mixed dataset, e.g. an interrupted --overwrite")
    size = info.path.stat().st_size
    if size != entry.get("bytes"):
        _fail(info.path, f"is {size} bytes but {manifest_path} says {entry.get('bytes')}: a damaged or "
              "incomplete copy", "copy it again or rebuild it")
    shards = manifest.get("shards") or {}  # a sharded build's joined splits read their shards in place
    split = next((s for s, n in schema.SPLIT_FILES.items() if n == info.path.name), None)
    for name, expected in (shards.get("files") or {}).items():
        shard = info.path.parent / shards.get("folder", "") / name
        if name.startswith(f"{split}.") and shard.is_file() and shard.stat().st_size != expected:
            _fail(shard, f"is {shard.stat().st_size} bytes but {manifest_path} says {expected}: a damaged or "
                  "incomplete copy", "copy the dataset folder again or rebuild it")


def check_compatible(infos: list[SplitInfo]) -> None:
    """All splits share one label set and one feature config; splits in one folder come from one build."""
    first = infos[0]
    for other in infos[1:]:
        if other.path.parent == first.path.parent and other.build_id != first.build_id:
            _fail(other.path, f"comes from another build than {first.path} (build {other.build_id} against "
                  f"{first.build_id}): a mixed dataset, e.g. an interrupted --overwrite")
        if other.class_names != first.class_names:
            raise ValueError(f"{other.path}: labels {other.class_names} differ from {first.class_names} in "
                             f"{first.path}; build all splits in one run so they share one label mapping")
        # the same rule as against a checkpoint: f_max None and f_max = sample_rate / 2 are one frontend
        if (diff := other.features.differences(first.features)) or other.segment_shape != first.segment_shape:
            what = ", ".join(f"{k}={a} against {b}" for k, (a, b) in diff.items()) or \
                f"segments {other.segment_shape} against {first.segment_shape}"
            raise ValueError(f"{other.path}: feature config differs from {first.path} ({what}); rebuild the "
                             "splits with the same features")


def read_rows(info: SplitInfo, name: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """Rows lo..hi of a dataset; a checksum mismatch or unreadable chunk names the file and its first bad row."""
    with h5py.File(info.path, "r") as f:
        ds = f[name]
        hi = len(ds) if hi is None else hi
        try:
            return ds[lo:hi]
        except (OSError, RuntimeError) as err:
            step = ds.chunks[0] if ds.chunks else 1
            for row in range(lo, hi, step):  # only on the error path: find where it breaks
                end = min(row + step, hi) - 1
                try:
                    ds[row: end + 1]
                except (OSError, RuntimeError):
                    rows = f"row {row}" if end == row else f"rows {row}..{end}"
                    if ds.is_virtual and (found := source_row(info.path, ds, row)):  # a joined split: the shard
                        raise _virtual_damage(info, name, rows, *found) from None
                    what = "a checksum mismatch" if _only_the_checksum_fails(ds, row, end + 1) else "unreadable data"
                    raise _damaged(info.path, err, f"/{name} {rows} ({what})") from None
            raise _damaged(info.path, err, f"/{name} rows {lo}..{hi - 1}") from None


def _virtual_damage(info: SplitInfo, name: str, rows: str, source: Path, row: int) -> ValueError:
    with h5py.File(source, "r") as src:
        ds = src[name]
        try:
            ds[row: row + 1]
            what = "unreadable data"
        except (OSError, RuntimeError) as err:
            what = "a checksum mismatch" if _only_the_checksum_fails(ds, row, row + 1) else "unreadable data"
            return _damaged(info.path, err, f"/{name} {rows} (stored in {source} row {row}: {what})")
    return _damaged(info.path, OSError(what), f"/{name} {rows} (stored in {source} row {row})")


def _only_the_checksum_fails(ds: h5py.Dataset, lo: int, hi: int) -> bool:
    """Whether rows lo..hi fail only their checksum: HDF5 reports a failed fletcher32 check and an unreadable
    chunk alike (its filter pipeline failed), so the chunks' raw bytes are read past the filters; when they
    all read, and fletcher32 is the only filter, it is the checksum that failed."""
    if not ds.fletcher32 or ds.compression or not ds.chunks:
        return False
    step = ds.chunks[0]
    try:
        for row in range(lo - lo % step, hi, step):
            ds.id.read_direct_chunk((row, *([0] * (ds.ndim - 1))))
    except (OSError, RuntimeError, KeyError):
        return False
    return True


def load_targets(info: SplitInfo) -> np.ndarray:
    """Per-file multi-hot targets uint8 [F, C] (one-hot from /labels when /targets is absent)."""
    labels = read_rows(info, schema.LABELS).astype(np.int64)
    targets = read_rows(info, schema.TARGETS).astype(np.uint8) if info.has_targets else None
    num_classes = len(info.class_names)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        _fail(info.path, f"label {int(labels[bad][0])} at row {int(np.flatnonzero(bad)[0])} is out of "
              f"range for {num_classes} classes")
    if info.label_counts is not None:
        found = dict(zip(info.class_names, np.bincount(labels, minlength=num_classes).tolist()))
        if found != {name: info.label_counts.get(name, 0) for name in info.class_names}:
            _fail(info.path, f"/labels counts {found} differ from the {info.label_counts} the builder recorded: "
                  "the labels are damaged", "rebuild it or copy it again")
    return targets if targets is not None else np.eye(num_classes, dtype=np.uint8)[labels]


def _check_values(info: SplitInfo, block: np.ndarray, first_row: int) -> None:
    """NaN/Inf, and dB values no recording can give with this frontend (a flipped exponent bit)."""
    lo, hi = info.features.db_range()
    if block.size:
        # one vectorised pass (torch.aminmax: numpy's half-precision min/max is far slower, see
        # scripts/benchmark_kernels.py "value check"); NaN propagates into it. The per-row search runs only on failure.
        low, high = (float(v) for v in torch.aminmax(torch.from_numpy(np.ascontiguousarray(block)).reshape(-1)))
        if lo <= low and high <= hi:
            return
    flat = block.reshape(len(block), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        _fail(info.path, f"NaN/Inf features in {int((~finite).sum())} file row(s) of rows "
              f"{first_row}..{first_row + len(block) - 1}, first at row {first_row + int(np.argmin(finite))}")
    inside = (flat.min(axis=1) >= lo) & (flat.max(axis=1) <= hi)
    if not inside.all():
        row = int(np.argmin(inside))
        _fail(info.path, f"row {first_row + row} holds values from {float(flat[row].min()):.1f} to "
              f"{float(flat[row].max()):.1f} dB, outside the {lo:.0f}..{hi:.0f} dB this frontend can give: the "
              "file is damaged", "rebuild it or copy it again")


def load_segments(info: SplitInfo, rows: int = 4096) -> np.ndarray:
    """All segments as float16 [N_seg, n_mels, T], checked (checksums, NaN/Inf, dB range).

    Read `rows` file rows at a time into one array: HDF5 reading a whole split of one-row chunks in one call holds
    a large buffer of its own on top of the split, and the checks took more (scripts/benchmark_stream.py)."""
    out = np.empty((info.num_files, *info.segment_shape), dtype=np.float16)
    for lo in range(0, info.num_files, rows):
        hi = min(lo + rows, info.num_files)
        out[lo:hi] = block = read_rows(info, schema.SEGMENTS, lo, hi)
        _check_values(info, block, lo)
    return out.reshape(-1, *info.segment_shape[2:])


def scan_segments(info: SplitInfo, rows: int = 4096) -> None:
    """The same checks in bounded memory, for splits that are streamed rather than loaded."""
    for lo in range(0, info.num_files, rows):
        _check_values(info, read_rows(info, schema.SEGMENTS, lo, min(lo + rows, info.num_files)), lo)


def recording_digests(info: SplitInfo, kind: str | None = None) -> tuple[str, np.ndarray] | None:
    """Which recordings a split holds, as sorted 64-bit digests: (kind, digests), or None (unknown).

    kind "audio": the builder's digests of each row's decoded audio (`/audio_digests`): a renamed or
    re-encoded copy is the same recording. kind "name": a digest of (WAV file name, label), for splits
    built before audio digests (and checkpoints trained on them): the name without its folders, so the
    same recording keeps it when the input is re-rooted or re-split. None for `kind`: the best the file
    has. Compact enough to keep in a checkpoint (8 bytes a file). Origin files store neither.
    """
    with h5py.File(info.path, "r") as f:
        has_audio = schema.AUDIO_DIGESTS in f
        if kind in (None, "audio") and has_audio:
            try:
                return "audio", np.sort(f[schema.AUDIO_DIGESTS][()].astype(np.uint64))
            except OSError as err:
                raise _damaged(info.path, err, f" ({schema.AUDIO_DIGESTS})") from None
        if kind == "audio" or schema.FILE_PATHS not in f:
            return None
        paths = f[schema.FILE_PATHS][()]
    labels = read_rows(info, schema.LABELS)
    names = (PurePosixPath(p.decode() if isinstance(p, bytes) else str(p)).name for p in paths)
    keys = (f"{name}\0{_label_name(info, int(k))}" for name, k in zip(names, labels))
    digests = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys]
    return "name", np.sort(np.array(digests, dtype=np.uint64))


def _label_name(info: SplitInfo, k: int) -> str:
    return info.class_names[k] if 0 <= k < len(info.class_names) else str(k)


def read_file_paths(info: SplitInfo) -> list[str]:
    """Per-row WAV paths; origin files have none, so rows are named by index."""
    with h5py.File(info.path, "r") as f:
        if schema.FILE_PATHS in f:
            return [p.decode() if isinstance(p, bytes) else str(p) for p in f[schema.FILE_PATHS][()]]
    return [f"{info.path.name}#{i}" for i in range(info.num_files)]
