"""Command line: `build` (dataset builder) and the Lightning subcommands."""

from __future__ import annotations

import logging
import signal
import sys

from jsonargparse import ActionConfigFile, ArgumentParser

from .logs import setup_logging

log = logging.getLogger(__name__)


def build_parser() -> ArgumentParser:
    from .builder.build import build_dataset

    parser = ArgumentParser(prog="leak-lightning build",
                            description="Build TRAINING/VALIDATION/TESTING_DATASET.H5 from WAV folders.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_argument("--log_level", type=str | None, default=None,
                        help="DEBUG, INFO, WARNING or ERROR (default: $TRAINER_LOG_LEVEL or INFO)")
    parser.add_function_arguments(build_dataset, as_positional=False)
    return parser


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run_build(argv: list[str]) -> int:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    setup_logging(cfg.pop("log_level"))
    cfg.pop("config", None)
    from .builder.build import build_dataset

    init = parser.instantiate_classes(cfg)
    # SIGTERM unwinds like Ctrl-C so the temporary files are removed on the way out.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        build_dataset(**init.as_dict())
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt as err:
        log.error("build interrupted (%s): temporary files removed, existing outputs untouched",
                  err or "SIGINT")
        return 143 if str(err) == "SIGTERM" else 130
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "build":
        sys.exit(run_build(argv[1:]))
    raise SystemExit("usage: leak-lightning build ... (training commands arrive with the training core)")
