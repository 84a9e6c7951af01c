"""LeakDataModule: every bad-HDF5 case, origin files, sampling shares and cache modes."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from leak_lightning.data import schema
from leak_lightning.data.batches import CachedSplit, EvalBatches, TrainBatches
from leak_lightning.data.datamodule import LeakDataModule
from leak_lightning.data.h5 import read_info
from leak_lightning.data.stream import StreamSplit, stream_loader


@pytest.fixture
def h5(small_h5, tmp_path) -> dict:
    """Writable copies of the session's tiny splits."""
    out = {}
    for name, path in small_h5.items():
        out[name] = tmp_path / path.name
        shutil.copy(path, out[name])
    return out


def setup_fails(h5: dict, match: str, stage: str = "fit", exc=ValueError) -> None:
    with pytest.raises(exc, match=match):
        dm = LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), test_h5=str(h5["test"]))
        dm.setup(stage)


def edit(path, fn) -> None:
    with h5py.File(path, "r+") as f:
        fn(f)


def test_missing_file(h5):
    h5["val"].unlink()
    setup_fails(h5, f"{h5['val']}: dataset file not found", exc=FileNotFoundError)
    setup_fails(h5, f"{h5['val']}: dataset file not found", stage="validate", exc=FileNotFoundError)
    # a stage that does not read the missing split runs (e.g. `test` with a config naming other paths)
    dm = LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), test_h5=str(h5["test"]))
    dm.setup("test")
    assert len(dm.splits["test"].targets) == dm.infos["test"].num_files and "val" not in dm.infos
    h5["test"].unlink()
    h5["train"].unlink()
    with pytest.raises(FileNotFoundError, match=f"{h5['train']}: dataset file not found"):  # none at all
        LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), test_h5=str(h5["test"]))


def test_missing_dataset(h5):
    edit(h5["train"], lambda f: f.__delitem__(schema.LABELS))
    setup_fails(h5, f"{h5['train']}: dataset /labels is missing; rebuild it")


def test_wrong_rank_and_dtype(h5):
    def flatten(f):
        seg = f[schema.SEGMENTS][()]
        del f[schema.SEGMENTS]
        f[schema.SEGMENTS] = seg.reshape(len(seg), -1, 64)
    edit(h5["train"], flatten)
    setup_fails(h5, r"/segments_mel must be float \[F, L, S, n_mels, T\], got float16 \(70, 80, 64\)")


def test_labels_out_of_range(h5):
    edit(h5["val"], lambda f: f[schema.LABELS].__setitem__(3, 7))
    setup_fails(h5, f"{h5['val']}: label 7 at row 3 is out of range for 5 classes")


def test_nan_features(h5):
    def poison(f):
        seg = f[schema.SEGMENTS][5]
        seg[0, 0, 0, 0] = np.nan
        f[schema.SEGMENTS][5] = seg
    edit(h5["train"], poison)
    setup_fails(h5, f"{h5['train']}: NaN/Inf features in 1 file row.*first at row 5")
    with pytest.raises(ValueError, match="first at row 5"):  # the streamed path checks in chunks
        dm = LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), cache="stream")
        dm.setup("fit")


@pytest.mark.parametrize("rows", [4096, 4, 1])
def test_a_cached_split_is_read_in_blocks_with_every_row_named(h5, rows):
    from leak_lightning.data.h5 import load_segments

    info = read_info(h5["train"])
    with h5py.File(h5["train"]) as f:
        want = f[schema.SEGMENTS][()].reshape(-1, *info.segment_shape[2:])
    np.testing.assert_array_equal(load_segments(info, rows=rows), want)

    def poison(f):
        seg = f[schema.SEGMENTS][9]
        seg[0, 0, 0, 0] = np.inf
        f[schema.SEGMENTS][9] = seg
    edit(h5["train"], poison)
    with pytest.raises(ValueError, match=rf"{h5['train']}: NaN/Inf features in 1 file row.*first at row 9"):
        load_segments(info, rows=rows)


def test_label_sets_and_feature_configs_must_match(h5):
    edit(h5["test"], lambda f: f.attrs.__setitem__(schema.ATTR_LABELS, json.dumps(["A", "B", "C", "D", "E"])))
    setup_fails(h5, f"{h5['test']}: labels .* differ from .*; build all splits in one run")


def test_feature_configs_must_match(h5):
    def change(f):
        cfg = json.loads(f.attrs[schema.ATTR_CONFIG])
        cfg["hop_length"] = 64
        f.attrs[schema.ATTR_CONFIG] = json.dumps(cfg)
    edit(h5["val"], change)
    setup_fails(h5, rf"{h5['val']}: feature config differs from .*\(hop_length=64 against 128\)")
    edit(h5["val"], lambda f: f.attrs.__setitem__(schema.ATTR_CONFIG, json.dumps(
        {**json.loads(f.attrs[schema.ATTR_CONFIG]), "hop_length": 128, "f_max": 2048.0})))  # = sample_rate / 2
    LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), test_h5=str(h5["test"]))  # one frontend


def test_origin_format_file_loads(small_h5, tmp_path):
    """The origin wrote no /file_paths, /sensor_ids or format_version, and extra config keys."""
    src = small_h5["test"]
    origin = tmp_path / "ORIGIN_TESTING_DATASET.H5"
    with h5py.File(src, "r") as f, h5py.File(origin, "w") as g:
        g[schema.SEGMENTS] = f[schema.SEGMENTS][()]
        g[schema.LABELS] = f[schema.LABELS][()].astype(np.int64)
        cfg = json.loads(f.attrs[schema.ATTR_CONFIG])
        g.attrs[schema.ATTR_CONFIG] = json.dumps({**cfg, "num_workers": 24, "gpu_mel": True})
        g.attrs[schema.ATTR_LABELS] = f.attrs[schema.ATTR_LABELS]
        g.attrs[schema.ATTR_LABEL2ID] = f.attrs[schema.ATTR_LABEL2ID]
    info = read_info(origin)
    assert info.format_version == 0 and info.num_files == 10
    dm = LeakDataModule(test_h5=str(origin))
    dm.setup("test")
    assert dm.file_paths("test")[0] == "ORIGIN_TESTING_DATASET.H5#0"
    x, y, start = next(iter(dm.test_dataloader()))
    assert x.shape[1:] == (64, 1) and y.shape[1] == 5 and start == 0


def cached(num_files: int = 10, spf: int = 4) -> CachedSplit:
    seg = torch.arange(num_files * spf, dtype=torch.float16)[:, None, None].expand(-1, 64, 1).contiguous()
    return CachedSplit(seg, torch.eye(5)[torch.arange(num_files) % 5], spf)


def test_train_shares_are_disjoint_seeded_and_resumable():
    split = cached()
    ranks = [TrainBatches(split, 3, seed=1, rank=r, world=2, device=torch.device("cpu"),
                          epoch_fn=lambda: 0, done_fn=lambda: 0) for r in range(2)]
    seen = [torch.cat([x[:, 0, 0] for x, _, _ in tb]).long() for tb in ranks]
    assert len(seen[0]) == len(seen[1]) == 20 and not set(seen[0].tolist()) & set(seen[1].tolist())
    again = torch.cat([x[:, 0, 0] for x, _, _ in ranks[0]]).long()
    assert torch.equal(seen[0], again)  # same epoch, same order
    epoch1 = TrainBatches(split, 3, 1, 0, 2, torch.device("cpu"), lambda: 1, lambda: 0)
    assert not torch.equal(torch.cat([x[:, 0, 0] for x, _, _ in epoch1]).long(), seen[0])
    # targets follow the file of each segment
    x, y, _ = next(iter(ranks[0]))
    assert torch.equal(y, torch.eye(5)[(x[:, 0, 0].long() // 4) % 5])
    resumed = TrainBatches(split, 3, 1, 0, 2, torch.device("cpu"), lambda: 0, lambda: 0)
    resumed.resume_from({"epoch": 0, "position": 2, "seed": 1})
    assert torch.equal(torch.cat([x[:, 0, 0] for x, _, _ in resumed]).long(), seen[0][6:])


def test_eval_batches_cover_every_file_once_in_whole_files():
    split = cached(num_files=7, spf=4)
    starts, values = [], []
    for r in range(3):
        for x, _, start in EvalBatches(split, 9, r, 3, torch.device("cpu")):
            assert len(x) % 4 == 0  # whole files only
            starts.append(start)
            values.append(x[:, 0, 0].long())
    assert sorted(torch.cat(values).tolist()) == list(range(28))
    assert all(int(v[0]) == s for v, s in zip(values, starts))


def test_stream_split_yields_every_segment(small_h5):
    info = read_info(small_h5["val"])
    targets = np.eye(5, dtype=np.uint8)[np.arange(info.num_files) % 5]
    with h5py.File(small_h5["val"], "r") as f:
        want = f[schema.SEGMENTS][()].reshape(-1, 64, 1)
    ev = StreamSplit(info, targets, batch_size=160, train=False, seed=0, rank=0, world=1)
    got = torch.cat([x for x, _, _ in ev]).numpy()
    np.testing.assert_array_equal(got, want)
    tr = StreamSplit(info, targets, batch_size=100, train=True, seed=0, rank=0, world=1, buffer_files=4)
    xs = torch.cat([x for x, _, _ in tr]).numpy()
    assert len(xs) == len(want) and not np.array_equal(xs, want)  # shuffled, nothing lost
    flat = lambda a: np.sort(a.reshape(len(a), -1), axis=0)  # noqa: E731
    np.testing.assert_array_equal(flat(xs), flat(want))


@pytest.mark.parametrize("cache", ["ram", "stream", "device"])
def test_every_cache_mode_trains(small_h5, tmp_path, cache):
    from helpers.files import REPO, data_args

    from leak_lightning.cli.leak_cli import LeakCLI

    cli = LeakCLI(args=["fit", "--config", str(REPO / "configs/demo_frame.yaml"), *data_args(small_h5),
                        "--trainer.fast_dev_run", "2", "--trainer.default_root_dir", str(tmp_path),
                        "--data.cache", cache, "--data.num_workers", "1", "--data.batch_size", "256"])
    assert cli.datamodule.modes == {"train": cache, "val": cache}
    assert cli.trainer.global_step == 2 and cli.trainer.state.finished


def numbered_split(folder, num_files: int) -> tuple:
    """A split whose segment i holds the value i everywhere (float16 is exact below 2048)."""
    from leak_lightning.audio.features import FeatureConfig
    from leak_lightning.builder.writer import SplitWriter

    cfg = FeatureConfig()
    spf = cfg.segment_shape[0] * cfg.segment_shape[1]
    seg = np.broadcast_to(np.arange(num_files * spf, dtype=np.float16).reshape(num_files, *cfg.segment_shape[:2], 1, 1),
                          (num_files, *cfg.segment_shape))
    writer = SplitWriter(folder / "numbered.h5", cfg, ["A", "B", "C"])
    writer.append(np.ascontiguousarray(seg), (np.arange(num_files) % 3).astype(np.int16), [""] * num_files,
                  [""] * num_files)
    info = read_info(writer.commit())
    return info, np.eye(3, dtype=np.uint8)[np.arange(num_files) % 3]


def served(split: StreamSplit, workers: int, epoch: int = 0, position: int = 0) -> list[torch.Tensor]:
    """Segment numbers of every batch a real DataLoader serves, from `position` on."""
    split.epoch = epoch
    split.start_at(position)
    out = []
    for x, y, _ in stream_loader(split, workers, pin_memory=False):
        ids = x[:, 0, 0].long()
        assert torch.equal(y, torch.eye(3)[(ids // split.info.segments_per_file) % 3])  # targets follow files
        out.append(ids)
    return out


def test_stream_epochs_reshuffle_and_serve_full_batches(tmp_path):
    info, targets = numbered_split(tmp_path, 23)
    n = info.num_segments
    split = StreamSplit(info, targets, batch_size=300, train=True, seed=3, rank=0, world=1, roles=2,
                        buffer_files=3)
    epochs = [served(split, 2, epoch) for epoch in (0, 1)]
    for batches in epochs:
        assert len(batches) == len(split)  # what Lightning's schedule is sized by
        assert sorted(torch.cat(batches).tolist()) == list(range(n))
        assert sum(len(b) < 300 for b in batches) <= 2  # only each stream's last batch is short
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))
    single = StreamSplit(info, targets, batch_size=300, train=True, seed=3, rank=0, world=1, roles=1)
    assert sorted(torch.cat(served(single, 0)).tolist()) == list(range(n))  # no workers: in-process


def test_stream_ranks_get_disjoint_equal_shares(tmp_path):
    info, targets = numbered_split(tmp_path, 23)
    shares = [StreamSplit(info, targets, 256, True, 5, rank, 2, roles=2) for rank in (0, 1)]
    got = [torch.cat(served(s, 2)).tolist() for s in shares]
    assert len(shares[0]) == len(shares[1]) and len(got[0]) == len(got[1]) == 11 * 80
    assert not set(got[0]) & set(got[1])


@pytest.mark.parametrize("workers", [3, 0])
def test_stream_resumes_at_every_position_in_the_same_order(tmp_path, workers):
    info, targets = numbered_split(tmp_path, 23)
    # 3 streams of 8, 8 and 7 files: 3, 3 and 2 batches, so one stream runs out first
    split = StreamSplit(info, targets, batch_size=300, train=True, seed=7, rank=0, world=1, roles=workers,
                        buffer_files=3)
    full = served(split, workers, epoch=2)
    assert len(full) == len(split) == (8 if workers else 7)
    for position in range(len(full) + 1):
        resumed = served(split, workers, epoch=2, position=position)
        assert len(resumed) == len(full) - position
        for want, got in zip(full[position:], resumed):
            assert torch.equal(want, got), position
    with pytest.raises(ValueError, match="past the end"):
        split.start_at(len(full) + 1)


def test_a_different_batch_order_restarts_the_epoch_with_a_warning():
    import logging

    cpu = torch.device("cpu")
    split = cached()
    saved = TrainBatches(split, 3, 1, 0, 1, cpu, lambda: 0, lambda: 2).snapshot()
    same = TrainBatches(split, 3, 1, 0, 1, cpu, lambda: 0, lambda: 0)
    same.resume_from(saved)
    assert len(list(same)) == len(same) - 2
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("leak_lightning.data.batches").addHandler(handler)
    try:
        other = TrainBatches(split, 4, 1, 0, 1, cpu, lambda: 0, lambda: 0)  # another batch size
        other.resume_from(saved)
    finally:
        logging.getLogger("leak_lightning.data.batches").removeHandler(handler)
    assert len(list(other)) == len(other)  # the whole epoch again, not a misplaced position
    assert len(records) == 1 and "batch 3" in records[0].getMessage() and "batch 4" in records[0].getMessage()


# ---- a memory budget: larger splits are streamed within it ------------------------------------------------------

@pytest.mark.parametrize("text, value", [("4GB", 4 * 2**30), ("512 MiB", 512 * 2**20), ("2e9", 2_000_000_000),
                                         (1536, 1536), ("1.5k", 1536)])
def test_sizes_are_read_in_binary_multiples(text, value):
    from leak_lightning.runtime.logs import parse_bytes

    assert parse_bytes(text, "data.max_cache_bytes") == value


@pytest.mark.parametrize("text", ["lots", "4 parsecs", "-1GB", "0"])
def test_a_size_that_is_not_one_is_named(text):
    from leak_lightning.runtime.logs import parse_bytes

    with pytest.raises(ValueError, match=rf"data.max_cache_bytes='?{text}'?: (not a size|must be more than 0)"):
        parse_bytes(text, "data.max_cache_bytes")


def test_the_stream_buffer_fills_the_budget_and_no_more(tmp_path):
    from leak_lightning.data.datamodule import stream_buffer_files

    info, _ = numbered_split(tmp_path, 23)  # 80 segments of 64x1 float16 a file; 3 classes
    row = 64 * 2 + 4 * 3  # bytes a segment with its float32 targets
    batch, file = 1000 * row, 80 * row
    # 2 streams: (3 * 2 + 2) batches are reserved, the rest holds 3 chunks per stream
    budget = 8 * batch + 3 * 2 * file * 37 + 5
    assert stream_buffer_files(info, 3, 1000, 2, budget) == 37
    assert stream_buffer_files(info, 3, 1000, 2, budget - 6) == 36
    assert stream_buffer_files(info, 3, 1000, 2, 2**40) == 4096  # the shuffle window's cap
    # 8 batches and one file a chunk: 8 * 140,000 + 6 * 11,200 = 1,187,200 bytes = 1.13 MB
    with pytest.raises(ValueError, match=rf"data.max_cache_bytes=1.00 MB is too small to stream {info.path} with "
                                         r"batches of 1000 segments and 2 stream\(s\): at least 1.13 MB; raise it"):
        stream_buffer_files(info, 3, 1000, 2, 2**20)


def test_a_split_larger_than_the_budget_is_streamed_and_a_forced_cache_is_refused(small_h5):
    size = read_info(small_h5["train"]).num_segments * 64 * 2  # bytes of its segments
    fits = LeakDataModule(train_h5=str(small_h5["train"]), val_h5=str(small_h5["val"]), max_cache_bytes=size)
    over = LeakDataModule(train_h5=str(small_h5["train"]), val_h5=str(small_h5["val"]), max_cache_bytes=size - 1,
                          batch_size=64, num_workers=1)
    assert fits._choose_mode(fits.infos["train"], torch.device("cpu")) == "device"
    assert over._choose_mode(over.infos["train"], torch.device("cpu")) == "stream"
    over.setup("fit")
    assert over.modes["train"] == "stream" and over.splits["train"].buffer_files > 16  # more than the default
    forced = LeakDataModule(train_h5=str(small_h5["train"]), val_h5=str(small_h5["val"]), cache="ram",
                            max_cache_bytes=size - 1)
    with pytest.raises(ValueError, match=rf"{small_h5['train']}: its 700.00 KB of segments do not fit "
                                         r"data.max_cache_bytes=700.00 KB with data.cache ram; use data.cache stream"):
        forced.setup("fit")


def test_stream_workers_are_forked_whatever_the_default(tmp_path, monkeypatch):
    import multiprocessing as mp

    info, targets = numbered_split(tmp_path, 4)
    split = StreamSplit(info, targets, batch_size=300, train=True, seed=0, rank=0, world=1, roles=2)
    monkeypatch.setattr(mp, "get_start_method", lambda allow_none=False: "spawn")
    assert stream_loader(split, 2, pin_memory=False).multiprocessing_context.get_start_method() == "fork"
