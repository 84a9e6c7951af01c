"""The logging setup: elapsed-time format, colours only on a terminal, level from the environment."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
import time

import pytest
from helpers.files import REPO, data_args

from leak_lightning import __version__
from leak_lightning.runtime import logs
from leak_lightning.runtime.logs import (
    RED,
    RESET,
    YELLOW,
    ElapsedTimeFormatter,
    bytes_human,
    resolve_level,
    setup_logging,
)


def record(level=logging.INFO, msg="hello %s", args=("world",), **extra) -> logging.LogRecord:
    rec = logging.LogRecord("leak_lightning.test", level, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_format_has_elapsed_seconds_level_and_message():
    fmt = ElapsedTimeFormatter(colour=False, start=time.monotonic() - 5.23)
    text = fmt.format(record())
    # elapsed right-aligned in a 7.2f field, as the origin printed it
    assert re.fullmatch(r"\[   5\.2\ds\] \[INFO\] hello world", text), text


def test_colours_by_level_and_tag_only_when_enabled():
    on, off = ElapsedTimeFormatter(colour=True), ElapsedTimeFormatter(colour=False)
    assert on.format(record(logging.WARNING)).startswith(YELLOW)
    assert on.format(record(logging.ERROR)).endswith(RESET) and on.format(record(logging.ERROR)).startswith(RED)
    assert on.format(record(colour="success")).startswith("\033[32m")
    assert "\033[" not in off.format(record(logging.ERROR))
    assert "\033[" not in on.format(record())  # plain INFO stays plain


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty = FakeTty()
    setup_logging("INFO", stream=tty).warning("careful")
    assert YELLOW in tty.getvalue()
    redirected = io.StringIO()
    setup_logging("INFO", stream=redirected).warning("careful")
    assert "\033[" not in redirected.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    tty2 = FakeTty()
    setup_logging("INFO", stream=tty2).warning("careful")
    assert "\033[" not in tty2.getvalue() and "careful" in tty2.getvalue()


def test_level_from_environment_and_argument(monkeypatch):
    monkeypatch.setenv("TRAINER_LOG_LEVEL", "warning")
    assert resolve_level() == logging.WARNING
    assert resolve_level("DEBUG") == logging.DEBUG  # the CLI option wins
    stream = io.StringIO()
    logger = setup_logging(stream=stream)
    logger.info("hidden")
    logger.warning("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
    monkeypatch.setenv("TRAINER_LOG_LEVEL", "LOUD")
    with pytest.raises(ValueError, match=r"\$TRAINER_LOG_LEVEL='LOUD' is not a valid level; use one of DEBUG, INFO"):
        resolve_level()


def test_a_log_line_clears_a_live_progress_bar_and_the_bar_comes_back(monkeypatch):
    from tqdm import tqdm

    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = FakeTty()
    logger = setup_logging("INFO", stream=stream)
    with tqdm(total=3, file=stream, disable=False, desc="build", bar_format="{desc} {n}/{total}"):
        logger.warning("careful")
        written = stream.getvalue()  # no update: nothing depends on how fast the bar redraws
    # the bar drawn, wiped with as many blanks, the (coloured: a terminal) line on its own, the bar again
    assert re.fullmatch(r"\rbuild 0/3\r {9}\r" + re.escape(YELLOW) + r"\[ *\d+\.\d\ds\] \[WARNING\] careful"
                        + re.escape(RESET) + r"\n\rbuild 0/3", written), repr(written)


RANK_VARS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "3"}, 3), ({"LOCAL_RANK": "1"}, 1),
                                       ({"RANK": "2", "LOCAL_RANK": "1"}, 2), ({"SLURM_PROCID": "4"}, 4),
                                       ({"LOCAL_RANK": "0", "SLURM_PROCID": "5"}, 0),  # SLURM not launching
                                       ({"JSM_NAMESPACE_RANK": "6"}, 6)])
def test_process_rank_reads_the_launcher_as_lightning_does(monkeypatch, env, rank):
    from lightning.fabric.utilities.rank_zero import _get_rank

    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert logs.process_rank() == rank == (_get_rank() or 0)


def test_other_ranks_log_errors_only_and_a_blank_rank_is_skipped(monkeypatch):
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RANK", "")  # Lightning's _get_rank raises on it; the next variable decides
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert logs.process_rank() == 1
    stream = io.StringIO()
    logger = setup_logging("DEBUG", stream=stream)
    logger.warning("hidden")
    logger.error("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert setup_logging("DEBUG", stream=stream).level == logging.DEBUG


def test_logging_setup_loads_neither_torch_nor_lightning():
    """`--help`, `--version` and cli.py's one-line errors answer at once: the rank is read without Lightning."""
    code = ("import sys; from leak_lightning.cli import setup_logging; setup_logging('INFO').info('x'); "
            "print(sorted(m for m in ('torch', 'lightning', 'lightning_fabric') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


@pytest.mark.parametrize("n, text", [(0, "0.00 B"), (1023, "1023.00 B"), (1536, "1.50 KB"),
                                     (24 * 1024**3, "24.00 GB"), (3 * 1024**5, "3.00 PB")])
def test_bytes_human(n, text):
    assert bytes_human(n) == text


@pytest.mark.slow
def test_bad_log_level_env_is_one_clear_line(small_h5, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("TRAINER_LOG_LEVEL", "CHATTY")
    r = run_cli("fit", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5),
                "--trainer.default_root_dir", tmp_path)
    assert r.returncode == 2
    assert "$TRAINER_LOG_LEVEL='CHATTY' is not a valid level" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_run_writes_banner_epoch_lines_and_a_json_lines_log(small_h5, tmp_path, run_cli):
    r = run_cli("fit", "--config", REPO / "configs/demo_frame.yaml", *data_args(small_h5), "--trainer.max_epochs", "2",
                "--trainer.default_root_dir", tmp_path, "--console.json_lines", "true",
                "--console.log_file", "train.jsonl", "--data.batch_size", "512")
    assert r.returncode == 0, r.stderr[-3000:]
    err = r.stderr
    assert f"leak_lightning {__version__}: fit" in err and "leak class 'LEAK' at index 2" in err
    assert "parameters:" in err and "device: CPU" in err and "precision=32-true" in err
    lines = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    epochs = [x for x in lines if x["message"].startswith("Epoch ")]
    assert [x["epoch"] for x in epochs] == [0, 1]
    assert all({"time", "elapsed", "level", "train_loss", "val/file_leak_f1", "lr", "segments_per_s"} <= x.keys()
               for x in epochs)
    assert re.search(r"Epoch 001 │ train_loss=\d\.\d{4} │ val_loss=\d\.\d{4} │ val_file_leak_f1=\d\.\d{4} .*│ lr=.* │ "
                     r"[\d.]+k? seg/s │ [\d.]+s", err)
