"""`export`: a checkpoint's network as ONNX or TorchScript, optionally with the log-mel frontend, plus a JSON
sidecar with everything needed to turn its outputs into decisions (classes, leak index, threshold,
aggregation, feature config). Each export is loaded back and compared with PyTorch before it is kept.

    python -m leak_lightning export --ckpt_path runs/x/checkpoints/best.ckpt --format onnx --with-frontend
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .features import FeatureConfig, LogMelFrontend
from .fileio import replacing, write_atomic

log = logging.getLogger(__name__)
EXPORT_FORMAT = 1  # the sidecar's layout
# Max |Δ| of the logits against PyTorch. The network alone: float32 rounding of other conv kernels.
# With the frontend: features are rounded to float16 as the builder stores them (what the model was
# trained on), and an FFT that differs in the last float32 bit moves a value across a float16 step
# now and then (0.016 dB at 20 dB): a logit moves by a few thousandths, a probability by less.
TOLERANCE = {"network": 1e-4, "with_frontend": 2e-2}


class WithFrontend(nn.Module):
    """(B, num_samples) waveform windows at the feature sample rate → (B, L, S, C) segment logits."""

    def __init__(self, net: nn.Module, features: FeatureConfig) -> None:
        super().__init__()
        self.frontend, self.net = LogMelFrontend(features), net

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        seg = self.frontend(wave).half().float()  # the float16 the builder stores: what the model was trained on
        b, n_long, n_short = seg.shape[:3]
        return self.net(seg.reshape(b * n_long * n_short, *seg.shape[-2:])).reshape(b, n_long, n_short, -1)


def example_waves(features: FeatureConfig, count: int = 3, seed: int = 0) -> torch.Tensor:
    """Pipe-like test windows for the parity check: hiss through a resonance, a hum, a quiet pipe.

    Each carries a sensor noise floor (~16-bit quantisation level): float32 STFT bins far below it
    are rounding noise, whose dB differ between any two FFT implementations (the builder on a GPU and
    on a CPU too), and real recordings never reach there.
    """
    rng = np.random.default_rng(seed)
    n, sr = features.num_samples, features.sample_rate
    t = np.arange(n) / sr
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * np.exp(-((np.fft.rfftfreq(n, 1 / sr) - 600) / 150) ** 2))
    waves = [0.1 * noise / noise.std(), 0.2 * np.sin(2 * np.pi * 50 * t), 1e-3 * rng.standard_normal(n)]
    floor = 3e-5 * rng.standard_normal((len(waves), n))
    return torch.tensor(np.stack(waves[:count]) + floor[:count], dtype=torch.float32)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings(), replacing(path) as tmp:
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(tmp), dynamo=True, input_names=[input_name],
                          output_names=[output_name], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          verbose=False, external_data=False)


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), replacing(path) as tmp:
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example), str(tmp))


def _run_torchscript(path: Path, x: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))(x)


def export(ckpt_path: str | Path, fmt: str = "onnx", with_frontend: bool = False,
           output: str | Path | None = None) -> dict:
    """Write the export(s) and the sidecar; return the sidecar (it names the files and their parity)."""
    from .callbacks.checkpointing import read_checkpoint
    from .module import LeakClassifier

    ckpt_path = Path(ckpt_path)
    ckpt, contract = read_checkpoint(ckpt_path)
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'leak_lightning[export]'"
                             ", or use --format torchscript") from None
    model = LeakClassifier.for_inference(ckpt, torch.device("cpu"))
    features = model.features
    folder = Path(output) if output else ckpt_path.parent.parent / "export"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    waves = example_waves(features)
    with torch.no_grad():
        segments = LogMelFrontend(features)(waves).half().float().reshape(-1, features.n_mels, features.t_frames)
    jobs = {"network": (model.net, segments, "segments", "logits", "(B, n_mels, T) float32 log-mel dB values",
                        "(B, C) logits; sigmoid gives class probabilities")}
    if with_frontend:
        jobs["with_frontend"] = (WithFrontend(model.net, features).eval(), waves, "waveform", "segment_logits",
                                 f"(B, {features.num_samples}) float32 mono samples in [-1, 1] at "
                                 f"{features.sample_rate} Hz: clip-long windows",
                                 "(B, L, S, C) logits per segment; a long window's leak probability is the mean "
                                 "of sigmoid over S")
    files = {}
    for name, (module, example, in_name, out_name, in_doc, out_doc) in jobs.items():
        path = folder / f"{ckpt_path.stem}_{name}{suffix}"
        with torch.no_grad():
            reference = module(example)
            if fmt == "onnx":
                _export_onnx(module, example, path, in_name, out_name)
                loaded = _run_onnx(path, example)
            else:
                _export_torchscript(module, example, path)
                loaded = _run_torchscript(path, example)
        delta = float((loaded - reference).abs().max())
        if not math.isfinite(delta) or delta > TOLERANCE[name]:
            path.unlink(missing_ok=True)
            raise ValueError(f"{path}: the exported {name} differs from PyTorch by {delta:.2e} (tolerance "
                             f"{TOLERANCE[name]:.0e}); it was not kept")
        log.info("%s: %s, max |Δ| of logits against PyTorch %.2e (tolerance %.0e)", name, path, delta,
                 TOLERANCE[name])
        files[name] = {"file": path.name, "input": {"name": in_name, "shape": in_doc},
                       "output": {"name": out_name, "shape": out_doc}, "max_abs_diff": delta,
                       "tolerance": TOLERANCE[name]}
    sidecar = {
        "format_version": EXPORT_FORMAT, "producer": f"leak_lightning {__version__}", "checkpoint": str(ckpt_path),
        "format": fmt, "class_names": list(contract.class_names), "leak_class_name": contract.leak_class_name,
        "leak_index": list(contract.class_names).index(contract.leak_class_name),
        "threshold": float(model.threshold), "aggregation": model.hparams.aggregation,
        "vote_fraction": model.hparams.vote_fraction,
        "calibration": {"method": "platt", "a": float(model.calibration[0]), "b": float(model.calibration[1]),
                        "probability": "sigmoid(a * logit(clamp(s, 1e-4, 1 - 1e-4)) + b), s = the mean "
                                       "long-window leak probability"},
        "feature_config": asdict(features), "files": files,
        "decision": "file leak = (vote: fraction of long windows with leak probability >= threshold reaches "
                    "vote_fraction) | (mean: mean long-window leak probability >= threshold)",
    }
    path = folder / f"{ckpt_path.stem}.json"
    write_atomic(path, lambda f: json.dump(sidecar, f, indent=2))
    log.info("sidecar: %s", path, extra={"colour": "success"})
    return sidecar


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + exit
        raise ValueError(f"{message}; see `python -m leak_lightning export --help`")


def run_export(argv: list[str]) -> int:
    from .cli import fail_line
    from .logs import setup_logging

    parser = _Parser(prog="python -m leak_lightning export",
                     description="Export a checkpoint as ONNX or TorchScript with a JSON sidecar.")
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to export")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--with-frontend", "--with_frontend", dest="with_frontend", action="store_true",
                        help="also export a model that takes waveform windows and includes the log-mel frontend")
    parser.add_argument("--output", default=None, help="folder for the files (default: <run dir>/export)")
    parser.add_argument("--log_level", default=None)
    try:
        args = parser.parse_args(argv)
        setup_logging(args.log_level)
        export(args.ckpt_path, args.format, args.with_frontend, args.output)
    except (ValueError, FileNotFoundError) as err:
        return fail_line(str(err))
    return 0
