"""Augmentation and class balance: each against a hand-computed or independent reference (calibration:
test_calibration.py)."""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
import torch
from helpers.files import REPO, data_args
from helpers.models import classifier

from leak_lightning.audio.features import FeatureConfig, LogMelFrontend
from leak_lightning.data.batches import CachedSplit, TrainBatches
from leak_lightning.models.augment import Augmentation, SpectrumAugment

CFG = FeatureConfig()
ONLY = {name: Augmentation(**{**asdict(Augmentation.off()), **kw}) for name, kw in {
    "warp": {"warp": 0.2}, "gain": {"gain_db": 12.0}, "tilt": {"tilt_db": 12.0}, "eq": {"eq_db": 3.0},
    "background": {"background_p": 1.0, "background_snr_db": (0.0, 15.0)}, "mixup": {"mixup_p": 1.0},
}.items()}


def augmenter(aug: Augmentation, leak_index: int = 1) -> SpectrumAugment:
    return SpectrumAugment(aug, CFG.n_mels, CFG.f_min, CFG.sample_rate / 2, leak_index).train()


def batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, 64, 1, generator=g) * 10 - 40).half()  # float16, as batches come from the cache
    y = torch.eye(3)[torch.arange(n) % 3]
    return x, y


@pytest.mark.parametrize("name", ONLY)
def test_each_augmentation_keeps_shapes_is_seeded_and_off_in_eval(name):
    aug = augmenter(ONLY[name])
    x, y = batch()
    torch.manual_seed(1)
    out, out_y = aug(x, y)
    assert out.shape == x.shape and out.dtype == torch.float32 and out_y.shape == y.shape
    assert torch.isfinite(out).all() and not torch.equal(out, x.float())
    torch.manual_seed(1)
    again, again_y = aug(x, y)
    assert torch.equal(out, again) and torch.equal(out_y, again_y)  # seeded: the same draws, the same batch
    aug.eval()
    same, same_y = aug(x, y)
    assert same is x and same_y is y


def test_gain_is_a_pure_db_offset_per_segment():
    x, y = batch()
    torch.manual_seed(3)
    out, _ = augmenter(ONLY["gain"])(x, y)
    offset = out - x.float()
    assert torch.allclose(offset, offset[:, :1, :].expand_as(offset), atol=1e-4)  # constant over the mel axis
    assert offset.abs().max() <= 12.0 and offset[:, 0, 0].std() > 3  # spread over ±12 dB


def test_warp_moves_a_resonance_by_the_factor():
    t = torch.arange(CFG.num_samples) / CFG.sample_rate
    wave = torch.stack([torch.sin(2 * math.pi * 600 * t), torch.sin(2 * math.pi * 720 * t)])
    seg = LogMelFrontend(CFG)(wave)[:, 0, 0]  # (2, 64, 1): a 600 Hz and a 720 Hz tone
    moved = augmenter(ONLY["warp"]).warp(seg[:1], torch.tensor([1.2]))
    assert int(moved[0, :, 0].argmax()) == int(seg[1, :, 0].argmax())  # 600 Hz × 1.2 lands at 720 Hz
    assert torch.allclose(augmenter(ONLY["warp"]).warp(seg, torch.ones(2)), seg, atol=1e-3)  # factor 1: no change


def test_background_mixes_only_non_leak_segments_and_keeps_labels():
    aug = augmenter(ONLY["background"], leak_index=1)
    x = torch.full((8, 64, 1), -100.0)
    x[0] = -20.0  # a loud leak segment: it must not be mixed into anything
    x[4] = -60.0  # the only non-leak segment with energy
    y = torch.zeros(8, 3)
    y[:4, 1] = 1.0  # segments 0-3 leak, 4-7 do not
    torch.manual_seed(0)
    out, out_y = aug(x, y)
    assert torch.equal(out_y, y)
    assert (out[1:4] < -50).all() and (out[5:] < -50).all()  # nothing from the loud leak segment
    assert (out >= x - 1e-4).all()  # power only adds


def test_mixup_blends_inputs_and_labels_alike():
    x, y = batch(32)
    torch.manual_seed(0)
    out, out_y = augmenter(ONLY["mixup"])(x, y)
    assert torch.allclose(out_y.sum(1), torch.ones(32))  # convex blends of one-hot labels
    assert ((out_y > 0).sum(1) <= 2).all() and (out_y.max(1).values >= 0.5).all()


def test_class_balanced_sampling_is_seeded_resumable_and_balanced():
    # 12 files of 2 segments: 9 of class 0, 3 of class 1
    targets = torch.eye(2)[torch.tensor([0] * 9 + [1] * 3)]
    split = CachedSplit(torch.arange(24, dtype=torch.float16)[:, None, None].expand(-1, 64, 1).contiguous(),
                        targets, 2)
    cpu = torch.device("cpu")
    a = TrainBatches(split, 6, 7, 0, 1, cpu, lambda: 0, lambda: 0, balance=True)
    order = torch.cat([x[:, 0, 0] for x, _, _ in a]).long()
    assert torch.equal(order, torch.cat([x[:, 0, 0] for x, _, _ in a]).long())  # seeded
    resumed = TrainBatches(split, 6, 7, 0, 1, cpu, lambda: 0, lambda: 0, balance=True)
    resumed.resume_from(a.snapshot() | {"position": 2})
    assert torch.equal(torch.cat([x[:, 0, 0] for x, _, _ in resumed]).long(), order[12:])
    draws = torch.cat([a.permutation(e) for e in range(200)])
    minority = (draws >= 18).double().mean()  # segments 18-23 are class 1
    assert 0.45 < minority < 0.55  # a quarter of the segments, half of the draws
    assert set(draws.tolist()) == set(range(24))  # every segment of a drawn file can come


def test_balanced_sampling_beyond_multinomials_category_limit():
    files, per_file = 2**13, 2**11 + 1  # 16.8M segments: more than torch.multinomial's 2^24 categories
    segments = torch.zeros(1, 64, 1, dtype=torch.float16).expand(files * per_file, -1, -1)  # no memory
    split = CachedSplit(segments, torch.eye(2)[torch.arange(files) % 2], per_file)
    batches = TrainBatches(split, 8192, 7, 0, 1, torch.device("cpu"), lambda: 0, lambda: 0, balance=True)
    order = batches.permutation(0)
    assert len(order) == files * per_file and 0 <= int(order.min()) and int(order.max()) < files * per_file


def test_pos_weight_auto_and_balance_from_the_cli(small_h5, tmp_path, ll_records):
    from leak_lightning.cli.leak_cli import LeakCLI

    cli = LeakCLI(args=["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
                        "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
                        "--model.pos_weight", "auto", "--data.balance", "true", "--data.batch_size", "256"])
    # 70 training files, 14 per class: each class has 56 negatives for 14 positives
    assert cli.model.loss_fn.pos_weight.tolist() == [4.0] * 5
    torch.testing.assert_close(cli.model.loss_fn.pos_weight, torch.full((5,), 4.0))
    messages = " ".join(r.getMessage() for r in ll_records)
    assert "pos_weight auto from the training split (70 files): [4.0, 4.0, 4.0, 4.0, 4.0]" in messages
    assert "class-balanced sampling" in messages


def test_the_threshold_comes_with_its_validation_precision_recall_and_calibration(trained_run):
    ckpt = torch.load(trained_run / "checkpoints/best.ckpt", map_location="cpu", weights_only=False)
    section = ckpt["leak_lightning"]
    assert set(section["threshold_validation"]) == {"precision", "recall"}
    assert all(0 <= v <= 1 for v in section["threshold_validation"].values())
    assert section["calibration"]["method"] == "platt" and section["calibration"]["a"] > 0


def test_a_tiny_validation_set_warns_about_the_threshold(ll_records):
    from leak_lightning.models.evaluation import FileScores

    model = classifier(features=CFG)
    truth = torch.tensor([True] * 4 + [False] * 16)
    windows = torch.where(truth[:, None], 0.9, 0.1).expand(-1, 40)  # perfectly separable: a wide plateau
    scores = FileScores(torch.arange(20), windows, torch.zeros(20, 3), torch.eye(3)[truth.long()], 0)
    model.file_eval.fit(model.decision, scores, truth, leaks=4)
    model.file_eval.fit(model.decision, scores, truth, leaks=4)
    warnings = [r.getMessage() for r in ll_records if "was swept on only" in r.getMessage()]
    t = float(model.decision.threshold)
    assert warnings == [f"the threshold ({t:.2f}) was swept on only 4 LEAK file(s) among 20: "
                        "it is uncertain; use a validation split with 20 or more leak files"]  # once per run
    assert 0.1 < float(model.decision.threshold) <= 0.9


@pytest.mark.parametrize("name", [*ONLY, "off"])
def test_training_steps_see_augmented_batches_and_evaluation_the_stored_ones(name):
    """The mechanism the robustness benchmark relies on (whether augmentation helps is the benchmark's
    claim, with seeds: scripts/benchmark_robustness.py): the configured transforms reach the network in
    training, `Augmentation.off()` leaves batches as stored, and evaluation never augments."""
    aug = Augmentation.off() if name == "off" else ONLY[name]
    model = classifier(features=CFG, augment=aug)
    seen: list[torch.Tensor] = []
    model.net.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().float().clone()))
    x, y = batch()
    model.train()
    torch.manual_seed(5)
    model.step_loss(x, y)
    torch.manual_seed(5)
    want, _ = augmenter(aug)(x, y)  # the same transform with the same draws, outside the module
    torch.testing.assert_close(seen[-1], want.float())
    assert torch.equal(seen[-1], x.float()) == (name == "off")
    model.eval()
    with torch.no_grad():
        model._eval_step((x, y, torch.tensor(0)), model.val_metrics, "val")
    assert torch.equal(seen[-1], x.float())
