"""The small choices the code makes for speed, each measured against the alternative it replaced.

    python scripts/benchmark_kernels.py --repeats 7

Code comments point here instead of quoting one machine's timings. Each line prints the median time of the
chosen way and of the alternative over --repeats runs (alternating which goes first), and their ratio:
  int16 reads      a 10 s 16-bit WAV read as int16 and scaled, against libsndfile's own float conversion
  resample         44.1 kHz → 4096 Hz with the FFT method, against torchaudio's polyphase sinc kernel
  downmix          2 channels by a matrix-vector product, against ndarray.mean(axis=1)
  audio digest     sha256 over the float32 buffer in place, against blake2b and against sha256 of a bytes copy
  gather           a batch of rows by numpy fancy indexing, against torch.index_select (torch's threads)
  value check      min/max of float16 segments by torch.aminmax, against numpy's min and max
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leak_lightning.audio.decode import _INT_READS, resample  # noqa: E402


def medians(ways: dict[str, Callable[[], object]], repeats: int, inner: int) -> dict[str, float]:
    """Median seconds per call of each way; the order alternates between repeats so neither always runs warm."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            for _ in range(inner):
                ways[name]()
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(t) for name, t in times.items()}


def show(title: str, result: dict[str, float]) -> None:
    chosen, *others = result
    line = f"{title:13s} {chosen}: {result[chosen] * 1e3:8.3f} ms"
    for other in others:
        line += f" | {other}: {result[other] * 1e3:8.3f} ms ({result[other] / result[chosen]:.1f}x)"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "clip.wav"
        sf.write(wav, (rng.standard_normal(40960) * 3000).astype(np.int16), 4096, subtype="PCM_16")
        dtype, scale = _INT_READS["PCM_16"]
        show("int16 reads", medians({
            "int16+scale": lambda: sf.read(wav, dtype=dtype)[0] * np.float32(scale),
            "float32": lambda: sf.read(wav, dtype="float32")[0]}, args.repeats, 50))

    import torchaudio

    clip = rng.standard_normal(441000).astype(np.float32)
    sinc = torchaudio.transforms.Resample(44100, 4096)  # the kernel built once, as decode caches it
    show("resample", medians({
        "fft": lambda: resample(clip, 44100, 4096),  # 11,025 sinc taps: above decode's limit, so the FFT
        "sinc": lambda: sinc(torch.from_numpy(clip))}, args.repeats, 3))

    stereo = rng.standard_normal((441000, 2)).astype(np.float32)
    show("downmix", medians({
        "matvec": lambda: stereo @ np.full(2, 0.5, dtype=np.float32),
        "mean": lambda: stereo.mean(axis=1)}, args.repeats, 20))

    samples = rng.standard_normal(40960).astype(np.float32)
    show("audio digest", medians({
        "sha256": lambda: hashlib.sha256(samples).digest(),
        "blake2b": lambda: hashlib.blake2b(samples).digest(),
        "sha256+copy": lambda: hashlib.sha256(samples.tobytes()).digest()}, args.repeats, 200))

    segments = torch.from_numpy(rng.standard_normal((20000, 64, 32)).astype(np.float16))
    index = torch.randperm(20000)[:512]
    show("gather", medians({
        "numpy": lambda: torch.from_numpy(segments.numpy()[index.numpy()]),
        "index_select": lambda: segments.index_select(0, index)}, args.repeats, 5))

    block = segments.numpy()
    show("value check", medians({
        "aminmax": lambda: torch.aminmax(torch.from_numpy(block).reshape(-1)),
        "numpy": lambda: (block.min(), block.max())}, args.repeats, 1))


if __name__ == "__main__":
    main()
