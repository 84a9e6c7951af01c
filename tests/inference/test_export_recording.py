"""`export` of a recording-level network (RecordingNet): one recording of any length, or a batch of clip-long ones,
in and out with parity; with the frontend, all the windows of one recording pooled as one recording; a sidecar
that says the recording decides."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.files import data_args
from helpers.models import classifier

from leak_lightning.audio.features import FeatureConfig, LogMelFrontend
from leak_lightning.inference import export as export_module
from leak_lightning.inference.export import TOLERANCE, _export_files, _sidecar, set_files
from leak_lightning.models import RecordingNet
from leak_lightning.training.module import LeakClassifier

NAMES = ["A", "LEAK", "C"]
FEATURES = FeatureConfig()


@pytest.fixture(scope="module")
def model() -> LeakClassifier:
    torch.manual_seed(0)
    net = RecordingNet(len(NAMES), FEATURES.n_mels, 1, channels=(8, 16), embed=8, hidden=16)
    net.norm.running_var.fill_(100.0)  # the dB values' spread, as a trained encoder's statistics would have it
    return LeakClassifier(net, class_names=NAMES, feature_config=asdict(FEATURES)).eval()


def recording(clips: int, seed: int) -> torch.Tensor:
    """(clips, num_samples): `clips` clip-long windows of one recording, a quiet pipe, then from the second
    window on a pump's hum over loud hiss (the windows differ: pooling one of them is not pooling them all)."""
    rng = np.random.default_rng(seed)
    n = clips * FEATURES.num_samples
    t = np.arange(n) / FEATURES.sample_rate
    pump = t >= FEATURES.duration_sec
    hum = sum(np.sin(2 * np.pi * f * t) for f in (90, 270, 810))
    wave = np.where(pump, 0.3, 1e-3) * rng.standard_normal(n) + 0.2 * hum * pump
    return torch.tensor(wave, dtype=torch.float32).reshape(clips, -1)


def segments(waves: torch.Tensor) -> torch.Tensor:
    """(W, num_samples) → (1, W·L·S, n_mels, T): the recording's segments as the builder stores them."""
    with torch.no_grad():
        seg = LogMelFrontend(FEATURES)(waves).half().float()
    return seg.reshape(1, -1, *seg.shape[-2:])


def run(fmt: str, path: Path, x: torch.Tensor) -> list[torch.Tensor]:
    """The exported file run as a user runs it: its outputs, in order."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.from_numpy(o) for o in session.run(None, {session.get_inputs()[0].name: x.numpy()})]
    with torch.no_grad():
        return list(torch.jit.load(str(path))(x))


def onnx_names(path: Path) -> tuple[list[str], list[str]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()]


@pytest.fixture(scope="module", params=["torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def exported(request, model, tmp_path_factory) -> tuple[str, Path, dict]:
    fmt = request.param
    stage = tmp_path_factory.mktemp(fmt)
    files = _export_files(model, fmt, stage, set_files("rec", fmt, with_frontend=True))
    return fmt, stage, files


def test_the_network_takes_a_recording_of_any_length(model, exported):
    fmt, stage, files = exported
    assert files["network"]["input"]["name"] == "segments"
    assert [o["name"] for o in files["network"]["outputs"]] == ["recording_logits", "frame_logits"]
    if fmt == "onnx":
        assert onnx_names(stage / files["network"]["file"]) == (["segments"], ["recording_logits", "frame_logits"])
    one, three = segments(recording(1, seed=1)), segments(recording(3, seed=2))
    assert one.shape[1] == 80 and three.shape[1] == 240
    batch = torch.cat([one, segments(recording(1, seed=3))])  # (2, 80, ...): two clip-long recordings
    for x in (one, three, batch):
        got = run(fmt, stage / files["network"]["file"], x)
        with torch.no_grad():
            want = model.net(x)  # RecordingNet itself, not the export's wrapper
        assert [g.shape for g in got] == [(len(x), 3), (len(x), x.shape[1], 3)]
        assert all(float((g - w).abs().max()) <= TOLERANCE["network"] for g, w in zip(got, want)), x.shape


def test_with_the_frontend_all_windows_are_pooled_as_one_recording(model, exported):
    fmt, stage, files = exported
    assert [o["name"] for o in files["with_frontend"]["outputs"]] == ["recording_logits", "segment_logits"]
    path = stage / files["with_frontend"]["file"]
    if fmt == "onnx":
        assert onnx_names(path) == (["waveform"], ["recording_logits", "segment_logits"])
    waves = recording(3, seed=4)
    got = run(fmt, path, waves)
    with torch.no_grad():
        want, frames = model.net(segments(waves))  # every frame of the three windows, in one recording
        first_only = model.net(segments(waves[:1]))[0]
    assert got[0].shape == (1, 3) and got[1].shape == (3, FEATURES.num_long, FEATURES.num_short, 3)
    assert float((got[0] - want).abs().max()) <= TOLERANCE["with_frontend"]
    assert float((got[1] - frames.reshape(got[1].shape)).abs().max()) <= TOLERANCE["with_frontend"]
    # the three windows together are not the first one alone: a wrapper pooling per window would fail here
    assert float((first_only - want).abs().max()) > 5 * TOLERANCE["with_frontend"]
    # and what predict decides from (per-window sums merged in float64) is what the export gives
    model.prepare_predict()
    with torch.no_grad():
        predicted = model.recording_probabilities(model.score_windows(waves).pooled)
    assert float((torch.sigmoid(got[0][0]) - predicted).abs().max()) < 5e-3
    one = run(fmt, path, waves[:1])  # a recording of one clip
    assert float((one[0] - first_only).abs().max()) <= TOLERANCE["with_frontend"]


def test_a_trace_that_freezes_the_frame_count_is_refused(model, tmp_path, monkeypatch):
    from leak_lightning.models.recording import PooledFrames

    pooled_of = PooledFrames.of.__func__

    def frozen(cls, emb, tau):  # the frame count as a Python number, which a trace freezes to the example's
        sums = pooled_of(cls, emb, tau)
        sums.count = torch.full_like(sums.count, float(emb.shape[1]))
        return sums

    monkeypatch.setattr(PooledFrames, "of", classmethod(frozen))
    with pytest.raises(ValueError, match=r"rec_network\.pt: the exported network differs from PyTorch by .* "
                                         r"it was not kept"):
        _export_files(model, "torchscript", tmp_path, set_files("rec", "torchscript", with_frontend=False))


@pytest.mark.slow
def test_an_onnx_export_whose_frame_axis_is_fixed_is_refused(model, tmp_path, monkeypatch):
    export_onnx = export_module._export_onnx

    def fixed_frames(module, example, path, input_name, output_names, dynamic):
        export_onnx(module, example, path, input_name, output_names, {0: dynamic[0]})

    monkeypatch.setattr(export_module, "_export_onnx", fixed_frames)
    with pytest.raises(ValueError, match=r"rec_network\.onnx: the export refuses a parity input of shape "
                                         r"\(1, 240, 64, 1\) \(.*Got: 240 Expected: 80.*\); it was not kept"):
        _export_files(model, "onnx", tmp_path, set_files("rec", "onnx", with_frontend=False))


def test_the_sidecar_says_the_recording_decides(model):
    side = _sidecar(Path("rec.ckpt"), "onnx", model.contract(), model, {})
    assert side["decides"] == "recording"
    assert side["decision"] == ("leak = sigmoid(recording_logits[leak_index]) >= threshold; calibration on that "
                                "probability")
    assert side["rule"] == model.decision.describe() and side["rule"]["aggregation"] == "mean"
    assert (side["threshold"], side["aggregation"], side["vote_fraction"]) == (0.5, "mean", None)  # format 1 keys
    assert side["calibration"]["probability"].endswith("s = sigmoid(recording_logits[leak_index])")
    assert side["leak_index"] == 1
    json.dumps(side)  # plain JSON


def test_the_frame_models_sidecar_says_the_windows_decide():
    frame = classifier(NAMES).eval()
    side = _sidecar(Path("f.ckpt"), "onnx", frame.contract(), frame, {})
    assert side["decides"] == "windows" and side["rule"] == frame.decision.describe()
    assert side["decision"].startswith("file leak = (vote: fraction of long windows")
    assert side["aggregation"] == side["rule"]["aggregation"] == "vote"


@pytest.mark.slow
def test_export_of_a_fitted_recording_checkpoint_through_the_command(small_h5, run_cli, tmp_path):
    run_dir = tmp_path / "run"
    fit = run_cli("fit", "--config", "configs/demo.yaml", "--model.net", "leak_lightning.models.RecordingNet",
                  "--model.net.init_args.channels", "[8, 16]", "--model.net.init_args.embed", "8",
                  "--model.net.init_args.hidden", "16", *data_args(small_h5), "--trainer.default_root_dir", run_dir,
                  "--trainer.max_epochs", "1", "--data.batch_size", "512", "--console.log_file", "null")
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    out = tmp_path / "export"
    done = run_cli("export", "--ckpt_path", ckpt, "--format", "torchscript", "--with-frontend", "--output", out)
    assert done.returncode == 0, done.stderr[-3000:]
    side = json.loads((out / "best.json").read_text())
    assert side["decides"] == "recording" and side["rule"]["aggregation"] == "mean"
    assert sorted(p.name for p in out.iterdir()) == ["best.json", "best_network.pt", "best_with_frontend.pt"]
    model = LeakClassifier.load_from_checkpoint(ckpt, map_location="cpu", compile={"enabled": False}).eval()
    assert side["threshold"] == pytest.approx(float(model.decision.threshold))
    x = segments(recording(2, seed=5))  # 160 frames: a length the export never saw
    with torch.no_grad():
        want = model.net(x)
    got = run("torchscript", out / "best_network.pt", x)
    assert all(float((g - w).abs().max()) <= TOLERANCE["network"] for g, w in zip(got, want))
