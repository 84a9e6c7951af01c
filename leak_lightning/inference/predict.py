"""Prediction's outputs: the per-recording CSV, the per-sensor view beside it, and the Python API `LeakDetector`.

Recordings are scored and summarised by `scorer.WindowScorer` (`summarise` makes a `Prediction` from a recording's
scored windows); the CLI's `PredictionWriter` (callbacks/predictions.py) writes its answers to a CSV and
`LeakDetector` returns them, so both give the same numbers for the same recording.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import torch

from ..audio.decode import ClipSpec, WindowReader, WindowSource, reason_of
from ..audio.scan import printable
from ..runtime.fileio import TMP_MARK, check_output_name, fsync_dir, pid_alive, remove_stale_temporaries, write_atomic
from .scorer import Prediction, WindowScorer, site_line

log = logging.getLogger(__name__)


def write_csv(path: Path, predictions: list[Prediction], class_names: list[str]) -> None:
    def write(f) -> None:
        w = csv.writer(f)
        w.writerow(["path", "status", "quality", "windows", "leak_score", "leak_probability", "leak_decision",
                    "decision_score", "decision_cutoff", "top_class", *[f"score_{n}" for n in class_names],
                    "window_leak_scores", "window_seconds"])
        for p in predictions:
            scored = p.leak_probability is not None
            w.writerow([p.path, p.status, ";".join(p.quality) or ("ok" if scored else ""), p.windows,
                        f"{p.leak_score:.6f}" if scored else "", f"{p.leak_probability:.6f}" if scored else "",
                        int(p.leak) if scored else "", f"{p.decision_score:.6f}" if scored else "",
                        f"{p.decision_cutoff:.6f}" if scored else "",
                        p.top_class or "", *[f"{p.class_scores[n]:.6f}" if scored else "" for n in class_names],
                        ";".join("" if math.isnan(s) else f"{s:.4f}" for s in p.window_scores),
                        ";".join(f"{a:.3f}-{b:.3f}" for a, b in p.window_times)])

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
    # "leak", "no leak", "too few scored recordings", "order unknown" (the rule's answer depends on where
    # recordings whose time is unknown fall; see the note), or "" for a recording without sensor id
    decision: str
    note: str = ""


# ISO 8601 date and time, basic (20251119T101500) or extended (2025-11-19T10:15:00), never a mix of the two
# (2025-11-19T101500 reads as a typo, not a time); seconds optional, a fraction of a second after "." or ",";
# offset Z, ±HH, ±HHMM or ±HH:MM (either form: an offset alone cannot be misread)
_BASIC = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(?:(\d{2})(?:[.,](\d+))?)?(Z|[+-]\d{2}(?::?\d{2})?)?",
                    re.ASCII)
_EXTENDED = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
                       r"(Z|[+-]\d{2}(?::?\d{2})?)?", re.ASCII)
_MAX_OFFSET = timedelta(hours=14)  # the widest offset in use (UTC+14; the lowest is UTC-12)


def read_time(text: str) -> datetime | None:
    """The time field of a name, ISO 8601 as people write it → a naive datetime taken as written, or (with an
    offset: `Z`, `+01:00`, `-0500`) an aware one converted to UTC; None when it is not such a time or names
    no real one (20251399T999999)."""
    match = _BASIC.fullmatch(text.upper()) or _EXTENDED.fullmatch(text.upper())
    if match is None:
        return None
    *fields, fraction, zone = match.groups()
    try:
        when = datetime(*(int(f or 0) for f in fields), int((fraction or "0")[:6].ljust(6, "0")))
        if zone is None:
            return when
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2] or 0), minutes=int(digits[2:] or 0))
        if offset > _MAX_OFFSET or int(digits[2:] or 0) >= 60:
            return None
        return when.replace(tzinfo=timezone(-offset if zone[0] == "-" else offset)).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # no such day or hour, or a year the offset pushes out of range
        return None


def _shown(when: datetime) -> str:
    spec = "seconds" if not when.microsecond else "milliseconds" if when.microsecond % 1000 == 0 else "microseconds"
    text = when.replace(tzinfo=None).isoformat(sep=" ", timespec=spec)
    return f"{text} UTC" if when.tzinfo else text


def _name_parts(path: str) -> tuple[str, str]:
    """`S0012~R0003~20251119T101500~g12.wav` → ('S0012', '20251119T101500'): the sensor id and the time field as
    written; ('', '') without a sensor id."""
    stem = Path(path).name.rsplit(".", 1)[0]
    parts = stem.split("~")
    if len(parts) != 4 or not parts[0]:
        return "", ""
    return parts[0], parts[2]


def name_fields(path: str) -> tuple[str, datetime | None]:
    """The sensor id and the time a recording's name holds (`S0012~R0003~20251119T101500~g12.wav`): ('', None)
    without a sensor id, a None time where it holds none that can be read (`read_time`)."""
    sensor, when = _name_parts(path)
    return sensor, read_time(when) if sensor else None


@dataclass(frozen=True)
class _Recording:
    path: str
    when: datetime | None  # naive: as written; aware: in UTC
    leak: bool | None  # None: no decision

    @property
    def label(self) -> str:
        return _shown(self.when) if self.when else self.path

    def key(self, shift: timedelta) -> tuple[datetime, str]:
        """Its place in time; a time without an offset moved by `shift` (its unknown offset)."""
        if self.when.tzinfo:
            return self.when.replace(tzinfo=None), self.path
        try:
            return self.when + shift, self.path
        except OverflowError:
            return self.when, self.path


def _orders(timed: list[_Recording]) -> list[list[_Recording]]:
    """Every order of the timed recordings that their names allow: one, unless times without an offset
    meet times with one; then one for each range of the unknown offset (within ±14 h) that orders them
    differently."""
    naive = [r.when for r in timed if not r.when.tzinfo]
    aware = [r.key(timedelta(0))[0] for r in timed if r.when.tzinfo]
    if not naive or not aware:
        return [timed]
    edges = sorted({b - a for a in naive for b in aware if -_MAX_OFFSET < b - a < _MAX_OFFSET})
    points = [-_MAX_OFFSET, *edges, _MAX_OFFSET]
    shifts = [points[0], *((a + b) / 2 for a, b in zip(points, points[1:])), points[-1]]
    return [sorted(timed, key=lambda r: r.key(shift)) for shift in shifts]


def _verdict(timed: list[bool], untimed: list[bool], rule: SensorRule) -> set[str]:
    """The rule's answers over every place the untimed decisions could take among the timed ones (in time
    order): the last n are a tail of the timed ones plus any n - j of the untimed."""
    scored = len(timed) + len(untimed)
    if scored < rule.k:
        return {"too few scored recordings"}
    n, ones = min(rule.n, scored), sum(untimed)
    counts = []
    for j in range(max(0, n - len(untimed)), min(n, len(timed)) + 1):
        tail = sum(timed[len(timed) - j:])
        counts += [tail + max(0, n - j - (len(untimed) - ones)), tail + min(n - j, ones)]  # fewest, most leaks
    return {"leak" if c >= rule.k else "no leak" for c in counts}


def _sensor_summary(sensor: str, items: list[_Recording], rule: SensorRule) -> SensorSummary:
    timed = sorted((r for r in items if r.when), key=lambda r: r.key(timedelta(0)))
    untimed = sorted((r for r in items if not r.when), key=lambda r: r.path)
    decided = [r for r in timed + untimed if r.leak is not None]  # the order shown: timed first, then by name
    answers = set().union(*(_verdict([r.leak for r in order if r.leak is not None],
                                     [r.leak for r in untimed if r.leak is not None], rule)
                            for order in _orders(timed)))
    decision = answers.pop() if len(answers) == 1 else "order unknown"
    notes = []
    if untimed:
        notes.append(f"{len(untimed)} recording(s) without a time in the name that can be read (ISO 8601, e.g. "
                     f"20251119T101500 or 2025-11-19T10:15:00Z), ordered after the timed ones by name: "
                     + ", ".join(r.path for r in untimed))
    naive = [r.path for r in timed if not r.when.tzinfo]
    if naive and len(naive) < len(timed):
        fewer, kind = (naive, "without") if 2 * len(naive) <= len(timed) else \
            ([r.path for r in timed if r.when.tzinfo], "with")
        notes.append(f"names mix times with a UTC offset and without one ({len(fewer)} {kind}: {', '.join(fewer)}); "
                     "times without are taken as written and ordered as if UTC, so their true order is unknown "
                     "by up to 14 h")
    if notes and decision != "too few scored recordings":
        notes.append("the decision depends on that order: order unknown" if decision == "order unknown" else
                     "the decision holds whatever that order")
    leaks = [r.label for r in decided if r.leak]
    recent = decided[-rule.n:]
    return SensorSummary(sensor, len(items), len(decided), len(leaks), leaks[0] if leaks else "",
                         leaks[-1] if leaks else "", "".join("1" if r.leak else "0" for r in recent), decision,
                         "; ".join(notes))


def summarise_sensors(predictions: list[Prediction], rule: SensorRule = SensorRule()) -> list[SensorSummary]:
    """Per sensor (its id from the file names), its recordings in time order and a decision by `rule`: one that
    holds for every order the names allow, else "order unknown"."""
    groups: dict[str, list[_Recording]] = {}
    alone = []
    for p in predictions:
        sensor, when = _name_parts(p.path)
        if sensor:
            groups.setdefault(sensor, []).append(_Recording(p.path, read_time(when), p.leak))
        else:
            alone.append(p)
    out = [_sensor_summary(sensor, items, rule) for sensor, items in sorted(groups.items())]
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


def sensors_csv(predictions: Path) -> Path:
    """The sensor summary beside the predictions CSV: `<stem>_sensors.csv`, its stem shortened to fit a name."""
    suffix = b"_sensors.csv"
    stem = predictions.stem.encode()[: 255 - len(suffix)].decode(errors="ignore")
    return predictions.with_name(f"{stem}_sensors.csv")


_PAIR, _COMMITTED = ".predict-pair-", ".commit-"


def write_outputs(path: Path, predictions: list[Prediction], class_names: list[str], sensors: list[SensorSummary],
                  rule: SensorRule) -> Path:
    """Publish the CSV at `path` and its sensor view (`sensors_csv(path)`, returned) as one unit.

    Both are written into a private folder beside them, which one rename marks committed before they move
    into place: a kill before that rename leaves the old pair (the folder is a dead writer's temporary, swept),
    a kill after it a committed pair that the next predict moves into place first (`finish_outputs`).
    """
    finish_outputs(path)
    for target in (path, sensors_csv(path)):  # the members are renamed, not written through: check as replacing does
        check_output_name(target)
    stage = Path(tempfile.mkdtemp(prefix=_PAIR, suffix=f"{TMP_MARK}{os.getpid()}", dir=path.parent))
    try:
        write_csv(stage / path.name, predictions, class_names)
        write_sensor_csv(stage / sensors_csv(path).name, sensors, rule)
        fsync_dir(stage)
        committed = stage.with_name(f"{stage.name.rsplit(TMP_MARK, 1)[0]}{_COMMITTED}{os.getpid()}")
        os.rename(stage, committed)
        fsync_dir(path.parent)  # the commit is durable before the first member moves
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _move_into_place(committed, path)
    return sensors_csv(path)


def _publish(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # one member into place (a seam: the tests pause a real predict between two of these)


def _move_into_place(committed: Path, path: Path) -> None:
    for name in (sensors_csv(path).name, path.name):  # the CSV last: a new CSV means its sensor view is there
        if (committed / name).is_file():  # else moved already, by the predict that was killed
            _publish(committed / name, path.with_name(name))
    fsync_dir(path.parent)
    shutil.rmtree(committed, ignore_errors=True)


def finish_outputs(path: Path) -> list[Path]:
    """Move into place the pair for `path` that a killed predict committed but had not finished moving (and
    sweep dead writers' uncommitted ones); return the files moved. Only this user's folders holding nothing
    but this pair's names are read: the folder is shared, another output's pair is its own predict's."""
    remove_stale_temporaries(path.parent)
    names, found = {path.name, sensors_csv(path).name}, []
    for folder in path.parent.glob(f"{_PAIR}*{_COMMITTED}*"):
        pid = folder.name.rsplit(_COMMITTED, 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        try:
            st = folder.lstat()
            members = {m.name for m in folder.iterdir()}
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and members <= names:
            found.append((st.st_ctime_ns, folder, members))
    moved = []
    for _, folder, members in sorted(found):  # two killed at once: the later commit wins
        _move_into_place(folder, path)
        moved += [path.with_name(name) for name in sorted(members)]
    if moved:
        log.warning("%s: a killed predict had committed these but not moved them all into place; moved now: %s",
                    path.parent, ", ".join(p.name for p in moved))
    return moved


class LeakDetector:
    """Score recordings with a trained checkpoint from Python, no data files or config needed.

        det = LeakDetector.from_checkpoint("runs/x/checkpoints/best.ckpt", device="auto")
        result = det.predict("clip.wav")           # or det.predict_array(samples, sample_rate)
        result.leak, result.leak_probability (calibrated), result.quality

    Decoding, windows, frontend, threshold and aggregation are those of `predict` (and `test`).
    """

    def __init__(self, model, device: torch.device, windows_per_batch: int = 32) -> None:
        self.model, self.device, self.windows_per_batch = model, device, windows_per_batch
        self.scorer: WindowScorer = model.prepare_predict()  # the one scoring path, `predict`'s too
        self.spec = ClipSpec.of(model.features)
        self.class_names: list[str] = list(model.class_names)
        self.site: dict | None = model.site  # the site the checkpoint was adapted to (`adapt`), or None

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> LeakDetector:
        from ..checkpoint.io import read_checkpoint
        from ..training.module import LeakClassifier

        ckpt, _ = read_checkpoint(path, "checkpoint")  # refuses foreign files and newer formats in one line
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           "cpu" if device == "auto" else device)
        model = LeakClassifier.for_inference(ckpt, dev)
        if line := site_line(model.site, model.decision):
            logging.getLogger(__name__).info("%s", line)
        return cls(model, dev)

    def _run(self, name: str, reader) -> Prediction:
        return self._scored(name, reader)[0]

    def _scored(self, name: str, reader) -> tuple[Prediction, torch.Tensor | None]:
        try:
            scored = []
            for windows, silent in reader:
                scores = self.scorer.score_in_batches(torch.from_numpy(windows), self.windows_per_batch)
                scored += self.scorer.rows(range(len(scored), len(scored) + len(silent)), silent.tolist(), scores)
        except Exception as err:  # one recording: a reason, not a crash
            return self.scorer.summarise(name, [], (), reason_of(err)), None
        prediction = self.scorer.summarise(name, scored, reader.flags, times=reader.times)
        if prediction.leak is None:
            return prediction, None
        if self.model.whole_recordings:  # its score is its one pooled probability, what the rule read
            return prediction, torch.tensor([prediction.leak_score])
        return prediction, torch.cat([r[2].reshape(-1) for r in scored if not r[1]])

    def leak_windows(self, path: str | Path) -> tuple[Prediction, torch.Tensor | None]:
        """A recording's Prediction and what its decision rule read (None when it got no decision): the leak
        probabilities of all its long windows that took part, or a recording-level network's one pooled
        probability. What `adapt` fits a site on."""
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
