"""What verifying a split costs on load: HDF5 fletcher32 checksums and the value checks, against a plain read.

    python scripts/benchmark_load.py --files 20000 --repeats 5

Writes the same random split twice, with the builder's writer (checksummed chunks) and without
checksums, then times, alternating which goes first (page cache warm, medians):
  plain   h5py read of /segments_mel and /labels from the file without checksums
  checked the same read from the checksummed file (HDF5 verifies every chunk)
  load    what LeakDataModule does: checksummed read + NaN/Inf and dB-range checks + label counts
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leak_lightning.audio.features import FeatureConfig  # noqa: E402
from leak_lightning.builder.writer import SplitWriter  # noqa: E402
from leak_lightning.data import schema  # noqa: E402
from leak_lightning.data.h5 import load_segments, load_targets, read_info  # noqa: E402

CLASSES = ["BACKGROUND", "CRACK", "LEAK", "NORMAL", "UNCLASSIFIED"]


def write(folder: Path, files: int, checksums: bool) -> Path:
    cfg, rng = FeatureConfig(), np.random.default_rng(0)
    path = folder / ("checked.h5" if checksums else "plain.h5")
    w = SplitWriter(path, cfg, CLASSES)
    if not checksums:  # the same layout without filters: the origin builder's files, roughly
        for name in (schema.SEGMENTS, schema.LABELS):
            ds = w._h5[name]
            del w._h5[name]
            w._h5.create_dataset(name, shape=ds.shape, maxshape=ds.maxshape, dtype=ds.dtype, chunks=ds.chunks)
        w._seg, w._lab = w._h5[schema.SEGMENTS], w._h5[schema.LABELS]
    for lo in range(0, files, 2048):
        k = min(2048, files - lo)
        seg = (rng.standard_normal((k, *cfg.segment_shape), dtype=np.float32) * 10 - 40).astype(np.float16)
        w.append(seg, rng.integers(0, len(CLASSES), k).astype(np.int16), [""] * k, [""] * k)
    return w.commit()


def plain_read(path: Path) -> None:
    with h5py.File(path, "r") as f:
        f[schema.SEGMENTS][()]
        f[schema.LABELS][()]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, checked = write(Path(tmp), args.files, False), write(Path(tmp), args.files, True)
        info = read_info(checked)
        sides = {"plain": lambda: plain_read(plain), "checked": lambda: plain_read(checked),
                 "load": lambda: (load_segments(info), load_targets(info))}
        for fn in sides.values():  # warm the page cache
            fn()
        times: dict[str, list[float]] = {k: [] for k in sides}
        for r in range(args.repeats):
            for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
                times[name].append(timed(sides[name]))
        med = {k: statistics.median(v) for k, v in times.items()}
        mb = plain.stat().st_size / 2**20
        print(f"{args.files} files, {info.num_segments} segments, {mb:.0f} MB; medians of {args.repeats}:")
        for name, t in med.items():
            print(f"  {name:8s} {t * 1000:8.1f} ms  {mb / t:7.0f} MB/s  ({t / med['plain']:.2f}x plain)")
        print(f"checksums cost {med['checked'] / med['plain'] - 1:+.1%} of the read; "
              f"all verification {med['load'] / med['plain'] - 1:+.1%}")


if __name__ == "__main__":
    main()
