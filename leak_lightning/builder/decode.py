"""Decode one WAV to a mono float32 clip at the target rate, or say why it cannot be used."""

from __future__ import annotations

import math
import struct
import threading
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from ..features import FeatureConfig


class SkipFile(Exception):
    """A file that cannot give real audio; its message is the reason in the skip report."""


_resamplers: dict[tuple[int, int], torchaudio.transforms.Resample] = {}
_resampler_lock = threading.Lock()
# torchaudio's polyphase sinc kernel needs orig/gcd(orig, new) taps per output sample:
# 48 kHz → 4096 Hz is 375 (1.5 ms a 10 s clip) but 44.1 kHz → 4096 Hz is 11,025 (38 ms).
# Above this many taps the FFT method is used instead (7 ms, same error on a test tone).
_MAX_SINC_TAPS = 2048


def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    # One cached module per rate pair: building the sinc kernel costs more than applying it.
    key = (orig, new)
    with _resampler_lock:
        if key not in _resamplers:
            _resamplers[key] = torchaudio.transforms.Resample(orig, new)
        return _resamplers[key]


def _fft_resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Band-limited resampling by truncating (or zero-extending) the spectrum."""
    n_out = round(x.shape[-1] * new / orig)
    spec = torch.fft.rfft(x)
    keep = min(spec.shape[-1], n_out // 2 + 1)
    out = torch.zeros(n_out // 2 + 1, dtype=spec.dtype)
    out[:keep] = spec[:keep]
    return torch.fft.irfft(out, n=n_out) * (n_out / x.shape[-1])


def resample(mono: np.ndarray, orig: int, new: int) -> np.ndarray:
    """1-D float32 resampling; torch releases the GIL, so decode threads run it in parallel."""
    x = torch.from_numpy(np.ascontiguousarray(mono))
    if orig // math.gcd(orig, new) <= _MAX_SINC_TAPS:
        return _resampler(orig, new)(x).numpy()
    return _fft_resample(x, orig, new).numpy()


def _riff_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared, present) data bytes when a RIFF/WAVE file's data chunk is cut short, else None.

    libsndfile quietly shrinks the frame count to what is on disk, so a recording cut off
    mid-transfer would otherwise pass as a short clip and be zero-padded into the dataset.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                present = size - pos - 8
                # 0 and 0xFFFFFFFF are "unknown" placeholders written by streaming recorders.
                if 0 < chunk_size < 0xFFFFFFFF and present < chunk_size:
                    return chunk_size, present
                return None
            pos += 8 + chunk_size + (chunk_size & 1)
    return None


def _read(path: Path, cfg: FeatureConfig) -> tuple[np.ndarray, int]:
    """(frames, channels) float32 limited to the clip duration, and the file's sample rate."""
    if path.stat().st_size == 0:
        raise SkipFile("empty file (0 bytes)")
    if shortfall := _riff_data_shortfall(path):
        raise SkipFile(f"truncated: data chunk declares {shortfall[0]} bytes, only {shortfall[1]} present")
    try:
        with sf.SoundFile(path) as f:
            rate, declared = f.samplerate, f.frames
            if declared <= 0:
                raise SkipFile("zero-length audio (no frames)")
            want = min(declared, int(np.ceil(cfg.duration_sec * rate)))
            data = f.read(frames=want, dtype="float32", always_2d=True)
    except RuntimeError as err:  # sf.LibsndfileError and older soundfile errors
        raise SkipFile(f"not readable as audio: {err}") from None
    if len(data) < want:
        raise SkipFile(f"truncated: header declares {declared} frames but only {len(data)} could be read")
    return data, rate


def load_clip(path: Path, cfg: FeatureConfig) -> np.ndarray:
    """Mono float32 samples at cfg.sample_rate, at most cfg.num_samples long (not yet padded)."""
    data, rate = _read(path, cfg)
    if not np.isfinite(data).all():
        raise SkipFile("contains NaN or Inf samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != cfg.sample_rate:
        mono = resample(mono, rate, cfg.sample_rate)
    if len(mono) < cfg.long_window:
        raise SkipFile(f"too short: {len(mono)} samples at {cfg.sample_rate} Hz, "
                       f"fewer than one long window ({cfg.long_window})")
    return mono[: cfg.num_samples]
