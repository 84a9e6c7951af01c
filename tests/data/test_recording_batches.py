"""Whole-recording training batches (a recording-level model sees every segment of a file at once)."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from test_data import numbered_split, served

from leak_lightning.data import schema
from leak_lightning.data.batches import CachedSplit, TrainBatches, epoch_seed
from leak_lightning.data.datamodule import LeakDataModule
from leak_lightning.data.h5 import read_info
from leak_lightning.data.stream import StreamBatches, StreamSplit

CPU = torch.device("cpu")


def numbered(num_files: int, spf: int, labels: list[int] | None = None) -> CachedSplit:
    """Segment row i holds the value i; file f's class is labels[f] (default f % 3)."""
    seg = torch.arange(num_files * spf, dtype=torch.float16)[:, None, None].expand(-1, 64, 1).contiguous()
    labels = labels if labels is not None else [f % 3 for f in range(num_files)]
    return CachedSplit(seg, torch.eye(3)[torch.tensor(labels)], spf)


def whole(split: CachedSplit, batch_size: int, seed: int = 1, epoch: int = 0, rank: int = 0, world: int = 1,
          **kw) -> TrainBatches:
    return TrainBatches(split, batch_size, seed, rank, world, CPU, lambda: epoch, lambda: 0,
                        whole_recordings=True, **kw)


def files_of(x: torch.Tensor, y: torch.Tensor, spf: int, targets: torch.Tensor) -> list[int]:
    """The files a batch holds, checking it holds them whole, contiguous and in stored order."""
    rows = x[:, 0, 0].long()
    assert len(rows) % spf == 0, "a batch splits a file"
    per_file = rows.view(-1, spf)
    files = (per_file[:, 0] // spf).tolist()
    for f, segs in zip(files, per_file):
        assert segs.tolist() == list(range(f * spf, f * spf + spf)), f"file {f}: its segments out of order"
    assert torch.equal(y, targets[torch.tensor(files)].repeat_interleave(spf, 0))  # y[::spf] is the file's
    return files


def epoch_files(tb: TrainBatches) -> list[list[int]]:
    spf = tb.split.segments_per_file
    return [files_of(x, y, spf, tb.split.targets) for x, y, _ in tb]


def test_a_batch_is_whole_files_and_an_epoch_covers_each_file_once():
    split = numbered(11, 4)  # batch of 10 segments: 2 files of 4
    tb = whole(split, 10, seed=1, epoch=0)
    batches = epoch_files(tb)
    assert [len(b) for b in batches] == [2, 2, 2, 2, 2, 1]  # 11 files; the last batch short
    assert len(tb) == tb.optimizer_steps == 6
    order = sum(batches, [])
    assert sorted(order) == list(range(11))
    # the files in the order of a permutation seeded per epoch as the segment shuffle is
    assert order == torch.randperm(11, generator=torch.Generator().manual_seed(epoch_seed(1, 0))).tolist()
    assert sum(epoch_files(whole(split, 10, seed=1, epoch=0)), []) == order  # seeded
    assert sum(epoch_files(whole(split, 10, seed=1, epoch=1)), []) != order  # another epoch
    assert sum(epoch_files(whole(split, 10, seed=2, epoch=0)), []) != order  # another seed
    # a batch smaller than a file still holds one whole file
    assert [len(b) for b in epoch_files(whole(split, 3))] == [1] * 11


def test_ranks_take_disjoint_equal_shares_of_whole_files():
    split = numbered(11, 4)
    shares = [sum(epoch_files(whole(split, 8, seed=3, rank=r, world=2)), []) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 5 and not set(shares[0]) & set(shares[1])
    order = torch.randperm(11, generator=torch.Generator().manual_seed(epoch_seed(3, 0))).tolist()
    assert shares == [order[0:10:2], order[1:10:2]]


def test_balanced_draws_whole_files_by_class_weight():
    labels = [0] * 6 + [1] * 2  # 1:3, files 6 and 7 are the minority
    split = numbered(8, 4, labels)
    epochs = [sum(epoch_files(whole(split, 8, seed=5, epoch=e, balance=True)), []) for e in range(300)]
    assert all(len(files) == 8 for files in epochs)  # as many draws as files
    assert any(len(set(files)) < 8 for files in epochs)  # with replacement
    assert epochs[0] == sum(epoch_files(whole(split, 8, seed=5, epoch=0, balance=True)), [])  # seeded
    n = 8 * len(epochs)
    minority = sum(f >= 6 for files in epochs for f in files)
    # each class half the draws: Binomial(n, 1/2) within 5 standard deviations
    assert abs(minority - n / 2) <= 5 * math.sqrt(n / 4), minority / n
    assert set(sum(epochs, [])) == set(range(8))


def test_blocks_of_steps_serve_the_same_whole_file_batches():
    split = numbered(11, 4)
    single = [x for x, _, _ in whole(split, 8)]
    tb = whole(split, 8, steps_per_call=4)
    blocks = list(tb)
    assert tb.optimizer_steps == 6 and len(tb) == len(blocks) == 2
    flat = [x for xs, _, _ in blocks for x in xs]
    assert len(flat) == 6 and all(torch.equal(a, b) for a, b in zip(single, flat))


def test_a_cached_epoch_resumes_at_every_position():
    split = numbered(11, 4)
    full = [x for x, _, _ in whole(split, 8, epoch=2)]
    saved = TrainBatches(split, 8, 1, 0, 1, CPU, lambda: 2, lambda: 0, whole_recordings=True)
    for position in range(len(full) + 1):
        resumed = whole(split, 8, epoch=2)
        resumed.resume_from(saved.snapshot() | {"position": position})
        got = [x for x, _, _ in resumed]
        assert len(got) == len(full) - position
        assert all(torch.equal(a, b) for a, b in zip(full[position:], got)), position


def test_an_order_from_the_other_mode_restarts_the_epoch_with_a_warning(ll_records):
    split = numbered(11, 4)
    segments = TrainBatches(split, 8, 1, 0, 1, CPU, lambda: 0, lambda: 2).snapshot()
    resumed = whole(split, 8)
    resumed.resume_from(segments)
    assert len(list(resumed)) == len(resumed)  # the whole epoch, not a position in another order
    warned = [r.getMessage() for r in ll_records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "whole recordings" in warned[0]
    back = TrainBatches(split, 8, 1, 0, 1, CPU, lambda: 0, lambda: 0)
    back.resume_from(whole(split, 8).snapshot() | {"position": 2})
    assert len(list(back)) == len(back) and len(ll_records) >= 2


# ---- streamed -----------------------------------------------------------------------------------------------------

def stream_files(batches: list[torch.Tensor], spf: int) -> list[list[int]]:
    out = []
    for ids in batches:
        assert len(ids) % spf == 0, "a batch splits a file"
        per_file = ids.view(-1, spf)
        assert torch.equal(per_file, per_file[:, :1] + torch.arange(spf)), "a file's segments out of order"
        assert torch.all(per_file[:, 0] % spf == 0)
        out.append((per_file[:, 0] // spf).tolist())
    return out


def test_stream_batches_are_whole_files_shuffled_within_chunks(tmp_path):
    info, targets = numbered_split(tmp_path, 23)
    spf = info.segments_per_file
    split = StreamSplit(info, targets, batch_size=3 * spf + 20, train=True, seed=3, rank=0, world=1, roles=2,
                        buffer_files=4, whole_recordings=True)
    assert split.stream_lengths() == [4, 4]  # 12 and 11 files, 3 a batch
    reordered = False
    for epoch in (0, 1):
        batches = stream_files(served(split, 2, epoch), spf)
        assert len(batches) == len(split) and sorted(sum(batches, [])) == list(range(23))
        assert [len(b) for b in batches] == [3] * 6 + [3, 2]
        # the loader alternates the two streams; each reads its share of the epoch's file order 4 files a chunk
        order = np.random.default_rng(epoch_seed(3, epoch)).permutation(23)
        for role in (0, 1):
            got = sum(batches[role::2], [])
            want = order[role::2].tolist()
            for lo in range(0, len(want), 4):
                assert sorted(got[lo: lo + 4]) == sorted(want[lo: lo + 4])
            reordered |= got != want
    assert reordered  # files are shuffled within a chunk, not only by the epoch's order


def test_stream_ranks_get_disjoint_equal_shares_of_whole_files(tmp_path):
    info, targets = numbered_split(tmp_path, 23)
    spf = info.segments_per_file
    shares = [sum(stream_files(served(StreamSplit(info, targets, 2 * spf, True, 5, rank, 2, roles=2,
                                                  whole_recordings=True), 2), spf), []) for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 11 and not set(shares[0]) & set(shares[1])


@pytest.mark.parametrize("workers", [3, 0])
def test_a_streamed_epoch_resumes_at_every_position(tmp_path, workers):
    info, targets = numbered_split(tmp_path, 23)
    spf = info.segments_per_file
    split = StreamSplit(info, targets, batch_size=3 * spf, train=True, seed=7, rank=0, world=1, roles=workers,
                        buffer_files=3, whole_recordings=True)
    full = served(split, workers, epoch=2)
    stream_files(full, spf)
    assert len(full) == len(split)
    for position in range(len(full) + 1):
        resumed = served(split, workers, epoch=2, position=position)
        assert len(resumed) == len(full) - position
        assert all(torch.equal(a, b) for a, b in zip(full[position:], resumed)), position


def test_a_streamed_segment_order_is_refused_in_whole_recording_mode(tmp_path, ll_records):
    info, targets = numbered_split(tmp_path, 23)
    make = lambda whole_: StreamSplit(info, targets, 300, True, 7, 0, 1, whole_recordings=whole_)  # noqa: E731
    saved = StreamBatches(make(False), 0, False, lambda: 0, lambda: 2).snapshot()
    resumed = StreamBatches(make(True), 0, False, lambda: 0, lambda: 0)
    resumed.resume_from(saved)
    assert len(list(resumed)) == len(resumed)
    assert any("whole recordings" in r.getMessage() for r in ll_records if r.levelname == "WARNING")


# ---- the data module ----------------------------------------------------------------------------------------------

def test_whole_recordings_follows_the_model_unless_set():
    dm = LeakDataModule(predict_path="x.wav")
    assert dm.whole_recordings is False  # no trainer: segments
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(whole_recordings=True))
    assert dm.whole_recordings is True
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace())  # a model that does not say
    assert dm.whole_recordings is False
    forced = LeakDataModule(predict_path="x.wav", whole_recordings=False)
    forced.trainer = SimpleNamespace(lightning_module=SimpleNamespace(whole_recordings=True))
    assert forced.whole_recordings is False


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_the_train_loader_serves_whole_recordings(small_h5, cache, ll_records, caplog):
    caplog.set_level(logging.INFO, logger="leak_lightning")
    with h5py.File(small_h5["train"], "r") as f:
        stored = f[schema.SEGMENTS][()]
    files, spf = stored.shape[0], stored.shape[1] * stored.shape[2]
    stored = stored.reshape(files, spf, *stored.shape[3:])  # (F, spf, n_mels, T)
    dm = LeakDataModule(train_h5=str(small_h5["train"]), val_h5=str(small_h5["val"]), batch_size=3 * spf + 7,
                        cache=cache, num_workers=0, whole_recordings=True)
    dm.setup("fit")
    assert dm.modes["train"] == cache
    loader = dm.train_dataloader()
    seen = []
    for x, y, _ in loader:
        assert len(x) % spf == 0 and len(x) <= 3 * spf
        for block, target in zip(x.view(-1, spf, *x.shape[1:]).numpy(), y.view(-1, spf, y.shape[1])):
            match = [f for f in range(files) if np.array_equal(stored[f], block)]
            assert len(match) == 1, "a batch block is not one stored file, whole and in order"
            assert torch.equal(target, target[:1].expand_as(target))  # one target per file
            seen.append(match[0])
    assert sorted(seen) == list(range(files))
    assert len(loader) == math.ceil(files / 3)
    assert any("3 a batch" in r.getMessage() for r in ll_records)
    dm.teardown("fit")


def fake_trainer(model) -> SimpleNamespace:
    """What the data module reads of a Trainer when it builds the training loader."""
    progress = SimpleNamespace(current=SimpleNamespace(processed=0))
    return SimpleNamespace(lightning_module=model, current_epoch=0, global_rank=0, world_size=1,
                           strategy=SimpleNamespace(root_device=CPU),
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def test_the_model_of_the_run_decides_when_the_loader_is_built(small_h5):
    spf = read_info(small_h5["train"]).segments_per_file
    dm = LeakDataModule(train_h5=str(small_h5["train"]), val_h5=str(small_h5["val"]), batch_size=2 * spf + 3,
                        cache="stream", num_workers=0)
    dm.trainer = fake_trainer(SimpleNamespace())  # set up for a segment model
    dm.setup("fit")
    assert [len(x) for x, _, _ in dm.train_dataloader()][0] == 2 * spf + 3
    dm.trainer = fake_trainer(SimpleNamespace(whole_recordings=True))  # the same data, a recording model
    sizes = [len(x) for x, _, _ in dm.train_dataloader()]
    assert sizes[:-1] == [2 * spf] * (len(sizes) - 1) and sum(sizes) == dm.infos["train"].num_segments
    dm.teardown("fit")
