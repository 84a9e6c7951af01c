"""predict on odd recordings: a row for every name, quality flags, no decision for a dead sensor."""

from __future__ import annotations

import csv
import os

import numpy as np
import soundfile as sf
from helpers.files import REPO, cli_exit, data_args, one_error, tone, write_wav

from leak_lightning.cli import main
from leak_lightning.inference.predict import Prediction, SensorRule, summarise_sensors


def predict(h5, run, target, out_dir, *extra) -> dict[str, dict]:
    import shutil

    shutil.copytree(run / "checkpoints", out_dir / "checkpoints")
    main(["predict", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(h5), "--trainer.default_root_dir",
          str(out_dir), "--data.predict_path", str(target), "--console.log_file", "null", *extra])
    return {row["path"]: row for row in csv.DictReader((out_dir / "predictions.csv").open(encoding="utf-8"))}


def test_every_name_gets_a_row_with_its_status_and_quality(small_h5, trained_run, tmp_path):
    folder = tmp_path / "wavs"
    x = tone(500, 10, 4096)
    write_wav(folder / "good.wav", x)
    write_wav(folder / "dead.wav", np.zeros_like(x))
    write_wav(folder / "cancel.wav", np.stack([x, -x], axis=1), subtype="FLOAT")
    write_wav(folder / "scaled.wav", x * 32767, subtype="FLOAT")
    write_wav(folder / "tiny441.wav", np.full(3, 0.1, dtype=np.float32), sr=44100)
    sf.write(folder / "long.flac", tone(500, 25, 4096), 4096, format="FLAC")  # read by suffix
    os.symlink("missing.wav", folder / "dangling.wav")
    os.mkfifo(folder / "fifo.wav")
    (folder / "folder.wav").mkdir()
    os.rename(write_wav(folder / "t.wav", x), os.path.join(os.fsencode(folder), b"caf\xe9.wav"))
    rows = predict(small_h5, trained_run, folder, tmp_path / "run")
    assert set(rows) == {"good.wav", "dead.wav", "cancel.wav", "scaled.wav", "tiny441.wav", "long.flac",
                         "dangling.wav", "fifo.wav", "folder.wav", "caf\\xe9.wav"}
    assert rows["good.wav"]["status"] == "ok" and rows["good.wav"]["quality"] == "ok"
    assert rows["good.wav"]["leak_decision"] in ("0", "1")
    for dead in ("dead.wav", "cancel.wav"):  # a dead sensor is not a healthy pipe: no score, no decision
        assert rows[dead]["status"] == "silent" and rows[dead]["leak_decision"] == "" == rows[dead]["leak_score"]
    assert rows["scaled.wav"]["status"] == "flagged" and rows["scaled.wav"]["quality"] == "out_of_range"
    assert rows["long.flac"]["windows"] == "3" and rows["long.flac"]["status"] == "ok"
    assert rows["caf\\xe9.wav"]["status"] == "ok"
    for name, fragment in (("tiny441.wav", "too short"), ("dangling.wav", "dangling symlink"),
                           ("fifo.wav", "a FIFO"), ("folder.wav", "a folder named like")):
        assert rows[name]["status"].startswith(f"skipped: {fragment}"), rows[name]


def test_a_list_of_recordings(small_h5, trained_run, tmp_path):
    a = write_wav(tmp_path / "a.wav", tone(500, 10, 4096))
    b = write_wav(tmp_path / "sub" / "b.wav", tone(700, 10, 4096))
    listing = tmp_path / "list.txt"
    listing.write_text(f"# recordings to score\n{a}\nsub/b.wav\nmissing.wav\n")
    rows = predict(small_h5, trained_run, listing, tmp_path / "run")
    assert rows[str(a)]["status"] == "ok" and rows[str(b)]["status"] == "ok"
    assert rows[str(tmp_path / "missing.wav")]["status"].startswith("skipped: cannot read file")


def test_the_csv_place_is_checked_before_scoring_and_a_long_name_works(small_h5, trained_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "wavs"
    write_wav(folder / "good.wav", tone(500, 10, 4096))
    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")
    args = ["predict", "--ckpt_path", str(run / "checkpoints/best.ckpt"), "--data.predict_path", str(folder),
            "--console.log_file", "null"]
    (tmp_path / "taken").mkdir()
    code, err = cli_exit(capsys, *args, "--output", str(tmp_path / "taken"))
    assert f"--output {tmp_path / 'taken'} is a folder" in one_error(code, err) and "predicted" not in err
    long = tmp_path / "out" / ("p" * 246 + ".csv")  # legal (250 bytes); its temporary name was not
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".predictions.csv.tmp-99999999").write_text("left by a killed predict")  # no such process
    main([*args, "--output", str(long)])
    rows = list(csv.DictReader(long.open(encoding="utf-8")))
    assert [r["path"] for r in rows] == ["good.wav"] and rows[0]["status"] == "ok"
    sensors = "p" * (255 - len("_sensors.csv")) + "_sensors.csv"  # the sensor view's name, shortened to fit
    # the stale temporary went too
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([long.name, sensors])
    assert not (run / "lightning_logs").exists()  # nothing to log: no empty version folder


def test_a_read_only_place_for_the_csv_is_one_line_before_scoring(small_h5, trained_run, tmp_path, capsys, mount):
    point = mount("ro,size=1m")
    write_wav(tmp_path / "wavs" / "good.wav", tone(500, 10, 4096))
    code, err = cli_exit(capsys, "predict", "--ckpt_path", str(trained_run / "checkpoints/best.ckpt"),
                         "--data.predict_path", str(tmp_path / "wavs"), "--output", str(point / "p.csv"),
                         "--trainer.default_root_dir", str(tmp_path / "run"), "--console.log_file", "null")
    assert "cannot write there (Read-only file system)" in one_error(code, err) and "predicted" not in err


def _p(path: str, leak: bool | None) -> Prediction:
    return Prediction(path, "ok" if leak is not None else "silent", leak=leak,
                      leak_probability=None if leak is None else 0.5)


def test_a_sensors_recordings_are_read_in_time_order_by_its_rule():
    nights = [("S1~R01~20251103T020000~g12.wav", True), ("S1~R02~20251101T020000~g12.wav", False),
              ("S1~R03~20251102T020000~g12.wav", True), ("S1~R04~20251104T020000~g12.wav", None),  # silent
              ("S2~R01~20251101T020000~g12.wav", True), ("S2~R02~20251102T020000~g12.wav", False),
              ("S2~R03~20251103T020000~g12.wav", False),
              ("S3~R01~20251101T020000~g12.wav", True),
              ("clip.wav", True), ("S4~R01~notatime~g12.wav", False), ("S4~R02~20251101T000000~g0.wav", True)]
    predictions = [_p(path, leak) for path, leak in nights]
    rows = {s.sensor or s.note: s for s in summarise_sensors(predictions, SensorRule(2, 3))}
    # S1 in time order: 11-01 no, 11-02 leak, 11-03 leak (11-04 silent: no decision) → 2 of the last 3
    s1 = rows["S1"]
    assert (s1.recordings, s1.scored, s1.leaks, s1.last_n, s1.decision) == (4, 3, 2, "011", "leak")
    assert (s1.first_leak, s1.last_leak) == ("2025-11-02 02:00:00", "2025-11-03 02:00:00")
    assert (rows["S2"].last_n, rows["S2"].decision) == ("100", "no leak")  # a leak that did not persist
    assert rows["S3"].decision == "too few scored recordings"
    assert rows["S4"].last_n == "10" and "without a time" in rows["S4"].note  # timed first, then by name
    alone = rows["no sensor id in the name: clip.wav"]
    assert (alone.sensor, alone.recordings, alone.leaks, alone.decision) == ("", 1, 1, "")
    assert [s.sensor for s in summarise_sensors(predictions)] == ["S1", "S2", "S3", "S4", ""]
    one_of_one = {s.sensor: s.decision for s in summarise_sensors(predictions, SensorRule(1, 1))}
    assert one_of_one["S1"] == "leak" and one_of_one["S2"] == "no leak"  # only the last night counts


def test_an_impossible_sensor_rule_is_refused(small_h5, trained_run, tmp_path, capsys):
    code, err = cli_exit(capsys, "predict", "--ckpt_path", trained_run / "checkpoints/best.ckpt",
                         "--data.predict_path", tmp_path, "--predictions.sensor_k", "4",
                         "--predictions.sensor_n", "3", "--trainer.default_root_dir", tmp_path)
    assert "sensor rule 4 of 3: use 1 <= k <= n" in one_error(code, err)


def test_predict_writes_the_sensor_summary_beside_the_csv(small_h5, trained_run, tmp_path):
    folder = tmp_path / "wavs"
    for night in range(3):
        write_wav(folder / f"S0012~R{night:04d}~2025111{night}T021500~g12.wav", tone(500, 10, 4096, seed=night))
    write_wav(folder / "loose.wav", tone(500, 10, 4096))
    rows = predict(small_h5, trained_run, folder, tmp_path / "run")
    sensors = list(csv.DictReader((tmp_path / "run" / "predictions_sensors.csv").open(encoding="utf-8")))
    assert [s["sensor"] for s in sensors] == ["S0012", ""]
    leaks = [rows[f"S0012~R{n:04d}~2025111{n}T021500~g12.wav"]["leak_decision"] for n in range(3)]
    s = sensors[0]
    assert s["recordings"] == "3" and s["leak_recordings"] == str(leaks.count("1")) and s["last_3_decisions"] == \
        "".join(leaks)
    assert s["sensor_decision"] == ("leak" if leaks.count("1") >= 2 else "no leak")
    assert s["rule"] == "leak when 2 of the last 3 scored recordings are leaks"
    assert sensors[1]["note"] == "no sensor id in the name: loose.wav"
