"""Project logging: `[   5.23s] [INFO] message`, elapsed since start, colours only on a terminal."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import time

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LEVEL_ENV = "TRAINER_LOG_LEVEL"

CYAN, GREEN, YELLOW, RED, RESET = "\033[36m", "\033[32m", "\033[33m", "\033[31m", "\033[0m"
_LEVEL_COLOURS = {logging.WARNING: YELLOW, logging.ERROR: RED, logging.CRITICAL: RED}
# Messages pick a colour with `extra={"colour": "header" | "success"}`; levels colour the rest.
_TAG_COLOURS = {"header": CYAN, "success": GREEN}

START = time.monotonic()  # elapsed times count from the first import of this module


def bytes_human(n: float) -> str:
    """1536 → '1.50 KB' (binary multiples, as the origin printed GPU memory)."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1024:
            return f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} PB"


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4,
          "P": 1024**5, "PB": 1024**5, "PIB": 1024**5}
# A size is held in int64 wherever it goes (torch, numpy, sysconf); a budget larger than this machine's memory is
# still accepted: it is a ceiling, configs travel between machines, and `cache=auto` checks free memory anyway.
MAX_BYTES = 2**63 - 1


def parse_bytes(value: int | str, option: str) -> int:
    """`4GB`, `512 MiB`, `2e9` or 2000000000 → bytes (binary multiples, as bytes_human prints them).

    One ValueError line naming `option` and the value for anything that is not a whole number of bytes
    from 1 to MAX_BYTES: text, nan, inf (`1e999`), 0, negative, fractions of a byte, more than 8192 PB."""
    example = "write e.g. 4GB, 512MB or a number of bytes"
    match = None if isinstance(value, bool) else \
        re.fullmatch(r"\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(value))
    if match is None or match.group(2).upper() not in _UNITS:
        raise ValueError(f"{option}={value!r}: not a size; {example}")
    text, unit = match.group(1), _UNITS[match.group(2).upper()]
    # whole numbers stay exact (a float has 53 bits); the rest goes through float
    number = int(text) if text.lstrip("+-").isdigit() else float(text)
    if not math.isfinite(number):
        raise ValueError(f"{option}={value!r}: not a finite size; {example}")
    if number <= 0:
        raise ValueError(f"{option}={value!r}: must be more than 0; {example}")
    if number * unit > MAX_BYTES:
        raise ValueError(f"{option}={value!r}: more than {bytes_human(MAX_BYTES)}, the most a size can be; {example}")
    size = int(number * unit) if isinstance(number, float) else number * unit
    if size < 1:
        raise ValueError(f"{option}={value!r}: less than one byte; {example}")
    return size


def use_colour(stream) -> bool:
    """Colour only on an interactive terminal, and never when NO_COLOR is set."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


# Line breaks (\n \r \v \f, the C1 and Unicode separators str.splitlines breaks on) and the other control
# characters, escaped as repr does: a file name, label or path someone chose must not split a log line in two,
# fake a line of its own, or send terminal escapes. No message of the project spans lines on purpose; a
# traceback (exc_info, at DEBUG and in the run's log file) is added after the message and keeps its lines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` with its control characters escaped (`\\n`, `\\x1b`, `\\u2028`): always one printable line."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class ElapsedTimeFormatter(logging.Formatter):
    """Formats records as `[ elapsed s] [LEVEL] message`, optionally coloured; a message is always one line."""

    def __init__(self, colour: bool = False, start: float | None = None) -> None:
        super().__init__("[%(elapsed)s] [%(levelname)s] %(message)s")
        self.colour = colour
        self.start = START if start is None else start

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Formatter.format sets record.message afresh for every handler, so the escape reaches no other one
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        record.elapsed = f"{time.monotonic() - self.start:7.2f}s"
        text = super().format(record)
        if not self.colour:
            return text
        code = _LEVEL_COLOURS.get(record.levelno) or _TAG_COLOURS.get(getattr(record, "colour", ""))
        return f"{code}{text}{RESET}" if code else text


# Not tqdm.contrib.logging.logging_redirect_tqdm: that is a `with` block that swaps handlers only while it is
# open, and only handlers writing to sys.stdout/sys.stderr. This handler is installed once per command, before
# any bar exists (builder/build.py's, Lightning's TQDMProgressBar), on any stream. Measured with a bar and the
# handler on one StringIO: under logging_redirect_tqdm the line lands on the bar ('build 0/3hello') and is
# written a second time to sys.stderr; here the bar is cleared first and redrawn after the line (test_logs.py).
class _TqdmHandler(logging.StreamHandler):
    """Writes through tqdm so log lines never break a live progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def resolve_level(level: str | None = None) -> int:
    """Level from the argument, else $TRAINER_LOG_LEVEL, else INFO; bad values are rejected."""
    name = (level or os.environ.get(LEVEL_ENV) or "INFO").strip().upper()
    if name not in LEVELS:
        source = "log level" if level else f"${LEVEL_ENV}"
        raise ValueError(f"{source}={name!r} is not a valid level; use one of {', '.join(LEVELS)}")
    return getattr(logging, name)


# Not Lightning's `rank_zero_only.rank`, though that reads the same variables in the same order
# (lightning.fabric.utilities.rank_zero._get_rank; compared in test_logs.py): it exists only once lightning.fabric
# is imported (about 3 s here; lightning_utilities' own `rank_zero_only` has no `rank` until then), and
# setup_logging runs on every command, `build` (no Lightning) and cli.py's one-line errors (neither torch nor
# Lightning) included. It is also read once, at that import, and raises on a value that is not a number
# (RANK=''), which is skipped here. Every caller runs before a Trainer sets the rank, so for numbers both agree.
def process_rank() -> int:
    """Global rank from the launcher's environment (0 when not distributed)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def setup_logging(level: str | None = None, stream=None, every_rank: bool = False) -> logging.Logger:
    """Install the project handler on the `leak_lightning` logger (idempotent). `every_rank`: a command whose
    processes each do their own work (a sharded build) speaks on every rank."""
    stream = stream or sys.stderr
    logger = logging.getLogger("leak_lightning")
    logger.setLevel(resolve_level(level))
    if process_rank() != 0 and not every_rank:  # DDP ranks > 0 report errors only; rank 0 tells the story
        logger.setLevel(logging.ERROR)
        # but a recording predict skips is read by one rank alone: its warning is said where it is found
        logging.getLogger("leak_lightning.data.recordings").setLevel(max(logging.WARNING, resolve_level(level)))
    for handler in list(logger.handlers):
        if getattr(handler, "_leak_lightning", False):
            logger.removeHandler(handler)
    handler = _TqdmHandler(stream)
    handler.setFormatter(ElapsedTimeFormatter(colour=use_colour(stream)))
    handler._leak_lightning = True
    logger.addHandler(handler)
    logger.propagate = False
    return logger


class _Quiet(logging.Filter):
    """Drops Lightning's notices that a user of this tool cannot act on."""

    PATTERNS = re.compile(r"^(Seed set to|💡 Tip|(GPU|TPU|HPU) available|Loading `train_dataloader` to estimate"
                          r"|.*tensorboardX)")

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.PATTERNS.match(record.getMessage())


def quiet_lightning() -> None:
    """Filter those notices on the handlers Lightning installs (idempotent), and its chatty warnings."""
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _Quiet) for f in handler.filters):
                handler.addFilter(_Quiet())
    for message in (r".*isinstance\(treespec, LeafSpec\)", r"Couldn't infer the batch indices fetched",
                    r"No seed found", r"The number of training batches \(\d+\) is smaller than the logging interval",
                    # fit stops before an earlier run's checkpoints unless resuming or --overwrite was asked for,
                    # so Lightning's generic warning about them would only repeat the user's choice
                    r"Checkpoint directory .* exists and is not empty",
                    # LeakDataModule restores the exact batch position itself (its state_dict): the resume is exact
                    r"You're resuming from a checkpoint that ended before the epoch",
                    # evaluating a checkpoint from another run directory: its best/last bookkeeping is not needed
                    r"The dirpath has changed from",
                    # validate/test/predict build no checkpoint or early-stopping callbacks on purpose (they only
                    # score), and a resumed fit without early stopping was asked for: their states are not needed
                    r"Be aware that when using `ckpt_path`, callbacks used",
                    r"LightningCLI's args parameter is intended to run from within",
                    # the epoch's training loss is a MeanMetric, already reduced over the ranks by its compute()
                    r"It is recommended to use `self.log\('train/loss', ..., sync_dist=True\)`"):
        warnings.filterwarnings("ignore", message=message)


def seconds_since_process_start() -> float:
    """Wall seconds since this process started (Linux /proc), else since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    except (OSError, ValueError, IndexError):
        return time.monotonic() - START


def fail_line(message: str) -> int:
    """Log one error line (the traceback only at DEBUG) and return the exit status 2."""
    setup_logging("INFO")  # the error may be the log level itself
    log = logging.getLogger("leak_lightning.cli")
    log.debug("details", exc_info=True)
    log.error("%s", message)
    return 2
