"""RecordingNet: a recording heard whole, as a noise logger hears a night (no Lightning).

A leak is a steady noise; traffic, pumps and footsteps come and go. A faint leak under passing noise is
invisible in most frames and plain in the recording's floor, so the frame model's vote over frames misses
it where a logger's level histogram does not. Here every frame is encoded, and the encodings are pooled
over the whole recording by statistics that can express the floor (a soft minimum), the typical level (the
mean), the consistency over time (the standard deviation) and the loudest passages (a soft maximum); the
recording's logits come from those. Each statistic is a sum over frames (moments, log-sum-exp), so a
recording of any length is pooled in one streaming pass over its windows (`PooledFrames.merge`) and gives
what pooling it whole gives.

Per-frame logits remain (a frame head on the same encodings): they give the per-window scores a listener
uses to find the leak in the recording, and train the encoder alongside the recording's loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .cnn import _block, _block_1d

POOLS = ("mean", "std", "floor", "peak")


@dataclass
class PooledFrames:
    """Per recording: the frame count and the sums the pooled statistics are made from, (R, D) each.

    `mean`, `m2` (the sum of squared deviations from the mean: Chan's parallel form, exact when merged),
    `low` and `high` (log Σ exp(∓e/τ) over frames). Merging two parts of a recording gives the statistics of
    the whole, in any order: what lets predict pool an hour-long recording a batch of windows at a time.
    """

    count: torch.Tensor  # (R, 1)
    mean: torch.Tensor
    m2: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def of(cls, emb: torch.Tensor, tau: torch.Tensor) -> PooledFrames:
        """(R, F, D) frame encodings of R recordings → their pooled sums."""
        mean = emb.mean(1)
        # the count as a tensor op, not a Python number: an exported graph (export.py) keeps F dynamic
        return cls(torch.ones_like(emb[..., :1]).sum(1), mean, ((emb - mean[:, None]) ** 2).sum(1),
                   torch.logsumexp(-emb / tau, 1), torch.logsumexp(emb / tau, 1))

    def pack(self) -> torch.Tensor:
        """(R, 1 + 4·D) in one tensor (float64: merging thousands of windows keeps its digits)."""
        return torch.cat([self.count, self.mean, self.m2, self.low, self.high], 1).double()

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> PooledFrames:
        d = (packed.shape[1] - 1) // 4
        return cls(packed[:, :1], *packed[:, 1:].split(d, 1))

    @staticmethod
    def merge(packed: torch.Tensor) -> torch.Tensor:
        """(K, 1 + 4·D) parts of ONE recording (packed) → (1, 1 + 4·D): the statistics of their union."""
        p = PooledFrames.unpack(packed.double())
        n = p.count.sum(0, keepdim=True)
        mean = (p.count * p.mean).sum(0, keepdim=True) / n
        m2 = (p.m2 + p.count * (p.mean - mean) ** 2).sum(0, keepdim=True)
        return PooledFrames(n, mean, m2, torch.logsumexp(p.low, 0, keepdim=True),
                            torch.logsumexp(p.high, 0, keepdim=True)).pack()

    def statistics(self, tau: torch.Tensor) -> torch.Tensor:
        """(R, 4·D): mean, standard deviation, soft floor and soft peak of each encoding channel."""
        log_n = torch.log(self.count)
        std = torch.sqrt(self.m2 / self.count + 1e-6)
        floor = -tau * (self.low - log_n)  # −τ·log mean exp(−e/τ): the minimum as τ → 0, the mean as τ → ∞
        peak = tau * (self.high - log_n)
        return torch.cat([self.mean, std, floor, peak], 1)


class RecordingNet(nn.Module):
    """(R, F, n_mels, T) the F segments of R recordings → (recording logits (R, C), frame logits (R, F, C)).

    Args:
        num_classes, n_mels, t_frames: linked from the data by the CLI, as for LeakCNN.
        channels: the frame encoder's convolution blocks (each halves the mel axis), as LeakCNN's.
        embed: width of a frame's encoding (what is pooled).
        hidden: the recording head's hidden width.
        dropout: in the recording head.
        tau: the soft floor's and peak's starting temperature, in encoding units (learned per channel): small
            reads the lowest frames, large the mean.
        frame_weight: the frames' loss (each frame labelled as its recording) added to the recordings' at this
            weight in training: it trains the per-window scores and gives the encoder a signal per frame.
        bands: also pool every mel band's own level (standardised by the input batch-norm) beside the encodings:
            the per-band floor, typical level, spread and peak that a noise logger reads.
        relative: the bands' pooled levels taken relative to the recording's mean level (gain-free).
    """

    whole_recordings = True  # LeakClassifier batches whole recordings for it

    def __init__(self, num_classes: int, n_mels: int = 64, t_frames: int = 1,
                 channels: tuple[int, ...] = (24, 48, 96, 128), embed: int = 64, hidden: int = 128,
                 dropout: float = 0.3, tau: float = 0.5, frame_weight: float = 0.5, bands: bool = True,
                 relative: bool = True) -> None:
        super().__init__()
        if n_mels < 2 ** len(channels):
            raise ValueError(f"n_mels={n_mels} is too small for {len(channels)} blocks that halve "
                             "the mel axis; use fewer --model.net.init_args.channels")
        if tau <= 0:
            raise ValueError(f"RecordingNet tau={tau}: use a temperature > 0")
        if frame_weight < 0:
            raise ValueError(f"RecordingNet frame_weight={frame_weight}: use 0 or more")
        self.frame_weight, self.bands, self.relative, self.embed_width = frame_weight, bands, relative, embed
        self.one_frame = t_frames == 1
        self.norm = nn.BatchNorm2d(1)
        widths = (1, *channels)
        self.features = nn.Sequential(*(_block_1d(a, b) if self.one_frame else _block(a, b, 3)
                                        for a, b in zip(widths[:-1], widths[1:])))
        self.embed = nn.Sequential(nn.Linear(channels[-1], embed), nn.ReLU(inplace=True))
        self.frame_head = nn.Linear(embed, num_classes)
        # softplus⁻¹(tau): the temperature stays positive however it is trained
        pooled = embed + (n_mels * t_frames if bands else 0)
        self.tau_raw = nn.Parameter(torch.full((pooled,), math.log(math.expm1(tau))))
        # LayerNorm, not batch-norm: every batch-norm sits in the frame encoder, whose statistics are the
        # frames' (what `adapt --unlabelled` re-estimates from a site's audio)
        self.head = nn.Sequential(nn.LayerNorm(len(POOLS) * pooled), nn.Dropout(dropout),
                                  nn.Linear(len(POOLS) * pooled, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    @property
    def tau(self) -> torch.Tensor:
        return nn.functional.softplus(self.tau_raw)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, T) segments → (N, embed) encodings."""
        return self._encode(x)[0]

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, n_mels, T) → the encodings (N, embed) and what is pooled (N, embed [+ n_mels·T])."""
        x = self.norm(x.unsqueeze(1).float())
        bands = x.flatten(1)
        if self.one_frame:
            x = self.features(x[..., 0]).mean(2)
        else:
            x = self.features(x).mean((2, 3))
        emb = self.embed(x)
        return emb, torch.cat([emb, bands.to(emb.dtype)], 1) if self.bands else emb

    def pooled(self, x: torch.Tensor) -> tuple[PooledFrames, torch.Tensor]:
        """(R, F, n_mels, T) → the recordings' pooled sums and their frames' logits (R, F, C)."""
        r, f = x.shape[:2]
        emb, channels = self._encode(x.reshape(r * f, *x.shape[2:]))
        frames = self.frame_head(emb).reshape(r, f, -1)
        return PooledFrames.of(channels.float().reshape(r, f, -1), self.tau), frames

    def decide(self, pooled: PooledFrames) -> torch.Tensor:
        """Pooled sums → recording logits (R, C)."""
        stats = pooled.statistics(self.tau.to(pooled.mean.dtype))
        if self.bands and self.relative:
            # the bands' levels relative to the recording's mean level (mean, floor and peak move with the gain;
            # the spread does not): a sensor's gain is no evidence. Exact after a streaming merge too: shifting
            # every frame by c shifts these three statistics by c.
            d = stats.shape[1] // len(POOLS)
            parts = list(stats.split(d, 1))
            level = parts[0][:, self.embed_width:].mean(1, keepdim=True)
            for k in (0, 2, 3):
                parts[k] = torch.cat([parts[k][:, :self.embed_width], parts[k][:, self.embed_width:] - level], 1)
            stats = torch.cat(parts, 1)
        return self.head(stats.to(self.head[-1].weight.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, frames = self.pooled(x)
        return self.decide(pooled), frames
