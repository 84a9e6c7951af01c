"""The frontend against an independent numpy STFT + HTK mel filterbank."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leak_lightning.audio.features import FeatureConfig, LogMelFrontend, segment


def htk_mel(f):
    return 2595.0 * np.log10(1.0 + f / 700.0)


def htk_hz(m):
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def numpy_logmel(x: np.ndarray, sr: int, n_fft: int, n_mels: int, power: float) -> np.ndarray:
    """One frame (center=False, len(x) == n_fft): periodic Hann, |rfft|^power, triangles, dB."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.abs(np.fft.rfft(x * window)) ** power
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = htk_hz(np.linspace(htk_mel(0.0), htk_mel(sr / 2), n_mels + 2))
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        fb[:, m] = np.clip(np.minimum(rising, falling), 0, None)
    mel = spec @ fb
    scale = 20.0 if power == 1.0 else 10.0
    return scale * np.log10(np.maximum(mel, 1e-10))


def test_default_shape_is_80_segments_of_64x1():
    cfg = FeatureConfig()
    out = LogMelFrontend(cfg)(torch.randn(3, 40960))
    assert cfg.segment_shape == (40, 2, 64, 1)
    assert out.shape == (3, 40, 2, 64, 1)
    assert out.shape[1] * out.shape[2] == 80
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_matches_numpy_reference(power):
    cfg = FeatureConfig(power=power)
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(40960) * 0.2 + np.sin(np.arange(40960) * 0.3)).astype(np.float32)
    got = LogMelFrontend(cfg)(torch.from_numpy(x)[None]).numpy()[0]
    # segment (long window 7, short window 1) starts at sample 7·1024 + 512
    start = 7 * 1024 + 512
    want = numpy_logmel(x[start: start + 512].astype(np.float64), 4096, 512, 64, power)
    bins = [0, 5, 17, 40, 63]
    np.testing.assert_allclose(got[7, 1, bins, 0], want[bins], atol=2e-3, rtol=1e-4)


def test_segmentation_order_is_long_then_short():
    cfg = FeatureConfig()
    x = torch.arange(40960, dtype=torch.float32)[None]
    w = segment(x, cfg)
    assert w.shape == (1, 40, 2, 512)
    assert w[0, 3, 1, 0].item() == 3 * 1024 + 512


def test_short_clips_are_zero_padded_long_ones_trimmed():
    cfg = FeatureConfig()
    fe = LogMelFrontend(cfg)
    x = torch.randn(1, 40960)
    short = fe(x[:, :3 * 4096])
    assert (short[0, 12:] == -200.0).all()  # 20·log10(1e-10): padding is digital silence
    longer = fe(torch.cat([x, torch.randn(1, 4096)], dim=1))
    torch.testing.assert_close(longer, fe(x))


def test_config_roundtrip_and_validation():
    cfg = FeatureConfig(n_mels=32, sample_rate=8000)
    assert FeatureConfig.from_json(cfg.to_json()) == cfg
    assert FeatureConfig.from_dict({**cfg.__dict__, "legacy_key": 1}) == cfg
    with pytest.raises(ValueError, match="short_window"):
        FeatureConfig(short_window=2048)
    with pytest.raises(ValueError, match="power"):
        FeatureConfig(power=3.0)
