"""What a user sees when a command stops: one translator from an exception to (one line, exit status), and the
exit statuses, for every subcommand. Light (no torch, no Lightning): `build` and the parse errors use it too."""

from __future__ import annotations

import os
import re
from argparse import ArgumentError
from pathlib import Path

from ..runtime.logs import fail_line

# Exit statuses. Usage and input errors share 2 (argparse's own status for a usage error), so a script needs one
# test for "fix what you gave me"; interrupts follow the shell's 128 + signal number.
EXIT_OK = 0
EXIT_USAGE = 2  # a bad flag, value or config file
EXIT_INPUT = 2  # input the command cannot use, a full disk, a lost rank: one line, nothing already made is lost
EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}

FUNCTION_COMMANDS = ("build", "adapt", "export", "review")  # the rest are LightningCLI's
# What an interrupted command says it left behind; a command not named here has no handler for an interrupt.
INTERRUPTED = {
    "build": "build interrupted ({signal}): temporary files removed, existing outputs untouched",
    "adapt": "adapt interrupted ({signal}): its temporary files were removed; an earlier --output stays unless the "
             "new checkpoint was already in place",
    "review": "review interrupted ({signal}): the half-written folder was removed; an earlier --output is untouched",
}


def first_line(err: BaseException) -> str:
    """The exception's first line of text, else its type's name."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def typed_first_line(err: BaseException) -> str:
    """`Type: first line`, without the source location and advice gloo adds to a lost peer's error."""
    text = str(err).splitlines()[0] if str(err) else ""
    # gloo: "[/path/pair.cc:561] Connection closed by peer [...]. This is typically caused by ..."
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". This is typically")[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def os_reason(err: BaseException) -> str:
    """An OSError's own words (`No space left on device`), else the first line."""
    return err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)


def worker_error(message: str) -> str:
    """A DataLoader worker's error arrives as 'Caught ValueError in DataLoader worker ... Original Traceback
    ...': keep the original message (torch re-raises it as a new exception whose text is the only carrier of
    the original; listed in lightning_private.py)."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


def raised_here(err: BaseException) -> bool:
    """Whether `err` was raised by this package's code (its traceback ends in a leak_lightning module)."""
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return last is not None and Path(last).resolve().is_relative_to(Path(__file__).resolve().parents[1])


def parse_error_line(err: BaseException, args: list[str]) -> str:
    """jsonargparse's multi-line parse error as one line; a YAML error names its file and line."""
    import yaml

    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    for path in (b for a, b in zip(args, args[1:]) if a in ("--config", "-c")):  # a broken file says where
        try:
            yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as yerr:
            where = getattr(yerr, "problem_mark", None)
            line = f" line {where.line + 1}, column {where.column + 1}" if where else ""
            return f"{path}:{line}: not valid YAML ({getattr(yerr, 'problem', None) or yerr})"
    text, used = lines[0], 1
    while text.endswith(":") and used < len(lines):  # nested reasons: a class_path's own option, under its key
        text, used = f"{text} {lines[used]}", used + 1
    given = next((line for line in lines[used:] if line.startswith("Given value:")), None)
    return f"{text} ({given})" if given else text


def write_failure(err: OSError | RuntimeError, output) -> str:
    """Why writing under `output` failed, in words. h5py reports a full disk as a RuntimeError without an errno
    (its text is HDF5's error stack), so the free space is checked instead of the message."""
    import shutil

    if getattr(err, "errno", None):
        return os.strerror(err.errno)
    folder = Path(output or ".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if shutil.disk_usage(folder).free < 2**26:
            return os.strerror(28)  # "No space left on device"
    except OSError:
        pass
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def translate(err: BaseException, command: str, args: list[str] | tuple = (), output: str | None = None,
              parsing: bool = False) -> tuple[str, int] | None:
    """(the one line, the exit status) for `err` stopping `command`, or None for what stays a traceback (a bug).
    `parsing`: raised while its arguments were parsed (a ValueError there is a bad option too)."""
    if isinstance(err, ArgumentError) or (parsing and isinstance(err, ValueError)):
        return (f"{parse_error_line(err, list(args))}; see `python -m leak_lightning {command} --help` for the "
                "options"), EXIT_USAGE
    if isinstance(err, KeyboardInterrupt) and command in INTERRUPTED:
        name = str(err) or "SIGINT"  # Ctrl-C's KeyboardInterrupt has no text; a SIGTERM handler names its signal
        return INTERRUPTED[command].format(signal=name), EXIT_SIGNAL.get(name, EXIT_SIGNAL["SIGINT"])
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError)):
        cause = err.__cause__
        ours = isinstance(cause, (ValueError, FileNotFoundError)) and raised_here(cause)
        if ours and command not in FUNCTION_COMMANDS:
            err = cause  # our own check, raised inside a data → model link (jsonargparse wraps it)
        return worker_error(str(err)), EXIT_INPUT
    if isinstance(err, (OSError, RuntimeError)):
        if command == "build":  # a full disk, a lost mount: discarded, the old dataset untouched
            return (f"{output}: {write_failure(err, output)} while writing the dataset; nothing was replaced (an "
                    "earlier dataset there is intact) and the temporary files were removed; free space or choose "
                    "another --output"), EXIT_INPUT
        if command == "adapt":  # a full disk, a GPU out of memory: the base checkpoint is untouched
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            return f"adapt stopped: {where}{os_reason(err)}; the base checkpoint is untouched", EXIT_INPUT
        if command == "review" and isinstance(err, OSError):  # a full disk: the folder is written whole or not at all
            where = f"{err.filename}: " if getattr(err, "filename", None) else ""
            return (f"review stopped: {where}{os_reason(err)}; the half-written folder was removed and an earlier "
                    "--output is untouched"), EXIT_INPUT
    return None


def fail(err: BaseException, command: str, args: list[str] | tuple = (), output: str | None = None,
         parsing: bool = False) -> int:
    """Log `err` as its one line (the traceback only at DEBUG) and return the exit status; re-raise what has none."""
    translated = translate(err, command, args, output, parsing)
    if translated is None:
        raise err
    line, status = translated
    fail_line(line)
    return status


def run_stopped(err: RuntimeError | OSError, subcommand: str, world_size: int, note: str) -> BaseException | None:
    """What stopped a fit/validate/test/predict run (a lost DDP rank, a full disk) as the ValueError whose text is
    the one line, or None to let `err` go on as it is (ours already, or a bug)."""
    if world_size > 1 and isinstance(err, RuntimeError):
        return ValueError(f"a DDP rank stopped, so the run cannot go on ({typed_first_line(err)}){note}")
    if isinstance(err, FileNotFoundError) and err.errno is None:
        return None  # our own check's one line (a missing input), printed as it is
    if isinstance(err, OSError):
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return ValueError(f"{where}{err.strerror or typed_first_line(err)}{note}")
    return None
