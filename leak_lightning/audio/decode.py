"""Decode a recording to mono float32 at the target rate, with quality flags, or say why it cannot be used.

Runs inside the builder's decoder processes, so it imports neither torch nor the frontend at
module level: a worker that never resamples starts in a fraction of a second.

Quality flags (docs/design.md, "Recording quality"): `silent` (digital silence or a constant: a
dead sensor, or a stereo pair that cancels in the downmix), `clipped` (at least 1 % of the
samples at full scale), `out_of_range` (float samples beyond ±1: wrongly scaled, e.g. to
±32767), `truncated` (fewer frames than the container declares). The builder skips silent and
truncated files; prediction scores what it can and reports the flags.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf

from .containers import read_header

SILENT, CLIPPED, OUT_OF_RANGE, TRUNCATED, PARTLY_SILENT, BAND_LIMITED = (
    "silent", "clipped", "out_of_range", "truncated", "partly_silent", "band_limited")
# A recording must carry at least this share of the frontend's top frequency below its own Nyquist
# frequency: with the defaults (f_max 2048 Hz) a rate of 3,687 Hz or more; a 4 kHz logger passes
# (2000 Hz), 2 kHz and 1 kHz recordings (1000 / 500 Hz) do not: the features' upper half would be
# empty, and the model has never heard a pipe like that.
BAND_COVERAGE = 0.9
# At most one 16-bit step between the lowest and highest sample: no signal at all.
SILENT_PEAK_TO_PEAK = 1 / 2**15
FULL_SCALE = 1 - 1 / 2**15  # int16's largest positive value; 24/32-bit PCM full scale lies above it
CLIPPED_FRACTION = 1e-2  # a few clipped clicks are harmless; 1 % of the samples is a saturated sensor
# Float samples beyond ±1 are flagged and scored up to int16's scale (a float file written as ±32767 is
# a common mistake); FeatureConfig.db_range bounds the stored features for that scale, and far beyond
# it the frontend's float32 arithmetic overflows: such a file is skipped with its level as the reason.
FLOAT_LIMIT = 32768.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class ClipSpec(NamedTuple):
    """What decoding needs from FeatureConfig (a plain tuple, cheap to send to a worker)."""

    sample_rate: int
    duration_sec: float
    num_samples: int
    long_window: int
    f_max: float = 0.0  # the features' top frequency (0: not checked)

    @classmethod
    def of(cls, features) -> ClipSpec:
        """From a FeatureConfig (duck-typed: this module must not import torch)."""
        top = features.f_max if features.f_max is not None else features.sample_rate / 2
        return cls(features.sample_rate, features.duration_sec, features.num_samples, features.long_window, top)


def band_limit_reason(rate: int, spec: ClipSpec) -> str | None:
    """Why a recording at `rate` cannot carry the frontend's band, or None when it can."""
    if spec.f_max and rate / 2 < BAND_COVERAGE * spec.f_max:
        return (f"{BAND_LIMITED}: recorded at {rate} Hz, so nothing above {rate / 2:.0f} Hz, but the features "
                f"span up to {spec.f_max:.0f} Hz (at least {math.ceil(2 * BAND_COVERAGE * spec.f_max)} Hz is "
                "needed); the model cannot hear this recording's upper band")
    return None


class SkipFile(Exception):
    """A file that cannot give real audio; its message is the reason in the skip report."""


class Clip(NamedTuple):
    samples: np.ndarray  # (N,) mono float32 at the target rate, N <= spec.num_samples (not yet padded)
    flags: tuple[str, ...]


# Integer PCM is read as integers and scaled here: faster than libsndfile's own int→float conversion
# (scripts/benchmark_kernels.py, "int16 reads"). The scale is libsndfile's (divide by 0x8000 / 0x80000000),
# so the values are identical.
_INT_READS = {"PCM_16": ("int16", 1 / 2**15), "PCM_24": ("int32", 1 / 2**31),
              "PCM_32": ("int32", 1 / 2**31)}

# torchaudio's polyphase sinc kernel needs orig/gcd(orig, new) taps per output sample: 48 kHz → 4096 Hz
# is 375 but 44.1 kHz → 4096 Hz is 11,025. Above this many taps the FFT method (the same error on a test
# tone) is used instead, being the faster one there (scripts/benchmark_kernels.py, "resample").
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


def open_checked(path: str | Path) -> tuple[sf.SoundFile, int | None]:
    """libsndfile handle on `path` once its header has been checked, and the frame count the file
    declares (None when it does not say: an "unknown length" FLAC stream). A declared count above
    `f.frames` means the file was cut (`shortfall` says so)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block
        raise SkipFile("not a regular file (a FIFO, socket, device or folder): never opened")
    if info.st_size == 0:
        raise SkipFile("empty file (0 bytes)")
    head = read_header(path)
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: soundfile cannot encode undecodable names itself
    except RuntimeError as err:  # sf.LibsndfileError and older soundfile errors
        raise SkipFile(f"not readable as audio: {err}") from None
    if head is not None and head.frames == 0 and head.data_bytes > 0:
        f.close()
        raise SkipFile(f"unfinalised header: the {head.container} data chunk declares 0 bytes but "
                       f"{head.data_bytes} bytes of audio follow (the recorder did not finish the file); "
                       "repair the header's data size")
    if f.frames <= 0:
        f.close()
        raise SkipFile("zero-length audio (no frames)")
    return f, (head.frames if head is not None else f.frames)


def shortfall(f: sf.SoundFile, declared: int | None) -> str | None:
    """`truncated: ...` when the container declares more frames than the file holds."""
    if declared is not None and declared > f.frames:
        return f"truncated: the {f.format} header declares {declared} frames, the file holds {f.frames}"
    return None


def _read(f: sf.SoundFile, frames: int, path: str | Path, start: int) -> tuple[np.ndarray, bool, str | None]:
    """Up to `frames` frames from frame `start` (where the handle stands) as (frames, channels) float32,
    whether the file stores floats, and the decoder's error when the data ended in one (a cut FLAC
    stream, or one longer on paper than on disk).

    The caller says where the handle stands: GSM 6.10, G.721 and NMS ADPCM handles cannot seek, and
    `f.tell()` is a seek ("Seek attempted on unseekable file type"), though they read front to back.
    """
    dtype, scale = _INT_READS.get(f.subtype, ("float64" if f.subtype == "DOUBLE" else "float32", None))
    error = None
    try:
        data = f.read(frames=frames, dtype=dtype, always_2d=True)
    except RuntimeError as err:  # e.g. "flac decoder lost sync", "psf_fseek() failed"
        error = str(err)
        data = _salvage(path, start, frames, dtype, f.channels)
    if scale is not None:
        return np.multiply(data, scale, dtype=np.float32), False, error
    if reason := float_level_reason(data):
        raise SkipFile(reason)
    return data.astype(np.float32, copy=False), True, error


def float_level_reason(data: np.ndarray) -> str | None:
    """Why float samples (in the type they are stored in) cannot be heard by the frontend, or None.

    Not rescaled here: the log-mel features depend on the level, and the factor that makes such a file
    right (int16's 32768? int32's 2**31?) is known to whoever wrote it, not to the decoder; a guessed
    one gives an answer for a level nobody recorded. The reason is given once, here, for build and predict.
    """
    if not data.size:
        return None
    if not np.isfinite(data).all():
        return "contains NaN or Inf samples"
    peak = max(float(data.max()), -float(data.min()))
    if peak > FLOAT_LIMIT:
        beyond = (f"beyond what float32 holds (±{_FLOAT32_MAX:.3g})" if peak > _FLOAT32_MAX else
                  f"beyond the frontend's range (samples within ±{FLOAT_LIMIT:.0f})")
        return (f"{OUT_OF_RANGE}: float samples reach {peak:.3g}, far beyond ±1 and {beyond}; the file is scaled "
                "wrongly: rescale it to ±1 or re-export it as PCM")
    return None


def _salvage(path: str | Path, start: int, frames: int, dtype: str, channels: int) -> np.ndarray:
    """What decodes of frames start.. start+frames, read in quarter-second pieces through a fresh handle.

    libsndfile drops a whole read that runs into damage, and the handle cannot seek afterwards (nor
    can a fresh one, in a FLAC stream of unknown length: it is then decoded up to `start` again).
    The caller reads no further: at most a quarter second before the damage is lost.
    """
    parts: list[np.ndarray] = []
    try:
        f = sf.SoundFile(os.fsencode(path))
        try:
            f.seek(start)
        except RuntimeError:  # a failed seek leaves this handle useless too: decode up to `start` again
            f.close()
            f = sf.SoundFile(os.fsencode(path))
            skipped = 0
            while skipped < start and (n := len(f.read(frames=min(start - skipped, f.samplerate * 4), dtype=dtype))):
                skipped += n
        with f:
            piece = max(1, f.samplerate // 4)
            while (got := sum(map(len, parts))) < frames:
                parts.append(f.read(frames=min(piece, frames - got), dtype=dtype, always_2d=True))
                if not len(parts[-1]):
                    break
    except RuntimeError:
        pass
    return np.concatenate(parts) if parts else np.zeros((0, channels), dtype=dtype)


def level_flags(raw: np.ndarray, is_float: bool) -> list[str]:
    """`out_of_range` / `clipped` from the samples as stored (before the downmix)."""
    if raw.size == 0:
        return []
    peak = max(float(raw.max()), -float(raw.min()))
    if is_float and peak > 1.0 + 1e-6:
        return [OUT_OF_RANGE]
    if peak >= FULL_SCALE and np.count_nonzero(np.abs(raw) >= FULL_SCALE) >= CLIPPED_FRACTION * raw.size:
        return [CLIPPED]
    return []


def is_silent(mono: np.ndarray) -> bool:
    return mono.size == 0 or float(mono.max()) - float(mono.min()) <= SILENT_PEAK_TO_PEAK


def _downmix(raw: np.ndarray) -> np.ndarray:
    channels = raw.shape[1]
    # a matrix-vector product: faster than data.mean(axis=1) (scripts/benchmark_kernels.py, "downmix")
    return raw @ np.full(channels, 1 / channels, dtype=np.float32) if channels > 1 else raw[:, 0]


def _to_rate(mono: np.ndarray, rate: int, spec: ClipSpec) -> np.ndarray:
    return resample(mono, rate, spec.sample_rate) if rate != spec.sample_rate else mono


def _too_short(frames: int, rate: int, spec: ClipSpec) -> bool:
    # judged before resampling: the FFT resampler fails on a piece that resamples to nothing
    return round(frames * spec.sample_rate / rate) < spec.long_window


def _short_reason(frames: int, rate: int, spec: ClipSpec) -> str:
    return (f"too short: {frames} frames at {rate} Hz make {round(frames * spec.sample_rate / rate)} samples at "
            f"{spec.sample_rate} Hz, fewer than one long window ({spec.long_window})")


def read_clip(path: str | Path, spec: ClipSpec) -> Clip:
    """The first clip (spec.duration_sec) of a recording: what the builder stores."""
    f, declared = open_checked(path)
    with f:
        if cut := shortfall(f, declared):
            raise SkipFile(cut)
        rate = f.samplerate
        if limited := band_limit_reason(rate, spec):
            raise SkipFile(limited)
        want = min(f.frames, math.ceil(spec.duration_sec * rate))
        raw, is_float, error = _read(f, want, path, 0)
    if not len(raw):  # the decoder failed at the first frame: not a cut file (DWVW in AIFF, say)
        raise SkipFile(f"no audio could be decoded ({error}); re-export the file as PCM WAV")
    if declared is not None and len(raw) < min(declared, want):
        cause = f" ({error})" if error else ""
        raise SkipFile(f"truncated: the header declares {declared} frames but only {len(raw)} could be decoded{cause}")
    flags = level_flags(raw, is_float)
    mono = _downmix(raw)
    if is_silent(mono):
        flags.append(SILENT)
    if _too_short(len(mono), rate, spec):
        raise SkipFile(_short_reason(len(mono), rate, spec))
    return Clip(_to_rate(mono, rate, spec)[: spec.num_samples], tuple(flags))


def read_mono(path: str | Path, max_seconds: float) -> tuple[np.ndarray, int, bool]:
    """A recording as it was recorded, for a listener: mono float32 at its own rate, its first `max_seconds`
    (whether it was longer). Decoded as the windows are (the same reads, level checks and downmix)."""
    f, declared = open_checked(path)
    with f:
        want = min(f.frames, math.ceil(max_seconds * f.samplerate))
        raw, _, error = _read(f, want, path, 0)
        longer = f.frames > want
    if not len(raw):
        raise SkipFile(f"no audio could be decoded ({error}); re-export the file as PCM WAV")
    return _downmix(raw), f.samplerate, longer


def clip_or_reason(path: str | Path, spec: ClipSpec) -> Clip | str:
    """`read_clip`, or the reason the file cannot be used: one file never ends a run."""
    try:
        return read_clip(path, spec)
    except Exception as err:
        return reason_of(err)


def reason_of(err: Exception) -> str:
    """A one-line skip reason for any error met while decoding one file."""
    if isinstance(err, SkipFile):
        return str(err)
    if isinstance(err, OSError):
        return f"cannot read file: {err.strerror or err}"
    first = str(err).splitlines()[0] if str(err) else ""
    return f"could not be decoded ({type(err).__name__}: {first})"


def _pad(x: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(x))] = x[:n]
    return out


MAX_CHANNELS = 16  # more channels than any hydrophone or logger records: such an axis holds frames


def as_frames(samples, channel_axis: int | None = None) -> np.ndarray:
    """An array as people hold it → (frames, channels) float32 in [-1, 1] (float64 input stays float64).

    Integer PCM is scaled by its type's range (int16 / 32768, uint8 centred on 128), as libsndfile
    reads files. A 2-D array's channel axis is the one with at most MAX_CHANNELS entries; when both
    or neither qualify, `channel_axis` must say which (ValueError, naming both readings).
    """
    data = np.asarray(samples)
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        middle = (int(info.max) + 1) // 2 if data.dtype.kind == "u" else 0
        data = (data.astype(np.float64) - middle) / (int(info.max) + 1 - middle)
        data = data.astype(np.float32)
    elif data.dtype.kind != "f":
        raise ValueError(f"samples must be numbers (integer PCM or floats), got dtype {data.dtype}")
    elif data.dtype != np.float64:  # float64 stays: a level beyond float32's range is a reason, not an Inf
        data = data.astype(np.float32)
    if data.ndim == 1:
        return data[:, None]
    if data.ndim != 2 or not data.size:
        raise ValueError(f"samples must be (N,) or 2-D (frames and channels) with N > 0, got shape {data.shape}")
    if channel_axis is None:
        fits = [n <= MAX_CHANNELS for n in data.shape]
        if fits[0] == fits[1]:
            a, b = data.shape
            raise ValueError(f"samples of shape {data.shape} read either as {a} frames of {b} channels or as {b} "
                             f"frames of {a} channels; pass channel_axis=1 or channel_axis=0")
        channel_axis = 0 if fits[0] else 1
    if channel_axis not in (0, 1, -1):
        raise ValueError(f"channel_axis must be 0 or 1 for a 2-D array, got {channel_axis}")
    return np.ascontiguousarray(data.T if channel_axis == 0 else data)


class WindowSource:
    """Samples already in memory that read like a SoundFile, for scoring arrays (`LeakDetector.predict_array`)."""

    def __init__(self, samples: np.ndarray, sample_rate: int, channel_axis: int | None = None) -> None:
        data = as_frames(samples, channel_axis)
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {sample_rate}")
        self.subtype = "DOUBLE" if data.dtype == np.float64 else "FLOAT"  # how `_read` checks the level
        self.data, self.samplerate, self.frames, self.channels = data, int(sample_rate), len(data), data.shape[1]
        self._pos = 0

    def tell(self) -> int:
        return self._pos

    def read(self, frames: int, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        out = self.data[self._pos: self._pos + frames]
        self._pos += len(out)
        return out

    def __enter__(self) -> WindowSource:
        return self

    def __exit__(self, *exc) -> None:
        pass


class WindowReader:
    """A whole recording as clip-long windows, read `block` windows at a time (bounded memory).

    Yields (windows (k, num_samples) float32, silent (k,) bool). The last piece is zero-padded, or
    dropped when shorter than one long window (unless it is the whole recording). Window i covers
    the same source frames the builder would read for a clip starting there, so a clip-long
    recording gives exactly the builder's row. After the iteration `flags` holds the recording's
    quality flags (`truncated` when the data ran out before the length its header declares), and
    `times` each window's (start, end) in seconds of the recording (the last one ends where the audio does).
    Errors propagate: the caller turns them into a reason with `reason_of`.
    """

    def __init__(self, path: str | Path | WindowSource, spec: ClipSpec, block: int = 16) -> None:
        self.path, self.spec, self.block = path, spec, max(1, block)
        self.flags: set[str] = set()
        self.windows = self.silent_windows = 0
        self.times: list[tuple[float, float]] = []

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        spec, out, silent = self.spec, [], []
        if isinstance(self.path, WindowSource):
            f, declared = self.path, self.path.frames
        else:
            f, declared = open_checked(self.path)
        with f:  # a cut file is scored as far as it goes, and flagged truncated at the end
            if limited := band_limit_reason(f.samplerate, spec):
                self.flags.add(BAND_LIMITED)
                raise SkipFile(limited)
            rate, per, i, read = f.samplerate, spec.duration_sec * f.samplerate, 0, 0
            while True:
                want = math.ceil((i + 1) * per) - math.ceil(i * per)  # window 0: read_clip's frames
                raw, is_float, error = _read(f, want, self.path, read)
                read += len(raw)
                last = len(raw) < want or error is not None
                if error and not read:
                    raise SkipFile(f"no audio could be decoded ({error}); re-export the file as PCM WAV")
                if len(raw) == 0 or (last and i > 0 and _too_short(len(raw), rate, spec)):
                    break
                if _too_short(len(raw), rate, spec):
                    raise SkipFile(_short_reason(len(raw), rate, spec))
                self.flags.update(level_flags(raw, is_float))
                mono = _downmix(raw)
                start = math.ceil(i * per)
                self.times.append((start / rate, (start + len(raw)) / rate))
                silent.append(is_silent(mono))
                out.append(_pad(_to_rate(mono, rate, spec), spec.num_samples))
                i += 1
                if len(out) == self.block or last:
                    yield self._emit(out, silent)
                if last:
                    break
        if out:
            yield self._emit(out, silent)
        if declared is not None and read < declared:
            self.flags.add(TRUNCATED)
        if self.silent_windows:
            self.flags.add(SILENT if self.silent_windows == self.windows else PARTLY_SILENT)

    def _emit(self, out: list, silent: list) -> tuple[np.ndarray, np.ndarray]:
        block = np.stack(out), np.array(silent)
        self.windows += len(out)
        self.silent_windows += int(block[1].sum())
        out.clear()
        silent.clear()
        return block
