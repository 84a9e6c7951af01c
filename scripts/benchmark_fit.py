"""Steady-state training throughput: the real `fit` path versus a plain PyTorch loop.

    python scripts/benchmark_fit.py                 # sizes picked for the device (CUDA or CPU)
    python scripts/benchmark_fit.py --batch 8192 --steps 300 --files 45000

Both sides use the same LeakCNN, batch size, precision (bf16-mixed on CUDA, fp32 on CPU),
torch.compile setting (on with CUDA, --compile-mode) and optimizer (AdamW, fused kernel per --fused) with a
cosine schedule; the plain loop gathers batches from a tensor already on the device. Warm-up
steps (and compilation) are excluded; the two are measured alternately, in turn going
first, and medians reported.

With --profile-steps N (default 20 on CUDA), N more steps of each side run under
torch.profiler and the GPU kernel time per step is printed beside the wall time per step:
a side whose wall time exceeds its GPU time is waiting on the host (Python, launches), a
side whose GPU time grew is doing extra device work.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L  # noqa: E402

from leak_lightning.audio.features import FeatureConfig  # noqa: E402
from leak_lightning.builder.writer import SplitWriter  # noqa: E402
from leak_lightning.models import LeakCNN  # noqa: E402
from leak_lightning.models.augment import Augmentation, SpectrumAugment  # noqa: E402
from leak_lightning.runtime.logs import setup_logging  # noqa: E402

log = logging.getLogger("leak_lightning.benchmark")
REPO = Path(__file__).resolve().parents[1]
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


def gpu_ms_per_step(prof: torch.profiler.profile, steps: int) -> float:
    """Kernel, copy and memset time on the device per step (one stream: the sum is the busy time).

    Counts what the profiler's own table totals as "Self CUDA time": the device-side events,
    not the CPU ops that launched them (those would count each kernel twice).
    """
    cuda = torch.autograd.DeviceType.CUDA
    total_us = sum(e.self_device_time_total for e in prof.key_averages()
                   if e.device_type == cuda and not e.is_user_annotation)
    return total_us / 1000 / max(steps, 1)


class BusyMeter:
    """torch.profiler over a few steps → device busy ms/step; if profiling fails, only this readout is lost."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.prof = device, None

    def start(self) -> None:
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        try:
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
        except Exception as err:  # noqa: BLE001 - the timing above stands without it
            log.warning("profiler did not start (%s): no GPU busy time", err)
            self.prof = None

    def stop(self, steps: int) -> float:
        if self.prof is None:
            return float("nan")
        try:
            _sync(self.device)
            self.prof.__exit__(None, None, None)
            return gpu_ms_per_step(self.prof, steps)
        except Exception as err:  # noqa: BLE001
            log.warning("profiler failed (%s): no GPU busy time", err)
            return float("nan")
        finally:
            self.prof = None


@dataclass
class Result:
    rate: float  # segments/s over the timed steps
    gpu_ms: float = float("nan")  # device busy time per step in the profiled steps


def raw_loop(h5: Path, batch: int, warmup: int, steps: int, device: torch.device, compile_: str | None,
             channels: list[int], fused: bool, profile_steps: int, augment: bool = False, layout: str = "2d") -> Result:
    """The reference: data on the device, index gather, (the same augmentation), autocast, AdamW + cosine."""
    from leak_lightning.data.h5 import load_segments, load_targets, read_info

    info = read_info(h5)
    seg = torch.from_numpy(load_segments(info)).to(device)
    tgt = torch.from_numpy(load_targets(info).astype(np.float32)).to(device)
    spf = info.segments_per_file
    net = LeakCNN(len(CLASSES), channels=tuple(channels), layout=layout).to(device).train()
    model = torch.compile(net, mode=compile_) if compile_ else net
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2, fused=fused or None)
    total = warmup + steps + profile_steps
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=1e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    cfg = info.features
    aug = SpectrumAugment(Augmentation() if augment else Augmentation.off(), cfg.n_mels, cfg.f_min,
                          cfg.sample_rate / 2, CLASSES.index("LEAK")).to(device).train()
    perm = torch.randperm(len(seg), device=device)
    per_epoch = len(seg) // batch
    result, t0, meter = Result(0.0), 0.0, BusyMeter(device)
    for step in range(total):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        if step == warmup + steps:
            _sync(device)
            result.rate = steps * batch / (time.perf_counter() - t0)
            meter.start()
        idx = perm[(step % per_epoch) * batch: (step % per_epoch + 1) * batch]
        x, y = aug(seg[idx], tgt[idx // spf])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _sync(device)
    if profile_steps:
        result.gpu_ms = meter.stop(profile_steps)
    else:
        result.rate = steps * batch / (time.perf_counter() - t0)
    return result


class StepTimer(L.Callback):
    """Times optimizer steps from `warmup` on for at least `steps`, profiles `profile_steps` more, then stops.

    Lightning calls these hooks once per batch, or once per block of batches (--steps-per-call):
    the counts are optimizer steps (global_step), measured from the first call past each mark.
    """

    def __init__(self, warmup: int, steps: int, profile_steps: int) -> None:
        self.warmup, self.steps, self.profile_steps = warmup, steps, profile_steps
        self.t0, self.start, self.result, self.meter = 0.0, None, Result(0.0), None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step >= self.warmup:
            _sync(pl_module.device)
            self.t0, self.start = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        done = trainer.global_step - (self.start if self.start is not None else trainer.global_step)
        if self.result.rate == 0.0 and self.start is not None and done >= self.steps:
            _sync(pl_module.device)
            self.result.rate = done * trainer.datamodule.batch_size / (time.perf_counter() - self.t0)
            if self.profile_steps:
                self.meter, self.profile_start = BusyMeter(pl_module.device), trainer.global_step
                self.meter.start()
            else:
                trainer.should_stop = True
        elif self.meter is not None and trainer.global_step - self.profile_start >= self.profile_steps:
            self.result.gpu_ms = self.meter.stop(trainer.global_step - self.profile_start)
            self.meter = None
            trainer.should_stop = True


AUGMENTATION_OFF = ["--model.augment.warp", "0", "--model.augment.gain_db", "0", "--model.augment.tilt_db", "0",
                    "--model.augment.eq_db", "0", "--model.augment.background_p", "0", "--model.augment.mixup_p", "0",
                    "--model.augment.freq_mask", "0"]


def lightning_fit(h5: dict[str, Path], batch: int, warmup: int, steps: int, root: Path,
                  compile_: str | None, channels: list[int], fused: bool, profile_steps: int,
                  augment: bool = False, steps_per_call: int = 1, layout: str = "2d") -> Result:
    """The real path: LeakCLI's parser, data module, module, callbacks and Trainer.fit."""
    from leak_lightning.cli.leak_cli import LeakCLI

    timer = StepTimer(warmup, steps, profile_steps)
    cli = LeakCLI(run=False, args=[
        "--data.train_h5", str(h5["train"]), "--data.val_h5", str(h5["val"]), "--data.batch_size", str(batch),
        "--trainer.max_epochs", "1000", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(root), "--checkpoint.monitor", "null",
        "--early_stopping.strict", "false", "--model.net.channels", str(channels),
        "--model.optimizer.fused", str(fused).lower(), "--model.compile.enabled", str(bool(compile_)).lower(),
        "--model.compile.mode", compile_ or "default", "--data.steps_per_call", str(steps_per_call),
        "--model.net.layout", layout,
        *([] if augment else AUGMENTATION_OFF)])
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.result


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8192 if cuda else 2048)
    p.add_argument("--warmup", type=int, default=40 if cuda else 5)
    p.add_argument("--steps", type=int, default=300 if cuda else 25)
    p.add_argument("--files", type=int, default=None, help="training files (default: enough for one epoch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--channels", type=int, nargs="+", default=[48, 96, 192, 256],
                   help="LeakCNN widths; tiny ones expose per-step overhead on a CPU")
    p.add_argument("--fused", choices=["auto", "on", "off"], default="auto",
                   help="AdamW's fused kernel on both sides (auto: on CUDA, as LeakClassifier does)")
    p.add_argument("--profile-steps", type=int, default=20 if cuda else 0,
                   help="steps per side run under torch.profiler after the timed ones (0: none)")
    p.add_argument("--compile-mode", default="default" if cuda else "off",
                   help="torch.compile mode on both sides (default, reduce-overhead, max-autotune), or off")
    p.add_argument("--augment", choices=["on", "off"], default="on",
                   help="the default training augmentation on both sides (configs have it on)")
    p.add_argument("--steps-per-call", type=int, default=1,
                   help="optimizer steps per Lightning step on the fit side (data.steps_per_call)")
    p.add_argument("--layout", choices=["2d", "1d"], default="2d", help="LeakCNN layout on both sides")
    p.add_argument("--user-fit", action="store_true",
                   help="instead: a user's fit (configs/default.yaml, bar, logger, validation, callbacks) against "
                        "the plain loop, with start-up and compile times")
    p.add_argument("--user-epochs", type=int, default=3, help="--user-fit: epochs (the first is not timed)")
    p.add_argument("--layout-cost", action="store_true",
                   help="instead: the plain loop with the 2d and the 1d layout, alternating (wall and GPU busy time)")
    p.add_argument("--augment-cost", action="store_true",
                   help="instead: the plain loop with and without augmentation, alternating: its share of a step")
    args = p.parse_args()
    sys.argv = sys.argv[:1]  # LeakCLI below gets its arguments explicitly, not this script's
    fused = {"on": True, "off": False, "auto": cuda}[args.fused]
    compile_ = None if args.compile_mode == "off" else args.compile_mode
    setup_logging()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    files = args.files or (args.warmup + args.steps + args.profile_steps + 2) * args.batch // 80 + 1
    with tempfile.TemporaryDirectory() as tmp:
        h5 = make_h5(Path(tmp), files)
        if args.augment_cost:
            augment_cost(h5["train"], args, device, compile_, fused)
            return
        if args.layout_cost:
            layout_cost(h5["train"], args, device, compile_, fused)
            return
        if args.user_fit:
            t0 = time.perf_counter()
            plain = raw_loop(h5["train"], args.batch, args.warmup, args.steps, device, compile_, args.channels,
                             fused, 0, args.augment == "on", args.layout)
            plain_s = time.perf_counter() - t0
            user = user_fit(h5, args, Path(tmp) / "user")
            log.info("plain loop (compile %s): %.0f segments/s (%.1f s with its compile)", compile_ or "off",
                     plain.rate, plain_s)
            log.info("user fit (configs/default.yaml, %d step(s) per call, layout %s): %.0f segments/s over epochs "
                     "2..%d; ratio user fit / plain %.3f", args.steps_per_call, args.layout, user["rate"],
                     args.user_epochs, user["rate"] / plain.rate)
            log.info("user fit: first training step %.1f s after LeakCLI started (parse, data load, set-up; "
                     "imports excluded); first epoch %.1f s, later epochs %.1f s (training only)", user["setup_s"],
                     user["first_epoch_s"], user["later_epoch_s"])
            return
        raw, lit = [], []
        common = (args.batch, args.warmup, args.steps)
        augment = args.augment == "on"
        for r in range(args.repeats):
            for side in ("raw", "fit") if r % 2 == 0 else ("fit", "raw"):  # neither always goes first
                if side == "raw":
                    raw.append(raw_loop(h5["train"], *common, device, compile_, args.channels, fused,
                                        args.profile_steps, augment, args.layout))
                else:
                    lit.append(lightning_fit(h5, *common, Path(tmp) / f"run{r}", compile_, args.channels,
                                             fused, args.profile_steps, augment, args.steps_per_call, args.layout))
            log.info("repeat %d: raw %.0f seg/s, fit %.0f seg/s, ratio %.3f", r, raw[-1].rate, lit[-1].rate,
                     lit[-1].rate / raw[-1].rate)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    log.info("device %s, batch %d, %s, compile %s, fused AdamW %s, augmentation %s, %d step(s) per call, %d timed "
             "steps after %d warm-up, %d repeats", name, args.batch, "bf16-mixed" if cuda else "32-true",
             compile_ or "off", fused, args.augment, args.steps_per_call, args.steps, args.warmup, args.repeats)
    for label, runs in (("plain PyTorch loop", raw), ("leak_lightning fit", lit)):
        rate = statistics.median(r.rate for r in runs)
        line = f"{label} : {rate:12.0f} segments/s, {args.batch / rate * 1000:7.3f} ms/step"
        if args.profile_steps and cuda:
            line += f", GPU busy {statistics.median(r.gpu_ms for r in runs):7.3f} ms/step"
        log.info(line)
    ratios = [b.rate / a.rate for a, b in zip(raw, lit)]
    log.info("ratio fit / plain  : %12.3f (median of medians; per repeat %s)",
             statistics.median(r.rate for r in lit) / statistics.median(r.rate for r in raw),
             ", ".join(f"{x:.3f}" for x in ratios))


def augment_cost(h5: Path, args, device: torch.device, compile_: str | None, fused: bool) -> None:
    """The plain loop with and without the default augmentation, alternating: what it adds to a step."""
    runs: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.repeats):
        for augment in (True, False) if r % 2 == 0 else (False, True):
            runs[augment].append(raw_loop(h5, args.batch, args.warmup, args.steps, device, compile_, args.channels,
                                          fused, 0, augment, args.layout).rate)
        log.info("repeat %d: with augmentation %.0f seg/s, without %.0f seg/s", r, runs[True][-1], runs[False][-1])
    with_, without = statistics.median(runs[True]), statistics.median(runs[False])
    where = "CUDA" if device.type == "cuda" else "CPU"
    log.info("augmentation costs %.1f%% of a training step (batch %d, %s; median of %d alternating repeats: "
             "%.3f vs %.3f ms/step)", (without / with_ - 1) * 100, args.batch, where, args.repeats,
             args.batch / with_ * 1000, args.batch / without * 1000)


class EpochTimer(L.Callback):
    """Training time and segments per epoch without validation, and when the first step started."""

    def __init__(self) -> None:
        self.epochs: list[tuple[float, int]] = []  # (training seconds, segments)
        self.first_step: float | None = None
        self._t = self._val = 0.0
        self._seg = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t, self._val, self._seg = time.perf_counter(), 0.0, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.first_step is None:
            self.first_step = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        x = batch[0]
        self._seg += len(x) if torch.is_tensor(x) else sum(len(b) for b in x)

    # only the validation loop's own batches are left out: training work still queued on the device is
    # finished first, and checkpoint saves (at validation end and epoch end) count as training time
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self._v0 = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self._val += time.perf_counter() - self._v0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        self.epochs.append((time.perf_counter() - self._t - self._val, self._seg))


def user_fit(h5: dict[str, Path], args, root: Path) -> dict:
    """A user's real fit: configs/default.yaml (progress bar, TensorBoard, validation every epoch, every
    callback), one epoch to warm up (compile), the next ones timed."""
    from leak_lightning.cli.leak_cli import LeakCLI

    timer = EpochTimer()
    t0 = time.perf_counter()
    cli = LeakCLI(run=False, args=[
        "--config", str(REPO / "configs/default.yaml"), "--data.train_h5", str(h5["train"]), "--data.val_h5",
        str(h5["val"]), "--data.test_h5", "null", "--trainer.default_root_dir", str(root),
        "--trainer.max_epochs", str(args.user_epochs), "--early_stopping.enabled", "false",
        "--data.steps_per_call", str(args.steps_per_call), "--model.net.layout", args.layout,
        "--data.batch_size", str(args.batch), "--model.net.channels", str(args.channels),
        "--model.compile.mode", args.compile_mode if args.compile_mode != "off" else "default",
        "--model.compile.enabled", "false" if args.compile_mode == "off" else "null"])
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    steady = timer.epochs[1:] or timer.epochs
    return {"rate": sum(n for _, n in steady) / sum(t for t, _ in steady), "setup_s": timer.first_step - t0,
            "first_epoch_s": timer.epochs[0][0], "later_epoch_s": statistics.median(t for t, _ in steady)}


def layout_cost(h5: Path, args, device: torch.device, compile_: str | None, fused: bool) -> None:
    """The plain loop with LeakCNN's 2d and 1d layouts (T = 1), alternating: which one the device runs faster."""
    runs: dict[str, list[Result]] = {"2d": [], "1d": []}
    for r in range(args.repeats):
        for layout in ("2d", "1d") if r % 2 == 0 else ("1d", "2d"):
            runs[layout].append(raw_loop(h5, args.batch, args.warmup, args.steps, device, compile_, args.channels,
                                         fused, args.profile_steps, args.augment == "on", layout))
        log.info("repeat %d: 2d %.0f seg/s, 1d %.0f seg/s", r, runs["2d"][-1].rate, runs["1d"][-1].rate)
    for layout, results in runs.items():
        rate = statistics.median(x.rate for x in results)
        busy = statistics.median(x.gpu_ms for x in results) if args.profile_steps else float("nan")
        log.info("layout %s: %.0f segments/s, %.3f ms/step, GPU busy %.3f ms/step", layout, rate,
                 args.batch / rate * 1000, busy)


if __name__ == "__main__":
    main()
