"""The recording-level model: pooling that streams, augmentation drawn per recording, per-window times, and every
command on a RecordingNet checkpoint."""

from __future__ import annotations

import csv
from dataclasses import asdict

import numpy as np
import pytest
import torch
from helpers.files import REPO, data_args, tone, write_wav
from torchmetrics.functional.classification import binary_auroc

from leak_lightning.audio.features import FeatureConfig
from leak_lightning.models import RecordingNet
from leak_lightning.models.augment import Augmentation, SpectrumAugment
from leak_lightning.models.recording import PooledFrames


def recording_model(names=("A", "LEAK", "C"), seed: int = 0, **net):
    from leak_lightning.training.module import LeakClassifier

    torch.manual_seed(seed)
    f = FeatureConfig()
    model = LeakClassifier(RecordingNet(len(names), f.n_mels, f.t_frames, **{"channels": (8, 16), "embed": 8,
                                                                             "hidden": 16, **net}),
                           class_names=list(names), feature_config=asdict(f))
    return model.eval()


def test_merged_parts_give_the_statistics_of_the_whole():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(1, 300, 5, generator=g, dtype=torch.float64) * 3 + 7
    tau = torch.tensor([0.1, 0.5, 1.0, 2.0, 10.0], dtype=torch.float64)
    parts = [emb[:, a:b] for a, b in ((0, 17), (17, 100), (100, 101), (101, 300))]
    merged = PooledFrames.unpack(PooledFrames.merge(torch.cat([PooledFrames.of(p, tau).pack() for p in parts[::-1]])))
    stats = merged.statistics(tau)[0].reshape(4, 5)
    x = emb[0]
    # an independent reference: the definitions, over all 300 frames at once
    assert torch.allclose(stats[0], x.mean(0), atol=1e-12)
    assert torch.allclose(stats[1], torch.sqrt(x.var(0, unbiased=False) + 1e-6), atol=1e-10)
    assert torch.allclose(stats[2], -tau * torch.log(torch.exp(-x / tau).mean(0)), atol=1e-9)
    assert torch.allclose(stats[3], tau * torch.log(torch.exp(x / tau).mean(0)), atol=1e-9)
    # the soft floor lies between the minimum and the mean, nearer the minimum the colder it is
    assert bool((stats[2] >= x.min(0).values - 1e-9).all() and (stats[2] <= x.mean(0) + 1e-9).all())
    assert float(stats[2, 0] - x[:, 0].min()) < float(stats[2, 4] - x[:, 4].min())


def test_augmentation_is_drawn_once_per_recording():
    f = FeatureConfig()
    aug = SpectrumAugment(Augmentation(warp=0.0, gain_db=12.0, tilt_db=0.0, eq_db=0.0, background_p=0.0,
                                       mixup_p=0.0, freq_mask=0), f.n_mels, f.f_min, f.sample_rate / 2, 1).train()
    x = torch.randn(3 * 80, f.n_mels, 1)
    y = torch.zeros(3 * 80, 3)
    torch.manual_seed(1)
    out, _ = aug(x, y, per=80)
    shift = (out - x).reshape(3, 80, -1)
    assert torch.allclose(shift, shift[:, :1].expand_as(shift), atol=1e-5)  # one gain over a recording's frames
    assert len({round(float(s), 4) for s in shift[:, 0, 0]}) == 3  # another for each recording
    torch.manual_seed(1)
    per_segment, _ = aug(x, y)
    assert len({round(float(s), 4) for s in (per_segment - x)[:, 0, 0]}) > 3  # the frame model's: per segment


def test_a_background_is_a_whole_recording_mixed_frame_by_frame():
    f = FeatureConfig()
    aug = SpectrumAugment(Augmentation(warp=0.0, gain_db=0.0, tilt_db=0.0, eq_db=0.0, background_p=1.0,
                                       background_snr_db=(6.0, 6.0), mixup_p=0.0, freq_mask=0), f.n_mels, f.f_min,
                          f.sample_rate / 2, 1).train()
    leak = torch.full((80, f.n_mels, 1), 40.0)
    quiet = torch.arange(80.0)[:, None, None].expand(80, f.n_mels, 1) / 10  # a level that rises frame by frame
    x = torch.cat([leak, quiet])
    y = torch.tensor([[0.0, 1.0, 0.0]] * 80 + [[1.0, 0.0, 0.0]] * 80)
    out, _ = aug(x, y, per=80)
    mean_gap = 40.0 - float(quiet.mean()) - 6.0  # the partner is moved to 6 dB below the recording's mean level
    partner = quiet[:, 0, 0] + mean_gap
    want = 10 * torch.log10(10 ** (40.0 / 10) + 10 ** (partner / 10))
    assert torch.allclose(out[:80, 0, 0], want, atol=1e-3)  # the quiet recording's frames, in their order


def test_a_long_recording_decides_as_its_windows_pooled_whole(tmp_path):
    from leak_lightning.inference.predict import LeakDetector

    model = recording_model()
    rng = np.random.default_rng(0)
    seconds = 3600
    t = np.arange(seconds * 4096) / 4096
    x = 0.05 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * 300 * t) * (t % 600 < 200)
    path = write_wav(tmp_path / "hour.wav", x.astype(np.float32))
    model.prepare_predict()
    det = LeakDetector(model, torch.device("cpu"), windows_per_batch=16)
    got = det.predict(path)
    assert got.windows == 360 and got.status == "ok"
    # the same recording scored whole: every window's segments in one forward pass, pooled at once
    from leak_lightning.audio.decode import WindowReader

    waves = np.concatenate([w for w, _ in WindowReader(path, det.spec)])
    with torch.no_grad():
        seg = model.segments_of(torch.from_numpy(waves))
        whole, _ = model.net(seg.reshape(1, -1, *seg.shape[-2:]))
    probs = torch.sigmoid(whole.double())[0]
    assert got.leak_score == pytest.approx(float(probs[1]), abs=1e-5)
    assert got.class_scores["A"] == pytest.approx(float(probs[0]), abs=1e-5)
    assert got.leak == (float(probs[1]) >= float(model.decision.threshold))
    # a part of it alone decides otherwise: what was pooled is the whole hour
    first = det.predict_array(x[: 600 * 4096].astype(np.float32), 4096)
    assert abs(first.leak_score - got.leak_score) > 1e-4


def test_every_window_has_its_seconds(tmp_path):
    from leak_lightning.inference.predict import LeakDetector, write_csv

    model = recording_model()
    model.prepare_predict()
    det = LeakDetector(model, torch.device("cpu"))
    p = det.predict(write_wav(tmp_path / "a.wav", tone(500, 25, 4096)))
    assert p.window_times == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    q = det.predict(write_wav(tmp_path / "b.wav", tone(500, 12.5, 8000), sr=8000))  # resampled: source seconds
    assert q.window_times == [(0.0, 10.0), (10.0, 12.5)]
    write_csv(tmp_path / "p.csv", [p, q], model.class_names)
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert rows[0]["window_seconds"] == "0.000-10.000;10.000-20.000;20.000-25.000"
    assert len(rows[0]["window_leak_scores"].split(";")) == 3


@pytest.fixture(scope="module")
def recording_run(small_h5, tmp_path_factory):
    """A RecordingNet trained for 2 epochs through the real command (in-process)."""
    from leak_lightning.cli import main

    run = tmp_path_factory.mktemp("recording")
    main(["fit", "--config", str(REPO / "configs/demo.yaml"), *data_args(small_h5), "--model.net",
          "leak_lightning.models.RecordingNet", "--model.net.channels", "[8, 16, 32]", "--model.net.embed", "16",
          "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "2", "--data.batch_size", "640",
          "--console.log_file", "null"])
    return run


@pytest.mark.slow
def test_every_command_speaks_the_recording_model(small_h5, recording_run, site, tmp_path, run_cli):
    from leak_lightning.checkpoint.io import read_checkpoint
    from leak_lightning.inference.predict import LeakDetector

    ckpt = recording_run / "checkpoints" / "best.ckpt"
    raw, _ = read_checkpoint(ckpt)
    section = raw["leak_lightning"]
    assert section["decides"] == "recording" and section["decision"]["aggregation"] == "mean"
    # predict through the command (windows batched across recordings, pooled per recording) = the API
    out = tmp_path / "p.csv"
    done = run_cli("predict", "--ckpt_path", ckpt, "--data.predict_path", site, "--predictions.output", out,
                   "--console.log_file", "null")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {r["path"]: r for r in csv.DictReader(out.open())}
    det = LeakDetector.from_checkpoint(ckpt, device="cpu")
    for rel, row in rows.items():
        want = det.predict(site / rel)
        assert float(row["leak_score"]) == pytest.approx(want.leak_score, abs=1e-5)
        assert row["leak_decision"] == str(int(want.leak))
        assert float(row["decision_score"]) == pytest.approx(want.leak_score, abs=1e-5)  # its pooled probability
        assert row["window_seconds"].startswith("0.000-10.000")
    # test: file metrics from the recording probabilities
    done = run_cli("test", "--ckpt_path", ckpt, *data_args(small_h5), "--trainer.default_root_dir",
                   tmp_path / "t", "--console.log_file", "null")
    assert done.returncode == 0, done.stderr[-2000:]
    # adapt: the threshold on the site's pooled probabilities; without labels, the frame encoder's norms
    for extra in ([], ["--unlabelled", "true"]):
        done = run_cli("adapt", "--ckpt_path", ckpt, "--input", site, "--site", "d" + str(len(extra)),
                       "--output", tmp_path / f"a{len(extra)}.ckpt", *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        adapted = LeakDetector.from_checkpoint(tmp_path / f"a{len(extra)}.ckpt", device="cpu")
        assert adapted.model.whole_recordings and adapted.site["name"] == "d" + str(len(extra))
    done = run_cli("adapt", "--ckpt_path", ckpt, "--input", site, "--site", "ft", "--output", tmp_path / "ft.ckpt",
                   "--finetune_steps", "5")
    assert done.returncode == 2 and "--finetune_steps" in done.stderr.strip().splitlines()[-1]


def test_the_bands_pooled_levels_are_free_of_the_sensor_gain():
    net = RecordingNet(3, 64, 1, channels=(8, 16), embed=8, hidden=16).eval()
    g = torch.Generator().manual_seed(0)
    emb = torch.rand(2, 80, 8, generator=g)
    bands = torch.randn(2, 80, 64, generator=g) * 5

    def logits(shift: float, relative: bool = True) -> torch.Tensor:
        net.relative = relative
        with torch.no_grad():
            return net.decide(PooledFrames.of(torch.cat([emb, bands + shift], 2).double(), net.tau.double()))

    assert torch.allclose(logits(0.0), logits(12.0), atol=1e-5)  # 12 dB louder everywhere: the same answer
    assert not torch.allclose(logits(0.0), logits(0.0, relative=False), atol=1e-3)
    assert not torch.allclose(logits(0.0, relative=False), logits(12.0, relative=False), atol=1e-3)
    shape = bands.clone()
    shape[..., :32] += 6.0  # the spectrum's shape changes: the answer does
    with torch.no_grad():
        net.relative = True
        other = net.decide(PooledFrames.of(torch.cat([emb, shape], 2).double(), net.tau.double()))
    assert not torch.allclose(logits(0.0), other, atol=1e-3)


@pytest.mark.slow
def test_an_interrupted_recording_run_resumes_bitwise(small_h5, tmp_path):
    import signal

    from helpers.runs import assert_bitwise_equal, finish, fit_cmd, interrupt_and_resume, start, weights

    net = ("--model.net", "leak_lightning.models.RecordingNet", "--model.net.channels", "[8, 16]",
           "--model.net.embed", "8")
    rc, out = finish(start(fit_cmd(small_h5, tmp_path / "reference", *net)), timeout=300)
    assert rc == 0, out[-4000:]
    assert "whole recordings" in out
    out = interrupt_and_resume(small_h5, tmp_path / "run", signal.SIGINT, 130, net, where="train", step=3)
    assert "restarts on a new order" not in out
    assert_bitwise_equal(weights(tmp_path / "run/checkpoints/last.ckpt"),
                         weights(tmp_path / "reference/checkpoints/last.ckpt"))


def test_validation_decides_each_recording_from_its_pooled_probability(small_h5):
    import lightning as L

    from leak_lightning.data.datamodule import LeakDataModule
    from leak_lightning.data.h5 import load_segments, load_targets, read_info

    info = read_info(small_h5["val"])
    model = recording_model(names=tuple(info.class_names))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.validate(model, datamodule=LeakDataModule(val_h5=str(small_h5["val"]), batch_size=400, cache="ram"),
                     verbose=False)
    got = model.file_eval.result
    # an independent reference: every recording of the split through the network at once
    x = torch.from_numpy(load_segments(info)).reshape(info.num_files, info.segments_per_file, *info.segment_shape[2:])
    with torch.no_grad():
        logits, _ = model.net(x)
    probs = torch.sigmoid(logits.float())
    leak = info.class_names.index("LEAK")
    assert torch.equal(got["files"], torch.arange(info.num_files))
    assert torch.allclose(got["file_probs"], probs, atol=1e-5)
    assert torch.allclose(got["decision_scores"], probs[:, leak], atol=1e-5)  # what each decision reads
    assert torch.equal(got["decisions"], probs[:, leak] >= float(model.decision.threshold))
    truth = torch.from_numpy(load_targets(info))[:, leak].bool()
    assert torch.equal(got["targets"][:, leak].bool(), truth)
    want_auroc = float(binary_auroc(probs[:, leak], truth.int()))
    assert got["metrics"]["file_leak_auroc"] == pytest.approx(want_auroc, abs=1e-6)


@pytest.mark.slow
def test_two_ddp_ranks_train_and_validate_the_recording_model_as_one_process(small_h5, tmp_path, run_cli):
    import json

    from helpers.files import first_files

    # 7 validation recordings over 2 ranks, one a batch: uneven shares of the recordings' table
    val = first_files(small_h5["val"], tmp_path / "val7.h5", 7)
    run = tmp_path / "run"
    common = ["--config", REPO / "configs/demo.yaml", "--data.train_h5", small_h5["train"], "--data.val_h5", val,
              "--data.test_h5", "null", "--trainer.default_root_dir", run, "--model.net.channels", "[8, 16]",
              "--model.net.embed", "8", "--data.eval_batch_size", "80"]
    r = run_cli("fit", *common, "--trainer.max_epochs", "1", "--trainer.devices", "2", "--trainer.accelerator",
                "cpu", "--trainer.strategy", "ddp", "--data.batch_size", "400")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "whole recordings" in r.stdout + r.stderr
    reports = {}
    for devices in ("1", "2"):
        r = run_cli("validate", *common, "--ckpt_path", "best", "--trainer.devices", devices,
                    "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp" if devices == "2" else "auto")
        assert r.returncode == 0, r.stderr[-3000:]
        reports[devices] = json.loads((run / "validate_report.json").read_text())["metrics"]
    one, two = reports["1"], reports["2"]
    assert one["files_scored"] == two["files_scored"] == 7
    for key in ("file_leak_auroc", "file_accuracy", "threshold", "loss"):  # AUROC: NaN with one class among 7
        assert two[key] == pytest.approx(one[key], abs=1e-5, nan_ok=True), key


def test_adapt_takes_a_tie_for_the_recording_model_and_keeps_it_for_the_frame_model():
    from helpers.models import classifier

    from leak_lightning.inference.adapt import refit_rule, tie_policy
    from leak_lightning.models.decision import DecisionOptions, DecisionRule

    windows = [torch.tensor([0.9])] * 4 + [torch.tensor([0.1])] * 16  # one number each: the base rule is perfect
    truth = torch.tensor([True] * 4 + [False] * 16)
    base = DecisionRule(DecisionOptions(aggregation="mean"))
    kept = {}
    for kind, model in (("recording", recording_model()), ("frame", classifier())):
        rule, before, after, kept[kind], _ = refit_rule(windows, truth, base, 4, 0, tie_policy(model))
        assert before["f1"] == after["f1"] == 1.0  # a tie
    assert kept == {"recording": False, "frame": True}
