"""The builder end to end: both layouts, format conversions, bad input, the HDF5 contract."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.files import REPO, cli_exit, make_origin, make_pool, tone, write_wav

from leak_lightning.audio.features import FeatureConfig, LogMelFrontend
from leak_lightning.builder.build import build_dataset
from leak_lightning.builder.discover import WavItem, split_pool
from leak_lightning.data import schema

NAMES = tuple(schema.SPLIT_FILES.values())


def read_split(path):
    with h5py.File(path, "r") as f:
        return {
            "seg": f[schema.SEGMENTS][()], "labels": f[schema.LABELS][()],
            "paths": [p.decode() for p in f[schema.FILE_PATHS][()]],
            "sensors": [s.decode() for s in f[schema.SENSOR_IDS][()]],
            "attrs": dict(f.attrs), "seg_chunks": f[schema.SEGMENTS].chunks,
            "dtypes": {k: f[k].dtype for k in f},
        }


def test_origin_layout_contract(tmp_path):
    make_origin(tmp_path / "in")
    summary = build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    assert summary.files == {"TRAINING": 6, "VALIDATION": 6, "TESTING": 6}
    assert summary.segments["TRAINING"] == 6 * 80
    for name in NAMES:
        d = read_split(tmp_path / "out" / name)
        assert d["seg"].shape == (6, 40, 2, 64, 1) and d["seg"].dtype == np.float16
        assert d["seg_chunks"] == (1, 40, 2, 64, 1)
        assert d["dtypes"][schema.LABELS] == np.int16
        assert h5py.check_string_dtype(d["dtypes"][schema.FILE_PATHS]).encoding == "utf-8"
        assert json.loads(d["attrs"]["labels_json"]) == ["LEAK", "NORMAL"]
        assert json.loads(d["attrs"]["label2id_json"]) == {"LEAK": 0, "NORMAL": 1}
        assert FeatureConfig.from_json(d["attrs"]["config_json"]) == FeatureConfig()
        assert d["attrs"]["format_version"] == 1 and d["attrs"]["created_at_utc"].endswith("+00:00")
        assert np.isfinite(d["seg"]).all()
        # each row traces back to its WAV and carries the label of its folder
        for path, label, sensor in zip(d["paths"], d["labels"], d["sensors"]):
            assert (tmp_path / "in" / path).is_file()
            assert path.split("/")[1] == ["LEAK", "NORMAL"][label]
            assert path.split("/")[-1].startswith(sensor + "~")
    assert json.loads((tmp_path / "out" / schema.SKIP_REPORT).read_text()) == []


def test_rows_equal_frontend_on_the_same_audio(tmp_path):
    x = tone(700, 10, 4096, seed=3)
    write_wav(tmp_path / "in" / "TRAINING" / "LEAK" / "a.wav", x, subtype="FLOAT")
    for seed, split in enumerate(("VALIDATION", "TESTING"), 4):  # other audio: a build refuses copies across splits
        write_wav(tmp_path / "in" / split / "LEAK" / "b.wav", tone(700, 10, 4096, seed=seed), subtype="FLOAT")
    build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    row = read_split(tmp_path / "out" / NAMES[0])["seg"][0]
    want = LogMelFrontend()(torch.from_numpy(x)[None])[0].half().numpy()
    np.testing.assert_array_equal(row, want)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_resampled_stereo_and_sample_formats(tmp_path, subtype):
    """A 600 Hz tone as 44.1 kHz stereo / 8 kHz / native lands in the same mel bin."""
    for seed, split in enumerate(("TRAINING", "VALIDATION", "TESTING")):  # distinct audio in each split
        base = tmp_path / "in" / split / "LEAK"
        write_wav(base / "native.wav", tone(600, 10, 4096, seed=seed), 4096, subtype)
        write_wav(base / "stereo441.wav", np.stack([tone(600, 10, 44100, seed=seed)] * 2, axis=1), 44100, subtype)
        write_wav(base / "mono8k_short.wav", tone(600, 4, 8000, seed=seed), 8000, subtype)
    build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    d = read_split(tmp_path / "out" / NAMES[0])
    by_name = {p.split("/")[-1]: seg for p, seg in zip(d["paths"], d["seg"])}
    peak = {n: int(np.argmax(seg[:8].astype(np.float32).mean(axis=(0, 1, 3)))) for n, seg in by_name.items()}
    assert peak["stereo441.wav"] == peak["native.wav"] == peak["mono8k_short.wav"]
    # the tone's level survives resampling and downmixing (the noise floor differs by design)
    level = {n: seg[:8, :, peak[n]].astype(np.float32).mean() for n, seg in by_name.items()}
    assert abs(level["stereo441.wav"] - level["native.wav"]) < 0.5
    assert (by_name["mono8k_short.wav"][20:] == -200).all()  # 4 s of audio, the rest padding


def test_pool_layout_split_is_grouped_stratified_and_seeded(tmp_path):
    make_pool(tmp_path / "in", labels=("LEAK", "NORMAL", "CRACK"), sensors=10, per_sensor=2)
    s1 = build_dataset(tmp_path / "in", tmp_path / "o1", progress=False, seed=7)
    assert s1.files == {"TRAINING": 42, "VALIDATION": 12, "TESTING": 6}
    sensors, labels = {}, {}
    for name in NAMES:
        d = read_split(tmp_path / "o1" / name)
        sensors[name] = set(d["sensors"])
        labels[name] = np.bincount(d["labels"], minlength=3)
        assert all(s for s in d["sensors"])
    assert not (sensors[NAMES[0]] & sensors[NAMES[1]] or sensors[NAMES[0]] & sensors[NAMES[2]]
                or sensors[NAMES[1]] & sensors[NAMES[2]])
    np.testing.assert_array_equal(labels[NAMES[0]], [14, 14, 14])  # stratified: 7 sensors × 2 per label
    np.testing.assert_array_equal(labels[NAMES[2]], [2, 2, 2])
    build_dataset(tmp_path / "in", tmp_path / "o2", progress=False, seed=7)
    build_dataset(tmp_path / "in", tmp_path / "o3", progress=False, seed=8)
    paths = {o: read_split(tmp_path / o / NAMES[2])["paths"] for o in ("o1", "o2", "o3")}
    assert paths["o1"] == paths["o2"] and paths["o1"] != paths["o3"]


def test_split_without_sensor_ids_groups_single_files():
    items = [WavItem(None, f"L/{i}.wav", "L", "") for i in range(10)]
    out = split_pool(items, (0.7, 0.2, 0.1), seed=0)
    assert [len(out[s]) for s in ("TRAINING", "VALIDATION", "TESTING")] == [7, 2, 1]


def test_explicit_labels_order_and_unknown_label(tmp_path):
    make_origin(tmp_path / "in", per_label=1)
    build_dataset(tmp_path / "in", tmp_path / "out", labels=["NORMAL", "LEAK", "BACKGROUND"], progress=False)
    d = read_split(tmp_path / "out" / NAMES[0])
    assert json.loads(d["attrs"]["labels_json"]) == ["NORMAL", "LEAK", "BACKGROUND"]
    assert sorted(zip(d["paths"], d["labels"]))[0][1] == 1  # LEAK → 1
    with pytest.raises(ValueError, match=r"\['NORMAL'\] are not in --labels"):
        build_dataset(tmp_path / "in", tmp_path / "o2", labels=["LEAK"], progress=False)


def write_bad_files(folder):
    """One file per bad-input case; returns {file name: expected reason fragment}."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    good = write_wav(folder / "truncated.wav", tone(500, 10, 4096)).read_bytes()
    (folder / "truncated.wav").write_bytes(good[: len(good) // 3])
    (folder / "notes.wav").write_text("this is not audio\n")
    write_wav(folder / "zero.wav", np.zeros(0, dtype=np.float32))
    nan = tone(500, 10, 4096)
    nan[1000] = np.nan
    write_wav(folder / "nan.wav", nan, subtype="FLOAT")
    inf = tone(500, 10, 4096)
    inf[5] = np.inf
    write_wav(folder / "inf.wav", inf, subtype="FLOAT")
    write_wav(folder / "short.wav", tone(500, 0.2, 4096))  # 819 samples < one long window
    return {"empty.wav": "empty", "truncated.wav": "truncated", "notes.wav": "not readable as audio",
            "zero.wav": "zero-length", "nan.wav": "NaN or Inf", "inf.wav": "NaN or Inf",
            "short.wav": "too short"}


def test_bad_files_are_skipped_and_reported(tmp_path, caplog):
    make_origin(tmp_path / "in", per_label=2)
    expected = write_bad_files(tmp_path / "in" / "TRAINING" / "LEAK")
    summary = build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    assert summary.files["TRAINING"] == 4
    report = json.loads((tmp_path / "out" / schema.SKIP_REPORT).read_text())
    got = {r["path"].split("/")[-1]: r["reason"] for r in report}
    assert set(got) == set(expected)
    for name, fragment in expected.items():
        assert fragment in got[name], (name, got[name])
        assert sum(name in rec.getMessage() for rec in caplog.records if rec.levelname == "WARNING") == 1
    d = read_split(tmp_path / "out" / NAMES[0])
    assert not any(p.split("/")[-1] in expected for p in d["paths"])
    assert np.isfinite(d["seg"]).all() and len(d["paths"]) == 4


def no_outputs(folder):
    return not folder.exists() or not any(p.name in NAMES or ".tmp-" in p.name for p in folder.iterdir())


def test_missing_input_folder_is_a_clear_error(tmp_path, capsys):
    code, err = cli_exit(capsys, "build", "--input", tmp_path / "nope", "--output", tmp_path / "out")
    assert code == 2
    assert f"input folder {tmp_path / 'nope'} does not exist" in err
    assert no_outputs(tmp_path / "out")


def test_no_usable_file_is_an_error_and_writes_nothing(tmp_path, capsys):
    make_origin(tmp_path / "in", per_label=1)
    for split in ("TRAINING", "VALIDATION", "TESTING"):
        for wav in (tmp_path / "in" / split).rglob("*.wav"):
            wav.write_bytes(b"RIFF")
    code, err = cli_exit(capsys, "build", "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 2
    assert "no usable file in split TRAINING" in err
    assert no_outputs(tmp_path / "out")


def test_label_folder_without_wavs_is_an_error(tmp_path, capsys):
    make_pool(tmp_path / "in", sensors=3, per_sensor=1)
    (tmp_path / "in" / "EMPTY").mkdir()
    code, err = cli_exit(capsys, "build", "--input", tmp_path / "in", "--output", tmp_path / "out")
    assert code == 2 and "EMPTY: label folder holds no audio files" in err
    assert no_outputs(tmp_path / "out")


def test_a_bad_build_flag_is_one_line(tmp_path, capsys):
    code, err = cli_exit(capsys, "build", "--input", tmp_path, "--output", tmp_path / "out", "--batch_sise", "4")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unrecognized arguments: --batch_sise 4" in err and "build --help" in err


@pytest.mark.slow
def test_existing_output_needs_overwrite_and_survives_until_replaced(tmp_path, run_cli):
    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    cfg = tmp_path / "build.yaml"
    cfg.write_text(f"input: {tmp_path / 'in'}\noutput: {tmp_path / 'out'}\nbatch_size: 4\n"
                   "features:\n  n_mels: 32\n")
    assert run_cli("build", "--config", cfg).returncode == 0
    before = (tmp_path / "out" / NAMES[0]).read_bytes()
    r = run_cli("build", "--config", cfg)
    assert r.returncode == 2 and "--overwrite" in r.stderr
    assert (tmp_path / "out" / NAMES[0]).read_bytes() == before
    r = run_cli("build", "--config", cfg, "--overwrite", "true", "--features.n_mels", "16")
    assert r.returncode == 0, r.stderr
    assert read_split(tmp_path / "out" / NAMES[0])["seg"].shape[3] == 16
    assert "Built 20 files (0 skipped, 0 flagged)" in r.stderr


def paused_build(tmp_path, *extra: str) -> tuple[subprocess.Popen, Path]:
    """A real build process that holds before its second batch (the first one written to the temporary
    TRAINING split) until it is signalled or told to go on: the test acts at a state the process reported."""
    make_pool(tmp_path / "in", sensors=20, per_sensor=2)
    ready = tmp_path / "ready"
    argv = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--batch_size", "4",
            "--num_workers", "1", "--progress", "false", *extra]
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "tests"),
                                                                          os.environ.get("PYTHONPATH", "")])}
    code = f"import helpers; helpers.run_paused_build({str(ready)!r}, {argv!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"build ended (rc={proc.returncode}) before its pause: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "timed out waiting for the build's pause"
        time.sleep(0.02)
    return proc, ready


def wait_group_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # no orphaned decoder process either
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("decoder processes outlived the builder")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGKILL, -9), (signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_build_killed_part_way_leaves_nothing_at_the_output_name(tmp_path, sig, code):
    proc, _ = paused_build(tmp_path)
    out = tmp_path / "out"
    assert any(".tmp-" in p.name for p in out.iterdir())  # part-way: rows written to the temporaries
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)  # returns once no decoder process holds stderr open
    assert proc.returncode == code, err
    wait_group_gone(proc.pid)
    assert not any(p.name in NAMES for p in out.iterdir())
    if sig != signal.SIGKILL:  # a catchable signal also removes the temporary files and the lock
        assert sorted(p.name for p in out.iterdir()) == [], list(out.iterdir())
        assert "build interrupted" in err


@pytest.mark.parametrize("where", ["inside the HDF5 open", "before the writer is registered"])
def test_an_interrupt_as_a_split_temporary_is_created_leaves_none(tmp_path, monkeypatch, where):
    """The window that left `.TRAINING_DATASET.H5.tmp-PID` after a SIGTERM under load: the file exists
    but no writer object owns it yet."""
    from leak_lightning.builder import build as build_module
    from leak_lightning.builder import writer as writer_module

    make_pool(tmp_path / "in", sensors=10, per_sensor=1)
    if where == "inside the HDF5 open":
        real = writer_module.h5py.File

        def file_then_interrupt(path, mode, *a, **kw):
            real(path, mode, *a, **kw).close()  # created on disk, then the signal lands
            raise KeyboardInterrupt("SIGTERM")

        monkeypatch.setattr(writer_module.h5py, "File", file_then_interrupt)
    else:
        real_writer = build_module.SplitWriter

        def writer_then_interrupt(*a, **kw):
            real_writer(*a, **kw)
            raise KeyboardInterrupt("SIGTERM")

        monkeypatch.setattr(build_module, "SplitWriter", writer_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        build_dataset(tmp_path / "in", tmp_path / "out", progress=False, num_workers=1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


@pytest.mark.slow
def test_a_killed_decoder_is_named_and_its_shared_memory_freed(tmp_path):
    import psutil

    shm = Path("/dev/shm")
    before = {p.name for p in shm.glob("psm_*")} if shm.is_dir() else set()
    proc, ready = paused_build(tmp_path)
    decoders = [c for c in psutil.Process(proc.pid).children(recursive=True)
                if "resource_tracker" not in " ".join(c.cmdline())]
    assert decoders, "no decoder process found"
    for child in decoders:
        child.kill()
    Path(f"{ready}.go").write_text("")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and "a decoder process died while decoding split TRAINING" in errors[0], err
    assert "free space" not in errors[0]
    wait_group_gone(proc.pid)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no split, temporary or lock
    if shm.is_dir():
        assert {p.name for p in shm.glob("psm_*")} - before == set()


@pytest.mark.parametrize("orig", [44100, 48000, 8000, 22050])
def test_resample_both_methods_keep_a_tone(orig):
    from leak_lightning.audio.decode import resample

    out = resample(tone(600, 10, orig, seed=0), orig, 4096)
    assert out.shape == (40960,) and out.dtype == np.float32
    ref = 0.3 * np.sin(2 * np.pi * 600 * np.arange(40960) / 4096)
    assert np.abs(out[200:-200] - ref[200:-200]).max() < 0.05


def test_quality_odd_entries_and_undecodable_names_in_a_build(tmp_path):
    make_origin(tmp_path / "in", per_label=2)
    leak = tmp_path / "in" / "TRAINING" / "LEAK"
    x = tone(500, 10, 4096)
    write_wav(leak / "dead.wav", np.zeros_like(x))
    write_wav(leak / "cancel.wav", np.stack([x, -x], axis=1), subtype="FLOAT")
    write_wav(leak / "scaled.wav", x * 32767, subtype="FLOAT")
    write_wav(leak / "hot.wav", np.clip(x * 20, -1, 1))
    write_wav(leak / "tiny441.wav", np.full(3, 0.1, dtype=np.float32), sr=44100)
    sf_path = write_wav(leak / "rf64.wav", x)
    import soundfile as sf

    sf.write(sf_path, x, 4096, subtype="PCM_16", format="RF64")
    sf_path.write_bytes(sf_path.read_bytes()[:30000])
    os.symlink("missing.wav", leak / "dangling.wav")
    os.mkfifo(leak / "fifo.wav")
    latin = write_wav(leak / "tmp.wav", x)
    os.rename(latin, os.path.join(os.fsencode(leak), b"caf\xe9.wav"))
    summary = build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    def report_of(name: str) -> list[dict]:
        return json.loads((tmp_path / "out" / name).read_text())

    report = {r["path"].split("/")[-1]: r["reason"] for r in report_of(schema.SKIP_REPORT)}
    assert report["dead.wav"].startswith("silent") and report["cancel.wav"].startswith("silent")
    assert report["tiny441.wav"].startswith("too short") and report["rf64.wav"].startswith("truncated: the RF64")
    assert report["dangling.wav"].startswith("dangling symlink") and report["fifo.wav"].startswith("a FIFO")
    flagged = {r["path"].split("/")[-1]: r["flags"] for r in report_of(schema.FLAG_REPORT)}
    assert flagged == {"scaled.wav": ["out_of_range"], "hot.wav": ["clipped"]}
    d = read_split(tmp_path / "out" / NAMES[0])
    names = [p.split("/")[-1] for p in d["paths"]]
    assert "caf\\xe9.wav" in names and "scaled.wav" in names and "dead.wav" not in names
    assert summary.files["TRAINING"] == 2 * 2 + 3  # the good ones, the flagged two and café
    assert (d["seg"] > -200).any(axis=(1, 2, 3, 4)).all()  # no all-silence row


def test_build_reads_what_predict_reads_and_keeps_only_what_fit_accepts(tmp_path):
    """Every audio file is a row or a listed skip; a band-limited recording is skipped; a file scaled so
    far beyond ±1 that fit would refuse its features is skipped, not kept (the split then loads)."""
    import soundfile as sf

    from leak_lightning.data.h5 import load_segments, read_info

    make_origin(tmp_path / "in", per_label=2)
    leak = tmp_path / "in" / "TRAINING" / "LEAK"
    x = tone(500, 10, 4096)
    for fmt, name in (("FLAC", "a.flac"), ("OGG", "b.ogg")):
        sf.write(leak / name, x, 4096, format=fmt)
    sf.write(leak / "c.mp3", tone(500, 10, 8000), 8000, format="MP3")  # MPEG takes 8 kHz and up
    for rate in (1000, 2000, 3686, 3687):  # 90 % of the features' 2048 Hz needs 3,687 Hz
        write_wav(leak / f"r{rate}.wav", tone(300, 10, rate), sr=rate)
    write_wav(leak / "scaled.wav", x * 32767, subtype="FLOAT")  # wrongly scaled but representable: kept
    write_wav(leak / "huge.wav", x * 2.0**31, subtype="FLOAT")  # 159..217 dB: beyond what fit accepts
    rifx = leak / "rifx.wav"
    sf.write(rifx, x, 4096, subtype="PCM_16", format="WAV", endian="BIG")
    assert rifx.read_bytes()[:4] == b"RIFX"
    rifx.write_bytes(rifx.read_bytes()[:30000])
    summary = build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    skipped = {r["path"].split("/")[-1]: r["reason"] for r in summary.skipped}
    assert set(skipped) == {"r1000.wav", "r2000.wav", "r3686.wav", "huge.wav", "rifx.wav"}, skipped
    assert skipped["r2000.wav"].startswith("band_limited: recorded at 2000 Hz, so nothing above 1000 Hz")
    assert "beyond the frontend's range" in skipped["huge.wav"] and "rescale" in skipped["huge.wav"]
    assert skipped["rifx.wav"].startswith("truncated")
    info = read_info(tmp_path / "out" / NAMES[0])
    rows = read_split(info.path)["paths"]
    assert {p.split("/")[-1] for p in rows} >= {"a.flac", "b.ogg", "c.mp3", "r3687.wav", "scaled.wav"}
    assert [f["path"].split("/")[-1] for f in summary.flagged] == ["scaled.wav"]
    load_segments(info)  # what build kept, fit accepts


def test_recordings_are_known_by_their_audio(tmp_path, capsys):
    """A copy in another split is a leak (listed; or kept in the first split only), the same audio under two
    labels is skipped in both places, and a renamed copy in another build is still the same recording."""
    import shutil

    from leak_lightning.data.h5 import read_info, recording_digests

    make_origin(tmp_path / "in", per_label=4)
    train_leak = sorted((tmp_path / "in" / "TRAINING" / "LEAK").glob("*.wav"))
    test_leak = tmp_path / "in" / "TESTING" / "LEAK"
    shutil.copy(train_leak[0], test_leak / "renamed.wav")  # the same audio under another name
    import soundfile as sf

    x, sr = sf.read(train_leak[1], dtype="int16")
    sf.write(test_leak / "reencoded.flac", x, sr, subtype="PCM_16")  # lossless re-encode: the same audio
    code, err = cli_exit(capsys, "build", "--input", tmp_path / "in", "--output", tmp_path / "out")
    line = [ln for ln in err.splitlines() if "[ERROR]" in ln]
    assert code == 2 and len(line) == 1, err
    assert "2 recording(s) hold the same audio as a recording of an earlier split" in line[0]
    assert f"TESTING TESTING/LEAK/renamed.wav = TRAINING TRAINING/LEAK/{train_leak[0].name}" in line[0]
    assert "--duplicates first" in line[0] and not (tmp_path / "out" / NAMES[0]).exists()

    summary = build_dataset(tmp_path / "in", tmp_path / "out", progress=False, duplicates="first")
    reasons = {r["path"]: r["reason"] for r in summary.skipped}
    assert reasons["TESTING/LEAK/renamed.wav"] == (f"the same audio as TRAINING/LEAK/{train_leak[0].name} in "
                                                   "TRAINING: kept in TRAINING only")
    assert "TESTING/LEAK/reencoded.flac" in reasons
    assert summary.files == {"TRAINING": 8, "VALIDATION": 8, "TESTING": 8}

    # the same audio under two labels in one split: both skipped, the first one after it was written
    normal = tmp_path / "in" / "TRAINING" / "NORMAL"
    (test_leak / "renamed.wav").unlink()
    (test_leak / "reencoded.flac").unlink()
    shutil.copy(train_leak[2], normal / "zz_mislabelled.wav")
    shutil.copy(train_leak[2], tmp_path / "in" / "TESTING" / "LEAK" / "third_copy.wav")
    before = read_split(tmp_path / "out" / NAMES[0])
    summary = build_dataset(tmp_path / "in", tmp_path / "out2", progress=False)
    reasons = {r["path"]: r["reason"] for r in summary.skipped}
    assert reasons["TRAINING/NORMAL/zz_mislabelled.wav"].startswith(
        f"conflicting labels: the same audio as TRAINING/LEAK/{train_leak[2].name} (LEAK); both are skipped")
    assert reasons[f"TRAINING/LEAK/{train_leak[2].name}"].startswith("conflicting labels")
    assert reasons["TESTING/LEAK/third_copy.wav"] == (
        f"conflicting labels: the same audio as TRAINING/LEAK/{train_leak[2].name} (LEAK) and "
        "TRAINING/NORMAL/zz_mislabelled.wav (NORMAL); every copy is skipped: correct the labels")
    after = read_split(tmp_path / "out2" / NAMES[0])
    gone = before["paths"].index(f"TRAINING/LEAK/{train_leak[2].name}")
    keep = [i for i in range(len(before["paths"])) if i != gone]  # the independent reference: the rows minus one
    assert after["paths"] == [before["paths"][i] for i in keep]
    np.testing.assert_array_equal(after["seg"], before["seg"][keep])
    np.testing.assert_array_equal(after["labels"], before["labels"][keep])
    info = read_info(tmp_path / "out2" / NAMES[0])  # label counts recorded by the build agree with the rows
    assert info.num_files == 7

    # a renamed copy in another build is found by its audio
    other = tmp_path / "other" / "LEAK"
    other.mkdir(parents=True)
    shutil.copy(train_leak[3], other / "someone_else_named_it.wav")
    kind, mine = recording_digests(read_info(tmp_path / "out2" / NAMES[0]))
    theirs = {}
    for p in sorted((tmp_path / "other").rglob("*.wav")):
        from leak_lightning.audio.decode import ClipSpec, read_clip
        from leak_lightning.builder.workers import audio_digest

        theirs[p.name] = audio_digest(read_clip(p, ClipSpec.of(FeatureConfig())).samples)
    assert kind == "audio" and np.isin(np.array(list(theirs.values()), dtype=np.uint64), mine).all()
