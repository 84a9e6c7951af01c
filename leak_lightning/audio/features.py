"""The one feature frontend: clip → long windows → short windows → log-mel patches.

The dataset builder and prediction both call `LogMelFrontend`; nothing else computes
features, so the train/serve skew of the origin (20·log10 in training, 10·log10 at
inference) cannot come back. The config travels with the HDF5 file and the checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import torch
import torchaudio
from torch import nn


@dataclass(frozen=True)
class FeatureConfig:
    """Frontend parameters; the defaults are the origin builder's."""

    sample_rate: int = 4096
    duration_sec: float = 10.0  # shorter clips are zero-padded, longer ones trimmed
    long_window: int = 1024  # stage 1: non-overlapping windows over the clip
    short_window: int = 512  # stage 2: non-overlapping windows inside each long window
    n_fft: int = 512
    hop_length: int = 128
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None  # None → sample_rate / 2
    power: float = 1.0  # 1 = magnitude (20·log10), 2 = power (10·log10)
    center: bool = False  # False → one frame per 512-sample segment with the defaults

    def __post_init__(self) -> None:
        checks = [
            (self.sample_rate > 0, "sample_rate must be > 0"),
            (self.duration_sec > 0, "duration_sec must be > 0"),
            (0 < self.short_window <= self.long_window, "need 0 < short_window <= long_window"),
            (self.long_window <= self.num_samples, "long_window is longer than the clip"),
            (self.n_fft <= self.short_window or self.center, "n_fft > short_window needs center=True"),
            (self.hop_length > 0 and self.n_mels > 0, "hop_length and n_mels must be > 0"),
            (self.power in (1.0, 2.0), "power must be 1.0 (magnitude) or 2.0 (power)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"FeatureConfig: {message} (got {self})")

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate * self.duration_sec))

    @property
    def num_long(self) -> int:
        return self.num_samples // self.long_window

    @property
    def num_short(self) -> int:
        return self.long_window // self.short_window

    @property
    def t_frames(self) -> int:
        if self.center:
            return self.short_window // self.hop_length + 1
        return (self.short_window - self.n_fft) // self.hop_length + 1

    @property
    def segment_shape(self) -> tuple[int, int, int, int]:
        """Per-file feature shape (L, S, n_mels, T)."""
        return (self.num_long, self.num_short, self.n_mels, self.t_frames)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> FeatureConfig:
        """Build from a stored dict, ignoring keys this version does not know (origin extras)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> FeatureConfig:
        return cls.from_dict(json.loads(text))

    def db_range(self) -> tuple[float, float]:
        """Bounds on the stored dB values: the amin floor, and the largest mel value a waveform of
        samples within ±32768 can reach (the sum of the |STFT| bins of a Hann window, ≤ n_fft/2 each;
        wrongly scaled float files reach ±32768, full scale is ±1)."""
        floor = (20 if self.power == 1.0 else 10) * math.log10(1e-10)
        peak = (self.n_fft // 2 + 1) * self.n_fft / 2 * 32768
        return floor - 0.5, 20 * math.log10(peak) + 0.5

    def differences(self, other: FeatureConfig) -> dict[str, tuple]:
        """{field: (self's value, other's value)} for every field that changes the features."""
        def effective(cfg: FeatureConfig) -> dict:
            values = asdict(cfg)
            values["f_max"] = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
            return values

        mine, theirs = effective(self), effective(other)
        return {k: (mine[k], theirs[k]) for k in mine if float(mine[k]) != float(theirs[k])}


def fit_length(wave: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Zero-pad or trim the last axis to `num_samples`."""
    n = wave.shape[-1]
    if n >= num_samples:
        return wave[..., :num_samples]
    return nn.functional.pad(wave, (0, num_samples - n))


def segment(wave: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """(B, N) clips → (B, L, S, short_window) windows, padding/trimming N to the clip length."""
    wave = fit_length(wave, cfg.num_samples)
    used = cfg.num_long * cfg.long_window
    long = wave[:, :used].reshape(wave.shape[0], cfg.num_long, cfg.long_window)
    used_short = cfg.num_short * cfg.short_window
    return long[..., :used_short].reshape(*long.shape[:2], cfg.num_short, cfg.short_window)


class LogMelFrontend(nn.Module):
    """Batched log-mel of the two-stage segmentation; runs wherever the module lives."""

    def __init__(self, cfg: FeatureConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FeatureConfig()
        c = self.cfg
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
            f_min=c.f_min, f_max=c.f_max, n_mels=c.n_mels, power=c.power, center=c.center,
            window_fn=torch.hann_window, mel_scale="htk", norm=None,
        )
        # amin=1e-10 and ref=1 give exactly 20·log10(max(x, 1e-10)) for magnitudes.
        stype = "magnitude" if c.power == 1.0 else "power"
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype=stype, top_db=None)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) float waveforms at cfg.sample_rate → (B, L, S, n_mels, T) float32 dB."""
        windows = segment(wave.float(), self.cfg)  # (B, L, S, W)
        b, n_long, n_short, w = windows.shape
        mel = self.mel(windows.reshape(b * n_long * n_short, w))  # (B·L·S, n_mels, T)
        return self.to_db(mel).reshape(b, n_long, n_short, *mel.shape[-2:])
