"""Decode one WAV to a mono float32 clip at the target rate, or say why it cannot be used.

Runs inside the decoder processes, so it imports neither torch nor the frontend at module
level: a worker that never resamples starts in a fraction of a second.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf


class ClipSpec(NamedTuple):
    """What decoding needs from FeatureConfig (a plain tuple, cheap to send to a worker)."""

    sample_rate: int
    duration_sec: float
    num_samples: int
    long_window: int

    @classmethod
    def of(cls, features) -> ClipSpec:
        """From a FeatureConfig (duck-typed: this module must not import torch)."""
        return cls(features.sample_rate, features.duration_sec, features.num_samples, features.long_window)


class SkipFile(Exception):
    """A file that cannot give real audio; its message is the reason in the skip report."""


# Integer PCM is read as integers and scaled here: libsndfile's own int→float conversion
# ran at ~6,500 files/s against ~15,000 for int16 reads (10 s, 4096 Hz clips, one core).
# The scale is libsndfile's (divide by 0x8000 / 0x80000000), so the values are identical.
_INT_READS = {"PCM_16": ("int16", 1 / 2**15), "PCM_24": ("int32", 1 / 2**31),
              "PCM_32": ("int32", 1 / 2**31)}

# torchaudio's polyphase sinc kernel needs orig/gcd(orig, new) taps per output sample:
# 48 kHz → 4096 Hz is 375 (1.5 ms a 10 s clip) but 44.1 kHz → 4096 Hz is 11,025 (38 ms).
# Above this many taps the FFT method is used instead (7 ms, same error on a test tone).
_MAX_SINC_TAPS = 2048
_resamplers: dict = {}  # per process; a worker decodes files one at a time


def resample(mono: np.ndarray, orig: int, new: int) -> np.ndarray:
    """1-D float32 resampling with torchaudio's sinc kernel, or by the FFT for awkward ratios."""
    import torch  # only files that need it pay for the import

    x = torch.from_numpy(np.ascontiguousarray(mono))
    if orig // math.gcd(orig, new) <= _MAX_SINC_TAPS:
        if (orig, new) not in _resamplers:  # building the kernel costs more than applying it
            import torchaudio

            _resamplers[(orig, new)] = torchaudio.transforms.Resample(orig, new)
        return _resamplers[(orig, new)](x).numpy()
    n_out = round(x.shape[-1] * new / orig)
    spec = torch.fft.rfft(x)
    keep = min(spec.shape[-1], n_out // 2 + 1)
    out = torch.zeros(n_out // 2 + 1, dtype=spec.dtype)
    out[:keep] = spec[:keep]
    return (torch.fft.irfft(out, n=n_out) * (n_out / x.shape[-1])).numpy()


def _riff_data_shortfall(path: Path) -> tuple[int, int] | None:
    """(declared, present) data bytes when a RIFF/WAVE file's data chunk is cut short, else None.

    libsndfile quietly shrinks the frame count to what is on disk, so a recording cut off
    mid-transfer would otherwise pass as a short clip and be zero-padded into the dataset.
    """
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
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


def _read(path: Path, spec: ClipSpec, whole: bool) -> tuple[np.ndarray, int, bool]:
    """(frames, channels) float32 (the clip duration, or all of it), its rate, and whether it is float."""
    if shortfall := _riff_data_shortfall(path):
        raise SkipFile(f"truncated: data chunk declares {shortfall[0]} bytes, only {shortfall[1]} present")
    try:
        with sf.SoundFile(path) as f:
            rate, declared = f.samplerate, f.frames
            if declared <= 0:
                raise SkipFile("zero-length audio (no frames)")
            want = declared if whole else min(declared, int(np.ceil(spec.duration_sec * rate)))
            dtype, scale = _INT_READS.get(f.subtype, ("float32", None))
            data = f.read(frames=want, dtype=dtype, always_2d=True)
    except RuntimeError as err:  # sf.LibsndfileError and older soundfile errors
        raise SkipFile(f"not readable as audio: {err}") from None
    if len(data) < want:
        raise SkipFile(f"truncated: header declares {declared} frames but only {len(data)} could be read")
    if scale is not None:
        return np.multiply(data, scale, dtype=np.float32), rate, False
    return data, rate, True


def load_clip(path: Path, spec: ClipSpec, whole: bool = False) -> np.ndarray:
    """Mono float32 samples at spec.sample_rate: the first spec.num_samples (not yet padded),
    or with `whole` the entire recording (prediction cuts it into clip-long windows)."""
    if path.stat().st_size == 0:
        raise SkipFile("empty file (0 bytes)")
    data, rate, is_float = _read(path, spec, whole)
    if is_float and not np.isfinite(data).all():
        raise SkipFile("contains NaN or Inf samples")
    channels = data.shape[1]
    # A matrix-vector product downmixes ~10x faster than data.mean(axis=1) for 2 channels.
    mono = data @ np.full(channels, 1 / channels, dtype=np.float32) if channels > 1 else data[:, 0]
    if rate != spec.sample_rate:
        mono = resample(mono, rate, spec.sample_rate)
    if len(mono) < spec.long_window:
        raise SkipFile(f"too short: {len(mono)} samples at {spec.sample_rate} Hz, "
                       f"fewer than one long window ({spec.long_window})")
    return mono if whole else mono[: spec.num_samples]


def load_or_reason(path: Path, spec: ClipSpec, whole: bool = False) -> np.ndarray | str:
    """`load_clip`, or the reason the file cannot be used (for the skip report)."""
    try:
        return load_clip(path, spec, whole)
    except SkipFile as err:
        return str(err)
    except OSError as err:
        return f"cannot read file: {err.strerror or err}"
