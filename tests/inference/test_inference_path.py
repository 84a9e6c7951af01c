"""One scoring path: `predict` (the CLI) and `LeakDetector` (the API) score through the same WindowScorer."""

from __future__ import annotations

import csv
import math
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch
from helpers.files import REPO, data_args, tone, write_wav
from helpers.models import classifier

from leak_lightning.audio.features import FeatureConfig, LogMelFrontend
from leak_lightning.cli import main
from leak_lightning.inference.predict import LeakDetector
from leak_lightning.inference.scorer import WindowScorer

NUMBERS = ("leak_score", "leak_probability", "decision_score", "decision_cutoff")


def recording_model(names=("A", "LEAK", "C")):
    from leak_lightning.models import RecordingNet
    from leak_lightning.training.module import LeakClassifier

    torch.manual_seed(0)
    f = FeatureConfig()
    net = RecordingNet(len(names), f.n_mels, f.t_frames, channels=(8, 16), embed=8, hidden=16)
    return LeakClassifier(net, class_names=list(names), feature_config=asdict(f)).eval()


def waves(n: int, seed: int = 0) -> torch.Tensor:
    """`n` clip-long windows of noise and a tone, each at its own level."""
    f = FeatureConfig()
    t = torch.arange(f.num_samples) / f.sample_rate
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, f.num_samples, generator=g)
    return (0.05 * (1 + torch.arange(n))[:, None] * noise + 0.2 * torch.sin(2 * math.pi * 300 * t)).float()


def test_the_scorer_on_a_hand_made_batch_is_the_network_run_by_hand():
    model = classifier().eval()
    scorer = model.prepare_predict()
    x = waves(3)
    got = scorer.score(x)
    f = model.features
    seg = LogMelFrontend(f)(x).half()  # the builder's frontend, float16 as it stores segments
    with torch.no_grad():
        logits = model.net(seg.reshape(-1, f.n_mels, f.t_frames))
    probs = torch.sigmoid(logits.float()).reshape(3, f.num_long, f.num_short, -1)
    for w in range(3):
        for k in range(f.num_long):  # a long window's leak probability: the mean over its short segments
            want = sum(float(probs[w, k, s, model.leak_index]) for s in range(f.num_short)) / f.num_short
            assert float(got.leak[w, k]) == pytest.approx(want, abs=1e-6)
        for c in range(len(model.class_names)):
            want = float(probs[w, :, :, c].double().mean())
            assert float(got.classes[w, c]) == pytest.approx(want, abs=1e-6)
    assert got.pooled is None and got.leak.shape == (3, f.num_long)


def test_the_scorer_pools_a_recording_models_windows_as_one_pass_over_them_all():
    model = recording_model()
    scorer = model.prepare_predict()
    x = waves(4, seed=1)
    in_parts = [scorer.score(x[:1]), scorer.score(x[1:])]  # two batches, merged as a recording's windows are
    pooled = torch.cat([p.pooled for p in in_parts])
    seg = LogMelFrontend(model.features)(x).half()
    with torch.no_grad():
        whole, frames = model.net(seg.reshape(1, -1, *seg.shape[-2:]))  # all 4 windows' frames in one pass
    assert torch.allclose(model.recording_probabilities(pooled), torch.sigmoid(whole.float())[0], atol=1e-5)
    f = model.features
    frame_leak = torch.sigmoid(frames.float()).reshape(4, f.num_long, f.num_short, -1)[..., model.leak_index]
    assert torch.allclose(torch.cat([p.leak for p in in_parts]), frame_leak.mean(2), atol=1e-6)


def test_the_frontend_lives_with_the_scorer_not_in_the_checkpoint():
    model = classifier().eval()
    before = set(model.state_dict())
    scorer = model.prepare_predict()
    assert set(model.state_dict()) == before  # no mel buffers join what a checkpoint saves
    assert not any(isinstance(m, LogMelFrontend) for m in model.modules())
    assert isinstance(scorer.frontend, LogMelFrontend) and model.scorer is scorer
    det = LeakDetector(model, torch.device("cpu"))
    assert det.scorer is model.scorer and isinstance(det.scorer, WindowScorer)


def folder_to_score(site, tmp_path):
    """The site, a recording three windows long, a dead sensor and a file that cannot be read."""
    folder = tmp_path / "recordings"
    shutil.copytree(site, folder)
    write_wav(folder / "long.wav", tone(500, 25, 4096))
    write_wav(folder / "dead.wav", np.zeros(4096 * 10, dtype=np.float32))
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    return folder


def cli_and_api_rows(ckpt, folder, tmp_path, *config):
    out = tmp_path / "cli.csv"
    main(["predict", *config, "--ckpt_path", str(ckpt), "--data.predict_path", str(folder),
          "--trainer.default_root_dir", str(tmp_path / "run"), "--predictions.output", str(out),
          "--console.log_file", "null"])
    cli = {r["path"]: r for r in csv.DictReader(out.open(encoding="utf-8"))}
    det = LeakDetector.from_checkpoint(ckpt, device="cpu")
    return cli, {rel: det.predict(folder / rel) for rel in cli}


def assert_same_rows(cli, api, class_names):
    assert len(cli) == len(api) >= 15
    for rel, row in cli.items():
        want = api[rel]
        if row["status"].startswith("skipped"):  # the API names the file by its full path in its reason
            assert want.status.startswith("skipped"), (rel, want)
            continue
        assert (row["status"], row["quality"], int(row["windows"])) == \
            (want.status, ";".join(want.quality) or ("ok" if want.leak is not None else ""), want.windows), rel
        if want.leak is None:
            assert row["leak_decision"] == "" and want.status == "silent"
            continue
        assert row["leak_decision"] == str(int(want.leak)) and row["top_class"] == want.top_class, rel
        for name in NUMBERS:
            assert float(row[name]) == pytest.approx(getattr(want, name), abs=2e-6), (rel, name)
        for name in class_names:
            assert float(row[f"score_{name}"]) == pytest.approx(want.class_scores[name], abs=2e-6), (rel, name)
        windows = [float(s) for s in row["window_leak_scores"].split(";")]
        assert windows == pytest.approx(want.window_scores, abs=1e-4), rel  # 4 decimals in the CSV
    assert "long.wav" in cli and cli["long.wav"]["windows"] == "3" and cli["dead.wav"]["status"] == "silent"


def test_cli_predict_and_the_api_give_the_same_rows_for_the_frame_model(trained_run, site, tmp_path):
    ckpt = trained_run / "checkpoints" / "best.ckpt"
    cli, api = cli_and_api_rows(ckpt, folder_to_score(site, tmp_path), tmp_path)
    assert_same_rows(cli, api, LeakDetector.from_checkpoint(ckpt, device="cpu").class_names)
    decided = [r for r in cli.values() if r["leak_decision"]]
    assert len({r["leak_score"] for r in decided}) > 3  # the rows differ: a constant scorer would not pass


@pytest.mark.slow
def test_cli_predict_and_the_api_give_the_same_rows_for_the_recording_model(small_h5, site, tmp_path):
    run = tmp_path / "fit"
    main(["fit", "--config", str(REPO / "configs/demo.yaml"), *data_args(small_h5), "--model.net",
          "leak_lightning.models.RecordingNet", "--model.net.channels", "[8, 16]", "--model.net.embed", "8",
          "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1", "--data.batch_size", "640",
          "--console.log_file", "null"])
    ckpt = run / "checkpoints" / "best.ckpt"
    cli, api = cli_and_api_rows(ckpt, folder_to_score(site, tmp_path), tmp_path)
    assert_same_rows(cli, api, LeakDetector.from_checkpoint(ckpt, device="cpu").class_names)
    for row in cli.values():  # what decided is the recording's one pooled probability
        if row["leak_decision"]:
            assert row["decision_score"] == row["leak_score"]
