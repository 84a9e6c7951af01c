"""Prediction: one owner for turning scored windows into per-recording answers.

`summarise` makes a `Prediction` from a recording's scored windows; the CLI's `PredictionWriter`
(callbacks/predictions.py) writes them to a CSV and the Python API `LeakDetector` returns them, so both give the same
numbers for the same recording.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from .audio.decode import BAND_LIMITED, SILENT, ClipSpec, WindowReader, WindowSource, reason_of
from .audio.scan import printable
from .fileio import write_atomic


@dataclass(frozen=True)
class Prediction:
    """The answer for one recording.

    status: "ok"; "flagged" (scored, but see `quality`); "silent" (no signal in any window: no score,
    no decision: a dead sensor is not a healthy pipe); "unscored: <reason>" (decoded, but its score is
    not a number: no decision); "skipped: <reason>" (could not be decoded, or recorded at a rate too
    low for the frontend's band: quality `band_limited`).
    """

    path: str
    status: str
    leak_probability: float | None = None  # calibrated on validation (Platt): P(leak) for this recording
    leak: bool | None = None  # the decision at the checkpoint's threshold and aggregation
    leak_score: float | None = None  # uncalibrated: the mean long-window leak probability
    class_scores: dict[str, float] = field(default_factory=dict)  # mean probability per class
    window_scores: list[float] = field(default_factory=list)  # leak score per clip-long window (NaN: silent)
    quality: tuple[str, ...] = ()
    windows: int = 0
    # what `leak` was decided from: leak = decision_score >= decision_cutoff (vote: the fraction of
    # windows whose leak probability reaches the threshold, against the vote fraction; mean: the
    # mean window against the threshold)
    decision_score: float | None = None
    decision_cutoff: float | None = None

    @property
    def top_class(self) -> str | None:
        return max(self.class_scores, key=self.class_scores.get) if self.class_scores else None


def summarise(path: str, scored: list[tuple[int, bool, torch.Tensor, torch.Tensor]], flags, model,
              reason: str | None = None) -> Prediction:
    """(window index, silent, long-window leak probabilities (L,), class probabilities (C,)) per window
    of one recording → its Prediction. Silent windows take no part in the decision."""
    if reason is not None:
        limited = (BAND_LIMITED,) if reason.startswith(BAND_LIMITED) else ()
        return Prediction(path, f"skipped: {reason}", quality=limited)
    scored = sorted(scored, key=lambda r: r[0])
    quality = tuple(sorted(flags))
    live = [(w, c) for _, silent, w, c in scored if not silent]
    window_scores = [math.nan if silent else float(w.mean()) for _, silent, w, _ in scored]
    if not live:
        return Prediction(path, "silent", quality=quality or (SILENT,), window_scores=window_scores,
                          windows=len(scored))
    score, probability, leak, basis, cutoff = model.decide_recording(torch.stack([w for w, _ in live]))
    if not (math.isfinite(score) and math.isfinite(probability)):  # NaN compares as "no leak": never a decision
        return Prediction(path, "unscored: the score is not a number (the samples overflow the frontend; a float "
                                "file scaled far beyond ±1?)", quality=quality, window_scores=window_scores,
                          windows=len(scored))
    classes = torch.stack([c for _, c in live]).mean(0).tolist()
    return Prediction(path, "flagged" if quality else "ok", probability, leak, score,
                      dict(zip(model.class_names, classes)), window_scores, quality, len(scored), basis, cutoff)


def write_csv(path: Path, predictions: list[Prediction], class_names: list[str]) -> None:
    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(["path", "status", "quality", "windows", "leak_score", "leak_probability", "leak_decision",
                    "decision_score", "decision_cutoff", "top_class", *[f"score_{n}" for n in class_names],
                    "window_leak_scores"])
        for p in predictions:
            scored = p.leak_probability is not None
            w.writerow([p.path, p.status, ";".join(p.quality) or ("ok" if scored else ""), p.windows,
                        f"{p.leak_score:.6f}" if scored else "", f"{p.leak_probability:.6f}" if scored else "",
                        int(p.leak) if scored else "", f"{p.decision_score:.6f}" if scored else "",
                        f"{p.decision_cutoff:.6f}" if scored else "",
                        p.top_class or "", *[f"{p.class_scores[n]:.6f}" if scored else "" for n in class_names],
                        ";".join("" if math.isnan(s) else f"{s:.4f}" for s in p.window_scores)])

    write_atomic(path, write)


@dataclass(frozen=True)
class SensorRule:
    """A sensor is reported as leaking when at least `k` of its last `n` scored recordings (by the time in
    their names) were decided leak: a leak persists night after night, a passing noise does not."""

    k: int = 2
    n: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"sensor rule {self.k} of {self.n}: use 1 <= k <= n (e.g. --predictions.sensor_k 2 "
                             "--predictions.sensor_n 3)")

    def __str__(self) -> str:
        return f"leak when {self.k} of the last {self.n} scored recordings are leaks"


@dataclass(frozen=True)
class SensorSummary:
    """One sensor's recordings (or one recording whose name holds no sensor id: sensor "")."""

    sensor: str
    recordings: int
    scored: int  # with a decision (ok or flagged)
    leaks: int  # decided leak
    first_leak: str  # the time (or, without one, the name) of the first and last recording decided leak
    last_leak: str
    last_n: str  # the decisions the rule read, oldest first: "1" leak, "0" no leak
    decision: str  # "leak", "no leak", "too few scored recordings", or "" for a recording without sensor id
    note: str = ""


def _name_parts(path: str) -> tuple[str, str]:
    """`S0012~R0003~20251119T101500~g12.wav` → ('S0012', '2025-11-19 10:15:00'); ('', '') without a sensor id,
    (sensor, '') when the time field is not a time."""
    stem = Path(path).name.rsplit(".", 1)[0]
    parts = stem.split("~")
    if len(parts) != 4 or not parts[0]:
        return "", ""
    try:
        when = datetime.strptime(parts[2], "%Y%m%dT%H%M%S").strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        when = ""
    return parts[0], when


def summarise_sensors(predictions: list[Prediction], rule: SensorRule = SensorRule()) -> list[SensorSummary]:
    """Per sensor (its id from the file names), its recordings in time order and a decision by `rule`."""
    groups: dict[str, list[tuple[str, Prediction]]] = {}
    alone = []
    for p in predictions:
        sensor, when = _name_parts(p.path)
        if sensor:
            groups.setdefault(sensor, []).append((when, p))
        else:
            alone.append(p)
    out = []
    for sensor, items in sorted(groups.items()):
        items.sort(key=lambda item: (item[0] == "", item[0], item[1].path))  # timed first, by time; then by name
        decided = [(when or p.path, bool(p.leak)) for when, p in items if p.leak is not None]
        leaks = [when for when, leak in decided if leak]
        recent = decided[-rule.n:]
        if len(decided) < rule.k:
            verdict = "too few scored recordings"
        else:
            verdict = "leak" if sum(leak for _, leak in recent) >= rule.k else "no leak"
        untimed = sum(1 for when, _ in items if not when)
        out.append(SensorSummary(sensor, len(items), len(decided), len(leaks), leaks[0] if leaks else "",
                                 leaks[-1] if leaks else "", "".join("1" if leak else "0" for _, leak in recent),
                                 verdict, f"{untimed} recording(s) without a time in the name: ordered by name"
                                 if untimed else ""))
    for p in sorted(alone, key=lambda p: p.path):
        out.append(SensorSummary("", 1, int(p.leak is not None), int(bool(p.leak)), "", "", "", "",
                                 f"no sensor id in the name: {p.path}"))
    return out


def write_sensor_csv(path: Path, sensors: list[SensorSummary], rule: SensorRule) -> None:
    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(["sensor", "recordings", "scored", "leak_recordings", "first_leak", "last_leak",
                    f"last_{rule.n}_decisions", "sensor_decision", "rule", "note"])
        for s in sensors:
            w.writerow([s.sensor, s.recordings, s.scored, s.leaks, s.first_leak, s.last_leak, s.last_n, s.decision,
                        str(rule) if s.sensor else "", s.note])

    write_atomic(path, write)


class LeakDetector:
    """Score recordings with a trained checkpoint from Python, no data files or config needed.

        det = LeakDetector.from_checkpoint("runs/x/checkpoints/best.ckpt", device="auto")
        result = det.predict("clip.wav")           # or det.predict_array(samples, sample_rate)
        result.leak, result.leak_probability (calibrated), result.quality

    Decoding, windows, frontend, threshold and aggregation are those of `predict` (and `test`).
    """

    def __init__(self, model, device: torch.device, windows_per_batch: int = 32) -> None:
        self.model, self.device, self.windows_per_batch = model, device, windows_per_batch
        self.spec = ClipSpec.of(model.features)
        self.class_names: list[str] = list(model.class_names)
        self.site: dict | None = model.site  # the site the checkpoint was adapted to (`adapt`), or None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> LeakDetector:
        from .checkpoint_io import read_checkpoint
        from .module import LeakClassifier

        ckpt, _ = read_checkpoint(path, "checkpoint")  # refuses foreign files and newer formats in one line
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           "cpu" if device == "auto" else device)
        model = LeakClassifier.for_inference(ckpt, dev)
        model.prepare_predict()
        if line := model.site_line():
            logging.getLogger(__name__).info("%s", line)
        return cls(model, dev)

    @torch.no_grad()
    def _score(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = [self.model.score_windows(torch.from_numpy(windows[i: i + self.windows_per_batch]).to(self.device))
               for i in range(0, len(windows), self.windows_per_batch)]
        return torch.cat([w for w, _ in out]).cpu(), torch.cat([c for _, c in out]).cpu()

    def _run(self, name: str, reader) -> Prediction:
        return self._scored(name, reader)[0]

    def _scored(self, name: str, reader) -> tuple[Prediction, torch.Tensor | None]:
        try:
            scored = []
            for windows, silent in reader:
                leak, classes = self._score(windows)
                first = len(scored)
                scored += [(first + k, bool(s), leak[k], classes[k]) for k, s in enumerate(silent)]
        except Exception as err:  # one recording: a reason, not a crash
            return summarise(name, [], (), self.model, reason_of(err)), None
        prediction = summarise(name, scored, reader.flags, self.model)
        live = [w for _, silent, w, _ in scored if not silent]
        decided = prediction.leak is not None
        return prediction, torch.cat([w.reshape(-1) for w in live]) if decided else None

    def leak_windows(self, path: str | Path) -> tuple[Prediction, torch.Tensor | None]:
        """A recording's Prediction and the leak probabilities of all its long windows that took part in its
        decision (what the decision rule reads; None when it got no decision): what `adapt` fits a site on."""
        return self._scored(printable(path), WindowReader(path, self.spec))

    def predict(self, path: str | Path) -> Prediction:
        """One recording file (any format libsndfile reads), cut into clip-long windows."""
        return self._run(printable(path), WindowReader(path, self.spec))

    def predict_array(self, samples: np.ndarray, sample_rate: int, name: str = "<array>",
                      channel_axis: int | None = None) -> Prediction:
        """Samples at `sample_rate` (resampled as files are): (N,), or 2-D with a channel axis of at most
        16 channels, either way round ((N, 2) or (2, N); `channel_axis` where both readings fit); floats in
        [-1, 1] or integer PCM (scaled by its type's range, as a WAV file's). A shape or dtype that cannot
        be samples raises ValueError."""
        return self._run(name, WindowReader(WindowSource(samples, sample_rate, channel_axis), self.spec))
