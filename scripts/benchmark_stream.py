"""Training data throughput and peak memory per cache mode, on one split, page cache warm and cold.

    python scripts/benchmark_stream.py --files 100000 --budgets 128MB 512MB --repeats 3

Writes one random split with the builder's writer (checksummed, --files recordings of 80 segments) and a small
validation split, then, each in a fresh process, sets up LeakDataModule for `fit` and serves one training epoch
(batches of --batch-size on the CPU, as the training step receives them):
  device / ram   the split cached (no budget)
  stream B       the split streamed with data.max_cache_bytes B (--num-workers DataLoader workers)
Page cache "cold": the split's pages are dropped first (posix_fadvise DONTNEED, no root needed). Memory is the
peak proportional set size (PSS) of the process and its DataLoader workers together, sampled every 20 ms: PSS
counts a page the workers share with their parent once, where RSS would count it in each. "over budget" is the
peak minus the budget: the fixed overhead docs/design.md states. Medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_build import measure  # noqa: E402 (a fresh spawned process per measurement)

from leak_lightning.runtime.logs import bytes_human, parse_bytes  # noqa: E402

CLASSES = ["BACKGROUND", "CRACK", "LEAK", "NORMAL", "UNCLASSIFIED"]


def write(path: Path, files: int, seed: int) -> Path:
    from leak_lightning.audio.features import FeatureConfig
    from leak_lightning.builder.writer import SplitWriter

    cfg, rng = FeatureConfig(), np.random.default_rng(seed)
    w = SplitWriter(path, cfg, CLASSES)
    for lo in range(0, files, 4096):
        k = min(4096, files - lo)
        seg = (rng.standard_normal((k, *cfg.segment_shape), dtype=np.float32) * 10 - 40).astype(np.float16)
        digests = (rng.integers(1, 2**63, k, dtype=np.int64)).tolist()  # distinct recordings in each split
        w.append(seg, rng.integers(0, len(CLASSES), k).astype(np.int16), [""] * k, [""] * k, digests)
    return w.commit()


def _pss(pid: int) -> int:
    """PSS of a process and its descendants (bytes)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _serve(train: str, val: str, cache: str, budget: int | None, batch: int, workers: int, cold: bool, q) -> None:
    import torch

    from leak_lightning.data.datamodule import LeakDataModule

    torch.set_num_threads(1)
    if cold:
        drop_cache(Path(train))
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _pss(os.getpid()))
            time.sleep(0.02)

    base = _pss(os.getpid())  # interpreter, torch, h5py, lightning: before any data
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    dm = LeakDataModule(train_h5=train, val_h5=val, cache=cache, batch_size=batch, num_workers=workers,
                        max_cache_bytes=budget)
    dm.setup("fit")
    t1 = time.perf_counter()
    segments = 0
    for x, _y, _ in dm.train_dataloader():
        segments += len(x)
    t2 = time.perf_counter()
    stop.set()
    sampler.join()
    dm.teardown("fit")
    q.put({"setup_s": t1 - t0, "segments": segments, "seg_per_s": segments / (t2 - t1), "peak": peak[0],
           "base": base, "buffer": getattr(dm.splits["train"], "buffer_files", None)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--budgets", nargs="+", default=["128MB", "512MB"])
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/leak_lightning_stream_bench"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    train, val = args.workdir / "TRAINING_DATASET.H5", args.workdir / "VALIDATION_DATASET.H5"
    if not train.is_file() or json.loads((args.workdir / "files.json").read_text() or "0") != args.files:
        t0 = time.perf_counter()
        write(train, args.files, 0)
        write(val, 500, 1)
        (args.workdir / "files.json").write_text(json.dumps(args.files))
        print(f"wrote {args.files} files ({bytes_human(train.stat().st_size)}) in {time.perf_counter() - t0:.0f} s")
    cases = [("device", None), ("ram", None)] + [("stream", parse_bytes(b, "--budgets")) for b in args.budgets]
    rows = []
    for cache, budget in cases:
        for cold in (False, True):
            runs = [measure(_serve, str(train), str(val), cache, budget, args.batch_size, args.num_workers, cold)
                    for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in ("setup_s", "seg_per_s", "peak", "base")}
            rows.append({"cache": cache, "budget": budget, "cold": cold, "segments": runs[0]["segments"],
                         "buffer": runs[0]["buffer"], "spread": [round(r["seg_per_s"]) for r in runs], **med})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nsplit: {args.files} files, {rows[0]['segments']} segments, {bytes_human(train.stat().st_size)}; batch "
          f"{args.batch_size}, {args.num_workers} workers; medians of {args.repeats}")
    print(f"{'cache':8s} {'budget':>10s} {'page cache':>10s} {'buffer':>7s} {'setup s':>8s} {'segments/s':>11s} "
          f"{'peak PSS':>11s} {'over budget':>11s} {'imports':>10s}")
    for r in rows:
        over = bytes_human(r["peak"] - r["budget"]) if r["budget"] else "-"
        print(f"{r['cache']:8s} {bytes_human(r['budget']) if r['budget'] else '-':>10s} "
              f"{'cold' if r['cold'] else 'warm':>10s} {r['buffer'] or '-':>7} {r['setup_s']:8.1f} "
              f"{r['seg_per_s']:11,.0f} {bytes_human(r['peak']):>11s} {over:>11s} {bytes_human(r['base']):>10s}")


if __name__ == "__main__":
    main()
