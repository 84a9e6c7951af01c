"""Steady-state training throughput: the real `fit` path versus a plain PyTorch loop.

    python scripts/benchmark_fit.py                 # sizes picked for the device (CUDA or CPU)
    python scripts/benchmark_fit.py --batch 8192 --steps 300 --files 45000

Both sides use the same LeakCNN, batch size, precision (bf16-mixed on CUDA, fp32 on CPU),
torch.compile setting (on with CUDA) and optimizer/scheduler; the plain loop gathers batches
from a tensor already on the device. Warm-up steps (and compilation) are excluded; the two
are measured alternately and medians reported.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402

from leak_lightning.builder.writer import SplitWriter  # noqa: E402
from leak_lightning.features import FeatureConfig  # noqa: E402
from leak_lightning.logs import setup_logging  # noqa: E402
from leak_lightning.models import LeakCNN  # noqa: E402

log = logging.getLogger("leak_lightning.benchmark")
CLASSES = ["BACKGROUND", "CRACK", "LEAK", "NORMAL", "UNCLASSIFIED"]


def make_h5(folder: Path, files: int) -> dict[str, Path]:
    """Random dB-like segments in the builder's format (training + a small validation split)."""
    cfg = FeatureConfig()
    rng = np.random.default_rng(0)
    out = {}
    for name, n in (("train", files), ("val", 64)):
        w = SplitWriter(folder / f"{name}.h5", cfg, CLASSES)
        for lo in range(0, n, 2048):
            k = min(2048, n - lo)
            seg = (rng.standard_normal((k, *cfg.segment_shape), dtype=np.float32) * 10 - 40).astype(np.float16)
            w.append(seg, rng.integers(0, len(CLASSES), k).astype(np.int16), [""] * k, [""] * k)
        out[name] = w.commit()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def raw_loop(h5: Path, batch: int, warmup: int, steps: int, device: torch.device, compile_: bool,
             channels: list[int]) -> float:
    """The reference: data on the device, index gather, autocast, AdamW + cosine, nothing else."""
    from leak_lightning.data.h5 import load_segments, load_targets, read_info

    info = read_info(h5)
    seg = torch.from_numpy(load_segments(info)).to(device)
    tgt = torch.from_numpy(load_targets(info).astype(np.float32)).to(device)
    spf = info.segments_per_file
    net = LeakCNN(len(CLASSES), channels=tuple(channels)).to(device).train()
    model = torch.compile(net) if compile_ else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=warmup + steps, eta_min=1e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    perm = torch.randperm(len(seg), device=device)
    per_epoch = len(seg) // batch
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        idx = perm[(step % per_epoch) * batch: (step % per_epoch + 1) * batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(seg[idx]).float(), tgt[idx // spf])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


class StepTimer(L.Callback):
    """Times training steps warmup..warmup+steps, then stops the run."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps, self.t0, self.rate = warmup, steps, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup + self.steps:
            _sync(pl_module.device)
            self.rate = self.steps * trainer.datamodule.batch_size / (time.perf_counter() - self.t0)
            trainer.should_stop = True


def lightning_fit(h5: dict[str, Path], batch: int, warmup: int, steps: int, root: Path,
                  channels: list[int]) -> float:
    """The real path: LeakCLI's parser, data module, module, callbacks and Trainer.fit."""
    from leak_lightning.cli import LeakCLI

    timer = StepTimer(warmup, steps)
    cli = LeakCLI(run=False, args=[
        "--data.train_h5", str(h5["train"]), "--data.val_h5", str(h5["val"]), "--data.batch_size", str(batch),
        "--trainer.max_epochs", "1000", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root), "--checkpoint.monitor", "null",
        "--early_stopping.strict", "false", "--model.channels", str(channels)])
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.rate


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8192 if cuda else 2048)
    p.add_argument("--warmup", type=int, default=40 if cuda else 5)
    p.add_argument("--steps", type=int, default=300 if cuda else 25)
    p.add_argument("--files", type=int, default=None, help="training files (default: enough for one epoch)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--channels", type=int, nargs="+", default=[48, 96, 192, 256],
                   help="LeakCNN widths; tiny ones expose per-step overhead on a CPU")
    args = p.parse_args()
    setup_logging()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    files = args.files or (args.warmup + args.steps + 2) * args.batch // 80 + 1
    with tempfile.TemporaryDirectory() as tmp:
        h5 = make_h5(Path(tmp), files)
        raw, lit = [], []
        for r in range(args.repeats):
            raw.append(raw_loop(h5["train"], args.batch, args.warmup, args.steps, device, cuda, args.channels))
            lit.append(lightning_fit(h5, args.batch, args.warmup, args.steps, Path(tmp) / f"run{r}",
                                     args.channels))
            log.info("repeat %d: raw %.0f seg/s, fit %.0f seg/s", r, raw[-1], lit[-1])
    name = torch.cuda.get_device_name() if cuda else "CPU"
    raw_m, lit_m = statistics.median(raw), statistics.median(lit)
    log.info("device %s, batch %d, %s, compile %s, %d timed steps after %d warm-up",
             name, args.batch, "bf16-mixed" if cuda else "32-true", cuda, args.steps, args.warmup)
    log.info("plain PyTorch loop : %12.0f segments/s", raw_m)
    log.info("leak_lightning fit : %12.0f segments/s", lit_m)
    log.info("ratio fit / plain  : %12.3f", lit_m / raw_m)


if __name__ == "__main__":
    main()
