"""Synthetic pipe-acoustics WAV corpora in the real folder layouts, for tests and demos.
LEAK is learnable from spectrum shape only: per-clip loudness is drawn alike for every class."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

DEFAULT_LABELS = ("BACKGROUND", "CRACK", "LEAK", "NORMAL", "UNCLASSIFIED")
SPLITS = ("TRAINING", "VALIDATION", "TESTING")

_T0 = datetime(2025, 11, 19, 10, 15, 0)  # first recording of sensor 0; later ones follow on
_RMS_RANGE = (0.02, 0.25)  # per-clip output RMS, log-uniform, identical for every class


@dataclass(frozen=True)
class _Sensor:
    """What stays fixed across one sensor's recordings: its pipe and its hardware."""

    resonances: np.ndarray  # Hz, 2–4 pipe modes that a leak's hiss excites
    bandwidths: np.ndarray  # Hz, one per resonance
    crack_band: float  # Hz, centre of a crack's narrow hiss (higher than the leak modes)
    hum_f0: float  # Hz, rotation rate of the nearest pump
    self_noise: float  # sensor noise floor relative to a unit-RMS source
    pinkness: float  # 0 = white leak hiss, 1 = pink


@dataclass(frozen=True)
class Conditions:
    """Another network than the standard one, for robustness tests; the defaults change nothing.

    Args:
        resonance_scale: every pipe mode (and its bandwidth) moves by this factor (material, diameter).
        gain_db: the sensor's gain: every clip is this much louder (clipped at full scale, as a
            real sensor would be).
        background: "machinery" replaces the pump hum of ambient and BACKGROUND sounds by a
            generator's harmonic whine (80-200 Hz fundamental, harmonics up to 2 kHz): a noise
            the standard corpus never has.
        leak_level: a leak's hiss at this share of its level against the ambient noise (distant leaks: 1/3).
    """

    resonance_scale: float = 1.0
    gain_db: float = 0.0
    background: Literal["standard", "machinery"] = "standard"
    leak_level: float = 1.0


STANDARD = Conditions()


@dataclass(frozen=True)
class _Ctx:
    """Everything a sound source needs to render one clip."""

    rng: np.random.Generator
    sr: int
    n: int
    f: np.ndarray  # rfft bin frequencies in Hz
    sensor: _Sensor
    conditions: Conditions = STANDARD


@dataclass(frozen=True)
class _WriteSpec:
    seed: int
    sample_rate: int
    duration_sec: float
    channels: int
    subtype: str
    sensors_per_label: int
    conditions: Conditions = STANDARD


# ---------------------------------------------------------------- spectral building blocks


@lru_cache(maxsize=8)
def _freqs(n: int, sr: int) -> np.ndarray:
    f = np.fft.rfftfreq(n, 1.0 / sr).astype(np.float32)
    f.setflags(write=False)  # shared between calls through the cache
    return f


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x / max(rms, 1e-12)).astype(np.float32, copy=False)


def _noise(ctx: _Ctx, magnitude: np.ndarray) -> np.ndarray:
    """Unit-RMS Gaussian noise with the given amplitude spectrum.

    Random complex bins times a magnitude, then one irfft: any filter shape costs the same
    and there are no recursive filters to keep stable.
    """
    re, im = ctx.rng.standard_normal((2, magnitude.size), dtype=np.float32)
    spec = (re + np.complex64(1j) * im) * magnitude
    spec[0] = 0.0  # no DC offset: contact sensors are AC-coupled
    return _unit_rms(np.fft.irfft(spec, ctx.n))


def _peaks(f: np.ndarray, centres: np.ndarray, widths: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Sum of resonance-shaped (Lorentzian) peaks: a pipe mode seen as a band-pass."""
    d = (f[None, :] - centres[:, None]) / widths[:, None]
    return (gains[:, None] / (1.0 + d * d)).sum(axis=0).astype(np.float32)


def _highpass(f: np.ndarray, fc: float, order: int = 2) -> np.ndarray:
    x = (f / fc).astype(np.float64)  # float64: x**(2·order) would overflow float32 far up
    return (x**order / np.sqrt(1.0 + x ** (2 * order))).astype(np.float32)


def _lowpass(f: np.ndarray, fc: float, order: int = 2) -> np.ndarray:
    x = (f / fc).astype(np.float64)
    return (1.0 / np.sqrt(1.0 + x ** (2 * order))).astype(np.float32)


def _tilt(f: np.ndarray, pinkness: float) -> np.ndarray:
    # pinkness 1 → amplitude ∝ f^-1/2 (power ∝ 1/f); floor at 10 Hz keeps the bottom bins finite
    return (np.maximum(f, 10.0) / 100.0) ** (-0.5 * pinkness)


def _slow_envelope(ctx: _Ctx, rate_hz: float, depth: float) -> np.ndarray:
    """1 + depth·(smooth random wander at about rate_hz): linear interpolation of a few
    control points is far cheaper than low-pass filtering a full-rate signal."""
    points = int(ctx.n / ctx.sr * rate_hz) + 2
    ctrl = ctx.rng.standard_normal(points)
    env = np.interp(np.linspace(0.0, points - 1.0, ctx.n), np.arange(points), ctrl)
    return np.maximum(1.0 + depth * env, 0.05).astype(np.float32)


def _convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # Circular FFT convolution: the few-ms tail that wraps to the start is negligible.
    n = x.size
    return np.fft.irfft(np.fft.rfft(x) * np.fft.rfft(kernel, n), n).astype(np.float32)


def _impulses(ctx: _Ctx, positions: np.ndarray) -> np.ndarray:
    """Impulse train with log-normal amplitudes and random polarity at `positions`."""
    x = np.zeros(ctx.n, dtype=np.float32)
    amps = ctx.rng.lognormal(0.0, 0.6, positions.size) * ctx.rng.choice([-1.0, 1.0], positions.size)
    np.add.at(x, positions % ctx.n, amps.astype(np.float32))
    return x


def _ring(sr: int, freq: float, decay_s: float) -> np.ndarray:
    """A struck structure: exponentially decaying sinusoid."""
    t = np.arange(int(5 * decay_s * sr) + 1) / sr
    return (np.exp(-t / decay_s) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# ---------------------------------------------------------------- sound sources (unit RMS)


def _pipe_modes(ctx: _Ctx, gain_range: tuple[float, float]) -> np.ndarray:
    """The sensor's pipe resonances, detuned a little per clip (temperature, pressure)."""
    s, rng = ctx.sensor, ctx.rng
    centres = s.resonances * rng.uniform(0.97, 1.03, s.resonances.size)
    gains = rng.uniform(*gain_range, s.resonances.size)
    return _peaks(ctx.f, centres, s.bandwidths, gains)


def _leak_hiss(ctx: _Ctx) -> np.ndarray:
    """Turbulent outflow: broadband hiss coloured by the pipe modes, little below ~100 Hz."""
    rng = ctx.rng
    shape = rng.uniform(0.2, 0.6) + _pipe_modes(ctx, (1.0, 4.0))
    shape = shape * _tilt(ctx.f, ctx.sensor.pinkness)
    shape = shape * _highpass(ctx.f, rng.uniform(80, 150)) * _lowpass(ctx.f, rng.uniform(1500, 2500))
    return _noise(ctx, shape)


def _crack_hiss(ctx: _Ctx) -> np.ndarray:
    """A hairline crack jets through a tiny gap: narrower band, higher frequency than a leak."""
    rng, fc = ctx.rng, ctx.sensor.crack_band
    centres = np.array([fc, fc * rng.uniform(0.8, 0.95)])
    shape = _peaks(ctx.f, centres, rng.uniform(15, 50, 2), np.array([1.0, rng.uniform(0.2, 0.8)]))
    return _noise(ctx, (0.03 + shape) * _highpass(ctx.f, 500.0, 4))


def _crackle(ctx: _Ctx) -> np.ndarray:
    """Sporadic bursts of tiny fractures, each ringing near the crack band."""
    rng, dur = ctx.rng, ctx.n / ctx.sr
    bursts = max(1, int(rng.poisson(rng.uniform(0.3, 1.5) * dur)))
    counts = rng.integers(5, 40, bursts)
    spread = np.repeat(rng.uniform(0.02, 0.25, bursts) * ctx.sr, counts)
    starts = np.repeat(rng.integers(0, ctx.n, bursts), counts)
    positions = starts + (rng.random(counts.sum()) * spread).astype(np.int64)
    freq = min(ctx.sensor.crack_band * rng.uniform(0.9, 1.1), 0.45 * ctx.sr)
    return _unit_rms(_convolve(_impulses(ctx, positions), _ring(ctx.sr, freq, rng.uniform(1e-3, 4e-3))))


def _clicks(ctx: _Ctx) -> np.ndarray:
    """Valve knocks, footsteps, tools: isolated broadband transients."""
    rng = ctx.rng
    count = max(1, int(rng.poisson(rng.uniform(0.2, 3.0) * ctx.n / ctx.sr)))
    decay = rng.uniform(0.5e-3, 3e-3)
    t = np.arange(int(5 * decay * ctx.sr) + 1) / ctx.sr
    kernel = (np.exp(-t / decay) * rng.standard_normal(t.size)).astype(np.float32)
    return _unit_rms(_convolve(_impulses(ctx, rng.integers(0, ctx.n, count)), kernel))


def _hum(ctx: _Ctx) -> np.ndarray:
    """Pump hum: a fundamental plus 3–8 harmonics, with a slight speed wobble."""
    rng = ctx.rng
    f0 = ctx.sensor.hum_f0 * rng.uniform(0.99, 1.01)
    k = np.arange(1, rng.integers(4, 10) + 1)
    k = k[k * f0 < 0.45 * ctx.sr]
    wobble = _slow_envelope(ctx, 0.5, 0.002).astype(np.float64)
    phase = np.cumsum(wobble) * (2 * np.pi * f0 / ctx.sr)
    # Accumulate in float64, then wrap: k·(phase mod 2π) is the same angle for integer k and
    # small enough for a float32 sine, which is what makes the harmonics cheap.
    phase = np.mod(phase, 2 * np.pi).astype(np.float32)
    amps = (rng.uniform(0.2, 1.0, k.size) / k**0.7).astype(np.float32)
    offsets = rng.uniform(0, 2 * np.pi, k.size).astype(np.float32)
    x = amps @ np.sin(k[:, None].astype(np.float32) * phase[None, :] + offsets[:, None])
    return _unit_rms(x)


def _rumble(ctx: _Ctx) -> np.ndarray:
    """Traffic: low-passed noise below ~150 Hz whose level swells as vehicles pass."""
    rng = ctx.rng
    shape = _lowpass(ctx.f, rng.uniform(40, 150), 4) * _tilt(ctx.f, 1.0)
    env = _slow_envelope(ctx, rng.uniform(0.05, 0.3), rng.uniform(0.4, 0.8))
    return _unit_rms(_noise(ctx, shape) * env)


def _flow(ctx: _Ctx) -> np.ndarray:
    """Intact pipe: faint pink flow noise lightly coloured by the pipe, plus low flow hum."""
    rng = ctx.rng
    bed = _noise(ctx, _tilt(ctx.f, 1.0) * (1.0 + _pipe_modes(ctx, (0.1, 0.8))) * _highpass(ctx.f, 15.0))
    hum_shape = _peaks(ctx.f, np.array([rng.uniform(30, 120)]), np.array([rng.uniform(8, 30)]), np.ones(1))
    return _unit_rms(bed + rng.uniform(0.2, 0.8) * _noise(ctx, hum_shape))


def _ambient(ctx: _Ctx, probability: float) -> np.ndarray | float:
    """Leaks and cracks happen near pumps and roads too: sometimes add one weak non-leak source."""
    rng = ctx.rng
    if rng.random() >= probability:
        return 0.0
    source = (_pump(ctx), _rumble, _clicks)[int(rng.integers(3))]
    return rng.uniform(0.05, 0.5) * source(ctx)


def _machinery(ctx: _Ctx) -> np.ndarray:
    """A generator or compressor: a 80-200 Hz fundamental with harmonics up to 2 kHz, slowly beating."""
    rng = ctx.rng
    f0 = rng.uniform(80.0, 200.0)
    k = np.arange(1, int(min(2000.0, 0.45 * ctx.sr) // f0) + 1)
    centres, widths = f0 * k * rng.uniform(0.995, 1.005, k.size), np.full(k.size, rng.uniform(2.0, 6.0))
    comb = _peaks(ctx.f, centres, widths, rng.uniform(0.3, 1.0, k.size) / k**0.3)
    return _unit_rms(_noise(ctx, comb) * _slow_envelope(ctx, rng.uniform(0.5, 2.0), 0.3))


def _pump(ctx: _Ctx):
    """The tonal source of the ambient: the standard pump hum, or another noise altogether."""
    return _machinery if ctx.conditions.background == "machinery" else _hum


# ---------------------------------------------------------------- class recipes


def _leak(ctx: _Ctx) -> np.ndarray:
    rng = ctx.rng
    env = _slow_envelope(ctx, rng.uniform(0.2, 1.5), rng.uniform(0.1, 0.35))
    # Small or distant leaks are faint: some sit barely above the sensor floor and the ambient.
    level = np.exp(rng.uniform(np.log(0.2), np.log(1.0))) * ctx.conditions.leak_level
    return level * _leak_hiss(ctx) * env + _ambient(ctx, 0.6)


def _crack(ctx: _Ctx) -> np.ndarray:
    rng = ctx.rng
    env = _slow_envelope(ctx, rng.uniform(0.2, 1.0), rng.uniform(0.05, 0.2))
    return _crack_hiss(ctx) * env + rng.uniform(0.3, 1.2) * _crackle(ctx) + _ambient(ctx, 0.5)


def _normal(ctx: _Ctx) -> np.ndarray:
    # Quiet: the sensor's own noise floor (added later at a fixed level) weighs more here.
    return ctx.rng.uniform(0.15, 0.4) * (_flow(ctx) + _ambient(ctx, 0.2))


def _background(ctx: _Ctx) -> np.ndarray:
    rng = ctx.rng
    return (rng.uniform(0.2, 1.0) * _pump(ctx)(ctx) + rng.uniform(0.2, 1.2) * _rumble(ctx)
            + rng.uniform(0.05, 0.6) * _clicks(ctx))


def _unclassified(ctx: _Ctx) -> np.ndarray:
    """The hard class: a random mix of non-leak sources, now and then with a weak leak-like hiss."""
    rng = ctx.rng
    sources = (_flow, _hum, _rumble, _clicks, _crackle)
    picked = rng.choice(len(sources), size=int(rng.integers(1, 4)), replace=False)
    x = sum(rng.uniform(0.2, 1.0) * sources[i](ctx) for i in sorted(picked))
    if rng.random() < 0.35:
        x = x + rng.uniform(0.1, 0.4) * _leak_hiss(ctx)
    return rng.uniform(0.3, 1.0) * x


_RECIPES: dict[str, Callable[[_Ctx], np.ndarray]] = {
    "BACKGROUND": _background,
    "CRACK": _crack,
    "LEAK": _leak,
    "NORMAL": _normal,
    "UNCLASSIFIED": _unclassified,
}


def _recipe(label: str) -> Callable[[_Ctx], np.ndarray]:
    try:
        return _RECIPES[label.upper()]
    except KeyError:
        raise ValueError(f"no synthetic recipe for label {label!r}; known: {sorted(_RECIPES)}") from None


# ---------------------------------------------------------------- clips


def _draw_sensor(rng: np.random.Generator, sr: int) -> _Sensor:
    top = 0.45 * sr  # keep every component below Nyquist at low sample rates
    k = int(rng.integers(2, 5))
    resonances = np.sort(rng.uniform(200.0, min(1500.0, top), k))
    crack_band = rng.uniform(min(1000.0, 0.35 * sr), min(1900.0, top))
    # Pumps run either locked to the mains (25/30/50/60 Hz) or at a variable speed.
    hum_f0 = rng.choice([25.0, 30.0, 50.0, 60.0]) if rng.random() < 0.5 else rng.uniform(20.0, 60.0)
    return _Sensor(resonances=resonances, bandwidths=rng.uniform(25.0, 120.0, k),
                   crack_band=float(crack_band), hum_f0=float(hum_f0),
                   self_noise=float(np.exp(rng.uniform(np.log(0.03), np.log(0.15)))),
                   pinkness=float(rng.uniform(0.0, 1.0)))


def _num_samples(sample_rate: int, duration_sec: float) -> int:
    n = int(round(sample_rate * duration_sec))
    if sample_rate <= 0 or n < 16:
        raise ValueError(f"need sample_rate > 0 and at least 16 samples per clip, "
                         f"got {sample_rate} Hz × {duration_sec} s")
    return n


def _synth(label: str, rng: np.random.Generator, sensor: _Sensor, sample_rate: int,
           duration_sec: float, conditions: Conditions = STANDARD) -> np.ndarray:
    recipe = _recipe(label)
    n = _num_samples(sample_rate, duration_sec)
    if conditions.resonance_scale != 1.0:
        scale = conditions.resonance_scale
        sensor = replace(sensor, resonances=np.minimum(sensor.resonances * scale, 0.45 * sample_rate),
                         bandwidths=sensor.bandwidths * scale)
    ctx = _Ctx(rng, sample_rate, n, _freqs(n, sample_rate), sensor, conditions)
    x = recipe(ctx)
    white_ish = 1.0 + 0.5 * ctx.f / ctx.f[-1]  # electronics noise, slightly rising with frequency
    x = x + sensor.self_noise * rng.uniform(0.8, 1.25) * _noise(ctx, white_ish)
    # Loudness comes from one distribution for every class, so level alone says nothing;
    # RMS (not peak) normalisation, because peaks would leak each class's crest factor.
    target = np.exp(rng.uniform(np.log(_RMS_RANGE[0]), np.log(_RMS_RANGE[1])))
    if conditions.gain_db:
        target *= 10 ** (conditions.gain_db / 20)
    return np.clip(_unit_rms(x) * np.float32(target), -1.0, 1.0).astype(np.float32)


def synth_clip(label: str, rng: np.random.Generator, sample_rate: int = 4096,
               duration_sec: float = 10.0) -> np.ndarray:
    """One clip of `label` heard by a freshly drawn sensor: float32 mono in [-1, 1]."""
    return _synth(label, rng, _draw_sensor(rng, sample_rate), sample_rate, duration_sec)


def sensor_file_name(sensor: int, recording: int, timestamp: str, gain: int) -> str:
    """`S0012~R0003~20251119T101500~g12.wav`: the `sensor~recording~timestamp~gain` convention."""
    if sensor < 0 or recording < 0 or gain < 0:
        raise ValueError(f"sensor, recording and gain must be >= 0, got {sensor}, {recording}, {gain}")
    if not timestamp or any(c in timestamp for c in "~/\\"):
        raise ValueError(f"timestamp {timestamp!r} must be non-empty without '~' or path separators")
    return f"S{sensor:04d}~R{recording:04d}~{timestamp}~g{gain}.wav"


# ---------------------------------------------------------------- corpus layout


def _allocate(total: int, fractions: Sequence[float]) -> list[int]:
    """Split `total` by `fractions` (largest remainder), giving every share at least 1."""
    raw = np.asarray(fractions, dtype=float) / sum(fractions) * total
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() > total:  # the minimum of 1 overshot: take back from the most over-served
        over = np.where(counts > 1, counts - raw, -np.inf)
        counts[int(np.argmax(over))] -= 1
    while counts.sum() < total:
        counts[int(np.argmax(raw - counts))] += 1
    return counts.tolist()


def _spread(total: int, parts: int) -> list[int]:
    q, r = divmod(total, parts)
    return [q + 1] * r + [q] * (parts - r)


def _plan(layout: str, files: int, sensors: int,
          fractions: Sequence[float]) -> list[tuple[str | None, int, int]]:
    """(split or None, sensor index, recordings) per sensor; a sensor never spans two splits."""
    if layout == "pool":
        groups = [(None, range(sensors), files)]
    else:
        edges = np.cumsum([0, *_allocate(sensors, fractions)])
        file_counts = _allocate(files, fractions)
        groups = [(split, range(edges[i], edges[i + 1]), file_counts[i]) for i, split in enumerate(SPLITS)]
    jobs = []
    for split, sensor_indices, n_files in groups:
        per_sensor = _spread(n_files, len(sensor_indices))
        jobs += [(split, int(si), k) for si, k in zip(sensor_indices, per_sensor) if k > 0]
    return jobs


def _check_args(layout: str, labels: Sequence[str], files: int, sensors: int,
                fractions: Sequence[float], channels: int, subtype: str) -> None:
    need = 3 if layout == "origin" else 1  # origin: every split gets its own file and sensor
    checks = [
        (layout in ("origin", "pool"), f"layout must be 'origin' or 'pool', got {layout!r}"),
        (len(labels) > 0 and len(set(labels)) == len(labels), f"labels must be unique, got {labels}"),
        (len(fractions) == 3 and min(fractions) > 0,
         f"split_fractions must be 3 positive numbers, got {fractions}"),
        (sensors >= need, f"layout {layout!r} needs sensors_per_label >= {need}, got {sensors}"),
        (files >= need, f"layout {layout!r} needs files_per_label >= {need}, got {files}"),
        (channels >= 1, f"channels must be >= 1, got {channels}"),
        (sf.check_format("WAV", subtype),
         f"subtype {subtype!r} is not writable as WAV; try PCM_16, PCM_24, PCM_32 or FLOAT"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    for label in labels:
        _recipe(label)


def _to_channels(mono: np.ndarray, channels: int, rng: np.random.Generator) -> np.ndarray:
    """Extra channels are a second transducer on the same pipe: other gain, own noise."""
    if channels == 1:
        return mono
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    cols = [mono]
    for _ in range(channels - 1):
        gain = 10.0 ** (rng.uniform(-1.5, 1.5) / 20.0)
        cols.append(mono * gain + 0.05 * rms * rng.standard_normal(mono.size, dtype=np.float32))
    return np.clip(np.stack(cols, axis=1), -1.0, 1.0).astype(np.float32)


def _zero_peak_timestamp(path: Path) -> None:
    """libsndfile stamps float WAVs' PEAK chunk with the wall clock; zero it so that a seed
    gives the same bytes on every run."""
    with open(path, "r+b") as fh:
        pos = 12  # past "RIFF", size, "WAVE"
        while True:
            fh.seek(pos)
            header = fh.read(8)
            if len(header) < 8 or header[:4] == b"data":
                return
            size = struct.unpack("<I", header[4:])[0]
            if header[:4] == b"PEAK":
                fh.seek(pos + 12)  # chunk header (8) + version (4) → timestamp
                fh.write(b"\0\0\0\0")
                return
            pos += 8 + size + (size & 1)


def _write_sensor(root: Path, split: str | None, label: str, label_index: int,
                  sensor_index: int, recordings: int, spec: _WriteSpec) -> list[Path]:
    """All recordings of one sensor; the label name (not its position) seeds the audio."""
    label_key = zlib.crc32(label.encode())
    sensor_rng = np.random.default_rng([spec.seed, label_key, sensor_index])
    sensor = _draw_sensor(sensor_rng, spec.sample_rate)
    gain = int(sensor_rng.integers(0, 31))
    start = _T0 + timedelta(days=sensor_index, minutes=int(sensor_rng.integers(0, 600)))
    sensor_id = label_index * spec.sensors_per_label + sensor_index + 1
    folder = root / split / label if split else root / label
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rec in range(1, recordings + 1):
        rng = np.random.default_rng([spec.seed, label_key, sensor_index, rec])
        stamp = (start + timedelta(minutes=15 * (rec - 1))).strftime("%Y%m%dT%H%M%S")
        path = folder / sensor_file_name(sensor_id, rec, stamp, gain)
        mono = _synth(label, rng, sensor, spec.sample_rate, spec.duration_sec, spec.conditions)
        sf.write(path, _to_channels(mono, spec.channels, rng), spec.sample_rate,
                 subtype=spec.subtype, format="WAV")
        if spec.subtype in ("FLOAT", "DOUBLE"):
            _zero_peak_timestamp(path)
        paths.append(path)
    return paths


def make_dataset(root: str | Path, *, layout: Literal["origin", "pool"] = "origin",
                 labels: Sequence[str] = DEFAULT_LABELS, files_per_label: int = 40,
                 sensors_per_label: int = 8, seed: int = 0, sample_rate: int = 4096,
                 duration_sec: float = 10.0, channels: int = 1, subtype: str = "PCM_16",
                 split_fractions: Sequence[float] = (0.7, 0.2, 0.1), conditions: Conditions = STANDARD) -> list[Path]:
    """Write a labelled corpus under `root` and return the written paths.

    origin: root/{TRAINING,VALIDATION,TESTING}/<LABEL>/*.wav, `files_per_label` in total per
    label, split by `split_fractions`, each split at least one file and its own sensors.
    pool: root/<LABEL>/*.wav. Same seed, same bytes. Files of the same name are overwritten;
    other files already under `root` are left alone. `conditions` shift the corpus away from the
    standard network (resonances, gain, background noise) with the same seeds otherwise.
    """
    _check_args(layout, labels, files_per_label, sensors_per_label, split_fractions, channels, subtype)
    _num_samples(sample_rate, duration_sec)
    spec = _WriteSpec(seed, sample_rate, duration_sec, channels, subtype, sensors_per_label, conditions)
    root = Path(root)
    written: list[Path] = []
    for label_index, label in enumerate(labels):
        for split, sensor_index, recordings in _plan(layout, files_per_label, sensors_per_label,
                                                     split_fractions):
            written += _write_sensor(root, split, label, label_index, sensor_index, recordings, spec)
    log.debug("wrote %d synthetic clips under %s", len(written), root)
    return written
