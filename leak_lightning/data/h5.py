"""Open, validate and load split files written by the builder (or by the origin's builder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..features import FeatureConfig
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


def read_info(path: str | Path) -> SplitInfo:
    """Check names, ranks, dtypes and attributes; raise ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dataset file not found; build it with "
                                "`python -m leak_lightning build` or fix the path in the data config")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err}); rebuild it") from None
    with f:
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
    if shape[2:] != (features.n_mels, features.t_frames):
        _fail(path, f"segments are {shape} but its config_json implies n_mels={features.n_mels}, "
              f"T={features.t_frames}")
    return SplitInfo(path, int(seg.shape[0]), shape, list(classes), features, has_targets, version)


def check_compatible(infos: list[SplitInfo]) -> None:
    """All splits must share one label set and one feature config."""
    first = infos[0]
    for other in infos[1:]:
        if other.class_names != first.class_names:
            raise ValueError(f"{other.path}: labels {other.class_names} differ from {first.class_names} in "
                             f"{first.path}; build all splits in one run so they share one label mapping")
        if other.features != first.features or other.segment_shape != first.segment_shape:
            raise ValueError(f"{other.path}: feature config {other.features} differs from {first.features} "
                             f"in {first.path}; rebuild the splits with the same features")


def load_targets(info: SplitInfo) -> np.ndarray:
    """Per-file multi-hot targets uint8 [F, C] (one-hot from /labels when /targets is absent)."""
    with h5py.File(info.path, "r") as f:
        labels = f[schema.LABELS][()].astype(np.int64)
        targets = f[schema.TARGETS][()].astype(np.uint8) if info.has_targets else None
    num_classes = len(info.class_names)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        _fail(info.path, f"label {int(labels[bad][0])} at row {int(np.flatnonzero(bad)[0])} is out of "
              f"range for {num_classes} classes")
    return targets if targets is not None else np.eye(num_classes, dtype=np.uint8)[labels]


def _check_finite(info: SplitInfo, block: np.ndarray, first_row: int) -> None:
    finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
    if not finite.all():
        _fail(info.path, f"NaN/Inf features in {int((~finite).sum())} file row(s) of rows "
              f"{first_row}..{first_row + len(block) - 1}, first at row {first_row + int(np.argmin(finite))}")


def load_segments(info: SplitInfo) -> np.ndarray:
    """All segments as float16 [N_seg, n_mels, T], checked for NaN/Inf."""
    with h5py.File(info.path, "r") as f:
        seg = f[schema.SEGMENTS][()]
    _check_finite(info, seg, 0)
    return seg.astype(np.float16, copy=False).reshape(-1, *info.segment_shape[2:])


def scan_segments(info: SplitInfo, rows: int = 4096) -> None:
    """NaN/Inf check in bounded memory, for splits that are streamed rather than loaded."""
    with h5py.File(info.path, "r") as f:
        ds = f[schema.SEGMENTS]
        for lo in range(0, info.num_files, rows):
            _check_finite(info, ds[lo: lo + rows], lo)


def read_file_paths(info: SplitInfo) -> list[str]:
    """Per-row WAV paths; origin files have none, so rows are named by index."""
    with h5py.File(info.path, "r") as f:
        if schema.FILE_PATHS in f:
            return [p.decode() if isinstance(p, bytes) else str(p) for p in f[schema.FILE_PATHS][()]]
    return [f"{info.path.name}#{i}" for i in range(info.num_files)]
