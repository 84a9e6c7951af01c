"""Command line: `build` (dataset builder) and the Lightning subcommands."""

from __future__ import annotations

import logging
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


def run_build(argv: list[str]) -> int:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    setup_logging(cfg.pop("log_level"))
    cfg.pop("config", None)
    from .builder.build import build_dataset

    init = parser.instantiate_classes(cfg)
    try:
        build_dataset(**init.as_dict())
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: nothing was written at the output names")
        return 130
    return 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "build":
        sys.exit(run_build(argv[1:]))
    raise SystemExit("usage: leak-lightning build ... (training commands arrive with the training core)")
