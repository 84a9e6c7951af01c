"""Builder throughput versus a naive one-file-at-a-time loop, measured side by side; and per process count.

    python scripts/benchmark_build.py --files 2000 --resampled-files 400
    python scripts/benchmark_build.py --files 2000 --resampled-files 0 --processes 1 2 4

--processes: the same corpus built by N worker processes under torchrun (`--standalone --nproc_per_node N`,
each a shard; the last joins them), timed from the launch to the published splits (torchrun's start-up
included), files/s per process count, medians of --repeats.

Each measurement runs in its own process (peak RSS is that process's own); the corpus is read
once before timing so both contenders see a warm page cache. Reports medians of --repeats.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leak_lightning.runtime.logs import bytes_human, setup_logging  # noqa: E402

log = logging.getLogger("leak_lightning.benchmark")


def make_corpus(root: Path, files: int, unique: int, sample_rate: int, channels: int) -> None:
    """Synthesize `unique` clips, then copy them under new sensor names up to `files`."""
    from synthetic import DEFAULT_LABELS, make_dataset

    if root.exists():
        shutil.rmtree(root)
    per_label = max(1, min(files, unique) // len(DEFAULT_LABELS))
    made = make_dataset(root, layout="pool", files_per_label=per_label, sensors_per_label=10,
                        sample_rate=sample_rate, channels=channels, seed=0)
    for i in range(files - len(made)):
        src = made[i % len(made)]
        copy = src.with_name(f"X{i:06d}~R00~20250101T000000~g1.wav")
        shutil.copyfile(src, copy)
        with open(copy, "r+b") as f:  # its own last sample: the build refuses the same audio twice
            f.seek(-4, os.SEEK_END)
            f.write(i.to_bytes(4, "little"))
    for wav in root.rglob("*.wav"):  # warm the page cache for both contenders
        wav.read_bytes()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _run_builder(root, out, batch_size, workers, device, q) -> None:
    from leak_lightning.builder.build import build_dataset

    base = _peak_rss()  # imports alone: the CUDA build of torch maps ~0.7 GB
    t0 = time.perf_counter()
    s = build_dataset(root, out, overwrite=True, batch_size=batch_size, num_workers=workers,
                      device=device, progress=False)
    files = sum(s.files.values()) + len(s.skipped)
    q.put((files, time.perf_counter() - t0, _peak_rss(), base))


def _run_naive(root, out, limit, q) -> None:
    """The origin's shape: read, mel and write one file at a time (same frontend maths)."""
    import h5py
    import numpy as np
    import soundfile as sf
    import torch
    import torchaudio

    from leak_lightning.audio.features import FeatureConfig, LogMelFrontend

    cfg = FeatureConfig()
    frontend = LogMelFrontend(cfg)
    paths = sorted(root.rglob("*.wav"))[:limit]
    base = _peak_rss()
    t0 = time.perf_counter()
    with h5py.File(out / "naive.h5", "w") as f:
        seg = f.create_dataset("segments_mel", (len(paths), *cfg.segment_shape), np.float16,
                               chunks=(1, *cfg.segment_shape))
        for i, path in enumerate(paths):
            data, sr = sf.read(path, dtype="float32", always_2d=True)
            wave = torch.from_numpy(data.mean(axis=1))
            if sr != cfg.sample_rate:
                wave = torchaudio.functional.resample(wave, sr, cfg.sample_rate)
            seg[i] = frontend(wave[None])[0].half().numpy()
    q.put((len(paths), time.perf_counter() - t0, _peak_rss(), base))


def measure(target, *args) -> tuple[int, float, int, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    result = q.get()
    proc.join()
    return result


def bench_corpus(name: str, root: Path, work: Path, args) -> dict:
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    runs = [measure(_run_builder, root, out, args.batch_size, args.workers, args.device)
            for _ in range(args.repeats)]
    rates = [r[0] / r[1] for r in runs]
    naive_n, naive_s, naive_rss, _ = measure(_run_naive, root, out, args.naive_files)
    row = {"corpus": name, "files": runs[0][0], "builder": statistics.median(rates),
           "builder_runs": rates, "naive": naive_n / naive_s, "naive_files": naive_n,
           "rss": max(r[2] for r in runs), "rss_imports": max(r[3] for r in runs),
           "naive_rss": naive_rss}
    row["ratio"] = row["builder"] / row["naive"]
    return row


def bench_processes(root: Path, work: Path, counts: list[int], repeats: int) -> list[dict]:
    import subprocess

    rows = []
    for n in counts:
        walls = []
        for r in range(repeats):
            out = work / f"sharded_{n}_{r}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
                            "-m", "leak_lightning", "build", "--input", str(root), "--output", str(out),
                            "--log_level", "WARNING"], check=True, cwd=Path(__file__).resolve().parents[1])
            walls.append(time.perf_counter() - t0)
            files = sum(json.loads((out / "dataset.json").read_text())["files"][k]["rows"]
                        for k in ("TRAINING_DATASET.H5", "VALIDATION_DATASET.H5", "TESTING_DATASET.H5"))
            shutil.rmtree(out, ignore_errors=True)
        rows.append({"processes": n, "files": files, "seconds": statistics.median(walls),
                     "files_per_s": files / statistics.median(walls)})
        log.info("%s", rows[-1])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--resampled-files", type=int, default=400, help="44.1 kHz stereo corpus; 0 skips it")
    p.add_argument("--unique", type=int, default=1000, help="distinct synthesized clips; the rest are copies")
    p.add_argument("--naive-files", type=int, default=None, help="limit the naive loop to N files")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/leak_lightning_bench"))
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--processes", type=int, nargs="*", default=[],
                   help="also build with this many worker processes (torchrun shards), e.g. 1 2 4")
    args = p.parse_args()
    setup_logging()
    corpora = [("4096 Hz mono PCM16", args.files, 4096, 1)]
    if args.resampled_files:
        corpora.append(("44.1 kHz stereo PCM16", args.resampled_files, 44100, 2))
    rows = []
    for name, files, sr, ch in corpora:
        root = args.workdir / f"corpus_{sr}_{ch}"
        t0 = time.perf_counter()
        make_corpus(root, files, args.unique, sr, ch)
        log.info("corpus %s: %d files in %.1fs", name, files, time.perf_counter() - t0)
        rows.append(bench_corpus(name, root, args.workdir, args))
        log.info("%s", rows[-1])
    log.info("%-22s %6s %16s %14s %7s %12s %14s", "corpus", "files", "builder files/s", "naive files/s",
             "ratio", "builder RSS", "(imports only)")
    for r in rows:
        log.info("%-22s %6d %16.0f %14.1f %6.1fx %12s %14s", r["corpus"], r["files"], r["builder"],
                 r["naive"], r["ratio"], bytes_human(r["rss"]), bytes_human(r["rss_imports"]))
    if args.processes:
        sharded = bench_processes(args.workdir / "corpus_4096_1", args.workdir, args.processes, args.repeats)
        base = sharded[0]["files_per_s"]
        log.info("%-10s %6s %10s %10s %8s", "processes", "files", "seconds", "files/s", f"vs {sharded[0]['processes']}")
        for r in sharded:
            log.info("%-10d %6d %10.1f %10.0f %7.2fx", r["processes"], r["files"], r["seconds"], r["files_per_s"],
                     r["files_per_s"] / base)


if __name__ == "__main__":
    main()
