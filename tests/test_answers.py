"""Code that decides answers, against hand-computed values, in cases a one-line change cannot pass:
class remapping by name (permutations that are not their own inverse), clipping in any window of a long
recording, damaged chunks in every cache mode, partly checksummed splits, and file decisions at the cutoff."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.files import tone, write_wav

from leak_lightning.audio.decode import CLIPPED, ClipSpec, WindowReader, WindowSource
from leak_lightning.audio.features import FeatureConfig
from leak_lightning.checkpoint.contract import ModelContract
from leak_lightning.data import schema
from leak_lightning.data.datamodule import LeakDataModule
from leak_lightning.data.h5 import read_info
from leak_lightning.data.recordings import WindowStream
from leak_lightning.models.evaluation import decision_basis, file_decisions, sweep_threshold

# 0.5 s clips of 2 long × 2 short windows, 8 mels, 1 frame: a row is 32 float16 values
CFG = FeatureConfig(duration_sec=0.5, n_mels=8)
CACHES = ("device", "ram", "stream", "auto")


def write_split(path: Path, classes: list[str], labels: list[int], targets: np.ndarray | None = None,
                unchecked: tuple[str, ...] = (), digests: bool = False) -> Path:
    """A split as the builder writes it (one row per chunk, fletcher32), every value of row f = -100 + f,
    so a batch's rows say which file they came from. Datasets named in `unchecked` have no checksums."""
    n = len(labels)
    seg = np.broadcast_to(-100.0 + np.arange(n, dtype=np.float16).reshape(-1, 1, 1, 1, 1),
                          (n, *CFG.segment_shape)).astype(np.float16)
    columns = {schema.SEGMENTS: (seg, (1, *CFG.segment_shape)), schema.LABELS: (np.array(labels, np.int16), (n,))}
    if targets is not None:
        columns[schema.TARGETS] = (np.asarray(targets, np.uint8), (n, len(classes)))
    if digests:
        columns[schema.AUDIO_DIGESTS] = (np.arange(1, n + 1, dtype=np.uint64), (n,))
    with h5py.File(path, "w") as f:
        for name, (data, chunks) in columns.items():
            f.create_dataset(name, data=data, chunks=chunks, fletcher32=name not in unchecked)
        f.attrs[schema.ATTR_CONFIG] = CFG.to_json()
        f.attrs[schema.ATTR_LABELS] = json.dumps(classes)
    return path


def files_of(x: torch.Tensor) -> np.ndarray:
    """The file each segment of a batch came from (its values are -100 + file)."""
    return (x.reshape(len(x), -1)[:, 0].float() + 100).round().long().numpy()


# ---- 1. classes in another order are remapped by name --------------------------------------------------

# (data's class order, checkpoint's class order, per data class: its target in the checkpoint's order).
# None is its own inverse: a remap that used the inverse permutation would give other targets.
REMAPS = [
    pytest.param(["A", "B", "C"], ["B", "C", "A"], {"A": [0, 0, 1], "B": [1, 0, 0], "C": [0, 1, 0]}, id="3-cycle"),
    pytest.param(["A", "B", "C"], ["C", "A", "B"], {"A": [0, 1, 0], "B": [0, 0, 1], "C": [1, 0, 0]}, id="3-cycle-inv"),
    pytest.param(["A", "B", "C", "D"], ["B", "C", "A", "D"],
                 {"A": [0, 0, 1, 0], "B": [1, 0, 0, 0], "C": [0, 1, 0, 0], "D": [0, 0, 0, 1]}, id="3-cycle-of-4"),
    pytest.param(["A", "B", "C", "D"], ["B", "C", "D", "A"],
                 {"A": [0, 0, 0, 1], "B": [1, 0, 0, 0], "C": [0, 1, 0, 0], "D": [0, 0, 1, 0]}, id="4-cycle"),
]


def bound_module(tmp_path: Path, data_order: list[str], model_order: list[str], cache: str,
                 multi_hot: bool = False) -> tuple[LeakDataModule, list[str], np.ndarray | None]:
    """Train/val/test splits whose file f has class data_order[f % C], bound to a checkpoint's order."""
    c = len(data_order)
    labels = [f % c for f in range(3 * c)]
    # multi-hot: file 0 also carries the next class (B with A): its target lists both names
    targets = np.eye(c, dtype=np.uint8)[labels]
    if multi_hot:
        targets[0, 1] = 1
    paths = {k: write_split(tmp_path / f"{k}.h5", data_order, labels, targets if multi_hot else None)
             for k in ("train", "val", "test")}
    dm = LeakDataModule(**{f"{k}_h5": str(p) for k, p in paths.items()}, cache=cache, num_workers=0,
                        batch_size=8, eval_batch_size=8)
    dm.bind(ModelContract(tuple(model_order), model_order[0], CFG, "ckpt"))
    return dm, [data_order[k] for k in labels], targets if multi_hot else None


@pytest.mark.parametrize("cache", ("device", "stream"))
@pytest.mark.parametrize(("data_order", "model_order", "by_hand"), REMAPS)
def test_targets_follow_the_checkpoints_class_order(tmp_path, data_order, model_order, by_hand, cache):
    dm, names, _ = bound_module(tmp_path, data_order, model_order, cache)
    try:
        dm.setup("fit")
        dm.setup("test")
        assert dm.train_class_counts == [3] * len(data_order)  # every class 3 times, in any order
        for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
            seen = 0
            for x, y, _ in loader:
                for f, target in zip(files_of(x), y.tolist()):
                    assert target == by_hand[names[f]], (f, names[f], target)
                seen += len(x)
            assert seen == len(names) * CFG.num_long * CFG.num_short
    finally:
        dm.teardown("fit")


@pytest.mark.parametrize(("data_order", "model_order", "by_hand"), REMAPS)
def test_multi_hot_targets_and_class_counts_follow_the_checkpoints_order(tmp_path, data_order, model_order,
                                                                          by_hand):
    dm, names, _ = bound_module(tmp_path, data_order, model_order, "device", multi_hot=True)
    try:
        dm.setup("test")
        x, y, _ = next(iter(dm.test_dataloader()))
        both = np.add(by_hand["A"], by_hand["B"]).tolist()  # file 0: classes A and B
        for f, target in zip(files_of(x), y.tolist()):
            assert target == (both if f == 0 else by_hand[names[f]])
        counts = {name: 3 + (name == "B") for name in data_order}  # B once more (file 0)
        assert dm.train_class_counts == [counts[name] for name in model_order]
    finally:
        dm.teardown("test")


# ---- 2. clipping anywhere in a long recording is flagged -------------------------------------------------

SPEC = ClipSpec(sample_rate=4096, duration_sec=1.0, num_samples=4096, long_window=1024)
WINDOW = 4096  # samples per window at the file's own rate


def long_recording(clipped_window: int | None, windows: float = 3.5, burst: int = 60) -> np.ndarray:
    """`windows` windows of a quiet tone (the last one partial); `burst` full-scale samples in one window
    (60 of 4096 is 1.5 %, of the last 2048 2.9 %: above the 1 % a window may clip)."""
    x = tone(300, windows, 4096, amp=0.3)
    if clipped_window is not None:
        start = clipped_window * WINDOW + 500
        x[start: start + burst] = 1.0
    return x


@pytest.mark.parametrize("window", [0, 1, 2, 3], ids=["first", "second", "third", "last-partial"])
@pytest.mark.parametrize("source", ["wav", "array"])
def test_clipping_in_any_window_flags_the_recording(tmp_path, window, source):
    x = long_recording(window)
    src = write_wav(tmp_path / "r.wav", x) if source == "wav" else WindowSource(x, 4096)
    reader = WindowReader(src, SPEC, block=2)
    scored = sum(len(w) for w, _ in reader)
    assert scored == 4  # 3 whole windows and the half one
    assert reader.flags == {CLIPPED}


@pytest.mark.parametrize("window", [None, 1, 3])
def test_prediction_input_reports_clipping_in_a_later_window(tmp_path, window):
    paths = [write_wav(tmp_path / "clean.wav", long_recording(None)),
             write_wav(tmp_path / "r.wav", long_recording(window))]
    stream = WindowStream(paths, SPEC, windows_per_batch=3, workers=2, block=1)
    owners = torch.cat([owner for _, owner, _, _ in stream])
    assert owners.bincount().tolist() == [4, 4]
    assert stream.status[0].flags == set()
    assert stream.status[1].flags == (set() if window is None else {CLIPPED})


def test_a_few_clipped_samples_per_window_are_not_clipping():
    # 30 full-scale samples in each of the first 3 windows: 90 in all (0.6 % of the recording), 0.73 % of each
    # whole window: under 1 % everywhere, as in the first window alone
    x = tone(300, 3.5, 4096, amp=0.3)
    for w in range(3):
        x[w * WINDOW + 100: w * WINDOW + 130] = 1.0
    reader = WindowReader(WindowSource(x, 4096), SPEC)
    list(reader)
    assert reader.flags == set()


# ---- 3. a damaged chunk is one line naming the file and the fix, in every cache mode -------------------------

def flip_byte(path: Path, dataset: str, row: int, at: int = 5) -> None:
    """Flip one byte inside the stored chunk holding `row` (its offset from HDF5's chunk index), keeping the
    file's size and modification time: damage on disk, not a rewrite."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        offset = ds.id.get_chunk_info_by_coord((row // ds.chunks[0] * ds.chunks[0],) + (0,) * (ds.ndim - 1)).byte_offset
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        byte = fh.read(1)
        fh.seek(offset + at)
        fh.write(bytes([byte[0] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def assert_one_line(err: ValueError | str, path: Path, what: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: {what}") and "cannot be read (" in message, message
    assert message.endswith("the file is damaged: rebuild it or copy it again"), message


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize(("dataset", "what"), [(schema.SEGMENTS, "/segments_mel row 4 (a checksum mismatch)"),
                                               (schema.LABELS, "/labels rows 0..5 (a checksum mismatch)")])
def test_a_damaged_chunk_is_one_line_in_every_cache_mode(tmp_path, cache, dataset, what):
    path = write_split(tmp_path / "test.h5", ["A", "B"], [0, 1] * 3)
    flip_byte(path, dataset, 4)
    dm = LeakDataModule(test_h5=str(path), cache=cache, num_workers=0)
    try:
        with pytest.raises(ValueError) as err:
            dm.setup("test")
            for _ in dm.test_dataloader():
                pass
        assert_one_line(err.value, path, what)
    finally:
        dm.teardown("test")


@pytest.mark.parametrize("stage", ["train", "test"])
def test_a_chunk_damaged_while_streaming_is_one_line(tmp_path, stage):
    """Damage after set-up (its scan passed): the streaming read itself must give the one line. (In-process:
    a DataLoader worker wraps it in a traceback whose last line the CLI prints, and its shutdown after an
    error waits 5 s for the worker.)"""
    paths = {k: write_split(tmp_path / f"{k}.h5", ["A", "B"], [0, 1] * 3) for k in ("train", "val", "test")}
    dm = LeakDataModule(**{f"{k}_h5": str(p) for k, p in paths.items()}, cache="stream", num_workers=0,
                        batch_size=4, eval_batch_size=4)
    try:
        dm.setup("fit" if stage == "train" else "test")
        flip_byte(paths[stage], schema.SEGMENTS, 4)
        loader = dm.train_dataloader() if stage == "train" else dm.test_dataloader()
        with pytest.raises(ValueError) as err:
            for _ in loader:
                pass
        assert_one_line(err.value, paths[stage], "/segments_mel rows ")
        rows = str(err.value).split("/segments_mel rows ", 1)[1].split(" ", 1)[0].split("..")
        assert int(rows[0]) <= 4 <= int(rows[1])
    finally:
        dm.teardown("fit")


# ---- 4. a split is checksummed only when every dataset that can carry a checksum has one ----------------------

@pytest.mark.parametrize("unchecked", [(), (schema.LABELS,), (schema.SEGMENTS,), (schema.TARGETS,),
                                       (schema.AUDIO_DIGESTS,), (schema.SEGMENTS, schema.LABELS)],
                         ids=["all", "labels", "segments", "targets", "digests", "both"])
def test_a_partly_checksummed_split_is_not_checksummed(tmp_path, unchecked, ll_records):
    path = write_split(tmp_path / "test.h5", ["A", "B"], [0, 1, 1], np.eye(2, dtype=np.uint8)[[0, 1, 1]],
                       unchecked=unchecked, digests=True)
    assert read_info(path).checksummed is (not unchecked)
    LeakDataModule(test_h5=str(path))
    warned = [r.getMessage() for r in ll_records if r.levelname == "WARNING" and "no checksums" in r.getMessage()]
    assert warned == ([] if not unchecked else [
        f"{path} has no checksums (built by the origin builder or before leak_lightning 0.2): "
        "damage on disk would go unnoticed; rebuild it to add them"])


# ---- 7. file decisions, their basis and the sweep, at and around the cutoff ---------------------------------

# 4 windows per file, dyadic values (exact in float32 and float64, means too); the threshold 0.5 is met
# exactly by some windows and by one file's mean (a value at the cutoff counts)
WINDOWS = torch.tensor([
    [0.5, 0.125, 0.125, 0.125],  # 1 vote  (0.25); mean 0.21875
    [0.5, 0.5, 0.125, 0.125],  # 2 votes (0.5);  mean 0.3125
    [0.5, 0.5, 0.5, 0.375],  # 3 votes (0.75); mean 0.46875
    [0.875, 0.875, 0.125, 0.125],  # 2 votes (0.5);  mean 0.5, exactly the threshold
    [0.4375, 0.4375, 0.4375, 0.4375],  # 0 votes; mean 0.4375
    [1.0, 1.0, 1.0, 0.0],  # 3 votes (0.75); mean 0.75
])
VOTE_SHARE = [0.25, 0.5, 0.75, 0.5, 0.0, 0.75]
MEANS = [0.21875, 0.3125, 0.46875, 0.5, 0.4375, 0.75]


@pytest.mark.parametrize(("mode", "fraction", "by_hand"), [
    ("vote", 0.25, [True, True, True, True, False, True]),
    ("vote", 0.5, [False, True, True, True, False, True]),
    ("vote", 0.75, [False, False, True, False, False, True]),
    ("vote", 1.0, [False] * 6),
    ("mean", 0.25, [False, False, False, True, False, True]),  # mean mode ignores the vote fraction
    ("mean", 0.75, [False, False, False, True, False, True]),
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_decisions_and_their_basis_by_hand(mode, fraction, by_hand, dtype):
    windows = WINDOWS.to(dtype)
    assert file_decisions(windows, torch.tensor([0.5]), mode, fraction).tolist() == [by_hand]
    basis, cutoff = decision_basis(windows, 0.5, mode, fraction)
    torch.testing.assert_close(basis, torch.tensor(VOTE_SHARE if mode == "vote" else MEANS, dtype=dtype),
                               check_dtype=False)  # vote shares are float32
    assert cutoff == (fraction if mode == "vote" else 0.5)
    assert (basis >= cutoff).tolist() == by_hand  # a file is a leak when its number reaches the cutoff


@pytest.mark.parametrize(("mode", "fraction"), [("vote", 0.25), ("vote", 0.5), ("vote", 0.75), ("mean", 0.5)])
def test_one_row_of_decisions_per_threshold(mode, fraction):
    # thresholds below, at and above the tied windows: each row is that threshold's decisions by hand
    grid = [0.125, 0.4375, 0.5, 0.5625, 0.875, 1.0]
    rows = file_decisions(WINDOWS, torch.tensor(grid), mode, fraction)
    assert rows.shape == (len(grid), len(WINDOWS))
    for k, t in enumerate(grid):
        if mode == "vote":
            by_hand = [sum(w >= t for w in row) / 4 >= fraction for row in WINDOWS.tolist()]
        else:
            by_hand = [m >= t for m in MEANS]
        basis, cutoff = decision_basis(WINDOWS, t, mode, fraction)
        assert rows[k].tolist() == by_hand == (basis >= cutoff).tolist(), t


def reference_sweep(windows: list[list[float]], truth: list[bool], mode: str, fraction: float,
                    grid: list[float]) -> tuple[float, float]:
    """The sweep in plain Python: F1 per threshold, the middle of the best ones."""
    scores = []
    for t in grid:
        if mode == "vote":
            leak = [sum(w >= t for w in row) / len(row) >= fraction for row in windows]
        else:
            leak = [sum(row) / len(row) >= t for row in windows]
        tp = sum(d and y for d, y in zip(leak, truth))
        wrong = sum(d != y for d, y in zip(leak, truth))
        scores.append(2 * tp / (2 * tp + wrong) if tp + wrong else 0.0)
    best = max(scores)
    ties = [i for i, s in enumerate(scores) if s == best]
    return grid[ties[len(ties) // 2]], best


SIXTEENTHS = [k / 16 for k in range(1, 16)]  # 0.0625 .. 0.9375


@pytest.mark.parametrize(("mode", "fraction", "by_hand"), [
    # truth: files 2, 3, 5 leak. On the grid of sixteenths:
    # vote 0.25 (a file's largest window >= t: 0.5 0.5 0.5 0.875 0.4375 1): t <= 0.4375 all (F1 6/9); t = 0.5
    # files 0-3, 5 (6/8); 0.5625 <= t <= 0.875 files 3, 5 (tp 2, fn 1: 4/5); 0.9375 file 5 (2/4).
    # Best 4/5 on 6 points 0.5625 .. 0.875: the middle (index 3) is 0.75
    ("vote", 0.25, (0.75, 4 / 5)),
    # vote 0.5 (2nd largest: 0.125 0.5 0.5 0.875 0.4375 1): t <= 0.125 all (6/9); .. 0.4375 files 1-5 (6/8);
    # t = 0.5 files 1, 2, 3, 5 (tp 3, fp 1: 6/7); 0.5625 .. 0.875 files 3, 5 (4/5). Best 6/7 at 0.5 alone
    ("vote", 0.5, (0.5, 6 / 7)),
    # vote 0.75 (3rd largest: 0.125 0.125 0.5 0.125 0.4375 1): t <= 0.125 all (6/9); .. 0.4375 files 2, 4, 5
    # (4/6); t = 0.5 files 2, 5 (4/5); above file 5 (2/4). Best 4/5 at 0.5 alone
    ("vote", 0.75, (0.5, 4 / 5)),
    # mean (0.21875 0.3125 0.46875 0.5 0.4375 0.75): t <= 0.1875 all (6/9); 0.25, 0.3125 files 1-5 (6/8);
    # 0.375, 0.4375 files 2-5 (6/7); 0.5 files 3, 5 (4/5); .. 0.75 file 5 (2/4). Best 6/7 on 0.375, 0.4375:
    # the middle (index 1 of 2) is 0.4375
    ("mean", 0.5, (0.4375, 6 / 7)),
])
def test_sweep_by_hand_and_against_a_plain_reference(mode, fraction, by_hand):
    truth = torch.tensor([False, False, True, True, False, True])
    t, f1 = sweep_threshold(WINDOWS, truth, mode, fraction, grid=torch.tensor(SIXTEENTHS))
    assert (t, f1) == pytest.approx(by_hand, abs=1e-6)
    assert (t, f1) == pytest.approx(reference_sweep(WINDOWS.tolist(), truth.tolist(), mode, fraction, SIXTEENTHS),
                                    abs=1e-6)


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("mode", ["vote", "mean"])
def test_sweep_matches_the_plain_reference_on_random_files(mode, fraction):
    # windows and thresholds in 32nds: exact in float32, so ties at a threshold are real ties
    g = torch.Generator().manual_seed(int(fraction * 100) + (mode == "mean"))
    windows = torch.randint(0, 33, (40, 4), generator=g).float() / 32
    truth = torch.rand(40, generator=g) < windows.mean(-1)
    grid = [k / 32 for k in range(1, 32)]
    t, f1 = sweep_threshold(windows, truth, mode, fraction, grid=torch.tensor(grid))
    assert (t, f1) == pytest.approx(reference_sweep(windows.tolist(), truth.tolist(), mode, fraction, grid),
                                    abs=1e-6)
