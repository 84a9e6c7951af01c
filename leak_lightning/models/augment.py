"""Training-time augmentation of log-mel batches, on the device (no Lightning, no per-sample Python).

A detector trained on one network meets others: pipe materials and diameters move the leak's
resonances, sensors and gains change the level and the tilt of the spectrum, streets bring other
noise. Each transform below imitates one of those on the stored dB segments, so no rebuild is
needed. All draws come from torch's global RNG on the batch's device: seeded by
`seed_everything`, and saved and restored with the checkpoint, so a resumed run stays bitwise equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio
from torch import nn


@dataclass(frozen=True)
class Augmentation:
    """Each transform's strength; 0 switches it off. Applied per segment, in training only.

    Args:
        warp: resonances move by a factor in [1 - warp, 1 + warp] (pipe material, diameter).
        gain_db: a constant offset in [-gain_db, gain_db] dB (sensor sensitivity, amplifier gain).
        tilt_db: a linear slope across the band, its ends up to ±tilt_db/2 dB (sensor and coupling).
        eq_db: a smooth random EQ of three cosines over the band, each up to ±eq_db dB.
        background_p: share of segments mixed with a training segment of a non-leak class (new
            background noise); the label stays the main segment's.
        background_snr_db: (low, high) level of the main segment above the added one, in dB.
        mixup_p: share of segments blended with another segment of the batch, labels blended alike.
        mixup_alpha: the Beta(alpha, alpha) of the blend weight.
        freq_mask: SpecAugment: up to this many adjacent mel bins of each segment set to the segment's mean
            level ("average energy", not a loud or a silent band).
        time_mask: the same over up to this many frames (segments of more than one frame only).
    """

    warp: float = 0.2
    gain_db: float = 12.0
    tilt_db: float = 12.0
    eq_db: float = 3.0
    background_p: float = 0.5
    background_snr_db: tuple[float, float] = (0.0, 15.0)
    mixup_p: float = 0.2
    mixup_alpha: float = 0.4
    freq_mask: int = 8
    time_mask: int = 0

    def __post_init__(self) -> None:
        checks = [(0 <= self.warp < 1, "warp must be in [0, 1)"),
                  (min(self.gain_db, self.tilt_db, self.eq_db) >= 0, "gain_db, tilt_db and eq_db must be >= 0"),
                  (0 <= self.background_p <= 1 and 0 <= self.mixup_p <= 1, "probabilities must be in [0, 1]"),
                  (self.background_snr_db[0] <= self.background_snr_db[1], "background_snr_db must be (low, high)"),
                  (self.mixup_alpha > 0, "mixup_alpha must be > 0"),
                  (min(self.freq_mask, self.time_mask) >= 0, "freq_mask and time_mask must be >= 0")]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Augmentation: {message} (got {self})")

    @classmethod
    def off(cls) -> Augmentation:
        return cls(warp=0.0, gain_db=0.0, tilt_db=0.0, eq_db=0.0, background_p=0.0, background_snr_db=(0.0, 0.0),
                   mixup_p=0.0, freq_mask=0, time_mask=0)


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)  # HTK, as the frontend


def _uniform(n: int, low: float, high: float, device) -> torch.Tensor:
    return torch.rand(n, device=device) * (high - low) + low


class SpectrumAugment(nn.Module):
    """(B, n_mels, T) dB segments, (B, C) targets → augmented copies; the identity outside training."""

    def __init__(self, aug: Augmentation, n_mels: int, f_min: float, f_max: float, leak_index: int) -> None:
        super().__init__()
        self.aug, self.leak_index = aug, leak_index
        edges = torch.linspace(float(_mel(torch.tensor(f_min))), float(_mel(torch.tensor(f_max))), n_mels + 2)
        centres = 700.0 * (10 ** (edges[1:-1] / 2595.0) - 1.0)  # Hz at each mel bin's centre
        self.register_buffer("centres", centres, persistent=False)
        self.register_buffer("mel0", edges[1].clone(), persistent=False)
        self.register_buffer("mel_step", edges[2] - edges[1], persistent=False)
        pos = torch.linspace(0.0, 1.0, n_mels)
        self.register_buffer("slope", pos - 0.5, persistent=False)  # (M,) for the tilt
        self.register_buffer("cosines", torch.stack([torch.cos(math.pi * j * pos) for j in (1, 2, 3)]),
                             persistent=False)  # (3, M) for the EQ

    @property
    def active(self) -> bool:
        a = self.aug
        return any((a.warp, a.gain_db, a.tilt_db, a.eq_db, a.background_p, a.mixup_p, a.freq_mask, a.time_mask))

    def forward(self, x: torch.Tensor, y: torch.Tensor, per: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """`per`: segments per recording (whole recordings, contiguous, for a recording-level network): every draw
        but the masks' is then made once per recording, so a recording keeps one pipe, one sensor gain and one
        background over its frames (its floor and its consistency over time stay what they were)."""
        if not self.training or not self.active:
            return x, y
        x = x.float()
        a = self.aug
        n = len(x) // per

        def each(t: torch.Tensor) -> torch.Tensor:
            return t if per == 1 else t.repeat_interleave(per, 0)

        if a.background_p:
            x = self._background(x, y, per)
        if a.warp:
            x = self.warp(x, each(_uniform(n, 1 - a.warp, 1 + a.warp, x.device)))
        if a.gain_db or a.tilt_db or a.eq_db:
            x = x + each(self._level(n, x.device))[:, :, None]
        if a.mixup_p:
            x, y = self._mixup(x, y, per)
        if a.freq_mask or (a.time_mask and x.shape[2] > 1):
            x = self._masks(x)
        return x, y

    def _masks(self, x: torch.Tensor) -> torch.Tensor:
        """SpecAugment's iid masks (torchaudio's), filled with each segment's mean dB: torchaudio fills with
        one number, so the masked bins are marked NaN there and given the segment's mean here."""
        a, marked = self.aug, x[:, None]
        if a.freq_mask:
            marked = torchaudio.functional.mask_along_axis_iid(marked, a.freq_mask, float("nan"), axis=2)
        if a.time_mask and x.shape[2] > 1:
            marked = torchaudio.functional.mask_along_axis_iid(marked, min(a.time_mask, x.shape[2]), float("nan"),
                                                              axis=3)
        return torch.where(marked[:, 0].isnan(), x.mean((1, 2), keepdim=True), x)

    def warp(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """Move every frequency f to factor·f (per segment), by linear interpolation along the mel axis."""
        src = (_mel(self.centres[None] / factor[:, None]) - self.mel0) / self.mel_step  # (B, M) source bin
        src = src.clamp(0, x.shape[1] - 1)
        lo = src.floor().long().clamp(max=x.shape[1] - 2)
        w = (src - lo)[..., None]  # (B, M, 1)
        lo = lo[..., None].expand(-1, -1, x.shape[2])
        return torch.gather(x, 1, lo) * (1 - w) + torch.gather(x, 1, lo + 1) * w

    def _level(self, n: int, device) -> torch.Tensor:
        """(B, M) dB added per bin: gain + tilt + smooth EQ."""
        a = self.aug
        gain = _uniform(n, -a.gain_db, a.gain_db, device)[:, None]
        tilt = _uniform(n, -a.tilt_db, a.tilt_db, device)[:, None] * self.slope
        eq = (torch.rand(n, 3, device=device) * 2 - 1) * a.eq_db @ self.cosines
        return gain + tilt + eq

    def _background(self, x: torch.Tensor, y: torch.Tensor, per: int = 1) -> torch.Tensor:
        """Add (as power) a non-leak segment of the batch (with `per` > 1: a non-leak recording, frame by frame),
        `snr` dB below the main one's mean level."""
        a, n = self.aug, len(x) // per
        xr = x.reshape(n, per, *x.shape[1:])
        quiet = y[::per, self.leak_index] < 0.5
        # the non-leak segments first, in random order; pick one of them for every segment (no host sync)
        order = torch.argsort(torch.rand(n, device=x.device) + (~quiet).float())
        count = quiet.sum()
        partner = xr[order[(torch.rand(n, device=x.device) * count.clamp(min=1)).long().clamp(max=n - 1)]]
        snr = _uniform(n, *a.background_snr_db, x.device)
        offset = xr.mean((1, 2, 3)) - partner.mean((1, 2, 3)) - snr
        to_ln = math.log(10) / 10  # dB → natural log of power
        mixed = torch.logaddexp(xr * to_ln, (partner + offset[:, None, None, None]) * to_ln) / to_ln
        apply = (torch.rand(n, device=x.device) < a.background_p) & (count > 0)
        return torch.where(apply[:, None, None, None], mixed, xr).reshape(x.shape)

    def _mixup(self, x: torch.Tensor, y: torch.Tensor, per: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        a, n = self.aug, len(x) // per
        alpha = torch.full((n,), a.mixup_alpha, device=x.device)
        # validate_args=False: its argument checks read device tensors back, a host sync every step
        lam = torch.distributions.Beta(alpha, alpha, validate_args=False).sample()
        lam = torch.where(torch.rand(n, device=x.device) < a.mixup_p, torch.maximum(lam, 1 - lam), torch.ones_like(lam))
        other = torch.randperm(n, device=x.device)
        if per > 1:  # whole recordings blended, frame by frame
            frames = torch.arange(per, device=x.device)
            lam, other = lam.repeat_interleave(per), (other[:, None] * per + frames).flatten()
        return (lam[:, None, None] * x + (1 - lam[:, None, None]) * x[other],
                lam[:, None] * y + (1 - lam[:, None]) * y[other])
