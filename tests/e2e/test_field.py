"""From checkpoint to field use: predict from the checkpoint alone, the Python API, export with parity,
report plots, loggers and a quiet console."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.files import REPO, cli_exit, data_args, one_error, tone, write_wav
from helpers.models import classifier

from leak_lightning import LeakDetector
from leak_lightning.cli import main
from leak_lightning.data import schema


@pytest.fixture(scope="module")
def tested(small_h5, trained_run, tmp_path_factory):
    """`test` of the session's model (reports, per-file CSV and plots in a copy of its run directory)."""
    run = tmp_path_factory.mktemp("tested")
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    main(["test", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(run), "--console.log_file", "null"])
    return run


def rows_of(path) -> dict[str, dict]:
    return {r["path"].split("/")[-1]: r for r in csv.DictReader(open(path, encoding="utf-8"))}


def test_predict_from_the_checkpoint_alone_matches_test(small_h5, tested, tmp_path):
    wavs = small_h5["train"].parent.parent / "wav" / "TESTING"
    out = tmp_path / "p.csv"
    r = subprocess.run([sys.executable, "-m", "leak_lightning", "predict", "--ckpt_path",
                        str(tested / "checkpoints/best.ckpt"), "--data.predict_path", str(wavs), "--output", str(out)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"NO_COLOR": "1", "PATH": ""})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # no ./runs where the user stands: the checkpoint's run dir
    rows, tested_rows = rows_of(out), rows_of(tested / "test_predictions.csv")
    assert set(rows) == set(tested_rows) and len(rows) == 10
    for name, row in tested_rows.items():
        got = rows[name]
        assert float(got["leak_score"]) == pytest.approx(float(row["leak_score"]), abs=1e-4), name
        assert got["leak_decision"] == row["leak_decision"] and got["windows"] == "1"
        scores = {k[len("score_"):]: float(v) for k, v in got.items() if k.startswith("score_")}
        assert got["top_class"] == max(scores, key=scores.get)
        assert float(got["window_leak_scores"]) == pytest.approx(float(got["leak_score"]), abs=1e-4)
    for noise in ("Seed set", "💡 Tip", "Loading `train_dataloader`", "isinstance(treespec", "GPU available",
                  "callbacks used to create the checkpoint"):
        assert noise not in r.stderr, noise


def test_the_python_api_gives_predicts_answers(tested, tmp_path):
    x = tone(500, 25, 4096, seed=4)
    x[40960:81920] = 0  # a sensor drop-out in the second window
    path = write_wav(tmp_path / "rec.wav", x)
    det = LeakDetector.from_checkpoint(tested / "checkpoints/best.ckpt", device="cpu")
    result = det.predict(path)
    assert result.status == "flagged" and result.quality == ("partly_silent",) and result.windows == 3
    assert math.isnan(result.window_scores[1]) and not math.isnan(result.window_scores[0])
    assert result.leak_score == pytest.approx(np.mean([result.window_scores[0], result.window_scores[2]]),
                                              abs=1e-6)  # silent windows take no part
    a, b = det.model.decision.calibration.tolist()
    clamped = min(max(result.leak_score, 1e-4), 1 - 1e-4)
    z = math.log(clamped) - math.log1p(-clamped)
    assert result.leak_probability == pytest.approx(1 / (1 + math.exp(-(a * z + b))), abs=1e-6)  # calibrated
    assert set(result.class_scores) == set(det.class_names) and isinstance(result.leak, bool)
    samples, sr = sf.read(path, dtype="float32")
    same = det.predict_array(samples, sr)
    assert same.leak == result.leak and same.window_scores[0] == pytest.approx(result.window_scores[0], abs=1e-6)
    stereo = det.predict_array(np.stack([samples, samples], 1)[:40960], 4096)
    assert stereo.status == "ok" and stereo.windows == 1
    assert stereo.window_scores[0] == pytest.approx(result.window_scores[0], abs=1e-6)  # the downmix of a pair
    at_44k = det.predict_array(tone(500, 10, 44100, seed=4), 44100)  # resampled to the model's 4096 Hz
    assert at_44k.status == "ok" and at_44k.windows == 1
    main(["predict", "--ckpt_path", str(tested / "checkpoints/best.ckpt"), "--data.predict_path", str(path),
          "--output", str(tmp_path / "cli.csv"), "--console.log_file", "null"])
    row = rows_of(tmp_path / "cli.csv")["rec.wav"]  # the CLI and the API agree
    assert float(row["leak_score"]) == pytest.approx(result.leak_score, abs=1e-6)
    assert float(row["leak_probability"]) == pytest.approx(result.leak_probability, abs=1e-6)
    assert row["quality"] == "partly_silent" and row["window_leak_scores"].split(";")[1] == ""
    assert det.predict(tmp_path / "missing.wav").status.startswith("skipped: cannot read file")
    assert det.predict_array(np.zeros(40960), 4096).status == "silent"


@pytest.mark.parametrize("content, fragment", [
    (b"garbage", "not a usable checkpoint"),
    (None, "written by a newer leak_lightning (checkpoint format 7"),
])
def test_bad_checkpoints_are_one_line(tested, tmp_path, capsys, content, fragment):
    path = tmp_path / "x.ckpt"
    if content is None:
        ckpt = torch.load(tested / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
        ckpt["leak_lightning"]["format_version"] = 7
        torch.save(ckpt, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        LeakDetector.from_checkpoint(path)
    code, err = cli_exit(capsys, "predict", "--ckpt_path", path, "--data.predict_path", tmp_path)
    assert code == 2 and fragment in err and "Traceback" not in err


def test_predict_on_an_empty_folder_or_one_without_audio(tested, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no audio here")
    for folder in ("empty", "notes"):
        code, err = cli_exit(capsys, "predict", "--ckpt_path", tested / "checkpoints/best.ckpt",
                             "--data.predict_path", tmp_path / folder)
        assert code == 2 and f"--data.predict_path {tmp_path / folder}: no audio files" in err, err
    code, err = cli_exit(capsys, "predict", "--ckpt_path", tested / "checkpoints/best.ckpt",
                         "--data.predict_path", tmp_path / "gone")
    line = one_error(code, err)  # a missing input, not a stopped run: no checkpoint to resume from is offered
    assert line.endswith(f"--data.predict_path {tmp_path / 'gone'}: no such file or folder"), line


def real_segments(small_h5, n: int = 160) -> torch.Tensor:
    with h5py.File(small_h5["test"]) as f:
        seg = f[schema.SEGMENTS][:2]
    return torch.from_numpy(seg.astype(np.float32)).reshape(-1, *seg.shape[-2:])[:n]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_with_parity_and_a_sidecar(small_h5, tested, tmp_path, fmt):
    from leak_lightning.inference.export import TOLERANCE, export
    from leak_lightning.training.module import LeakClassifier

    sidecar = export(tested / "checkpoints/best.ckpt", fmt, with_frontend=True, output=tmp_path)
    assert json.loads((tmp_path / "best.json").read_text()) == sidecar  # round-trips
    model = LeakClassifier.load_from_checkpoint(tested / "checkpoints/best.ckpt", map_location="cpu",
                                                compile={"enabled": False}).eval()
    assert sidecar["class_names"] == model.class_names and sidecar["leak_index"] == model.leak_index
    assert sidecar["threshold"] == pytest.approx(float(model.decision.threshold))
    assert sidecar["feature_config"]["n_mels"] == 64 and sidecar["format_version"] == 1
    segments = real_segments(small_h5)  # real features from the test split, as stored
    wave = torch.from_numpy(sf.read(sorted((small_h5["train"].parent.parent / "wav" / "TESTING").rglob("*.wav"))[0],
                                    dtype="float32")[0][None])
    with torch.no_grad():
        want_net = model.net(segments)
        model.prepare_predict()
        want_frontend = model.score_windows(wave)[1]
    network, frontend = (tmp_path / sidecar["files"][k]["file"] for k in ("network", "with_frontend"))
    if fmt == "onnx":
        import onnxruntime as ort

        def run(path, x):
            s = ort.InferenceSession(str(path))
            return torch.from_numpy(s.run(None, {s.get_inputs()[0].name: x.numpy()})[0])
    else:
        def run(path, x):
            return torch.jit.load(str(path))(x)
    got_net = run(network, segments)
    got_frontend = torch.sigmoid(run(frontend, wave)).mean((1, 2))  # (1, C) class probabilities of the window
    delta_net = float((got_net - want_net).abs().max())
    delta_frontend = float((got_frontend - want_frontend).abs().max())
    print(f"{fmt}: network max |Δ| {delta_net:.2e} (tolerance {TOLERANCE['network']:.0e}); with frontend, "
          f"class probabilities max |Δ| {delta_frontend:.2e}")
    assert delta_net <= TOLERANCE["network"]
    assert delta_frontend <= 1e-3  # probabilities: the float16 steps move a logit by < 2e-2


def test_reports_have_plots(tested):
    for name in ("pr_roc", "f1_threshold", "confusion", "scores"):
        png = tested / f"test_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, name


def test_the_report_names_its_set_and_a_new_report_drops_files_it_does_not_name(small_h5, tested, tmp_path):
    import hashlib

    run = tmp_path / "run"
    shutil.copytree(tested, run)
    report = json.loads((run / "test_report.json").read_text())
    assert sorted(report["outputs"]) == ["test_confusion.png", "test_f1_threshold.png", "test_pr_roc.png",
                                         "test_predictions.csv", "test_scores.png"]
    for name, digest in report["outputs"].items():
        assert hashlib.sha256((run / name).read_bytes()).hexdigest() == digest, name
    for row in csv.DictReader(open(run / "test_predictions.csv", encoding="utf-8")):  # the decision and its basis
        assert row["leak_decision"] == str(int(float(row["decision_score"]) >= float(row["decision_cutoff"])))
    main(["test", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(run), "--console.log_file", "null", "--reports.plots", "false"])
    report = json.loads((run / "test_report.json").read_text())
    assert list(report["outputs"]) == ["test_predictions.csv"]
    assert sorted(p.name for p in run.glob("test_*")) == ["test_predictions.csv", "test_report.json"]


@pytest.mark.slow
def test_tensorboard_by_default_with_step_loss_lr_and_hp_metric(small_h5, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(tmp_path), "--trainer.max_epochs", "2", "--data.batch_size", "512", "--trainer.log_every_n_steps", "4",
          "--console.log_file", "null"])
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("train/loss_step")] == [4, 8, 12, 16, 20]  # 11 steps per epoch
    assert len(events.Scalars("lr")) == 5
    best = torch.load(tmp_path / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    best_score = max(float(v) for k, v in best["callbacks"].items() if k.startswith("LeakCheckpoint")
                     for v in [v["best_model_score"]])
    assert events.Scalars("hp_metric")[-1].value == pytest.approx(best_score)
    assert "val/file_leak_f1" in scalars


@pytest.mark.slow
def test_other_loggers_default_to_the_run_directory(small_h5, tmp_path):
    main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(tmp_path), "--trainer.max_steps", "3", "--trainer.logger", "CSVLogger",
          "--trainer.log_every_n_steps", "1", "--console.log_file", "null"])
    metrics = list(csv.DictReader(open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv")))
    assert [r["step"] for r in metrics if r.get("train/loss_step")] == ["1", "2", "3"]


def test_help_version_and_the_bf16_warning(small_h5, tmp_path, capsys):
    r = subprocess.run([sys.executable, "-m", "leak_lightning", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for name in ("build", "fit", "validate", "test", "predict", "export"):
        assert f"\n  {name} " in r.stdout
    assert "python -m leak_lightning SUBCOMMAND" in r.stdout
    r = subprocess.run([sys.executable, "-m", "leak_lightning", "--version"], capture_output=True, text=True)
    from leak_lightning import __version__

    assert r.stdout.strip() == f"leak_lightning {__version__}"
    main(["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
          str(tmp_path), "--trainer.fast_dev_run", "true", "--trainer.precision", "bf16-mixed", "--trainer.accelerator",
          "cpu", "--data.batch_size", "256"])
    assert "--trainer.precision bf16-mixed on a CPU runs about 20x slower" in capsys.readouterr().err


def test_arrays_as_people_hold_them(tested):
    det = LeakDetector.from_checkpoint(tested / "checkpoints/best.ckpt", device="cpu")
    x = tone(500, 10, 4096, seed=4)
    want = det.predict_array(x, 4096)
    pcm = np.round(x * 32767).astype(np.int16)  # what a WAV file holds, as read with dtype int16
    as_int = det.predict_array(pcm, 4096)
    assert as_int.status == "ok" and as_int.quality == ()  # not out_of_range: scaled by the type's range
    assert as_int.leak_score == pytest.approx(want.leak_score, abs=1e-3) and as_int.leak == want.leak
    pair = np.stack([x, x])  # (2, N): channels first
    assert det.predict_array(pair, 4096).leak_score == pytest.approx(want.leak_score, abs=1e-6)
    assert det.predict_array(pair.T, 4096).leak_score == pytest.approx(want.leak_score, abs=1e-6)
    with pytest.raises(ValueError, match=r"read either as 40 frames of 40 channels or as 40 frames of 40 "
                                         r"channels; pass channel_axis"):
        det.predict_array(np.ones((40, 40), dtype=np.float32), 4096)
    taken = det.predict_array(np.tile(x[:, None], (1, 20)), 4096, channel_axis=1)  # 20 channels, said so
    assert taken.leak_score == pytest.approx(want.leak_score, abs=1e-5)
    with pytest.raises(ValueError, match="dtype"):
        det.predict_array(np.array(["a", "b"]), 4096)


def test_no_decision_for_what_the_model_cannot_hear(tested, tmp_path):
    det = LeakDetector.from_checkpoint(tested / "checkpoints/best.ckpt", device="cpu")
    for rate in (1000, 2000, 3686):  # the features span 0..2048 Hz: 90 % of it needs 3,687 Hz or more
        r = det.predict(write_wav(tmp_path / f"r{rate}.wav", tone(300, 10, rate), sr=rate))
        assert r.status.startswith(f"skipped: band_limited: recorded at {rate} Hz") and r.leak is None, r.status
        assert r.quality == ("band_limited",) and r.leak_score is None
    edge = det.predict(write_wav(tmp_path / "r3687.wav", tone(300, 10, 3687), sr=3687))
    assert edge.status == "ok" and isinstance(edge.leak, bool)
    huge = det.predict(write_wav(tmp_path / "huge.wav", tone(500, 10, 4096) * 3e37, subtype="FLOAT"))
    assert huge.status.startswith("skipped: out_of_range: float samples reach ") and huge.leak is None, huge.status
    assert "e+37, far beyond ±1 and beyond the frontend's range" in huge.status  # its own reason, said at decode
    assert huge.leak_probability is None and "out_of_range" in huge.quality
    main(["predict", "--ckpt_path", str(tested / "checkpoints/best.ckpt"), "--data.predict_path", str(tmp_path),
          "--output", str(tmp_path / "p.csv"), "--console.log_file", "null"])
    rows = rows_of(tmp_path / "p.csv")
    assert rows["huge.wav"]["leak_decision"] == "" and rows["r1000.wav"]["leak_decision"] == ""
    assert rows["r1000.wav"]["quality"] == "band_limited"
    scored = [r for r in rows.values() if r["leak_decision"]]
    assert scored
    for row in scored:  # the row shows the number the decision was made from and its cutoff
        assert row["leak_decision"] == str(int(float(row["decision_score"]) >= float(row["decision_cutoff"])))
        rule = det.model.decision
        want = rule.vote_fraction if rule.aggregation == "vote" else float(rule.threshold)
        assert float(row["decision_cutoff"]) == pytest.approx(want)


@pytest.mark.parametrize("aggregation, threshold, want", [("vote", 0.5, (0.4, 0.5, False)),
                                                          ("vote", 0.1, (1.0, 0.5, True)),
                                                          ("mean", 0.4, (0.42, 0.4, True)),
                                                          ("mean", 0.5, (0.42, 0.5, False))])
def test_the_decision_and_its_basis_by_hand(aggregation, threshold, want):
    model = classifier(["LEAK", "NORMAL"], decision={"aggregation": aggregation})
    model.decision.threshold.fill_(threshold)
    windows = torch.tensor([0.9, 0.9, 0.1, 0.1, 0.1])  # mean 0.42; 2 of 5 windows at or above 0.5
    score, _, leak, basis, cutoff = model.decide_recording(windows)
    assert score == pytest.approx(0.42) and (basis, cutoff) == pytest.approx(want[:2]) and leak is want[2]
    at_cutoff = model.decide_recording(windows[:4])  # 2 of 4 windows at or above 0.5
    if aggregation == "vote" and threshold == 0.5:
        assert at_cutoff[3] == 0.5 and at_cutoff[2] is True  # reaching the cutoff is a leak
