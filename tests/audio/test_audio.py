"""Decoding: quality flags, truncation in every container, odd folder entries, undecodable names, long files."""

from __future__ import annotations

import os
import threading
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
from helpers.files import tone, write_wav

from leak_lightning.audio import decode
from leak_lightning.audio.containers import read_header
from leak_lightning.audio.decode import (
    CLIPPED,
    OUT_OF_RANGE,
    PARTLY_SILENT,
    SILENT,
    TRUNCATED,
    ClipSpec,
    WindowReader,
    clip_or_reason,
)
from leak_lightning.audio.features import FeatureConfig
from leak_lightning.audio.scan import printable, scan_audio

SPEC = ClipSpec.of(FeatureConfig())


def cut(path, keep: float = 0.4):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def set_flac_total(path, total: int):
    """Rewrite the 36-bit sample count in a FLAC file's STREAMINFO (0 = unknown)."""
    b = bytearray(path.read_bytes())
    at = 8 + 13  # 'fLaC' + block header, then 13 bytes into STREAMINFO
    v = int.from_bytes(b[at: at + 5], "big")
    b[at: at + 5] = ((v & ~((1 << 36) - 1)) | total).to_bytes(5, "big")
    path.write_bytes(bytes(b))
    return path


def test_a_clean_clip_has_no_flags(tmp_path):
    clip = clip_or_reason(write_wav(tmp_path / "a.wav", tone(500, 10, 4096)), SPEC)
    assert clip.flags == () and clip.samples.shape == (40960,)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_digital_silence_and_a_cancelling_stereo_pair_are_silent(tmp_path, subtype):
    x = tone(500, 10, 4096)
    silent = clip_or_reason(write_wav(tmp_path / "zero.wav", np.zeros_like(x), subtype=subtype), SPEC)
    cancel = clip_or_reason(write_wav(tmp_path / "cancel.wav", np.stack([x, -x], 1), subtype=subtype), SPEC)
    dc = clip_or_reason(write_wav(tmp_path / "dc.wav", np.full_like(x, 0.25), subtype=subtype), SPEC)
    assert SILENT in silent.flags and SILENT in cancel.flags and SILENT in dc.flags
    # one 16-bit step of dither is still no signal; two steps of a real tone are
    lsb = np.where(np.arange(len(x)) % 2, 1 / 2**15, 0).astype(np.float32)
    assert SILENT in clip_or_reason(write_wav(tmp_path / "lsb.wav", lsb, subtype=subtype), SPEC).flags
    quiet = np.sin(np.arange(len(x))) * 3 / 2**15  # a tone three 16-bit steps high
    assert SILENT not in clip_or_reason(write_wav(tmp_path / "quiet.wav", quiet.astype(np.float32),
                                                  subtype=subtype), SPEC).flags


def test_clipped_and_out_of_range_floats_are_flagged(tmp_path):
    x = tone(500, 10, 4096)
    assert clip_or_reason(write_wav(tmp_path / "scaled.wav", x * 32767, subtype="FLOAT"), SPEC).flags == (
        OUT_OF_RANGE,)
    assert clip_or_reason(write_wav(tmp_path / "hot.wav", np.clip(x * 20, -1, 1)), SPEC).flags == (CLIPPED,)
    # a few clipped clicks (< 1 % of the samples) are not a saturated sensor
    clicks = x.copy()
    clicks[:: len(x) // 100] = 1.0
    assert clip_or_reason(write_wav(tmp_path / "clicks.wav", clicks), SPEC).flags == ()


@pytest.mark.parametrize("fmt", ["RF64", "W64", "AIFF", "WAV"])
def test_a_cut_file_is_truncated_in_every_pcm_container(tmp_path, fmt):
    path = tmp_path / f"cut_{fmt}.wav"  # renamed .wav: the container is read from the bytes
    sf.write(path, tone(500, 10, 4096), 4096, subtype="PCM_16", format=fmt)
    assert read_header(path).frames == 40960
    reason = clip_or_reason(cut(path), SPEC)
    assert isinstance(reason, str) and reason.startswith("truncated:") and "40960" in reason


def test_a_cut_flac_stream_is_truncated(tmp_path):
    path = tmp_path / "cut_flac.wav"
    sf.write(path, tone(500, 10, 4096, seed=2), 4096, subtype="PCM_16", format="FLAC")
    reason = clip_or_reason(cut(path, 0.5), SPEC)
    assert isinstance(reason, str) and reason.startswith("truncated:"), reason


def test_an_aiff_header_claiming_2_to_the_31_frames_is_truncated(tmp_path):
    path = tmp_path / "big.aiff"
    sf.write(path, tone(500, 10, 4096), 4096, subtype="PCM_16", format="AIFF")
    b = bytearray(path.read_bytes())
    at = b.find(b"COMM") + 8 + 2  # past the chunk header and the channel count
    b[at: at + 4] = (2**31).to_bytes(4, "big")
    path.write_bytes(bytes(b))
    assert clip_or_reason(path, SPEC) == "truncated: the AIFF header declares 2147483648 frames, the file holds 40960"


def test_an_unfinalised_header_says_so(tmp_path):
    path = write_wav(tmp_path / "rec.wav", tone(500, 10, 4096))
    b = bytearray(path.read_bytes())
    at = b.find(b"data") + 4
    b[at: at + 4] = b"\0\0\0\0"
    path.write_bytes(bytes(b))
    reason = clip_or_reason(path, SPEC)
    assert reason.startswith("unfinalised header") and "81920 bytes of audio follow" in reason


def test_a_3_frame_44k_file_is_too_short_not_a_crash(tmp_path):
    path = write_wav(tmp_path / "tiny.wav", np.full(3, 0.1, dtype=np.float32), sr=44100)
    assert clip_or_reason(path, SPEC).startswith("too short: 3 frames at 44100 Hz")


def test_any_error_while_decoding_one_file_is_a_reason(tmp_path, monkeypatch):
    path = write_wav(tmp_path / "a.wav", tone(500, 10, 44100), sr=44100)

    def broken(*args):
        raise RuntimeError("Invalid number of data points (0)\nmore")

    monkeypatch.setattr(decode, "resample", broken)
    assert clip_or_reason(path, SPEC) == "could not be decoded (RuntimeError: Invalid number of data points (0))"


def test_odd_folder_entries_are_reported_and_a_fifo_never_blocks(tmp_path):
    root = tmp_path / "in"
    good = write_wav(root / "good.wav", tone(500, 10, 4096))
    os.symlink("nowhere.wav", root / "dangling.wav")
    os.symlink("loop2.wav", root / "loop1.wav")
    os.symlink("loop1.wav", root / "loop2.wav")
    os.mkfifo(root / "fifo.wav")
    write_wav(root / "folder.wav" / "inner.wav", tone(600, 10, 4096))
    os.symlink(root, root / "sub_link")  # a link back to the root: a loop
    result = {}
    scanner = threading.Thread(target=lambda: result.update(zip(("files", "bad"), scan_audio(root))))
    scanner.start()
    scanner.join(timeout=20)
    assert not scanner.is_alive(), "scanning blocked"
    assert result["files"] == [root / "folder.wav" / "inner.wav", good]
    reasons = {p.path.name: p.reason for p in result["bad"]}
    assert reasons["dangling.wav"].startswith("dangling symlink")
    assert reasons["loop1.wav"].startswith("symlink loop") and reasons["loop2.wav"].startswith("symlink loop")
    assert reasons["fifo.wav"].startswith("a FIFO") and reasons["folder.wav"].startswith("a folder named like")
    assert reasons["sub_link"].startswith("link to a folder already scanned")
    assert clip_or_reason(root / "fifo.wav", SPEC).startswith("not a regular file")  # never opened


def test_a_file_name_that_is_not_utf8_is_read_and_printable(tmp_path):
    name = os.fsdecode(b"caf\xe9.wav")
    path = write_wav(tmp_path / "x.wav", tone(500, 10, 4096))
    os.rename(path, os.path.join(os.fsencode(tmp_path), b"caf\xe9.wav"))
    clip = clip_or_reason(tmp_path / name, SPEC)
    assert not isinstance(clip, str)
    assert printable(tmp_path / name).endswith("caf\\xe9.wav")
    printable(tmp_path / name).encode("utf-8")  # what HDF5, CSV and the log files write


def test_windows_of_a_long_recording(tmp_path):
    x = tone(300, 25, 4096)
    reader = WindowReader(write_wav(tmp_path / "a.wav", x), SPEC, block=2)
    blocks = list(reader)
    windows = np.concatenate([w for w, _ in blocks])
    assert [len(w) for w, _ in blocks] == [2, 1] and reader.windows == 3 and reader.flags == set()
    np.testing.assert_allclose(windows[:2].reshape(-1), x[:81920], atol=1 / 2**15)  # PCM_16 steps
    np.testing.assert_allclose(windows[2, :20480], x[81920:], atol=1 / 2**15)
    assert not windows[2, 20480:].any()  # the last 5 s zero-padded
    # a trailing piece shorter than one long window is dropped
    assert WindowReader(write_wav(tmp_path / "b.wav", x[: 40960 + 500]), SPEC).__iter__().__next__()[0].shape[0] == 1


def test_the_first_window_is_the_builders_clip_at_any_rate(tmp_path):
    spec = SPEC._replace(duration_sec=2.5, num_samples=10240)  # 2.5 s at 11025 Hz: 27562.5 frames
    path = write_wav(tmp_path / "a.wav", tone(300, 6, 11025), sr=11025)
    first = next(iter(WindowReader(path, spec)))[0][0]
    np.testing.assert_array_equal(first, decode.read_clip(path, spec).samples)


def test_silent_windows_are_marked_and_flag_the_recording(tmp_path):
    x = tone(300, 30, 4096)
    x[40960:81920] = 0  # the sensor dropped out for the middle window
    reader = WindowReader(write_wav(tmp_path / "a.wav", x), SPEC)
    silent = np.concatenate([s for _, s in reader])
    assert silent.tolist() == [False, True, False] and reader.flags == {PARTLY_SILENT}
    dead = WindowReader(write_wav(tmp_path / "dead.wav", np.zeros_like(x)), SPEC)
    list(dead)
    assert dead.flags == {SILENT}


@pytest.mark.parametrize("total, flags", [(0, set()), (2**35, {TRUNCATED})], ids=["unknown", "2^35"])
def test_a_flac_header_that_lies_about_its_length_is_read_as_far_as_it_goes(tmp_path, total, flags):
    path = tmp_path / "lies.wav"
    sf.write(path, tone(300, 25, 4096), 4096, subtype="PCM_16", format="FLAC")
    reader = WindowReader(set_flac_total(path, total), SPEC)
    assert sum(len(w) for w, _ in reader) == 3 and reader.flags == flags


def test_a_long_recording_is_read_in_bounded_memory(tmp_path):
    # 10 minutes of 44.1 kHz stereo: 212 MB as float32 if read whole
    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", 44100, 2, "PCM_16") as f:
        for _ in range(10):
            f.write(np.random.default_rng(0).standard_normal((44100 * 60, 2)).astype(np.float32) * 0.1)
    tracemalloc.start()
    try:
        reader = WindowReader(path, SPEC, block=4)
        windows = sum(len(w) for w, _ in reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert windows == 60
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_arrays_are_scaled_and_oriented_as_files_are():
    from leak_lightning.audio.decode import as_frames

    np.testing.assert_array_equal(as_frames(np.array([-32768, 0, 16384], dtype=np.int16))[:, 0], [-1.0, 0.0, 0.5])
    np.testing.assert_array_equal(as_frames(np.array([0, 128, 255], dtype=np.uint8))[:, 0], [-1.0, 0.0, 127 / 128])
    np.testing.assert_array_equal(as_frames(np.array([-2**31], dtype=np.int32))[:, 0], [-1.0])
    pair = np.arange(40, dtype=np.float32).reshape(2, 20)  # two channels of 20 frames
    assert as_frames(pair).shape == (20, 2) and as_frames(pair.T).shape == (20, 2)
    np.testing.assert_array_equal(as_frames(pair)[:, 1], pair[1])
    np.testing.assert_array_equal(as_frames(np.ones((20, 30)), channel_axis=0).shape, (30, 20))
