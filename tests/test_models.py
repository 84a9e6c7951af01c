"""Every network shape on a tiny input, and the loss against a hand-written reference."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from leak_lightning.features import FeatureConfig
from leak_lightning.models import LeakCNN
from leak_lightning.module import LeakClassifier

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
    net = LeakCNN(3, cfg.n_mels, cfg.t_frames, channels, hidden=16, time_mask=2)
    x = torch.randn(6, cfg.n_mels, cfg.t_frames) * 20 - 60  # dB-like
    out = net(x)
    assert out.shape == (6, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    net.eval()
    assert torch.equal(net(x), net(x))  # no masking or dropout outside training


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
    model = LeakClassifier(3, ["A", "LEAK", "C"], asdict(FeatureConfig()), pos_weight=weights).eval()
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
