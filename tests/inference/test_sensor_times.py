"""The sensor view reads ISO 8601 times as people write them, and says (and orders as it says) the ones it
cannot read; predict publishes its CSV and sensor CSV as one unit."""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers.files import REPO, data_args, start_paused, tone, write_wav

from leak_lightning.inference.predict import (
    Prediction,
    SensorRule,
    finish_outputs,
    read_time,
    sensors_csv,
    summarise_sensors,
    write_csv,
    write_outputs,
    write_sensor_csv,
)

UTC = timezone.utc


def _p(path: str, leak: bool | None) -> Prediction:
    if leak is None:
        return Prediction(path, "silent")
    score = 0.9 if leak else 0.1
    return Prediction(path, "ok", score, leak, score, {"leak": score}, [score], (), 1, score, 0.5)


def _sensor(nights: list[tuple[str, bool | None]], rule: SensorRule = SensorRule(2, 3)):
    (summary,) = summarise_sensors([_p(f"S7~R{i:02d}~{when}~g12.wav", leak) for i, (when, leak) in
                                    enumerate(nights)], rule)
    return summary


@pytest.mark.parametrize("text, want", [
    ("20251119T101500", datetime(2025, 11, 19, 10, 15)),
    ("20251119T1015", datetime(2025, 11, 19, 10, 15)),
    ("20251119T101500Z", datetime(2025, 11, 19, 10, 15, tzinfo=UTC)),
    ("20251119T101500+0100", datetime(2025, 11, 19, 9, 15, tzinfo=UTC)),
    ("20251119T101500-05", datetime(2025, 11, 19, 15, 15, tzinfo=UTC)),
    ("20251119T101500+01:00", datetime(2025, 11, 19, 9, 15, tzinfo=UTC)),
    ("2025-11-19T10:15:00", datetime(2025, 11, 19, 10, 15)),
    ("2025-11-19T10:15", datetime(2025, 11, 19, 10, 15)),
    ("2025-11-19T10:15:00Z", datetime(2025, 11, 19, 10, 15, tzinfo=UTC)),
    ("2025-11-19T10:15:00+01:00", datetime(2025, 11, 19, 9, 15, tzinfo=UTC)),
    ("2025-11-19T00:15:00+05:30", datetime(2025, 11, 18, 18, 45, tzinfo=UTC)),  # across midnight
    ("2025-11-19T10:15:00.250Z", datetime(2025, 11, 19, 10, 15, 0, 250000, tzinfo=UTC)),
    ("20251119T101500,5", datetime(2025, 11, 19, 10, 15, 0, 500000)),
    ("20251119t101500z", datetime(2025, 11, 19, 10, 15, tzinfo=UTC)),
    ("2025-11-19t10:15:00z", datetime(2025, 11, 19, 10, 15, tzinfo=UTC)),
])
def test_each_written_form_of_a_time_is_read(text, want):
    got = read_time(text)
    assert got == want and (got.tzinfo is None) == (want.tzinfo is None)  # naive == aware is False anyway


@pytest.mark.parametrize("text", ["20251399T999999", "20251119T256000", "20250230T010000", "yesterday", "",
                                  "20251119", "2025-11-19T101500", "20251119T101500+1500", "20251119T101500+0160",
                                  "20251119T10", "2025-11-19 10:15:00", "20251119T101500Zulu"])
def test_what_is_not_a_time_is_not_read(text):
    assert read_time(text) is None


def test_an_iso_utc_oldest_night_is_the_oldest_and_the_leak_of_the_last_two_nights_is_said():
    # by time: 10-31 no, 11-01 no, 11-02 leak, 11-03 leak → the last 3 read "011": 2 of 3 → leak
    s = _sensor([("20251103T013000", True), ("20251031T013000Z", False), ("20251102T013000", True),
                 ("20251101T013000", False)])
    assert (s.last_n, s.decision) == ("011", "leak")
    assert "names mix times with a UTC offset" in s.note and "holds whatever that order" in s.note  # days apart
    assert (s.first_leak, s.last_leak) == ("2025-11-02 01:30:00", "2025-11-03 01:30:00")
    # an old leak, then two quiet nights and one leak: 1 of the last 3 → no leak (the oldest read last said leak)
    s = _sensor([("2025-10-31T01:30:00Z", True), ("20251101T013000", False), ("20251102T013000", False),
                 ("20251103T013000", True)])
    assert (s.last_n, s.decision, s.first_leak) == ("001", "no leak", "2025-10-31 01:30:00 UTC")


def test_offsets_are_ordered_and_shown_in_utc():
    # 02:30+01:00 is 01:30 UTC, before 02:00Z; 23:30-05:00 on 11-01 is 04:30 UTC on 11-02, after both
    s = _sensor([("20251102T023000+0100", True), ("2025-11-02T02:00:00Z", False),
                 ("2025-11-01T23:30:00-05:00", True)], SensorRule(1, 1))
    assert (s.last_n, s.decision) == ("1", "leak")
    assert (s.first_leak, s.last_leak) == ("2025-11-02 01:30:00 UTC", "2025-11-02 04:30:00 UTC")
    s = _sensor([("20251102T023000+0100", True), ("2025-11-02T02:00:00Z", False)], SensorRule(1, 1))
    assert (s.last_n, s.decision) == ("0", "no leak")


def test_an_unreadable_time_is_named_and_a_decision_given_only_where_its_place_cannot_change_it():
    quiet_then_leaks = [("20251101T013000", False), ("20251102T013000", True), ("20251103T013000", True)]
    s = _sensor([*quiet_then_leaks, ("yesterday", False)])
    # wherever "yesterday" falls, the last 3 hold 2 leaks: (no, L, L) or (L, L, no) or (L, no, L)
    assert (s.decision, s.last_n) == ("leak", "110")  # shown after the timed ones, as the note says
    assert "S7~R03~yesterday~g12.wav" in s.note and "ordered after the timed ones by name" in s.note
    assert "holds whatever that order" in s.note
    # no, no, leak and an untimed leak: last → (no, L, L) leak; first → (no, no, L) no leak
    s = _sensor([("20251101T013000", False), ("20251102T013000", False), ("20251103T013000", True),
                 ("20251399T999999", True)])
    assert s.decision == "order unknown" and "S7~R03~20251399T999999~g12.wav" in s.note
    assert "depends on that order" in s.note
    s = _sensor([*quiet_then_leaks, ("yesterday", None)])  # not scored: its place cannot matter
    assert (s.decision, s.last_n) == ("leak", "011") and "S7~R03~yesterday~g12.wav" in s.note
    s = _sensor([("yesterday", True), ("today", True)])  # every scored one is in the last 3: no order needed
    assert (s.decision, s.first_leak, s.last_leak) == ("leak", "S7~R00~yesterday~g12.wav", "S7~R01~today~g12.wav")


def _brute_force(timed: list[bool], untimed: list[bool], rule: SensorRule) -> str:
    """The rule over every interleaving of the untimed decisions with the timed ones (kept in their order)."""
    answers = set()
    items = [("t", leak) for leak in timed] + [("u", leak) for leak in untimed]
    for order in itertools.permutations(range(len(items))):
        if [i for i in order if items[i][0] == "t"] != list(range(len(timed))):
            continue
        recent = [items[i][1] for i in order][-rule.n:]
        answers.add("too few scored recordings" if len(items) < rule.k else
                    "leak" if sum(recent) >= rule.k else "no leak")
    return answers.pop() if len(answers) == 1 else "order unknown"


def test_the_decision_with_untimed_recordings_matches_every_interleaving():
    for rule in (SensorRule(1, 1), SensorRule(2, 3), SensorRule(2, 2), SensorRule(3, 4)):
        for size in range(1, 6):
            for leaks in itertools.product((False, True), repeat=size):
                for untimed in range(size + 1):
                    timed, rest = list(leaks[untimed:]), list(leaks[:untimed])
                    nights = [(f"2025110{d + 1}T020000", leak) for d, leak in enumerate(timed)]
                    nights += [(f"night{d}", leak) for d, leak in enumerate(rest)]
                    got = _sensor(nights, rule).decision
                    assert got == _brute_force(timed, rest, rule), (rule, timed, rest)


def test_times_with_and_without_an_offset_are_said_and_decided_only_when_any_offset_agrees():
    # days apart: no offset within ±14 h changes the order (no, leak, leak)
    s = _sensor([("20251101T020000", False), ("20251102T020000Z", True), ("20251103T020000", True)])
    assert (s.decision, s.last_n) == ("leak", "011")
    assert "names mix times with a UTC offset and without one" in s.note and "holds whatever" in s.note
    assert s.first_leak == "2025-11-02 02:00:00 UTC" and s.last_leak == "2025-11-03 02:00:00"
    # 3 h apart: the unknown offset decides which of the two is the last night
    s = _sensor([("20251103T020000", True), ("2025-11-03T05:00:00Z", False)], SensorRule(1, 1))
    assert s.decision == "order unknown" and "S7~R00~20251103T020000~g12.wav" in s.note
    # all without an offset: taken as written, no note
    assert _sensor([("20251103T020000", True), ("2025-11-03T05:00", False)], SensorRule(1, 1)).note == ""


def test_the_sensor_csv_shows_utc_and_the_note(tmp_path):
    predictions = [_p("S7~R1~20251102T023000+0100~g12.wav", True), _p("S7~R2~yesterday~g12.wav", False),
                   _p("S7~R3~20251103T013000~g12.wav", True)]
    rule = SensorRule(2, 3)
    write_outputs(tmp_path / "predictions.csv", predictions, ["leak"], summarise_sensors(predictions, rule), rule)
    (row,) = csv.DictReader((tmp_path / "predictions_sensors.csv").open(encoding="utf-8"))
    assert (row["first_leak"], row["last_leak"], row["sensor_decision"]) == \
        ("2025-11-02 01:30:00 UTC", "2025-11-03 01:30:00", "leak")
    assert "S7~R2~yesterday~g12.wav" in row["note"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions_sensors.csv"]


# ---------------------------------------------------------------- the CSV and its sensor view as one unit

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write(folder: Path, name: str, sensor: str) -> None:
    """A pair for one sensor's two leak nights, written as `name` and its sensor CSV in `folder`."""
    predictions = [_p(f"{sensor}~R1~20251101T020000~g12.wav", True), _p(f"{sensor}~R2~20251102T020000~g12.wav", True)]
    write_csv(folder / name, predictions, ["leak"])
    write_sensor_csv(sensors_csv(folder / name), summarise_sensors(predictions), SensorRule())


def _read_pair(path: Path) -> tuple[set[str], set[str]]:
    """(the sensors the CSV's rows name, the sensors the sensor CSV lists)."""
    rows = csv.DictReader(path.open(encoding="utf-8"))
    sensors = csv.DictReader(sensors_csv(path).open(encoding="utf-8"))
    return {r["path"].split("~")[0] for r in rows}, {s["sensor"] for s in sensors}


def test_a_pair_committed_by_a_killed_predict_is_moved_into_place_whole(tmp_path):
    out = tmp_path / "predictions.csv"
    _write(tmp_path, out.name, "SOLD")
    # what a predict killed between its two renames leaves: the new sensor CSV in place, the new CSV committed
    pid = _dead_pid()
    committed = tmp_path / f".predict-pair-abc.commit-{pid}"
    committed.mkdir()
    _write(committed, out.name, "SNEW")
    os.replace(sensors_csv(committed / out.name), sensors_csv(out))
    assert _read_pair(out) == ({"SOLD"}, {"SNEW"})  # the mix a reader would see until the next predict
    # an uncommitted stage of another dead writer, and another output's committed pair: not this pair's
    stale = tmp_path / f".predict-pair-zz.tmp-{pid}"
    stale.mkdir()
    (stale / "predictions.csv").write_text("half written")
    other = tmp_path / f".predict-pair-yy.commit-{pid}"
    other.mkdir()
    (other / "other.csv").write_text("another output's")
    assert finish_outputs(out) == [out]
    assert _read_pair(out) == ({"SNEW"}, {"SNEW"})
    assert not committed.exists() and not stale.exists() and (other / "other.csv").is_file()


def test_a_killed_predict_before_its_commit_leaves_the_old_pair(tmp_path):
    out = tmp_path / "predictions.csv"
    _write(tmp_path, out.name, "SOLD")
    stage = tmp_path / f".predict-pair-abc.tmp-{_dead_pid()}"  # both written, not yet committed
    stage.mkdir()
    _write(stage, out.name, "SNEW")
    assert finish_outputs(out) == [] and not stage.exists()
    assert _read_pair(out) == ({"SOLD"}, {"SOLD"})


def test_a_live_predicts_commit_is_left_to_it(tmp_path):
    out = tmp_path / "predictions.csv"
    live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        committed = tmp_path / f".predict-pair-abc.commit-{live.pid}"
        committed.mkdir()
        (committed / "predictions.csv").write_text("theirs")
        assert finish_outputs(out) == [] and (committed / "predictions.csv").is_file() and not out.exists()
    finally:
        live.communicate(b"")


def _announce(ready: str) -> None:
    tmp = Path(f"{ready}.{os.getpid()}.tmp")
    tmp.write_text(str(os.getpid()))
    os.replace(tmp, ready)


def run_paused_predict(ready: str, argv: list[str]) -> None:
    """`python -m leak_lightning predict ARGV` that holds after the first of its two renames into place."""
    from leak_lightning.cli import main
    from leak_lightning.inference import predict

    publish, moved = predict._publish, []

    def paused(src: Path, dst: Path) -> None:
        publish(src, dst)
        moved.append(dst)
        if len(moved) == 1:
            _announce(ready)
            time.sleep(120)  # the test SIGKILLs us here

    predict._publish = paused
    main(["predict", *argv])


def _night_folder(folder: Path, sensor: str) -> Path:
    for night in range(2):
        write_wav(folder / f"{sensor}~R{night}~2025-11-0{night + 1}T02:00:00Z~g12.wav", tone(500, 10, 4096,
                                                                                           seed=night))
    return folder


@pytest.mark.slow
def test_a_predict_killed_between_its_two_renames_leaves_a_pair_the_next_predict_makes_whole(
        small_h5, trained_run, tmp_path, ll_records):
    from leak_lightning.cli import main

    run = tmp_path / "run"
    shutil.copytree(trained_run / "checkpoints", run / "checkpoints")

    def argv(sensor: str) -> list[str]:
        return ["--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5), "--trainer.default_root_dir",
                str(run), "--data.predict_path", str(_night_folder(tmp_path / sensor, sensor)),
                "--console.log_file", "null"]

    out = run / "predictions.csv"
    main(["predict", *argv("SA")])
    assert _read_pair(out) == ({"SA"}, {"SA"})
    ready = tmp_path / "ready"
    here = str(Path(__file__).parent)  # this module, imported by the child for run_paused_predict
    code = (f"import sys; sys.path.insert(0, {here!r}); import test_sensor_times as t; "
            f"t.run_paused_predict({str(ready)!r}, {argv('SB')!r})")
    proc = start_paused(["-c", code], ready, "predict")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _read_pair(out) == ({"SA"}, {"SB"})  # killed between the renames: the commit holds the new CSV
    (committed,) = run.glob(".predict-pair-*.commit-*")
    assert [p.name for p in committed.iterdir()] == ["predictions.csv"]
    main(["predict", *argv("SC")])
    assert any("moved now: predictions.csv" in r.getMessage() for r in ll_records)  # SB's pair made whole first
    assert _read_pair(out) == ({"SC"}, {"SC"})
    assert not list(run.glob(".predict-pair-*")), sorted(p.name for p in run.iterdir())


def test_predict_makes_a_half_moved_pair_whole_before_it_scores(tmp_path):
    from types import SimpleNamespace

    from leak_lightning.training.callbacks.predictions import PredictionWriter

    out = tmp_path / "predictions.csv"
    _write(tmp_path, out.name, "SOLD")
    committed = tmp_path / f".predict-pair-abc.commit-{_dead_pid()}"
    committed.mkdir()
    _write(committed, out.name, "SNEW")
    os.replace(sensors_csv(committed / out.name), sensors_csv(out))
    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
    PredictionWriter().on_predict_start(trainer, SimpleNamespace(site_line=lambda: None))
    assert _read_pair(out) == ({"SNEW"}, {"SNEW"}) and not committed.exists()


def test_someone_elses_link_at_the_sensor_csv_is_refused_and_nothing_replaced(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a link owned by another user needs root to make")
    out = tmp_path / "predictions.csv"
    _write(tmp_path, out.name, "SOLD")
    victim = tmp_path / "theirs.txt"
    victim.write_text("keep")
    sensors_csv(out).unlink()
    os.symlink(victim, sensors_csv(out))
    os.lchown(sensors_csv(out), 4242, 4242)
    predictions = [_p("SNEW~R1~20251101T020000~g12.wav", True)]
    with pytest.raises(ValueError, match="predictions_sensors.csv is a symbolic link"):
        write_outputs(out, predictions, ["leak"], summarise_sensors(predictions), SensorRule())
    assert victim.read_text() == "keep" and sensors_csv(out).is_symlink()
    assert {r["path"].split("~")[0] for r in csv.DictReader(out.open(encoding="utf-8"))} == {"SOLD"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions_sensors.csv", "theirs.txt"]
