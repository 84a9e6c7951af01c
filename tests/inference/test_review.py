"""`review`: the folder it builds from a predictions CSV (data.js, spectrograms, audio), without a browser.

The predictions are written by predict's own writer from hand-made rows, so every number the folder should hold
is known here; the browser's side is tests/inference/test_review_browser.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.files import cli_exit, one_error, tone, write_wav
from PIL import Image

from leak_lightning.inference.predict import SensorRule, sensors_csv, summarise_sensors, write_outputs
from leak_lightning.inference.queue import Candidate, review_queue
from leak_lightning.inference.review import read_sensor_view, review_site
from leak_lightning.inference.scorer import Prediction

SCRIPT = "<script>alert(1)</script>.wav"


def prediction(path: str, score: float, cutoff: float = 0.5, windows: int = 2) -> Prediction:
    times = [(10.0 * i, 10.0 * (i + 1)) for i in range(windows)]
    return Prediction(path, "ok", leak_probability=score, leak=score >= cutoff, leak_score=score,
                      class_scores={"LEAK": score, "NORMAL": 1 - score}, window_scores=[score] * windows,
                      windows=windows, decision_score=score, decision_cutoff=cutoff, window_times=times)


@pytest.fixture
def site(tmp_path) -> tuple[Path, Path, list[Prediction]]:
    """Six recordings of three sensors over two nights, one named like a script, one unreadable: (folder, csv)."""
    folder = tmp_path / "site"
    names = {"S01~R1~20251119T221500~g0.wav": 0.9, "S01~R2~20251120T031500~g0.wav": 0.7,
             "S02~R1~20251119T221500~g0.wav": 0.45, "S02~R2~20251120T221500~g0.wav": 0.2,
             "S03~R1~20251120T221500~g0.wav": 0.55, SCRIPT: 0.1}
    for i, name in enumerate(names):
        write_wav(folder / name, tone(500 + 100 * i, 20, 4096, seed=i))
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    predictions = [prediction(n, s) for n, s in names.items()] + [prediction("broken.wav", 0.6)]
    csv_path = tmp_path / "out" / "predictions.csv"
    csv_path.parent.mkdir()
    rule = SensorRule()
    write_outputs(csv_path, sorted(predictions, key=lambda p: p.path), ["LEAK", "NORMAL"],
                  summarise_sensors(predictions, rule), rule)
    return folder, csv_path, sorted(predictions, key=lambda p: p.path)


def data_of(out: Path) -> dict:
    text = (out / "data.js").read_text(encoding="utf-8")
    prefix = "window.LEAK_REVIEW = "
    assert text.startswith(prefix) and text.endswith(";\n")
    return json.loads(text[len(prefix):-2])


def test_the_folder_holds_every_recording_its_windows_and_the_queue_of_the_csv(site):
    folder, csv_path, predictions = site
    out = review_site(str(csv_path), str(folder), queue=4)
    assert out == csv_path.with_name("predictions_review")
    assert {p.name for p in out.iterdir()} == {"index.html", "review.js", "review.css", "data.js", "spectrograms",
                                               "audio"}
    data = data_of(out)
    recs = data["recordings"]
    assert [r["path"] for r in recs] == [p.path for p in predictions]
    for r, p in zip(recs, predictions):
        assert r["leak"] == p.leak and r["decision_score"] == pytest.approx(p.decision_score)
        assert r["windows"] == [[a, b, pytest.approx(s)] for (a, b), s in zip(p.window_times, p.window_scores)]
    s01 = next(r for r in recs if r["path"].startswith("S01~R2"))
    assert (s01["sensor"], s01["time"], s01["night"]) == ("S01", "2025-11-20T03:15:00", "2025-11-19")
    # the queue is the ranking's, on the CSV's margins and the sensors and nights read here by hand
    where = {"S01~R1": ("S01", "2025-11-19"), "S01~R2": ("S01", "2025-11-19"), "S02~R1": ("S02", "2025-11-19"),
             "S02~R2": ("S02", "2025-11-20"), "S03~R1": ("S03", "2025-11-20")}
    expected = review_queue([Candidate(i, p.decision_score - p.decision_cutoff, *where.get(p.path[:6], ("", "")))
                             for i, p in enumerate(predictions)], 4)
    assert [q["id"] for q in data["queue"]] == [p.key for p in expected]
    assert [s["sensor"] for s in data["sensors"]] == ["S01", "S02", "S03"]
    assert data["sensors"][0]["decision"] == "too few scored recordings" or data["sensors"][0]["leaks"] == 2


def test_digests_spectrograms_and_audio_are_those_of_the_files(site):
    folder, csv_path, _ = site
    out = review_site(str(csv_path), str(folder))
    recs = {r["path"]: r for r in data_of(out)["recordings"]}
    first = recs["S01~R1~20251119T221500~g0.wav"]
    raw = (folder / first["path"]).read_bytes()
    assert first["digest"] == hashlib.sha256(raw).hexdigest()[:16]
    # the audio: 20 s of the 4096 Hz recording, resampled up to 8192 Hz (twice: at least 8 kHz for browsers)
    info = sf.info(out / first["audio"])
    assert (info.samplerate, info.channels, info.subtype) == (8192, 1, "PCM_16")
    assert info.frames / info.samplerate == pytest.approx(20.0, abs=1e-3) and first["duration"] == pytest.approx(20)
    assert first["max_hz"] == 2048
    # the spectrogram: 0 Hz at the bottom, 2048 Hz at the top; the 500 Hz tone is the brightest row
    img = np.asarray(Image.open(out / first["spectrogram"]).convert("L"), dtype=float)
    rows = img.shape[0]
    brightest = rows - 1 - int(img.mean(axis=1).argmax())
    assert abs(brightest / (rows - 1) * 2048 - 500) < 2048 / (rows - 1) * 1.5
    # the unreadable file: no digest, no media, its reason; the others were built
    broken = recs["broken.wav"]
    assert broken["digest"] is None or broken["spectrogram"] is None
    assert broken["spectrogram"] is None and broken["audio"] is None and broken["problem"]
    assert len(list((out / "audio").iterdir())) == 6


def test_names_reach_the_page_as_data_that_cannot_end_a_script(site):
    folder, csv_path, _ = site
    out = review_site(str(csv_path), str(folder), audio="none")
    text = (out / "data.js").read_text(encoding="utf-8")
    assert "<" not in text and ">" not in text and "\\u003cscript\\u003e" in text
    assert SCRIPT in [r["path"] for r in data_of(out)["recordings"]]
    # files in the folder are named by number, never by a recording's name
    assert all(p.name[:6].isdigit() for p in (out / "spectrograms").iterdir())
    assert not any((out / "audio").iterdir())


def test_a_name_that_leaves_the_recordings_folder_is_not_read(site, tmp_path):
    folder, csv_path, predictions = site
    secret = tmp_path / "secret.wav"
    write_wav(secret, tone(300, 12, 4096))
    os.symlink(secret, folder / "S09~R1~20251119T221500~g0.wav")
    predictions += [prediction("../secret.wav", 0.8), prediction("S09~R1~20251119T221500~g0.wav", 0.8)]
    rule = SensorRule()
    write_outputs(csv_path, sorted(predictions, key=lambda p: p.path), ["LEAK", "NORMAL"],
                  summarise_sensors(predictions, rule), rule)
    recs = {r["path"]: r for r in data_of(review_site(str(csv_path), str(folder), overwrite=True))["recordings"]}
    for name in ("../secret.wav", "S09~R1~20251119T221500~g0.wav"):
        assert recs[name]["digest"] is None and recs[name]["audio"] is None
        assert recs[name]["problem"] == f"outside --recordings {folder}: not read"


def test_a_sensor_view_of_another_predict_is_refused_and_a_missing_one_is_computed(site, caplog):
    folder, csv_path, predictions = site
    view = sensors_csv(csv_path)
    lines = view.read_text().splitlines()
    view.write_text("\n".join(line.replace("S03,1,", "S03,2,") for line in lines) + "\n")
    with pytest.raises(ValueError, match="does not match .*predictions.csv .*belongs to another predict"):
        review_site(str(csv_path), str(folder))
    view.unlink()
    rows = [{"path": p.path, "status": p.status, "leak_decision": str(int(p.leak))} for p in predictions]
    sensors, rule = read_sensor_view(csv_path, rows)
    assert [s["sensor"] for s in sensors] == ["S01", "S02", "S03"] and "computed by review" in rule
    assert "no sensor view" in caplog.text


def test_overwrite_replaces_only_a_review_folder(site, tmp_path, capsys):
    folder, csv_path, _ = site
    out = tmp_path / "rev"
    review_site(str(csv_path), str(folder), str(out), audio="none")
    code, err = cli_exit(capsys, "review", "--predictions", str(csv_path), "--recordings", str(folder),
                         "--output", str(out))
    assert "exists: pass --overwrite true" in one_error(code, err)
    review_site(str(csv_path), str(folder), str(out), audio="queue", queue=2, overwrite=True)
    assert len(list((out / "audio").iterdir())) == 2  # the new one, whole, in place of the old
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("years of work")
    code, err = cli_exit(capsys, "review", "--predictions", str(csv_path), "--recordings", str(folder),
                         "--output", str(other), "--overwrite", "true")
    assert "is not a review folder of yours" in one_error(code, err)
    assert (other / "chapter1.tex").read_text() == "years of work"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside


def test_bad_input_is_one_line(tmp_path, capsys, site):
    folder, csv_path, _ = site
    code, err = cli_exit(capsys, "review", "--predictions", str(tmp_path / "nope.csv"))
    assert "--predictions" in one_error(code, err) and "no such file" in err
    (tmp_path / "other.csv").write_text("path,label\na.wav,LEAK\n")
    code, err = cli_exit(capsys, "review", "--predictions", str(tmp_path / "other.csv"))
    assert "not a predictions CSV" in one_error(code, err)
    code, err = cli_exit(capsys, "review", "--predictions", str(csv_path), "--recordings", str(tmp_path / "none"))
    assert "--recordings" in one_error(code, err) and "no such folder" in err
    # the folder predict read forgotten: the CSV's paths are found nowhere, and no page of 'not found' is built
    code, err = cli_exit(capsys, "review", "--predictions", str(csv_path), "--output", str(tmp_path / "r"))
    assert "none of its 7 recordings (e.g. <script>" in one_error(code, err)
    assert "give --recordings the folder predict read" in err and not (tmp_path / "r").exists()
    code, err = cli_exit(capsys, "review", "--predictions", str(csv_path), "--queue", "-3")
    assert one_error(code, err).endswith("--queue -3: use 0 or more recordings")
    (tmp_path / "latin1.csv").write_bytes("path,status\nf\xe9.wav,ok\n".encode("latin-1"))
    code, err = cli_exit(capsys, "review", "--predictions", str(tmp_path / "latin1.csv"))
    assert "latin1.csv: not a CSV predict wrote" in one_error(code, err)


def test_a_csv_saved_again_by_a_spreadsheet_is_read(site):
    folder, csv_path, predictions = site
    for path in (csv_path, sensors_csv(csv_path)):  # with a byte-order mark, as a spreadsheet saves
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = data_of(review_site(str(csv_path), str(folder)))
    assert [r["path"] for r in data["recordings"]] == [p.path for p in predictions]
    assert [s["sensor"] for s in data["sensors"]] == ["S01", "S02", "S03"]


def test_a_full_disk_is_one_line_and_leaves_nothing(site, mount, capsys):
    folder, csv_path, _ = site
    small = mount("size=300k")  # the page and data fit, the audio does not
    code, err = cli_exit(capsys, "review", "--predictions", str(csv_path), "--recordings", str(folder), "--output",
                         str(small / "rev"))
    line = one_error(code, err)
    assert "review stopped:" in line and "No space left on device" in line and "half-written folder was removed" in line
    assert not list(small.iterdir())  # no folder, no temporary, no lock
