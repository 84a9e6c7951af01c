"""Every network shape on a tiny input, and the loss against a hand-written reference."""

from __future__ import annotations

import pytest
import torch
from helpers.models import classifier

from leak_lightning.audio.features import FeatureConfig
from leak_lightning.models import LeakCNN
from leak_lightning.models.augment import Augmentation

SHAPES = {  # name: (FeatureConfig overrides, expected T)
    "T1-64mels": ({}, 1),
    "T1-32mels": ({"n_mels": 32}, 1),
    "T5-center": ({"center": True}, 5),
    "T5-short-fft": ({"n_fft": 256, "hop_length": 64}, 5),
}


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("channels", [(8, 16), (8, 8, 16, 16)], ids=["2-blocks", "4-blocks"])
def test_every_shape_trains_a_step_without_nan(name, channels):
    overrides, t_frames = SHAPES[name]
    cfg = FeatureConfig(**overrides)
    assert cfg.t_frames == t_frames
    model = classifier(features=cfg, net={"channels": channels, "hidden": 16}, augment=Augmentation(time_mask=2))
    x = torch.randn(6, cfg.n_mels, cfg.t_frames) * 20 - 60  # dB-like
    y = torch.eye(3)[torch.arange(6) % 3]
    model.train()
    loss = model.step_loss(x, y)  # augmentation (masks included), network, loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    out = model(x)
    assert out.shape == (6, 3) and torch.isfinite(out).all()
    assert torch.equal(model(x), model(x))  # no masking or dropout outside training


@pytest.mark.parametrize("axis, width", [("freq", 8), ("time", 3)])
def test_masks_fill_a_band_with_the_segments_mean_level(axis, width):
    """SpecAugment's masks (part of the augmentation): in training, up to `width` adjacent bins of each
    segment take the segment's mean dB; nothing else changes; evaluation leaves the batch as stored."""
    from leak_lightning.models.augment import SpectrumAugment

    aug = Augmentation.off()
    aug = Augmentation(**{**aug.__dict__, "freq_mask": width if axis == "freq" else 0,
                          "time_mask": width if axis == "time" else 0})
    layer = SpectrumAugment(aug, 64, 0.0, 2048.0, leak_index=1).train()
    torch.manual_seed(3)
    x = torch.randn(200, 64, 10) * 20 - 60
    out, _ = layer(x, torch.zeros(200, 3))
    changed = out != x  # (B, M, T)
    lines = changed.any(2 if axis == "freq" else 1)  # per segment: which mel bins (or frames) were masked
    counts = lines.sum(1)
    assert counts.max() < width + 1 and counts.max() >= width - 2 and (counts > 0).float().mean() > 0.5
    for b in range(200):
        idx = torch.nonzero(lines[b]).flatten()
        if len(idx):
            assert idx.max() - idx.min() + 1 == len(idx)  # one adjacent band
            mean = x[b].mean()
            masked = out[b][changed[b]]
            torch.testing.assert_close(masked, torch.full_like(masked, float(mean)))
    assert torch.equal(layer.eval()(x, torch.zeros(200, 3))[0], x)


def test_convolutions_mix_time_when_there_is_more_than_one_frame():
    # with a time kernel of 1 the network would see a bag of frames: reordering them would not matter
    torch.manual_seed(0)
    net = LeakCNN(3, 64, 5, (8, 16), hidden=16).eval()
    x = torch.randn(4, 64, 5) * 20 - 60
    assert not torch.allclose(net(x), net(x[..., [4, 2, 0, 3, 1]]), atol=1e-4)
    flat = LeakCNN(3, 64, 1, (8, 16), hidden=16)
    assert all(m.kernel_size[1] == 1 for m in flat.modules() if isinstance(m, torch.nn.Conv2d))


def test_loss_is_bce_with_the_given_pos_weight():
    torch.manual_seed(0)
    weights = [1.0, 4.0, 0.5]
    model = classifier(pos_weight=weights).eval()
    x = torch.randn(16, 64, 1) * 20 - 60
    y = (torch.rand(16, 3) > 0.5).float()
    z = model(x).double()
    w = torch.tensor(weights, dtype=torch.float64)
    manual = -(w * y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    loss = model.step_loss(x, y)  # what training_step minimises
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    unweighted = -(y * torch.log(torch.sigmoid(z)) + (1 - y) * torch.log(1 - torch.sigmoid(z))).mean()
    assert abs(loss.item() - unweighted.item()) > 1e-3  # the weights matter on this batch


def test_the_1d_layout_is_the_same_function_as_2d():
    torch.manual_seed(0)
    two = LeakCNN(3, 64, 1, (8, 16), hidden=16).eval()
    one = LeakCNN(3, 64, 1, (8, 16), hidden=16, layout="1d").eval()
    one.load_state_dict({k: v.squeeze(-1) if v.ndim == 4 and k.startswith("features") else v
                         for k, v in two.state_dict().items()})
    x = torch.randn(32, 64, 1) * 20 - 60
    torch.testing.assert_close(one(x), two(x), rtol=1e-5, atol=1e-5)
    one.train()(x).sum().backward()  # trains
    with pytest.raises(ValueError, match="'1d' for segments of one frame"):
        LeakCNN(3, 64, 5, (8, 16), layout="1d")


def test_the_default_schedule_decays_from_the_rate_to_its_share_over_the_run():
    from leak_lightning.models.optim import AdamW, CosineToEnd

    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = AdamW(params, lr=0.01)
    sched = CosineToEnd(opt, min_lr_ratio=0.1)
    sched.T_max = 10  # what LeakClassifier sets from the run's optimizer steps
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.001)
    assert rates[5] == pytest.approx((0.01 + 0.001) / 2)  # cosine: halfway at half the run
    assert opt.defaults["fused"] in (None, False)  # parameters on the CPU: the plain kernel
