"""One memory budget for the whole process; byte sizes that are sizes; log lines that stay one line."""

from __future__ import annotations

import io
import shutil

import pytest
from helpers.files import REPO, cli_exit, data_args, one_error

from leak_lightning.data.datamodule import LeakDataModule
from leak_lightning.data.h5 import read_info
from leak_lightning.runtime.logs import parse_bytes, setup_logging

OPTION = "data.max_cache_bytes"
EXAMPLE = "write e.g. 4GB, 512MB or a number of bytes"


def sizes(h5) -> dict[str, int]:
    """Bytes of each split's float16 segments: files x 80 segments x 64 mels x 1 frame x 2 bytes."""
    out = {}
    for name, path in h5.items():
        info = read_info(path)
        assert info.segment_shape == (40, 2, 64, 1)  # the arithmetic below is written for these
        out[name] = info.num_files * 80 * 64 * 2
    return out


def eval_stream(workers: int, classes: int = 5) -> int:
    """What streaming an evaluation split holds with batches of one file (80 segments): (3 x streams + 2)
    batches of 80 rows of a float16 segment (128 bytes) and its float32 targets (4 bytes a class)."""
    return (3 * max(1, workers) + 2) * 80 * (128 + 4 * classes)


def module(h5, budget, workers: int = 0, **kw) -> LeakDataModule:
    return LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), test_h5=str(h5["test"]),
                          batch_size=800, eval_batch_size=80, num_workers=workers, max_cache_bytes=budget, **kw)


def split_lines(stream: io.StringIO) -> dict[str, str]:
    """The data module's line per split, by split name."""
    lines = [line.split("] ", 2)[2] for line in stream.getvalue().splitlines() if " split: " in line]
    return {line.split(" ", 1)[0]: line for line in lines}


# ---- one budget for every split of the process ----------------------------------------------------------------

def test_a_budget_between_one_split_and_two_caches_training_and_streams_validation(small_h5):
    size = sizes(small_h5)
    assert (size["train"], size["val"], size["test"]) == (716_800, 204_800, 102_400)
    budget = size["train"] + eval_stream(0)  # more than either split alone, less than both
    assert max(size["train"], size["val"]) < budget < size["train"] + size["val"]
    dm, stream = module(small_h5, budget), io.StringIO()
    setup_logging("INFO", stream=stream)
    dm.setup("fit")
    assert dm.modes == {"train": "device", "val": "stream"}  # "device" is host memory on a CPU run
    assert dm._held == {"train": size["train"], "val": eval_stream(0)} and sum(dm._held.values()) == budget
    lines = split_lines(stream)
    assert set(lines) == {"train", "val"}
    assert "cache=device, 700.00 KB of data.max_cache_bytes 757.81 KB (57.81 KB left)" in lines["train"]
    # 204,800 - 59,200 = 145,600 bytes short
    assert ("cache=stream, 57.81 KB of data.max_cache_bytes 757.81 KB (0.00 B left), streamed: its 200.00 KB of "
            "segments are 142.19 KB more than the budget leaves it") in lines["val"]
    # the test split of the same process: nothing is left for it, not a budget of its own
    with pytest.raises(ValueError, match=rf"data.max_cache_bytes=757.81 KB is too small to stream "
                                         rf"{small_h5['test']} with batches of 80 segments and 1 stream\(s\): at "
                                         r"least 57.81 KB besides the 757.81 KB the process's other splits hold"):
        dm.setup("test")


def test_a_budget_for_both_caches_both_and_the_test_split_takes_what_is_left(small_h5):
    size = sizes(small_h5)
    dm = module(small_h5, size["train"] + size["val"] + eval_stream(0))
    dm.setup("fit")
    assert dm.modes == {"train": "device", "val": "device"}
    dm.setup("test")  # 102,400 bytes of segments, 59,200 left: streamed within them
    assert dm.modes["test"] == "stream" and dm._held["test"] == eval_stream(0)
    roomy = module(small_h5, sum(size.values()))
    roomy.setup("fit")
    roomy.setup("test")
    assert set(roomy.modes.values()) == {"device"} and sum(roomy._held.values()) == sum(size.values())


def test_stream_workers_count_in_the_budget(small_h5):
    """Each forked worker holds its own stream buffers: two workers need (3 x 2 + 2) batches, not 5."""
    size = sizes(small_h5)
    two = module(small_h5, size["train"] + eval_stream(2), workers=2)
    two.setup("fit")
    assert two.modes == {"train": "device", "val": "stream"} and two._held["val"] == eval_stream(2) == 94_720
    # a byte less: caching the training split leaves too little to stream validation; streaming training
    # (whose batches of 800 alone need 8 x 800 x 148 bytes) would not fit either
    short = module(small_h5, size["train"] + eval_stream(2) - 1, workers=2)
    with pytest.raises(ValueError, match=rf"data.max_cache_bytes=792.50 KB is too small to stream "
                                         rf"{small_h5['train']} with batches of 800 segments and 2 stream\(s\)"):
        short.setup("fit")


def test_a_streamed_training_split_leaves_validation_what_it_needs(small_h5):
    size = sizes(small_h5)
    budget = size["train"] + eval_stream(0) - 1  # training no longer fits beside validation's least
    dm = module(small_h5, budget)
    dm.setup("fit")
    assert dm.modes == {"train": "stream", "val": "stream"}
    # training's stream: 5 batches of 800 rows, then chunks of 3 x 80 rows per file within what is left
    fixed, per_file = 5 * 800 * 148, 3 * 80 * 148
    files = (budget - eval_stream(0) - fixed) // per_file
    assert files == 3 and dm.splits["train"].buffer_files == files
    assert dm._held == {"train": fixed + files * per_file, "val": eval_stream(0)}
    assert sum(dm._held.values()) <= budget


def test_a_small_validation_split_is_cached_beside_a_streamed_training_split(small_h5):
    """Streaming validation in batches of 8160 segments (102 files) would hold 5 x 8160 x 148 bytes: caching
    its 204,800 bytes takes less, so that is what training leaves it."""
    size = sizes(small_h5)
    budget = size["train"] - 1
    dm = LeakDataModule(train_h5=str(small_h5["train"]), val_h5=str(small_h5["val"]), batch_size=80,
                        eval_batch_size=8192, num_workers=0, max_cache_bytes=budget)
    dm.setup("fit")
    fixed, per_file = 5 * 80 * 148, 3 * 80 * 148
    files = (budget - size["val"] - fixed) // per_file
    assert files == 12 and dm.modes == {"train": "stream", "val": "device"}
    assert dm._held == {"train": fixed + files * per_file, "val": size["val"]}
    assert sum(dm._held.values()) <= budget


def test_a_forced_cache_counts_what_earlier_splits_hold(small_h5):
    size = sizes(small_h5)
    dm = module(small_h5, size["train"] + size["val"] - 1, cache="ram")
    with pytest.raises(ValueError, match=rf"{small_h5['val']}: its 200.00 KB of segments do not fit "
                                         r"data.max_cache_bytes=900.00 KB with data.cache ram; use data.cache stream "
                                         r"\(or auto\), or a larger budget \(it is shared: 200.00 KB left beside "
                                         r"train split 700.00 KB\)"):
        dm.setup("fit")


# ---- byte sizes that are sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("value, why", [
    ("1e999", "not a finite size"), ("nan", "not a size"), ("inf", "not a size"), (float("nan"), "not a size"),
    (float("inf"), "not a size"), ("-1", "must be more than 0"), ("-2GB", "must be more than 0"),
    (-5, "must be more than 0"), ("0", "must be more than 0"), ("0.5", "less than one byte"),
    ("1e-3", "less than one byte"), (2**63, "more than 8192.00 PB, the most a size can be"),
    ("8193PB", "more than 8192.00 PB, the most a size can be"),
    ("1e19", "more than 8192.00 PB, the most a size can be"), (True, "not a size"),
    ("4 GBs", "not a size"), ("", "not a size")])
def test_a_byte_size_that_is_not_one_is_one_line_with_an_example(value, why):
    with pytest.raises(ValueError) as err:
        parse_bytes(value, OPTION)
    message = str(err.value)
    assert message == f"{OPTION}={value!r}: {why}; {EXAMPLE}" and "\n" not in message


@pytest.mark.parametrize("value, expected", [(2**63 - 1, 2**63 - 1), ("8PB", 8 * 2**50), ("1e18", 10**18),
                                             ("9007199254740993", 9007199254740993), ("+3", 3), (".5k", 512),
                                             ("1.5 GiB", 3 * 2**29)])
def test_large_and_exact_sizes_are_kept(value, expected):
    """Whole numbers stay exact past float's 53 bits; more than this machine's memory is still a ceiling."""
    assert parse_bytes(value, OPTION) == expected


def test_an_infinite_budget_is_one_line_in_process(small_h5, capsys):
    line = one_error(*cli_exit(capsys, "fit", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5),
                               "--data.max_cache_bytes", "1e999", "--trainer.max_epochs", "1"))
    assert line.endswith(f"{OPTION}='1e999': not a finite size; {EXAMPLE}")


@pytest.mark.slow
def test_an_infinite_budget_is_one_line_from_a_real_process(small_h5, tmp_path, run_cli):
    r = run_cli("fit", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--data.max_cache_bytes",
                "1e999", "--trainer.default_root_dir", tmp_path / "run")
    line = one_error(r.returncode, r.stderr)
    assert line.endswith(f"{OPTION}='1e999': not a finite size; {EXAMPLE}")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---- one line per name -----------------------------------------------------------------------------------------

NASTY = "a\nb\r\x1b[31mc\u2028d\te"
ESCAPED = r"a\nb\r\x1b[31mc\u2028d\te"


def test_a_name_with_line_breaks_stays_on_its_log_line():
    stream = io.StringIO()
    log = setup_logging("INFO", stream=stream)
    log.warning("skipped %s: %s", NASTY, "silent")
    log.info(f"label {NASTY!s} in the message itself")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith(f"[WARNING] skipped {ESCAPED}: silent")
    assert lines[1].endswith(f"[INFO] label {ESCAPED} in the message itself")
    assert "\x1b" not in stream.getvalue()  # a name cannot colour or move the terminal either
    log.info("unchanged: é 漢字 \\xff backslashes")  # printable text and printable()'s escapes stay as they are
    assert stream.getvalue().splitlines()[-1].endswith("[INFO] unchanged: é 漢字 \\xff backslashes")


def test_a_traceback_keeps_its_own_lines_after_a_one_line_message():
    stream = io.StringIO()
    log = setup_logging("DEBUG", stream=stream)
    try:
        raise ValueError("bad value")
    except ValueError:
        log.debug("details of %s", NASTY, exc_info=True)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(f"[DEBUG] details of {ESCAPED}")
    assert lines[1] == "Traceback (most recent call last):" and lines[-1] == "ValueError: bad value"


def test_a_split_under_a_folder_with_a_newline_logs_one_line(small_h5, tmp_path):
    folder = tmp_path / "site\nB"
    folder.mkdir()
    h5 = {}
    for name, path in small_h5.items():
        h5[name] = folder / path.name
        shutil.copy(path, h5[name])
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    dm = LeakDataModule(train_h5=str(h5["train"]), val_h5=str(h5["val"]), num_workers=0)
    dm.setup("fit")
    lines = [line for line in stream.getvalue().splitlines() if " split: " in line]
    assert len(lines) == 2 and all(line.endswith(f"({tmp_path}/site\\nB/{p.name})")
                                   for line, p in zip(lines, (h5["train"], h5["val"]))), lines
    assert len(stream.getvalue().splitlines()) == len(lines)  # nothing else spilled onto a line of its own
