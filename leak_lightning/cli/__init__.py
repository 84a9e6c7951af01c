"""Command line entry: `python -m leak_lightning SUBCOMMAND ...`.

This module stays light (no torch, no Lightning at import): `--help` and `--version` answer at
once, and the heavy modules load only for the subcommand that needs them. Every error a user can
act on ends as one line and exit status 2 (errors.py says which line and status).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from typing import Literal

from .. import __version__
from ..runtime.logs import fail_line, setup_logging
from .errors import EXIT_OK, EXIT_USAGE, fail

log = logging.getLogger("leak_lightning.cli")

SUBCOMMANDS = {
    "build": "WAV folders → TRAINING/VALIDATION/TESTING_DATASET.H5 (log-mel segments, checksummed)",
    "fit": "train a leak detector on the HDF5 splits (resumable with --ckpt_path last)",
    "validate": "score a checkpoint on the validation split: report, per-file CSV, plots",
    "test": "score a checkpoint on the test split: report, per-file CSV, plots",
    "predict": "score recordings (a file, a folder or a list) with a checkpoint alone → predictions CSV",
    "export": "write a checkpoint's network (and frontend) as ONNX or TorchScript with a JSON sidecar",
    "adapt": "re-fit a checkpoint's threshold and calibration to a new site from its labelled recordings",
    "review": "a predictions CSV as a folder to open in a browser: sensors over nights, spectrograms, audio, "
              "and a queue of recordings to label for adapt",
}
# Flags renamed to the one style (underscores, a value for every option), per subcommand: the old spelling is
# translated before parsing, with a note. SWITCHES took no value (argparse's store_true): given bare, it means true.
RENAMED = {"export": {"--with-frontend": "--with_frontend"}}
SWITCHES = {"export": {"--with_frontend"}}
OLD_UNTIL = "0.5"


def usage() -> str:
    lines = [f"usage: python -m leak_lightning SUBCOMMAND [options]   (leak_lightning {__version__})", "",
             "Acoustic water-leak detection: build datasets, train, evaluate, predict and export.", "",
             "subcommands:"]
    lines += [f"  {name:9s} {text}" for name, text in SUBCOMMANDS.items()]
    lines += ["", "python -m leak_lightning SUBCOMMAND --help   lists a subcommand's options",
              "python -m leak_lightning --version"]
    return "\n".join(lines)


def modern_flags(name: str, argv: list[str]) -> tuple[list[str], list[str]]:
    """`argv` with the old spellings of `name`'s flags in the current style, and a note for each one found."""
    renamed, switches = RENAMED.get(name, {}), SWITCHES.get(name, set())
    out, notes = [], []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        new = renamed.get(flag, flag)
        bare = new in switches and not eq and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
        if new != flag or bare:
            notes.append(f"{flag}{' without a value' if bare and new == flag else ''} is now {new}"
                         f"{' true' if bare else ''}; the old spelling is accepted until {OLD_UNTIL}")
        out += [new, "true"] if bare else [f"{new}{eq}{value}"]
    return out, notes


def function_command(name: str, fn, description: str, argv: list[str], every_rank: bool = False):
    """A subcommand that calls one function with its arguments (`build`, `adapt`, `export`): the parsed keyword
    arguments, with logging set up (on every rank of a launcher with `every_rank`), or the exit status 2 after one
    error line. Old spellings of its flags are accepted with a note (`modern_flags`)."""
    from argparse import ArgumentError

    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog=f"python -m leak_lightning {name}", exit_on_error=False, description=description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--log_level", type=str | None, default=None,
                        help="DEBUG, INFO, WARNING or ERROR (default: $TRAINER_LOG_LEVEL or INFO)")
    parser.add_function_arguments(fn, as_positional=False)
    argv, notes = modern_flags(name, argv)
    try:
        cfg = parser.parse_args(argv)
        setup_logging(cfg.pop("log_level"), every_rank=every_rank)
    except (ArgumentError, ValueError) as err:
        setup_logging("INFO")
        for note in notes:
            log.warning("%s", note)
        return fail(err, name, argv, parsing=True)
    for note in notes:
        log.warning("%s", note)
    cfg.pop("config", None)
    return parser.instantiate_classes(cfg).as_dict()


def export_options(ckpt_path: str, format: Literal["onnx", "torchscript"] = "onnx", with_frontend: bool = False,
                   output: str | None = None) -> None:
    """Export a checkpoint as ONNX or TorchScript with a JSON sidecar.

    Args:
        ckpt_path: the checkpoint to export
        format: onnx (needs pip install 'leak_lightning[export]') or torchscript
        with_frontend: also export a model that takes waveform windows and includes the log-mel frontend
        output: folder for the files (default: <run dir>/export for a run's checkpoint, else
            <checkpoint dir>/<checkpoint stem>_export beside it)
    """


def run_export(argv: list[str]) -> int:
    kwargs = function_command("export", export_options, export_options.__doc__.splitlines()[0], argv)
    if isinstance(kwargs, int):
        return kwargs
    from ..inference.export import export

    try:
        export(kwargs["ckpt_path"], kwargs["format"], kwargs["with_frontend"], kwargs["output"])
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        return fail(err, "export")
    return EXIT_OK


def run_adapt(argv: list[str]) -> int:
    from ..inference.adapt import adapt_checkpoint

    kwargs = function_command("adapt", adapt_checkpoint, "Adapt a trained detector's decision rule to a new site.",
                              argv)
    if isinstance(kwargs, int):
        return kwargs
    try:
        with sigterm_unwinds():  # the temporary files and the output's lock are removed on the way out
            adapt_checkpoint(**kwargs)
    except (ValueError, OSError, RuntimeError, KeyboardInterrupt) as err:
        return fail(err, "adapt")  # a full disk, a GPU out of memory: the base checkpoint is untouched
    return EXIT_OK


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM raised as KeyboardInterrupt("SIGTERM") inside the block: it unwinds like Ctrl-C (finally blocks
    remove temporary files and locks), and the command's interrupt line names the signal."""
    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_review(argv: list[str]) -> int:
    from ..inference.review import review_site

    kwargs = function_command("review", review_site, "Build a site's review folder from a predictions CSV.", argv)
    if isinstance(kwargs, int):
        return kwargs
    try:
        with sigterm_unwinds():  # the half-written folder and the output's lock are removed on the way out
            review_site(**kwargs)
    except (ValueError, OSError, KeyboardInterrupt) as err:
        return fail(err, "review")
    return EXIT_OK


def run_build(argv: list[str]) -> int:
    from ..builder.build import build_dataset

    kwargs = function_command("build", build_dataset,
                              "Build TRAINING/VALIDATION/TESTING_DATASET.H5 from WAV folders.", argv,
                              every_rank=True)  # under a launcher each worker builds its own shard
    if isinstance(kwargs, int):
        return kwargs
    try:
        with sigterm_unwinds():  # the temporary files are removed on the way out
            build_dataset(**kwargs)
    except (ValueError, FileNotFoundError, FileExistsError, KeyboardInterrupt) as err:
        return fail(err, "build")
    except (OSError, RuntimeError) as err:  # a full disk, a lost mount: discarded, the old dataset untouched
        log.debug("details", exc_info=True)
        status = fail(err, "build", output=kwargs.get("output"))
        from ..builder.writer import UNCLOSED

        if UNCLOSED:  # h5py would crash freeing the half-closed file at exit: leave without freeing it
            logging.shutdown()
            os._exit(status)
        return status
    return EXIT_OK


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        sys.exit(EXIT_OK if args else EXIT_USAGE)
    if args[0] == "--version":
        print(f"leak_lightning {__version__}")
        sys.exit(EXIT_OK)
    commands = {"build": run_build, "export": run_export, "adapt": run_adapt, "review": run_review}
    if args[0] in commands:
        sys.exit(commands[args[0]](args[1:]))
    if args[0] not in SUBCOMMANDS:
        sys.exit(fail_line(f"unknown subcommand {args[0]!r}; one of {', '.join(SUBCOMMANDS)} "
                           "(see python -m leak_lightning --help)"))
    from argparse import ArgumentError

    from ..runtime.logs import quiet_lightning
    from ..runtime.rundir import FolderLock
    from .leak_cli import LeakCLI

    quiet_lightning()  # Lightning's notices and the warnings about choices the CLI makes on purpose
    try:
        LeakCLI(args=argv)
    except (ArgumentError, ValueError, FileNotFoundError) as err:  # a bad flag, value, config file or input
        sys.exit(fail(err, _subcommand(args), args))
    finally:
        FolderLock.release_all()


def _subcommand(args: list[str]) -> str:
    return next((a for a in args if a in ("fit", "validate", "test", "predict")), "")
