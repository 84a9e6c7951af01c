"""Find labelled WAV files in either input layout and assign them to splits."""

from __future__ import annotations

import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from ..audio.scan import Unusable, printable, scan_audio

SPLITS = ("TRAINING", "VALIDATION", "TESTING")


@dataclass(frozen=True)
class WavItem:
    path: Path
    rel_path: str  # relative to the input root, '/' separated, printable: what /file_paths stores
    label: str
    sensor_id: str


def sensor_id_of(path: Path) -> str:
    """`sensor~recording~timestamp~gain.wav` → 'sensor'; any other name → ''."""
    parts = path.stem.split("~")
    return parts[0] if len(parts) == 4 and parts[0] else ""


def _unlistable(folder: Path, err: OSError, what: str) -> ValueError:
    # A folder this user may not read would pass for an empty one (a class of recordings left out);
    # the cause is the fix, so it goes in the message.
    return ValueError(f"{printable(folder)}: {what} cannot be listed ({err.strerror or err}); give this user read "
                      "and search permission on it (chmod a+rx) or move it out of the input")


def _label_dirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise _unlistable(folder, err, "input or split folder") from None


def _scan_labels(root: Path, folder: Path, unusable: list[Unusable]) -> list[WavItem]:
    """Labelled WAVs under folder/<LABEL>/; entries that cannot be read are added to `unusable`."""
    items = []
    label_dirs = _label_dirs(folder)
    if not label_dirs:
        raise ValueError(f"{folder}: no label folders found; expected {folder}/<LABEL>/*.wav")
    for label_dir in label_dirs:
        try:
            os.listdir(label_dir)  # scan_audio would report it as one skip among many: here it ends the build
        except OSError as err:
            raise _unlistable(label_dir, err, "label folder") from None
        wavs, problems = scan_audio(label_dir)
        unusable += problems
        if not wavs:
            hidden = f" ({printable(problems[0].path)}: {problems[0].reason})" if problems else ""
            raise ValueError(f"{label_dir}: label folder holds no audio files (.wav, .flac, .ogg, .mp3, ...){hidden}; "
                             "add recordings or remove the folder")
        items += [WavItem(p, printable(p.relative_to(root).as_posix()), label_dir.name,
                          printable(sensor_id_of(p))) for p in wavs]
    return items


def is_origin_layout(root: Path) -> bool:
    return any((root / split).is_dir() for split in SPLITS)


def discover(root: Path, ratios: tuple[float, float, float],
             seed: int) -> tuple[dict[str, list[WavItem]], list[Unusable]]:
    """Items per split (taken from the origin layout, or split from a single pool), and the
    entries named like WAV files that cannot be read (dangling links, FIFOs, ...)."""
    root = Path(root)
    try:  # listed first: a folder this user may not read would fail the layout check with a bare PermissionError
        os.listdir(root)
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"input folder {root} does not exist; pass --input ROOT with "
                                "ROOT/<LABEL>/*.wav or ROOT/{TRAINING,VALIDATION,TESTING}/<LABEL>/*.wav") from None
    except OSError as err:
        raise _unlistable(root, err, "input folder") from None
    unusable: list[Unusable] = []
    if not is_origin_layout(root):
        return split_pool(_scan_labels(root, root, unusable), ratios, seed), unusable
    missing = [s for s in SPLITS if not (root / s).is_dir()]
    if missing:
        raise ValueError(f"{root}: origin layout but missing split folder(s) {', '.join(missing)}; "
                         f"create them or use the single-pool layout ROOT/<LABEL>/*.wav")
    return {s: _scan_labels(root, root / s, unusable) for s in SPLITS}, unusable


def label_mapping(found: set[str], explicit: list[str] | None) -> list[str]:
    """One global, ordered class list: sorted folder names, or the explicit list (checked)."""
    if not explicit:
        return sorted(found)
    if len(set(explicit)) != len(explicit):
        raise ValueError(f"--labels has duplicates: {explicit}")
    unknown = sorted(found - set(explicit))
    if unknown:
        raise ValueError(f"label folder(s) {unknown} are not in --labels {explicit}; "
                         "add them to --labels or remove those folders")
    return list(explicit)


def split_pool(items: list[WavItem], ratios: tuple[float, float, float],
               seed: int) -> dict[str, list[WavItem]]:
    """Stratified by label, grouped by sensor: a sensor's files all land in one split.

    Groups (a sensor, or a lone file without sensor id) are dealt per label in a seeded
    random order, each to the split furthest below its target share of that label.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"split ratios {ratios} must be three non-negative numbers, e.g. 0.7 0.2 0.1")
    fractions = [r / sum(ratios) for r in ratios]
    groups: dict[str, list[WavItem]] = defaultdict(list)
    for item in items:
        groups[item.sensor_id or f"file:{item.rel_path}"].append(item)
    by_label: dict[str, list[str]] = defaultdict(list)
    for key, members in sorted(groups.items()):
        dominant = Counter(m.label for m in members).most_common(1)[0][0]
        by_label[dominant].append(key)
    rng = random.Random(seed)
    out: dict[str, list[WavItem]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        keys = by_label[label]
        rng.shuffle(keys)
        total = sum(len(groups[k]) for k in keys)
        counts = [0, 0, 0]
        for key in keys:
            deficit = [f * total - c for f, c in zip(fractions, counts)]
            i = max(range(3), key=lambda j: (deficit[j] if fractions[j] > 0 else float("-inf"), -j))
            counts[i] += len(groups[key])
            out[SPLITS[i]] += groups[key]
    return {s: sorted(v, key=lambda it: it.rel_path) for s, v in out.items()}
