"""Command line entry: `python -m leak_lightning SUBCOMMAND ...`.

This module stays light (no torch, no Lightning at import): `--help` and `--version` answer at
once, and the heavy modules load only for the subcommand that needs them. Every error a user can
act on ends as one line and exit status 2.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

from .. import __version__
from ..runtime.logs import fail_line, setup_logging

log = logging.getLogger("leak_lightning.cli")

SUBCOMMANDS = {
    "build": "WAV folders → TRAINING/VALIDATION/TESTING_DATASET.H5 (log-mel segments, checksummed)",
    "fit": "train a leak detector on the HDF5 splits (resumable with --ckpt_path last)",
    "validate": "score a checkpoint on the validation split: report, per-file CSV, plots",
    "test": "score a checkpoint on the test split: report, per-file CSV, plots",
    "predict": "score recordings (a file, a folder or a list) with a checkpoint alone → predictions CSV",
    "export": "write a checkpoint's network (and frontend) as ONNX or TorchScript with a JSON sidecar",
    "adapt": "re-fit a checkpoint's threshold and calibration to a new site from its labelled recordings",
}


def usage() -> str:
    lines = [f"usage: python -m leak_lightning SUBCOMMAND [options]   (leak_lightning {__version__})", "",
             "Acoustic water-leak detection: build datasets, train, evaluate, predict and export.", "",
             "subcommands:"]
    lines += [f"  {name:9s} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "python -m leak_lightning SUBCOMMAND --help   lists a subcommand's options",
              "python -m leak_lightning --version"]
    return "\n".join(lines)


def function_command(name: str, fn, description: str, argv: list[str], every_rank: bool = False):
    """A subcommand that calls one function with its arguments (`build`, `adapt`): the parsed keyword arguments,
    with logging set up (on every rank of a launcher with `every_rank`), or the exit status 2 after one error line."""
    from argparse import ArgumentError

    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=f"python -m leak_lightning {name}", exit_on_error=False, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--log_level", type=str | None, default=None,
                        help="DEBUG, INFO, WARNING or ERROR (default: $TRAINER_LOG_LEVEL or INFO)")
    parser.add_function_arguments(fn, as_positional=False)
    try:
        cfg = parser.parse_args(argv)
        setup_logging(cfg.pop("log_level"), every_rank=every_rank)
    except (ArgumentError, ValueError) as err:
        return fail_line(f"{_one_line(err, argv)}; see `python -m leak_lightning {name} --help` for the options")
    cfg.pop("config", None)
    return parser.instantiate_classes(cfg).as_dict()


def run_adapt(argv: list[str]) -> int:
    from ..inference.adapt import adapt_checkpoint

    kwargs = function_command("adapt", adapt_checkpoint, "Adapt a trained detector's decision rule to a new site.",
                              argv)
    if isinstance(kwargs, int):
        return kwargs
    # SIGTERM unwinds like Ctrl-C: the temporary files and the output's lock are removed on the way out
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        adapt_checkpoint(**kwargs)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        return fail_line(str(err))
    except (OSError, RuntimeError) as err:  # a full disk, a GPU out of memory: the base checkpoint is untouched
        reason = err.strerror if isinstance(err, OSError) and err.strerror else _first_line(err)
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        return fail_line(f"adapt stopped: {where}{reason}; the base checkpoint is untouched")
    except KeyboardInterrupt as err:
        fail_line(f"adapt interrupted ({str(err) or 'SIGINT'}): its temporary files were removed; an earlier --output "
                  "stays unless the new checkpoint was already in place")
        return 143 if str(err) == "SIGTERM" else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_build(argv: list[str]) -> int:
    from ..builder.build import build_dataset

    kwargs = function_command("build", build_dataset,
                              "Build TRAINING/VALIDATION/TESTING_DATASET.H5 from WAV folders.", argv,
                              every_rank=True)  # under a launcher each worker builds its own shard
    if isinstance(kwargs, int):
        return kwargs

    # SIGTERM unwinds like Ctrl-C so the temporary files are removed on the way out.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        build_dataset(**kwargs)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        log.error("%s", err)
        return 2
    except (OSError, RuntimeError) as err:  # a full disk, a lost mount: discarded, the old dataset untouched
        reason = _write_failure(err, kwargs.get("output"))
        log.debug("details", exc_info=True)
        log.error("%s: %s while writing the dataset; nothing was replaced (an earlier dataset there is intact) "
                  "and the temporary files were removed; free space or choose another --output",
                  kwargs.get("output"), reason)
        from ..builder.writer import UNCLOSED

        if UNCLOSED:  # h5py would crash freeing the half-closed file at exit: leave without freeing it
            logging.shutdown()
            os._exit(2)
        return 2
    except KeyboardInterrupt as err:
        log.error("build interrupted (%s): temporary files removed, existing outputs untouched",
                  str(err) or "SIGINT")  # Ctrl-C's KeyboardInterrupt has no text
        return 143 if str(err) == "SIGTERM" else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        print(f"leak_lightning {__version__}")
        sys.exit(0)
    if args[0] == "build":
        sys.exit(run_build(args[1:]))
    if args[0] == "export":
        from ..inference.export import run_export

        sys.exit(run_export(args[1:]))
    if args[0] == "adapt":
        sys.exit(run_adapt(args[1:]))
    if args[0] not in SUBCOMMANDS:
        setup_logging("INFO")
        log.error("unknown subcommand %r; one of %s (see python -m leak_lightning --help)", args[0],
                  ", ".join(SUBCOMMANDS))
        sys.exit(2)
    from argparse import ArgumentError

    from ..runtime.logs import quiet_lightning
    from ..runtime.rundir import FolderLock
    from .leak_cli import LeakCLI

    quiet_lightning()  # Lightning's notices and the warnings about choices the CLI makes on purpose
    try:
        LeakCLI(args=argv)
    except ArgumentError as err:  # a bad flag, value or config file: the error, then where to look
        _fail(f"{_one_line(err, args)}; see `python -m leak_lightning {_subcommand(args)} --help` for the options")
    except (ValueError, FileNotFoundError) as err:
        if isinstance(err.__cause__, (ValueError, FileNotFoundError)) and _raised_here(err.__cause__):
            err = err.__cause__  # our own check, raised inside a data → model link (jsonargparse wraps it)
        _fail(_worker_error(str(err)))
    finally:
        FolderLock.release_all()


def _write_failure(err: OSError | RuntimeError, output) -> str:
    """Why writing the dataset failed, in words. h5py reports a full disk as a RuntimeError without an errno
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


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _raised_here(err: BaseException) -> bool:
    """Whether `err` was raised by this package's code (its traceback ends in a leak_lightning module)."""
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return last is not None and Path(last).resolve().is_relative_to(Path(__file__).resolve().parent)


def _worker_error(message: str) -> str:
    """A DataLoader worker's error arrives as 'Caught ValueError in DataLoader worker ... Original Traceback
    ...': keep the original message (torch re-raises it as a new exception whose text is the only carrier of
    the original; listed in lightning_private.py)."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


def _fail(message: str) -> None:
    sys.exit(fail_line(message))


def _one_line(err: Exception, args: list[str]) -> str:
    """jsonargparse's multi-line parse error as one line; a YAML error names its file and line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    import yaml

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


def _subcommand(args: list[str]) -> str:
    return next((a for a in args if a in ("fit", "validate", "test", "predict")), "")
