"""`export`: a checkpoint's network as ONNX or TorchScript, optionally with the log-mel frontend, plus a JSON
sidecar with everything needed to turn its outputs into decisions (classes, leak index, threshold,
aggregation, feature config). Each export is loaded back and compared with PyTorch before it is kept.

    python -m leak_lightning export --ckpt_path runs/x/checkpoints/best.ckpt --format onnx --with_frontend true

The command line (its options, `--config`, old flag spellings) is `leak_lightning.cli.run_export`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import shutil
import stat
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..audio.features import FeatureConfig, LogMelFrontend
from ..checkpoint.contract import default_output
from ..runtime.fileio import (
    check_free_space,
    exchange,
    fsync_dir,
    make_private,
    name_max,
    pid_alive,
    private_folder,
    remove_stale_temporaries,
    write_atomic,
)
from ..runtime.rundir import FolderLock

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


class RecordingWithFrontend(nn.Module):
    """(W, num_samples) the clip-long windows of ONE recording → (recording logits (1, C): all its W·L·S frames
    pooled as one recording, segment logits (W, L, S, C))."""

    def __init__(self, net: nn.Module, features: FeatureConfig) -> None:
        super().__init__()
        self.frontend, self.net = LogMelFrontend(features), net

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seg = self.frontend(wave).half().float()  # the float16 the builder stores, as in WithFrontend
        w, n_long, n_short = seg.shape[:3]
        recording, frames = self.net(seg.reshape(1, w * n_long * n_short, *seg.shape[-2:]))
        return recording, frames.reshape(w, n_long, n_short, -1)


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


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: list[str],
                 dynamic: dict[int, str]) -> None:
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notices
    with warnings.catch_warnings():  # written into the private staging folder: no temporary name needed
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[input_name],
                          output_names=output_names,
                          dynamic_shapes=({axis: torch.export.Dim(name) for axis, name in dynamic.items()},),
                          verbose=False, external_data=False)


def _run_onnx(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    try:
        return [torch.from_numpy(out) for out in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    except ort.capi.onnxruntime_pybind11_state.InvalidArgument as err:  # an axis the export froze
        reason = " ".join(str(err).split())
        raise ValueError(f"{path.name}: the export refuses a parity input of shape {tuple(x.shape)} ({reason}); it "
                         "was not kept, and an earlier export is unchanged") from None


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # into memory first: torch's file writer aborts the whole process when the disk fills
        # (an error thrown in a C++ destructor); Python's write raises ENOSPC like any other
        torch.jit.save(torch.jit.trace(module, example), buffer)
    path.write_bytes(buffer.getvalue())


def _run_torchscript(path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _outputs(torch.jit.load(str(path))(x))


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


JOBS = ("network", "with_frontend")
SET_SUFFIXES = (".onnx", ".pt")


def set_files(stem: str, fmt: str, with_frontend: bool) -> dict[str, str]:
    """The file names of one export set (the sidecar names exactly these)."""
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    return {name: f"{stem}_{name}{suffix}" for name in JOBS[: 2 if with_frontend else 1]}


def _belongs_to(stem: str, name: str) -> bool:
    """Whether `name` is part of `stem`'s export set, of any format or age (a stale one included)."""
    return name == f"{stem}.json" or any(name == f"{stem}_{job}{sfx}" for job in JOBS for sfx in SET_SUFFIXES)


def _foreign_entries(folder: Path) -> list[str]:
    """What in an existing export folder is not an export set: exporting there would have to carry it along."""
    owned: set[str] = set()
    for sidecar in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(sidecar.read_text())
            if isinstance(data, dict) and str(data.get("producer", "")).startswith("leak_lightning"):
                owned |= {sidecar.name, *(f.get("file") for f in data.get("files", {}).values())}
    return sorted(e.name for e in folder.iterdir() if not e.name.startswith(".") and e.name not in owned
                  and not any(e.name.endswith(f"_{job}{sfx}") for job in JOBS for sfx in SET_SUFFIXES))


def preflight(folder: Path, names: list[str], need_bytes: int) -> None:
    """Everything that can be known before the slow export: one line naming the problem and the fix."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} is a file, not a folder; give a folder for the exported files")
    limit = name_max(folder if folder.is_dir() else folder.parent)
    for name in [folder.name, *names]:
        if len(os.fsencode(name)) > limit:
            raise ValueError(f"--output {folder}: the name {name[:40]}… is {len(os.fsencode(name))} bytes, longer "
                             f"than this file system takes ({limit}); use a shorter --output or checkpoint name")
    if folder.is_dir() and (foreign := _foreign_entries(folder)):
        raise ValueError(f"--output {folder} holds files that are not exports ({', '.join(foreign[:3])}"
                         f"{', …' if len(foreign) > 3 else ''}); export into a folder of its own")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with private_folder(folder):  # a random name: nothing someone planted beside it is touched
            pass
    except OSError as err:
        raise ValueError(f"--output {folder}: cannot write there ({err.strerror or err}); choose another "
                         "--output") from None
    check_free_space(folder, need_bytes, "--output")


@contextlib.contextmanager
def staged_set(folder: Path, stem: str) -> Iterator[Path]:
    """Yield a private staging folder to write one export set into; on success it replaces the set in
    `folder` in one atomic step, carrying the folder's other sets along. After a kill at any point
    `folder` holds the complete old contents or the complete new ones; the staging folder is removed."""
    if not folder.exists() and (old := _orphan(folder)) is not None:
        os.rename(old, folder)  # a fallback commit killed between its two renames: put the old folder back
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent)
    with FolderLock(folder.parent, "--output", name=f".{folder.name}.lock"):
        # private (mkdtemp: no one can plant a link at its name), then opened to what the umask allows, as a
        # folder made by mkdir would be, since it becomes the export folder itself
        stage, _ = make_private(folder)
        os.chmod(stage, 0o777 & ~_umask())
        try:
            yield stage
            _commit(stage, folder, stem)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def _orphan(folder: Path) -> Path | None:
    for old in folder.parent.glob(f".{folder.name}.old-*"):
        pid = old.name.rsplit("-", 1)[1]
        st = os.lstat(old)  # only our own folder: another user's, planted there, never becomes the export
        if pid.isdigit() and not pid_alive(int(pid)) and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            return old
    return None


def _commit(stage: Path, folder: Path, stem: str) -> None:
    if not folder.exists():
        os.rename(stage, folder)
    else:
        for entry in folder.iterdir():  # the other checkpoints' sets stay (hard links: no copy, same bytes)
            if entry.name.startswith(".") or _belongs_to(stem, entry.name):
                continue
            try:
                os.link(entry, stage / entry.name)
            except OSError:
                shutil.copy2(entry, stage / entry.name)
        fsync_dir(stage)
        if not exchange(stage, folder):  # no atomic swap here: two renames, undone at the next export if cut
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.rename(folder, old)
            os.rename(stage, folder)
            shutil.rmtree(old, ignore_errors=True)
    fsync_dir(folder.parent)


def _write_failed(err: Exception, folder: Path) -> ValueError:
    reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
    return ValueError(f"--output {folder}: {reason} while writing the export; nothing was replaced (an earlier "
                      "export there is intact); free some space or choose another --output")


def export(ckpt_path: str | Path, fmt: str = "onnx", with_frontend: bool = False,
           output: str | Path | None = None) -> dict:
    """Write the export(s) and the sidecar as one set; return the sidecar (it names the files and their parity)."""
    from ..checkpoint.io import read_checkpoint
    from ..training.module import LeakClassifier

    ckpt_path = Path(ckpt_path)
    folder = Path(output) if output else default_output(ckpt_path, "export")
    names = set_files(ckpt_path.stem, fmt, with_frontend)
    if folder.exists() and not folder.is_dir():  # before reading the checkpoint: the cheapest check first
        preflight(folder, [], 0)
    ckpt, contract = read_checkpoint(ckpt_path)
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError:
            raise ValueError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'leak_lightning[export]'"
                             ", or use --format torchscript") from None
    model = LeakClassifier.for_inference(ckpt, torch.device("cpu"))
    weights = sum(p.numel() * p.element_size() for p in model.net.parameters())
    preflight(folder, [*names.values(), f"{ckpt_path.stem}.json"], int(len(names) * weights * 1.5) + 2**20)
    with staged_set(folder, ckpt_path.stem) as stage:
        try:
            files = _export_files(model, fmt, stage, names)
        except (OSError, RuntimeError) as err:
            if isinstance(err, OSError) or shutil.disk_usage(stage).free < 2**26:
                raise _write_failed(err, folder) from err
            raise
        sidecar = _sidecar(ckpt_path, fmt, contract, model, files)
        try:
            write_atomic(stage / f"{ckpt_path.stem}.json", lambda f: json.dump(sidecar, f, indent=2))
        except OSError as err:
            raise _write_failed(err, folder) from err
    for name, entry in files.items():
        log.info("%s: %s, max |Δ| of logits against PyTorch %.2e (tolerance %.0e)", name, folder / entry["file"],
                 entry["max_abs_diff"], entry["tolerance"])
    log.info("sidecar: %s", folder / f"{ckpt_path.stem}.json", extra={"colour": "success"})
    return sidecar


@dataclass
class _Job:
    """One file of the set: the module, its parity inputs (the first one traced; they differ along every dynamic
    axis), its input and outputs with their documented shapes, and the input's dynamic axes."""

    module: nn.Module
    examples: list[torch.Tensor]
    input: tuple[str, str]
    outputs: list[tuple[str, str]]
    dynamic: dict[int, str]


def _jobs(model, with_frontend: bool) -> dict[str, _Job]:
    features = model.features
    waves = example_waves(features)
    with torch.no_grad():
        segments = LogMelFrontend(features)(waves).half().float()  # (3, L, S, n_mels, T)
    samples = f"float32 mono samples in [-1, 1] at {features.sample_rate} Hz"
    if model.whole_recordings:
        segments = segments.reshape(len(waves), -1, *segments.shape[-2:])  # (3, L·S, n_mels, T): three clips
        jobs = {"network": _Job(
            model.net, [segments, segments.reshape(1, -1, *segments.shape[-2:])],
            ("segments", "(R, F, n_mels, T) float32 log-mel dB values: the F segments of each of R recordings"),
            [("recording_logits", "(R, C) logits; sigmoid gives each recording's class probabilities"),
             ("frame_logits", "(R, F, C) logits per segment: where in the recording to listen")],
            {0: "recordings", 1: "frames"})}
        if with_frontend:
            jobs["with_frontend"] = _Job(
                RecordingWithFrontend(model.net, features).eval(), [waves, waves[:1]],
                ("waveform", f"(W, {features.num_samples}) {samples}: the clip-long windows of ONE recording"),
                [("recording_logits", "(1, C) logits of the recording: all its W·L·S segments pooled"),
                 ("segment_logits", "(W, L, S, C) logits per segment")], {0: "windows"})
        return jobs
    segments = segments.reshape(-1, features.n_mels, features.t_frames)
    jobs = {"network": _Job(model.net, [segments, segments[:7]],
                            ("segments", "(B, n_mels, T) float32 log-mel dB values"),
                            [("logits", "(B, C) logits; sigmoid gives class probabilities")], {0: "batch"})}
    if with_frontend:
        jobs["with_frontend"] = _Job(WithFrontend(model.net, features).eval(), [waves, waves[:1]],
                                     ("waveform", f"(B, {features.num_samples}) {samples}: clip-long windows"),
                                     [("segment_logits", "(B, L, S, C) logits per segment; a long window's leak "
                                                         "probability is the mean of sigmoid over S")], {0: "batch"})
    return jobs


def _export_files(model, fmt: str, stage: Path, names: dict[str, str]) -> dict:
    files = {}
    for name, job in _jobs(model, "with_frontend" in names).items():
        path = stage / names[name]
        with torch.no_grad():
            references = [_outputs(job.module(x)) for x in job.examples]
            if fmt == "onnx":
                _export_onnx(job.module, job.examples[0], path, job.input[0], [o[0] for o in job.outputs],
                             job.dynamic)
                loaded = [_run_onnx(path, x) for x in job.examples]
            else:
                _export_torchscript(job.module, job.examples[0], path)
                loaded = [_run_torchscript(path, x) for x in job.examples]
        delta = max(_max_delta(got, want) for got, want in zip(loaded, references))
        if not math.isfinite(delta) or delta > TOLERANCE[name]:
            raise ValueError(f"{names[name]}: the exported {name} differs from PyTorch by {delta:.2e} (tolerance "
                             f"{TOLERANCE[name]:.0e}); it was not kept, and an earlier export is unchanged")
        outputs = [{"name": n, "shape": doc} for n, doc in job.outputs]
        files[name] = {"file": path.name, "input": {"name": job.input[0], "shape": job.input[1]},
                       "output": outputs[0], "outputs": outputs, "max_abs_diff": delta,
                       "tolerance": TOLERANCE[name]}
    return files


def _max_delta(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Max |Δ| over all outputs; inf when the export gives other outputs or shapes (a frozen dynamic axis)."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return math.inf
    return max(float((g - w).abs().max()) for g, w in zip(got, want))


_WINDOWS_DECISION = ("file leak = (vote: fraction of long windows with leak probability >= threshold reaches "
                     "vote_fraction) | (mean: mean long-window leak probability >= threshold)")
_RECORDING_DECISION = "leak = sigmoid(recording_logits[leak_index]) >= threshold; calibration on that probability"


def _sidecar(ckpt_path: Path, fmt: str, contract, model, files: dict) -> dict:
    from ..checkpoint.record import describe_rule

    record = describe_rule(model.decision, model.whole_recordings)  # as the checkpoint and the reports give it
    score = ("sigmoid(recording_logits[leak_index])" if model.whole_recordings
             else "the mean long-window leak probability")
    return {
        "format_version": EXPORT_FORMAT, "producer": f"leak_lightning {__version__}", "checkpoint": str(ckpt_path),
        "format": fmt, "class_names": list(contract.class_names), "leak_class_name": contract.leak_class_name,
        "leak_index": list(contract.class_names).index(contract.leak_class_name),
        # format 1's keys stay for its readers; "rule" is the rule's own description, as in the checkpoint
        **{k: record[k] for k in ("threshold", "aggregation", "vote_fraction")},
        "rule": record["decision"], "decides": record["decides"],
        "calibration": {**record["calibration"],
                        "probability": f"sigmoid(a * logit(clamp(s, 1e-4, 1 - 1e-4)) + b), s = {score}"},
        "feature_config": asdict(model.features), "files": files,
        "decision": _RECORDING_DECISION if model.whole_recordings else _WINDOWS_DECISION,
    }
