"""LeakCNN: convolution blocks over the mel axis of [n_mels, T] log-mel patches (no Lightning)."""

from __future__ import annotations

import torch
from torch import nn


def _block_1d(c_in: int, c_out: int) -> nn.Sequential:
    """The same block for T = 1 as 1-D layers over the mel axis: (B, C, n_mels)."""
    return nn.Sequential(
        nn.Conv1d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True),
        nn.Conv1d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm1d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool1d(2),
    )


def _block(c_in: int, c_out: int, k_time: int) -> nn.Sequential:
    pad = (1, k_time // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, (3, k_time), padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, (3, k_time), padding=pad, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d((2, 1)),  # halve the mel axis only: T is often 1
    )


class LeakCNN(nn.Module):
    """(B, n_mels, T) dB patches → (B, num_classes) logits; ~0.6M parameters with the defaults.

    Input batch-norm standardises the dB scale. Augmentations (SpecAugment masks included) are applied
    to the batch before it, by models/augment.py.

    Args:
        num_classes, n_mels, t_frames: the output and input sizes (linked from the data by the CLI).
        channels: the convolution blocks' widths; each block halves the mel axis.
        hidden: the head's hidden width.
        dropout: in the head.
        layout: "1d" runs the (3, 1) convolutions of one-frame segments (T = 1) as Conv1d over the mel
            axis: the same function, other kernels (scripts/benchmark_fit.py --layout compares them).
    """

    def __init__(self, num_classes: int, n_mels: int = 64, t_frames: int = 1,
                 channels: tuple[int, ...] = (48, 96, 192, 256), hidden: int = 256, dropout: float = 0.3,
                 layout: str = "2d") -> None:
        super().__init__()
        if layout not in ("2d", "1d") or (layout == "1d" and t_frames != 1):
            raise ValueError(f"layout {layout!r}: use '2d', or '1d' for segments of one frame (T = 1, got T = "
                             f"{t_frames})")
        self.layout = layout
        if n_mels < 2 ** len(channels):
            raise ValueError(f"n_mels={n_mels} is too small for {len(channels)} blocks that halve "
                             "the mel axis; use fewer --model.channels")
        k_time = 3 if t_frames > 1 else 1  # a 3-wide kernel over T=1 would multiply padding zeros
        self.norm = nn.BatchNorm2d(1)
        widths = (1, *channels)
        self.features = nn.Sequential(*(_block_1d(a, b) if layout == "1d" else _block(a, b, k_time)
                                        for a, b in zip(widths[:-1], widths[1:])))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.unsqueeze(1).float())  # (B, 1, n_mels, T)
        if self.layout == "1d":
            x = self.features(x[..., 0])  # (B, C, n_mels / 2^blocks)
            return self.head(x.mean(dim=2, keepdim=True))
        x = self.features(x)  # (B, C, n_mels / 2^blocks, T)
        return self.head(x.mean(dim=(2, 3), keepdim=True))
