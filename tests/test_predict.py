"""predict on odd recordings: a row for every name, quality flags, no decision for a dead sensor."""

from __future__ import annotations

import csv
import os

import numpy as np
import soundfile as sf
from helpers.files import REPO, cli_exit, data_args, one_error, tone, write_wav

from leak_lightning.cli import main


def predict(h5, run, target, out_dir, *extra) -> dict[str, dict]:
    import shutil

    shutil.copytree(run / "checkpoints", out_dir / "checkpoints")
    main(["predict", "--config", str(REPO / "configs/demo.yaml"), *data_args(h5), "--trainer.default_root_dir",
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
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [long.name]  # the stale temporary went too
    assert not (run / "lightning_logs").exists()  # nothing to log: no empty version folder


def test_a_read_only_place_for_the_csv_is_one_line_before_scoring(small_h5, trained_run, tmp_path, capsys, mount):
    point = mount("ro,size=1m")
    write_wav(tmp_path / "wavs" / "good.wav", tone(500, 10, 4096))
    code, err = cli_exit(capsys, "predict", "--ckpt_path", str(trained_run / "checkpoints/best.ckpt"),
                         "--data.predict_path", str(tmp_path / "wavs"), "--output", str(point / "p.csv"),
                         "--trainer.default_root_dir", str(tmp_path / "run"), "--console.log_file", "null")
    assert "cannot write there (Read-only file system)" in one_error(code, err) and "predicted" not in err
