"""`review`: a site's predictions as a folder a crew chief opens in any browser, from disk.

`predict` answers in CSV files; the people who act on them look at each logger over its nights and listen. This
turns a predictions CSV, its sensor view and the recordings it names into a self-contained folder (no server, no
network: every script, style and image is in it): every sensor over its nights, each recording's spectrogram with
its windows' leak scores and an audio player, and the review queue (queue.py) whose labels the page exports as
labels.csv (labels.py) for `adapt --labels`.

The page (review_page/) is static; what it shows is in `data.js`, one JSON statement written here. Files in the
folder are named by recording number, never by recording name; every name reaches the page as JSON data that the
page writes as text.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import stat
import time
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from ..audio.decode import SkipFile, read_mono, reason_of
from ..runtime.fileio import check_output_name, exchange, file_digest, make_private, remove_private
from ..runtime.rundir import FolderLock
from . import labels
from .predict import SensorRule, name_fields, sensors_csv, summarise_sensors
from .queue import candidate_of, night_of, review_queue
from .scorer import Prediction

log = logging.getLogger(__name__)
FORMAT = 1
PAGE = ("index.html", "review.js", "review.css")
MIN_AUDIO_RATE = 8000  # browsers decode WAV at common rates; a 4 kHz logger file is resampled up for them
# at most 800 columns, about 20 a second (a 10 s recording: 200): its windows' scores are drawn along it
SPECTROGRAM_COLUMNS, COLUMNS_PER_SECOND, SPECTROGRAM_ROWS, DYNAMIC_RANGE_DB = 800, 20, 128, 80.0
NEEDED = ("path", "status", "quality", "leak_score", "leak_probability", "leak_decision", "decision_score",
          "decision_cutoff", "window_leak_scores", "window_seconds")
QUEUE_RULE = ("The queue alternates between the two sides of the decision cutoff, the side decided leak first; the "
              "sides share its places in proportion to their recordings (at least 3 each, what adapt needs). On "
              "each side it starts at the recording nearest the cutoff and walks out with widening steps to the "
              "most confident one (the k-th of K picks sits (k / (K - 1))³ of the way; recordings of equal margin, "
              "as a vote over one window gives, in the order of their leak score), so that the labels bracket the "
              "site's own boundary even where it lies far from the base cutoff. Near each step it prefers a sensor "
              "not yet in the queue, then a night of that sensor not yet in it: recordings of one pipe and one "
              "night are alike, and teach less twice.")


def review_site(predictions: str, recordings: str | None = None, output: str | None = None, queue: int = 20,
                audio: Literal["all", "queue", "none"] = "all", max_seconds: float = 600.0,
                overwrite: bool = False) -> Path:
    """Build the review folder of a predictions CSV.

    Args:
        predictions: the predictions CSV written by `predict` (its sensor view `<stem>_sensors.csv` beside it is
            read too).
        recordings: the folder `predict` read: the CSV's paths are relative to it (default: the paths as written,
            relative to the current folder).
        output: the folder to write (default: `<predictions stem>_review` beside the CSV).
        queue: how many recordings the review queue holds.
        audio: which recordings get a copy of their audio in the folder: all, the queue's, or none.
        max_seconds: the spectrogram and audio cover at most this much of each recording.
        overwrite: replace an existing review folder at `output`.
    """
    source = Path(predictions)
    if queue < 0:
        raise ValueError(f"--queue {queue}: use 0 or more recordings")
    if not max_seconds > 0:
        raise ValueError(f"--max_seconds {max_seconds}: use a positive number of seconds")
    rows = read_predictions(source)
    root = Path(recordings) if recordings is not None else None
    if root is not None and not root.is_dir():
        raise FileNotFoundError(f"--recordings {root}: no such folder; give the folder predict read")
    _check_found(rows, root, source)
    sensors, rule = read_sensor_view(source, rows)
    out = Path(output) if output else source.with_name(f"{source.stem}_review")
    check_output_name(out, "--output")
    with FolderLock(out.parent, "--output", name=f".{out.name}.lock"):
        _check_replaceable(out, overwrite)
        folder, ident = make_private(out)
        try:
            t0 = time.perf_counter()
            data = _site_data(source, rows, root, sensors, rule, queue, audio)
            _write_media(folder, data, root, audio, max_seconds)
            _write_page(folder, data)
            _publish(folder, out)
        finally:
            remove_private(folder, ident)
    log.info("review of %d recordings (%d in the queue) in %.1f s: open %s in a browser", len(rows),
             len(data["queue"]), time.perf_counter() - t0, out / "index.html", extra={"colour": "success"})
    return out


def _check_found(rows: list[dict], root: Path | None, source: Path) -> None:
    """At least one recording the CSV names is where its path says: else --recordings is the wrong folder (or
    missing), and a page of nothing but 'not found' would be built."""
    for row in rows:
        with contextlib.suppress(SkipFile, OSError):
            if _locate(row["path"], root).is_file():
                return
    where = f"under --recordings {root}" if root is not None else f"relative to the current folder ({Path.cwd()})"
    raise FileNotFoundError(f"--predictions {source}: none of its {len(rows)} recordings (e.g. {rows[0]['path']}) "
                            f"is {where}; give --recordings the folder predict read")


def read_predictions(path: Path) -> list[dict]:
    """The rows of a predictions CSV, checked to be one `predict` wrote."""
    if not path.is_file():
        raise FileNotFoundError(f"--predictions {path}: no such file; give the CSV predict wrote")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a CSV a spreadsheet saved again has a BOM
            reader = csv.DictReader(f)
            missing = [c for c in NEEDED if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"--predictions {path}: no column(s) {', '.join(missing)}: not a predictions CSV "
                                 "of this version of predict; run predict again")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"--predictions {path}: not a CSV predict wrote ({err}); run predict again") from None
    if not rows:
        raise ValueError(f"--predictions {path}: no recordings in it; predict a folder of recordings first")
    return rows


def read_sensor_view(source: Path, rows: list[dict]) -> tuple[list[dict], str]:
    """The sensor view beside the CSV, checked against the CSV's recordings (another predict's view is refused);
    without one, the view computed here with the default rule, and said so."""
    view = sensors_csv(source)
    counts: dict[str, int] = {}
    for r in rows:
        sensor = name_fields(r["path"])[0]
        if sensor:
            counts[sensor] = counts.get(sensor, 0) + 1
    if not view.is_file():
        rule = SensorRule()
        log.warning("no sensor view %s beside %s: the sensors' verdicts are computed here with the default rule "
                    "(%s)", view, source, rule)
        summaries = summarise_sensors([Prediction(r["path"], r["status"], leak=_leak(r)) for r in rows], rule)
        return [{"sensor": s.sensor, "recordings": s.recordings, "scored": s.scored, "leaks": s.leaks,
                 "decision": s.decision, "last_n": s.last_n, "note": s.note} for s in summaries if s.sensor], \
            f"{rule} (computed by review: no sensor view)"
    with open(view, newline="", encoding="utf-8-sig") as f:
        found = [s for s in csv.DictReader(f) if s.get("sensor")]
    seen = {s["sensor"]: _int(s.get("recordings")) for s in found}
    if seen != counts:
        raise ValueError(f"{view} does not match {source} (its sensors or their recordings differ): it belongs to "
                         "another predict; run predict again to write the pair together")
    last = next((k for k in (found[0] if found else {}) if k.startswith("last_")), "")
    sensors = [{"sensor": s["sensor"], "recordings": _int(s["recordings"]), "scored": _int(s.get("scored")),
                "leaks": _int(s.get("leak_recordings")), "decision": s.get("sensor_decision", ""),
                "last_n": s.get(last, ""), "note": s.get("note", "")} for s in found]
    return sensors, next((s["rule"] for s in found if s.get("rule")), "")


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _leak(row: dict) -> bool | None:
    return {"1": True, "0": False}.get(row["leak_decision"])


def _windows(row: dict) -> list[list]:
    """[start s, end s, leak score or None (silent)] per window, from the CSV's two window columns."""
    scores = row["window_leak_scores"].split(";") if row["window_leak_scores"] else []
    times = row["window_seconds"].split(";") if row["window_seconds"] else []
    out = []
    for score, span in zip(scores, times):
        a, _, b = span.partition("-")
        out.append([_float(a), _float(b), _float(score)])
    return out


def _site_data(source: Path, rows: list[dict], root: Path | None, sensors: list[dict], rule: str, size: int,
               audio: str) -> dict:
    recordings = []
    for i, r in enumerate(rows):
        sensor, when = name_fields(r["path"])
        shown = when.replace(tzinfo=None).isoformat() + ("Z" if when.tzinfo else "") if when else None
        recordings.append({"id": i, "path": r["path"], "sensor": sensor, "time": shown, "night": night_of(when),
                           "status": r["status"], "quality": [q for q in r["quality"].split(";") if q and q != "ok"],
                           "leak": _leak(r), "leak_score": _float(r["leak_score"]),
                           "leak_probability": _float(r["leak_probability"]),
                           "decision_score": _float(r["decision_score"]),
                           "decision_cutoff": _float(r["decision_cutoff"]), "windows": _windows(r), "digest": None,
                           "spectrogram": None, "audio": None, "duration": None, "max_hz": None, "problem": ""})
    candidates = [candidate_of(r["id"], r["path"], r["decision_score"], r["decision_cutoff"], r["leak_score"])
                  for r in recordings if r["leak"] is not None]
    picks = review_queue([c for c in candidates if c is not None], size)
    digest = file_digest(source)
    return {"format": FORMAT, "title": source.name, "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "source": {"predictions": str(source.resolve()), "predictions_sha256": digest,
                       "sensors": str(sensors_csv(source).resolve()) if sensors_csv(source).is_file() else None,
                       "recordings": str(root.resolve()) if root else str(Path.cwd())},
            "sensor_rule": rule, "storage_key": f"leak-review:{digest[:16]}", "label_columns": list(labels.COLUMNS),
            "label_values": list(labels.VALUES), "audio": audio, "recordings": recordings, "sensors": sensors,
            "queue": [{"id": p.key, "why": p.why} for p in picks], "queue_rule": QUEUE_RULE}


def _locate(path: str, root: Path | None) -> Path:
    """The file a CSV path names; one that leaves `root` (`..`, an absolute path, a link out of it) is refused:
    the CSV may be someone else's, and its names are data, never a way to read elsewhere."""
    if root is None:
        return Path(path)
    candidate = root / path
    if Path(path).is_absolute() or not candidate.resolve().is_relative_to(root.resolve()):
        raise SkipFile(f"outside --recordings {root}: not read")
    return candidate


def _write_media(folder: Path, data: dict, root: Path | None, audio: str, max_seconds: float) -> None:
    """Per recording: its digest, its spectrogram and (per `audio`) a WAV of it; a recording that cannot be read
    gets a problem text instead, and the others go on."""
    (folder / "spectrograms").mkdir()
    (folder / "audio").mkdir()
    queued = {q["id"] for q in data["queue"]}
    problems = 0
    for rec in data["recordings"]:
        try:
            path = _locate(rec["path"], root)
            rec["digest"] = labels.recording_digest(path)
            mono, rate, longer = read_mono(path, max_seconds)
        except Exception as err:  # one recording: a reason on the page, not a failed build
            rec["problem"] = reason_of(err)
            problems += 1
            continue
        name = f"{rec['id']:06d}"
        rec["duration"], rec["max_hz"] = len(mono) / rate, rate / 2
        spectrogram_png(mono, rate, folder / "spectrograms" / f"{name}.png")
        rec["spectrogram"] = f"spectrograms/{name}.png"
        if longer:
            rec["problem"] = f"longer than {max_seconds:g} s: the spectrogram and audio show its start"
        if audio == "all" or (audio == "queue" and rec["id"] in queued):
            write_wav(mono, rate, folder / "audio" / f"{name}.wav")
            rec["audio"] = f"audio/{name}.wav"
    if problems:
        log.warning("%d of %d recordings could not be read (their reasons are on the page); the rest are shown",
                    problems, len(data["recordings"]))


def spectrogram_png(mono: np.ndarray, rate: int, path: Path) -> None:
    """A log-magnitude spectrogram as a PNG: time left to right over the whole signal, 0 Hz at the bottom up to
    rate / 2 at the top, the top `DYNAMIC_RANGE_DB` of the recording in the 'magma' colour map."""
    from matplotlib import colormaps
    from PIL import Image

    n_fft = 2 * (SPECTROGRAM_ROWS - 1)
    x = np.pad(mono.astype(np.float32), (0, max(0, n_fft - len(mono))))
    columns = min(SPECTROGRAM_COLUMNS, max(1, round(len(mono) / rate * COLUMNS_PER_SECOND)))
    hop = max(n_fft // 4, math.ceil((len(x) - n_fft + 1) / columns))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # (T, n_fft), no copy
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2  # (T, rows)
    db = 10 * np.log10(power + 1e-20)
    top = db.max()
    level = np.clip((db - (top - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0, 1)
    image = Image.fromarray(np.ascontiguousarray((level.T[::-1] * 255).astype(np.uint8)))
    image.putpalette((colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8).tobytes())
    image.save(path)  # one byte a pixel and its 256 colours: a third of an RGB image's size


def write_wav(mono: np.ndarray, rate: int, path: Path) -> None:
    """Mono PCM16 WAV a browser plays: a rate below MIN_AUDIO_RATE raised by the integer factor that reaches it
    (4096 Hz → 8192 Hz), by zero-padding the spectrum: the same sound, nothing added above its old band."""
    import soundfile as sf

    if rate < MIN_AUDIO_RATE:
        factor = math.ceil(MIN_AUDIO_RATE / rate)
        mono = np.fft.irfft(np.fft.rfft(mono), len(mono) * factor) * factor
        rate *= factor
    wav = io.BytesIO()  # written by Python: a full disk is an OSError that says so (libsndfile's: "System error")
    sf.write(wav, np.clip(mono, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    path.write_bytes(wav.getvalue())


def _write_page(folder: Path, data: dict) -> None:
    page = resources.files("leak_lightning.inference") / "review_page"
    for name in PAGE:
        (folder / name).write_bytes((page / name).read_bytes())
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)  # no name can end the script, in any context the page puts it in
    (folder / "data.js").write_text(f"window.LEAK_REVIEW = {text};\n", encoding="utf-8")


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """`out` may be replaced only with `overwrite`, and only if it is a review folder of ours (never a link, and
    never another folder: overwrite removes what it replaces)."""
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    if not overwrite:
        raise FileExistsError(f"--output {out} exists: pass --overwrite true to replace it, or another --output")
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or not all(
            (out / name).is_file() for name in ("index.html", "data.js")):
        raise ValueError(f"--output {out} is not a review folder of yours (a link, a file, another user's or "
                         "another kind of folder): --overwrite replaces only a review folder; use another --output")


def _publish(folder: Path, out: Path) -> None:
    """The finished folder into place in one step: a new name by rename; an old review swapped out atomically
    (`exchange`) and then removed, so a reader never meets a half-written folder."""
    os.chmod(folder, 0o755)  # made private (0700) while being written; readable by others like any output
    if not os.path.lexists(out):
        os.rename(folder, out)
    elif exchange(folder, out):
        shutil.rmtree(folder, ignore_errors=True)  # the old review, now at the temporary name
    else:  # no atomic swap on this file system: a moment without a folder at `out`
        old = folder.with_name(folder.name + ".old")
        os.rename(out, old)
        os.rename(folder, out)
        shutil.rmtree(old, ignore_errors=True)
