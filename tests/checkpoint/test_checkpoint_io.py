"""Checkpoints of earlier versions: a format-1 checkpoint (leak_lightning 0.2.0, 24 flat module arguments,
decision buffers at the top level) still scores, evaluates and exports as it did.

tests/fixtures/format1_tiny.ckpt was trained by leak_lightning 0.2.0 (commit 116314a) with channels [4, 8, 8, 8],
hidden 8, pos_weight auto and vote_fraction 0.25; format1_tiny_predictions.json holds what 0.2.0's
LeakDetector answered for the three recordings made below.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.files import REPO, data_args

from leak_lightning import LeakDetector
from leak_lightning.checkpoint.io import read_checkpoint
from leak_lightning.checkpoint.migrations import current_hparams, migrate_state
from leak_lightning.cli import main

DATA = REPO / "tests" / "fixtures"
OLD = DATA / "format1_tiny.ckpt"


def recordings():
    for k, (freq, seconds) in enumerate([(300, 10.0), (700, 25.0), (1100, 7.0)]):
        t = np.arange(int(seconds * 4096)) / 4096
        noise = 0.05 * np.random.default_rng(k).standard_normal(len(t))
        yield (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def test_old_hyper_parameters_map_to_the_injected_parts():
    ckpt, _ = read_checkpoint(OLD)
    old = ckpt["hyper_parameters"]
    assert "num_classes" in old and "net" not in old  # really the old layout
    hp = current_hparams(old)
    assert hp["net"] == {"class_path": "leak_lightning.models.LeakCNN",
                         "init_args": {"num_classes": 5, "n_mels": 64, "t_frames": 1, "channels": [4, 8, 8, 8],
                                       "hidden": 8, "dropout": old["dropout"], "layout": "1d"}}
    assert hp["optimizer"]["init_args"]["lr"] == old["lr"] == 0.003
    assert hp["scheduler"]["init_args"] == {"min_lr_ratio": old["min_lr_ratio"]}
    assert hp["decision"] == {"aggregation": "vote", "vote_fraction": 0.25}
    assert hp["pos_weight"] == "auto" and hp["augment"]["freq_mask"] == old["freq_mask"]
    assert current_hparams(hp) == hp  # the current layout is left as it is


def test_old_decision_buffers_move_under_decision():
    ckpt, _ = read_checkpoint(OLD)
    threshold = ckpt["state_dict"]["threshold"].clone()
    migrate_state(ckpt)
    assert "threshold" not in ckpt["state_dict"]
    assert torch.equal(ckpt["state_dict"]["decision.threshold"], threshold)
    assert {"decision.calibration", "decision.threshold_stats"} <= set(ckpt["state_dict"])


def test_an_old_checkpoint_answers_as_it_did():
    det = LeakDetector.from_checkpoint(OLD, device="cpu")
    want = json.loads((DATA / "format1_tiny_predictions.json").read_text())
    for samples, expected in zip(recordings(), want):
        got = det.predict_array(samples, 4096)
        assert (got.status, got.leak, got.windows) == (expected["status"], expected["leak"], expected["windows"])
        for key in ("leak_score", "leak_probability", "decision_score", "decision_cutoff"):
            assert getattr(got, key) == pytest.approx(expected[key], abs=1e-6), key
        assert got.class_scores == pytest.approx(expected["class_scores"], abs=1e-6)
    assert det.model.decision.options.vote_fraction == 0.25


def test_an_old_checkpoint_is_tested_with_its_own_decision_rule(small_h5, tmp_path, capsys):
    ckpt, _ = read_checkpoint(OLD)
    main(["test", *data_args(small_h5), "--ckpt_path", str(OLD), "--trainer.default_root_dir", str(tmp_path),
          "--model.decision.vote_fraction", "0.9"])
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "test_report.json").read_text())
    assert report["threshold"] == pytest.approx(float(ckpt["state_dict"]["threshold"]))
    assert "--model.decision.vote_fraction 0.9 is not used" in err  # the checkpoint's rule, and said so


def test_the_digest_names_a_function_not_its_address():
    import subprocess
    import sys

    from leak_lightning.checkpoint.contract import binding_digest
    from leak_lightning.training.module import default_optimizer

    ckpt = {"hyper_parameters": {"optimizer": default_optimizer, "net": torch.nn.Linear(2, 3)}}
    code = ("import torch; from leak_lightning.checkpoint.contract import binding_digest; "
            "from leak_lightning.training.module import default_optimizer; "
            "print(binding_digest({'hyper_parameters': {'optimizer': default_optimizer, "
            "'net': torch.nn.Linear(2, 3)}}))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert binding_digest(ckpt) == other  # another process, other addresses: the same digest
