"""Odd audio files are read, reported or skipped as their cause says: every subtype soundfile writes,
codecs whose handles cannot seek (GSM 6.10), float levels beyond float32 or far beyond ±1, cut block
codecs, and label folders this user may not list."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers.files import REPO, make_origin, one_error, tone, write_wav

from leak_lightning.audio.decode import ClipSpec, SkipFile, WindowReader, WindowSource, read_clip
from leak_lightning.audio.features import FeatureConfig, LogMelFrontend

FEATURES = FeatureConfig()
SPEC = ClipSpec.of(FEATURES)
SUFFIX = {"WAV": "wav", "AIFF": "aiff", "CAF": "caf", "W64": "w64", "RF64": "rf64", "FLAC": "flac", "OGG": "ogg"}
# Every (container, subtype) this soundfile writes at the frontend's own rate: no resampling between the
# decoder and soundfile's own read, so the two must agree sample for sample.
WRITTEN = [(fmt, sub) for fmt in SUFFIX for sub in sf.available_subtypes(fmt)
           if (fmt, sub) not in {("WAV", "MPEG_LAYER_III"), ("AIFF", "DWVW_12"), ("OGG", "OPUS")}]
# containers.py reads these headers' declared length: a cut file must show as truncated
DECLARING = {"WAV", "AIFF", "W64", "RF64"}


def written(folder: Path, fmt: str, sub: str, seconds: float = 3.0) -> Path:
    path = folder / f"{fmt}_{sub}.{SUFFIX[fmt]}"
    sf.write(path, tone(500, seconds, FEATURES.sample_rate, seed=7), FEATURES.sample_rate, format=fmt, subtype=sub)
    return path


def soundfile_reads(path: Path) -> np.ndarray | str:
    """soundfile's own read of the whole file (frames given: an unseekable handle cannot count them), or its error."""
    try:
        with sf.SoundFile(path) as f:
            return f.read(frames=f.frames, dtype="float32")
    except RuntimeError as err:
        return str(err)


@pytest.mark.parametrize("fmt, sub", WRITTEN, ids=[f"{f}-{s}" for f, s in WRITTEN])
def test_every_written_subtype_decodes_as_soundfile_reads_it(tmp_path, fmt, sub):
    path = written(tmp_path, fmt, sub)
    want = soundfile_reads(path)
    if isinstance(want, str):  # libsndfile cannot read it back (DWVW in AIFF): its own words, not "truncated"
        with pytest.raises(SkipFile, match=r"^no audio could be decoded \(") as err:
            read_clip(path, SPEC)
        assert want in str(err.value) and "re-export" in str(err.value)
        return
    clip = read_clip(path, SPEC)
    np.testing.assert_array_equal(clip.samples, want[: SPEC.num_samples])
    assert clip.flags == ()
    reader = WindowReader(path, SPEC)
    windows = [w for block, _ in reader for w in block]
    assert len(windows) == 1 and not reader.flags
    np.testing.assert_array_equal(windows[0][: len(want)], want[: SPEC.num_samples])


@pytest.mark.parametrize("fmt, sub", [w for w in WRITTEN if w[0] in DECLARING and w[1] not in ("DWVW_16", "DWVW_24")],
                         ids=[f"{f}-{s}" for f, s in WRITTEN if f in DECLARING and s not in ("DWVW_16", "DWVW_24")])
def test_a_cut_file_shows_as_truncated_in_every_subtype(tmp_path, fmt, sub):
    """A block codec's header declares blocks, not frames: counted as frames, a cut ADPCM or GSM file
    passed as a short clip."""
    path = written(tmp_path, fmt, sub, seconds=10)
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])
    cut = rf"^truncated: the {fmt} header declares 4\d{{4}} frames, the file holds 2\d{{4}}"  # of 40,960
    with pytest.raises(SkipFile, match=cut):
        read_clip(path, SPEC)
    reader = WindowReader(path, SPEC)
    assert sum(len(block) for block, _ in reader) == 1 and "truncated" in reader.flags


def test_unseekable_codecs_cannot_tell_but_read_front_to_back(tmp_path):
    """Why GSM 6.10 was skipped: its handle cannot seek, and asking where it stands is a seek."""
    path = written(tmp_path, "WAV", "GSM610")
    with sf.SoundFile(path) as f:
        assert not f.seekable()
        with pytest.raises(RuntimeError, match="Seek attempted on unseekable file type"):
            f.tell()


def huge_files(folder: Path) -> dict[str, str]:
    """Float files far beyond ±1 and the start of the reason each must be skipped with."""
    x = tone(500, 10, 4096).astype(np.float64)
    write_wav(folder / "double1e300.wav", x * 1e300 / np.abs(x).max(), subtype="DOUBLE")  # finite, > float32
    write_wav(folder / "float1e37.wav", (x * 1e37 / np.abs(x).max()).astype(np.float32), subtype="FLOAT")
    write_wav(folder / "float40k.wav", (x * 4e4 / np.abs(x).max()).astype(np.float32), subtype="FLOAT")
    nan = x.copy()
    nan[7] = np.nan
    write_wav(folder / "nan.wav", nan, subtype="DOUBLE")
    over = "out_of_range: float samples reach"
    return {"double1e300.wav": f"{over} 1e+300, far beyond ±1 and beyond what float32 holds (±3.4e+38); the file "
                               "is scaled wrongly: rescale it to ±1 or re-export it as PCM",
            "float1e37.wav": f"{over} 1e+37, far beyond ±1 and beyond the frontend's range (samples within ±32768)",
            "float40k.wav": f"{over} 4e+04, far beyond ±1 and beyond the frontend's range (samples within ±32768)",
            "nan.wav": "contains NaN or Inf samples"}


def test_float_levels_are_skipped_with_their_own_reason(tmp_path):
    expected = huge_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(SkipFile) as err:
            read_clip(tmp_path / name, SPEC)
        assert str(err.value).startswith(reason), (name, str(err.value))
        with pytest.raises(SkipFile) as err:
            list(WindowReader(tmp_path / name, SPEC))
        assert str(err.value).startswith(reason), (name, str(err.value))
    in_memory = WindowSource(np.full(8192, -1e300), 4096)  # float64 as given, not cast to float32's Inf first
    with pytest.raises(SkipFile, match=r"^out_of_range: float samples reach 1e\+300, far beyond ±1 and beyond what"):
        list(WindowReader(in_memory, SPEC))
    x = tone(500, 10, 4096)
    edge = write_wav(tmp_path / "int16scale.wav", x / np.abs(x).max() * 32767, subtype="FLOAT")
    assert read_clip(edge, SPEC).flags == ("out_of_range",)  # int16's scale as floats: kept, flagged


def test_build_and_predict_read_the_same_odd_files_the_same_way(tmp_path, trained_run):
    from leak_lightning.builder.build import build_dataset
    from leak_lightning.inference.predict import LeakDetector

    make_origin(tmp_path / "in", per_label=2)
    leak = tmp_path / "in" / "TRAINING" / "LEAK"
    gsm = written(leak, "WAV", "GSM610", seconds=10)
    expected = huge_files(leak)
    summary = build_dataset(tmp_path / "in", tmp_path / "out", progress=False)
    skipped = {r["path"].split("/")[-1]: r["reason"] for r in summary.skipped}
    assert set(skipped) == set(expected), skipped
    for name, reason in expected.items():
        assert skipped[name].startswith(reason), (name, skipped[name])
    import h5py

    with h5py.File(tmp_path / "out" / "TRAINING_DATASET.H5", "r") as f:
        rows = {p.split("/")[-1]: i for i, p in enumerate(f["file_paths"].asstr()[:])}
        row = f["segments_mel"][rows[gsm.name]]
    want = soundfile_reads(gsm)
    np.testing.assert_array_equal(row, LogMelFrontend(FEATURES)(torch.from_numpy(want[None]))[0].half().numpy())

    det = LeakDetector.from_checkpoint(trained_run / "checkpoints/best.ckpt", device="cpu")
    got = det.predict(gsm)
    assert got.leak is not None and got.windows == 1
    assert got.leak_score == pytest.approx(det.predict_array(want, FEATURES.sample_rate).leak_score, abs=1e-6)
    for name in expected:  # the same words as the build's skip report
        assert det.predict(leak / name).status == f"skipped: {skipped[name]}"
    huge = np.full(8192, 1e300) * np.sign(np.sin(np.arange(8192)))
    assert det.predict_array(huge, 4096).status.startswith("skipped: out_of_range: float samples reach 1e+300")


def _as_an_unprivileged_user(locked_folder: Path) -> list[str]:
    """A command prefix under which folder permissions hold: root without the capabilities that override
    them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), or nothing for an ordinary user. Skips, saying why,
    where `locked_folder` can still be listed that way."""
    prefix = [] if os.geteuid() != 0 else [shutil.which("setpriv") or "setpriv",
                                           "--bounding-set=-dac_override,-dac_read_search"]
    try:
        probe = subprocess.run([*prefix, sys.executable, "-c", "import os, sys; os.listdir(sys.argv[1])",
                                str(locked_folder)], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("running as root without setpriv: a folder's permissions cannot be shown to hold")
    if "Permission denied" not in probe.stderr:
        pytest.skip(f"{locked_folder} (chmod 000) can still be listed here: {probe.stderr.strip()[-200:]!r}")
    return prefix


def _discover_in(root: Path, locked_folder: Path) -> str:
    prefix = _as_an_unprivileged_user(locked_folder)
    code = ("import sys\nfrom leak_lightning.builder.discover import discover\ntry:\n"
            "    print(discover(sys.argv[1], (0.7, 0.2, 0.1), 0)[1])\nexcept ValueError as err:\n"
            "    print('ValueError:', err)\n")
    done = subprocess.run([*prefix, sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture
def locked(tmp_path):
    """chmod 000 on the folders given; restored afterwards so tmp_path can be removed."""
    folders = []

    def lock(folder: Path) -> Path:
        folder.chmod(0)
        folders.append(folder)
        return folder

    yield lock
    for folder in folders:
        folder.chmod(0o755)


def test_an_unreadable_label_folder_is_named_with_its_cause(tmp_path, locked):
    write_wav(tmp_path / "in" / "LEAK" / "a.wav", tone(500, 10, 4096))
    write_wav(tmp_path / "in" / "NORMAL" / "b.wav", tone(900, 10, 4096))
    assert _discover_in(tmp_path / "in", locked(tmp_path / "in" / "NORMAL")) == (
        f"ValueError: {tmp_path}/in/NORMAL: label folder cannot be listed (Permission denied); give this user read "
        "and search permission on it (chmod a+rx) or move it out of the input")


def test_a_label_folder_whose_only_subfolder_is_unreadable_says_so(tmp_path, locked):
    write_wav(tmp_path / "in" / "LEAK" / "a.wav", tone(500, 10, 4096))
    write_wav(tmp_path / "in" / "NORMAL" / "night1" / "b.wav", tone(900, 10, 4096))
    out = _discover_in(tmp_path / "in", locked(tmp_path / "in" / "NORMAL" / "night1"))
    assert out.startswith(f"ValueError: {tmp_path}/in/NORMAL: label folder holds no audio files"), out
    assert f"({tmp_path}/in/NORMAL/night1: folder cannot be listed (Permission denied): its recordings are " \
           "not read; give this user read and search permission on it (chmod a+rx))" in out


def test_an_unreadable_input_folder_is_named_with_its_cause(tmp_path, locked):
    write_wav(tmp_path / "in" / "LEAK" / "a.wav", tone(500, 10, 4096))
    assert _discover_in(tmp_path / "in", locked(tmp_path / "in")).startswith(
        f"ValueError: {tmp_path}/in: input folder cannot be listed (Permission denied)")


@pytest.mark.slow
def test_build_stops_on_an_unreadable_label_folder_with_one_line(tmp_path, locked):
    for label, freq in (("LEAK", 500), ("NORMAL", 900)):
        for k in range(3):
            write_wav(tmp_path / "in" / label / f"S{label[0]}{k}~R0~t~g.wav", tone(freq, 10, 4096, seed=k))
    prefix = _as_an_unprivileged_user(locked(tmp_path / "in" / "NORMAL"))
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run([*prefix, sys.executable, "-m", "leak_lightning", "build", "--input", str(tmp_path / "in"),
                           "--output", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=300)
    line = one_error(done.returncode, done.stderr)
    assert f"{tmp_path}/in/NORMAL: label folder cannot be listed (Permission denied)" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())



def _with_partial_last_block(path: Path, cut: int) -> Path:
    """The WAV at `path` with its data chunk `cut` bytes shorter and every size field saying so: what a recorder
    that stops mid-block writes (a complete file whose last block is partial, not a cut one)."""
    raw = bytearray(path.read_bytes())
    pos = 12
    while raw[pos:pos + 4] != b"data":
        pos += 8 + int.from_bytes(raw[pos + 4:pos + 8], "little")
    size = int.from_bytes(raw[pos + 4:pos + 8], "little") - cut
    raw = raw[:pos + 8 + size]
    raw[pos + 4:pos + 8] = size.to_bytes(4, "little")
    raw[4:8] = (len(raw) - 8).to_bytes(4, "little")
    out = path.with_name(f"partial_{path.name}")
    out.write_bytes(bytes(raw))
    return out


@pytest.mark.parametrize("sub", ["MS_ADPCM", "IMA_ADPCM"])
def test_a_partial_last_block_is_a_complete_file_as_libsndfile_decodes_it(tmp_path, sub):
    path = _with_partial_last_block(written(tmp_path, "WAV", sub, seconds=12.0), cut=100)
    decodes = sf.info(path).frames  # libsndfile: MS ADPCM drops a partial last block, IMA ADPCM decodes it
    clip = read_clip(path, SPEC)
    assert "truncated" not in clip.flags, (sub, decodes)
    np.testing.assert_array_equal(clip.samples, soundfile_reads(path)[: SPEC.num_samples])
