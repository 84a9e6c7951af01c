"""The one scoring path of inference: clip-long windows → scores per window → a recording's `Prediction`.

`predict` (LeakClassifier.predict_step, then callbacks/predictions.PredictionWriter) and the Python API
(`predict.LeakDetector`, and `adapt` through it) both score through a `WindowScorer`, so the same recording gets the
same numbers whichever way it is read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..audio.decode import BAND_LIMITED, OUT_OF_RANGE, SILENT
from ..audio.features import LogMelFrontend


class WindowScores(NamedTuple):
    """Scores of clip-long windows: per long window the leak probability (W, L), per window the class
    probabilities (W, C), and for a recording-level network each window's pooled frame sums (W, 1 + 4·D; merged
    over a recording's windows by `PooledFrames.merge`), else None."""

    leak: torch.Tensor
    classes: torch.Tensor
    pooled: torch.Tensor | None = None


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
    # uncalibrated: the mean long-window leak probability (a recording-level network: its pooled probability)
    leak_score: float | None = None
    # mean probability per class over the windows (a recording-level network: from all its frames pooled)
    class_scores: dict[str, float] = field(default_factory=dict)
    window_scores: list[float] = field(default_factory=list)  # leak score per clip-long window (NaN: silent)
    quality: tuple[str, ...] = ()
    windows: int = 0
    # what `leak` was decided from: leak = decision_score >= decision_cutoff (vote: the fraction of
    # windows whose leak probability reaches the threshold, against the vote fraction; mean: the
    # mean window against the threshold)
    decision_score: float | None = None
    decision_cutoff: float | None = None
    # each window's (start, end) in seconds of the recording, beside its score: where a listener finds the leak
    window_times: list[tuple[float, float]] = field(default_factory=list)

    @property
    def top_class(self) -> str | None:
        return max(self.class_scores, key=self.class_scores.get) if self.class_scores else None


def summarise(path: str, scored: list[tuple], flags, model, reason: str | None = None,
              times: list[tuple[float, float]] = ()) -> Prediction:
    """(window index, silent, long-window leak probabilities (L,), class probabilities (C,)[, pooled frame sums of
    a recording-level network]) per window of one recording, and the windows' (start, end) seconds → its
    Prediction. Silent windows take no part in the decision."""
    if reason is not None:
        named = tuple(f for f in (BAND_LIMITED, OUT_OF_RANGE) if reason.startswith(f"{f}:"))
        return Prediction(path, f"skipped: {reason}", quality=named)
    scored = sorted(scored, key=lambda r: r[0])
    quality = tuple(sorted(flags))
    live = [r for r in scored if not r[1]]
    window_scores = [math.nan if r[1] else float(r[2].mean()) for r in scored]
    where = {"window_scores": window_scores, "window_times": list(times), "windows": len(scored)}
    if not live:
        return Prediction(path, "silent", quality=quality or (SILENT,), **where)
    if model.whole_recordings:  # the recording's own class probabilities, from all its frames pooled
        probs = model.recording_probabilities(torch.stack([r[4] for r in live]))
        inputs, classes = probs[model.leak_index].reshape(1), probs.tolist()
    else:
        inputs, classes = torch.stack([r[2] for r in live]), torch.stack([r[3] for r in live]).mean(0).tolist()
    score, probability, leak, basis, cutoff = model.decide_recording(inputs)
    if not (math.isfinite(score) and math.isfinite(probability)):  # NaN compares as "no leak": never a decision
        return Prediction(path, "unscored: the score is not a number (the samples overflow the frontend; a float "
                                "file scaled far beyond ±1?)", quality=quality, **where)
    return Prediction(path, "flagged" if quality else "ok", probability, leak, score,
                      dict(zip(model.class_names, classes)), window_scores, quality=quality, windows=len(scored),
                      decision_score=basis, decision_cutoff=cutoff, window_times=list(times))


def score_segments(model, seg: torch.Tensor) -> WindowScores:
    """(W, L, S, n_mels, T) segments → leak probability per long window (W, L), class probabilities (W, C) and,
    for a recording-level network, each window's pooled frame sums (its frame head gives the window scores)."""
    n_windows, n_long, n_short = seg.shape[:3]
    pooled = None
    if model.whole_recordings:
        sums, frames = model.net.pooled(seg.reshape(n_windows, n_long * n_short, *seg.shape[-2:]))
        logits, pooled = frames.float(), sums.pack()
    else:
        logits = model(seg.reshape(-1, *seg.shape[-2:])).float()
    probs = torch.sigmoid(logits).reshape(n_windows, n_long, n_short, -1)
    return WindowScores(probs[..., model.leak_index].mean(2), probs.mean((1, 2)), pooled)


class WindowScorer:
    """An eval-mode LeakClassifier and the frontend for inference, on the model's device: decoded windows →
    `WindowScores`, and a finished recording's windows → its `Prediction` (by the checkpoint's decision rule).

    The frontend is the builder's (`LogMelFrontend` of the checkpoint's features, its log-mel rounded to float16 as
    the builder stores it). It is held here, not by the model: its mel buffers are no part of a checkpoint.
    """

    def __init__(self, model) -> None:
        self.model = model
        self.frontend = LogMelFrontend(model.features).to(model.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def segments(self, wave: torch.Tensor) -> torch.Tensor:
        """(W, num_samples) clip-long windows → their (W, L, S, n_mels, T) log-mel segments, float16."""
        return self.frontend(wave).half()

    @torch.no_grad()
    def score(self, wave: torch.Tensor) -> WindowScores:
        """(W, num_samples) clip-long windows on the model's device → their WindowScores (one forward pass)."""
        return score_segments(self.model, self.segments(wave))

    def score_in_batches(self, wave: torch.Tensor, batch: int) -> WindowScores:
        """Any number of windows, `batch` at a time on the model's device → their WindowScores on the CPU."""
        out = [self.score(wave[i: i + batch].to(self.device)) for i in range(0, len(wave), batch)]
        pooled = torch.cat([o.pooled for o in out]).cpu() if self.model.whole_recordings else None
        return WindowScores(torch.cat([o.leak for o in out]).cpu(), torch.cat([o.classes for o in out]).cpu(), pooled)

    @staticmethod
    def rows(index: Iterable[int], silent: Iterable[bool], scores: WindowScores) -> list[tuple]:
        """Per window what `summarise` reads: (window index, silent, leak probabilities (L,), class probabilities
        (C,), pooled frame sums or None), on the CPU. What is kept of a window is never its segments: a
        recording-level network's pooled sums are a few KB, merged per recording at its end."""
        pooled = scores.pooled.cpu() if scores.pooled is not None else [None] * len(scores.leak)
        return list(zip(index, silent, scores.leak.cpu(), scores.classes.cpu(), pooled))

    def summarise(self, path: str, rows: list[tuple], flags, reason: str | None = None,
                  times: list[tuple[float, float]] = ()) -> Prediction:
        """A finished recording's rows (`rows`, any order) → its Prediction; `reason`: why it was not read."""
        return summarise(path, rows, flags, self.model, reason, times)


def site_line(site: dict | None, decision) -> str | None:
    """One line on the site a checkpoint was adapted to (its site record, `adapt`), or None; `decision`: the
    checkpoint's DecisionRule, which an adapted rule is read from."""
    if not site:
        return None
    if site.get("unlabelled"):
        d = site["decided_leak"]
        return (f"checkpoint adapted to site {site['name']!r} without labels: batch-norm statistics of "
                f"{site['recordings']} recordings (decided leak there: {d['before']} before, {d['after']} after)")
    before, after = site["before"]["f1"], site["after_cross_validated"]["f1"]
    rule = "its base rule kept" if site.get("kept_base_rule") else decision.reading_text()
    return (f"checkpoint adapted to site {site['name']!r} on {site['recordings']} recordings ({site['leaks']} leaks; "
            f"leak F1 {before:.3f} with the base rule, {after:.3f} adapted, cross-validated; {rule})")
