"""Command line: `build` (dataset builder) and the LightningCLI subcommands fit/validate/test."""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .logs import LEVELS, setup_logging

log = logging.getLogger(__name__)
MONITOR = "val/file_leak_f1"
DEFAULT_RUN_DIR = "runs"


def checkpoint_dir(root: str | None) -> Path:
    """Where a run's best.ckpt and last.ckpt live: <run dir>/checkpoints."""
    return Path(root or DEFAULT_RUN_DIR) / "checkpoints"


class LeakCLI(LightningCLI):
    """LightningCLI with the data → model links, checkpoint/early-stopping groups and CUDA defaults."""

    def __init__(self, *args, **kwargs) -> None:
        from .data.datamodule import LeakDataModule
        from .module import LeakClassifier

        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # fit stops before an earlier run's checkpoints unless resuming or --overwrite was asked
        # for, so Lightning's generic warning about them would only repeat the user's choice
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        super().__init__(LeakClassifier, LeakDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--log_level", type=str | None, default=None,
                            help=f"one of {', '.join(LEVELS)} (default: $TRAINER_LOG_LEVEL or INFO)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: start a new run even where the run directory holds an earlier run's "
                                 "checkpoints (they are replaced)")
        for attr in ("num_classes", "class_names", "feature_config"):
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")
        from .callbacks.checkpointing import LeakCheckpoint
        from .callbacks.console import ConsoleLogger
        from .callbacks.interrupt import GracefulInterrupt
        from .callbacks.reports import ReportWriter

        parser.add_lightning_class_args(LeakCheckpoint, "checkpoint")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ReportWriter, "reports")
        parser.add_lightning_class_args(ConsoleLogger, "console")
        parser.add_lightning_class_args(GracefulInterrupt, "interrupt")
        parser.set_defaults({
            "trainer.default_root_dir": DEFAULT_RUN_DIR,
            "checkpoint.monitor": MONITOR, "checkpoint.mode": "max", "checkpoint.filename": "best",
            "checkpoint.save_last": True, "checkpoint.save_top_k": 1,
            "checkpoint.auto_insert_metric_name": False,
            # a resumed run keeps writing best.ckpt / last.ckpt (atomically) instead of best-v1.ckpt
            "checkpoint.enable_version_counter": False,
            "early_stopping.monitor": MONITOR, "early_stopping.mode": "max", "early_stopping.patience": 15,
        })
        # checkpoints always land in <run dir>/checkpoints/{best,last}.ckpt
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath",
                              compute_fn=lambda root: str(checkpoint_dir(root)))

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        setup_logging(cfg.get("log_level"))
        if sub == "fit" and not cfg.get("ckpt_path") and not cfg.get("overwrite") \
                and not cfg["trainer"].get("fast_dev_run"):
            refuse_to_replace_a_run(cfg["trainer"]["default_root_dir"])
        if cfg.get("ckpt_path"):
            cfg["ckpt_path"] = resolve_ckpt_path(cfg["ckpt_path"], cfg["trainer"]["default_root_dir"], sub)

    def before_instantiate_classes(self) -> None:
        trainer = (self.config[self.subcommand] if self.subcommand else self.config)["trainer"]
        wants_gpu = str(trainer.get("accelerator")) in ("gpu", "cuda")
        if wants_gpu and not torch.cuda.is_available():
            raise ValueError("--trainer.accelerator gpu was asked for but CUDA is not available on this "
                             "machine; use --trainer.accelerator cpu (or auto)")
        on_cuda = torch.cuda.is_available() and str(trainer.get("accelerator")) != "cpu"
        if trainer.get("precision") is None:
            trainer["precision"] = "bf16-mixed" if on_cuda else "32-true"
        if trainer.get("benchmark") is None and on_cuda:
            trainer["benchmark"] = True
        if on_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def instantiate_trainer(self, **kwargs):
        from .callbacks.checkpointing import AtomicCheckpointIO

        trainer_cfg = self._get(self.config_init, "trainer", default={})
        if not trainer_cfg.get("plugins"):  # atomic checkpoint writes unless the user brings a CheckpointIO
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        log.info("run directory %s: checkpoints in %s", self.trainer.default_root_dir,
                 self.trainer.checkpoint_callback.dirpath, extra={"colour": "header"})

    def after_fit(self) -> None:
        cb = self.trainer.checkpoint_callback
        if cb.best_model_path:
            log.info("best checkpoint (%s=%.4f): %s", cb.monitor, float(cb.best_model_score),
                     cb.best_model_path, extra={"colour": "success"})


def refuse_to_replace_a_run(root: str | None) -> None:
    """A new fit would overwrite best.ckpt/last.ckpt of the run already in `root`: stop first."""
    folder = checkpoint_dir(root)
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if found:
        raise ValueError(f"{folder} already holds {', '.join(found)} from an earlier run: resume it with "
                         "--ckpt_path last, start elsewhere with --trainer.default_root_dir DIR, or replace "
                         "it with --overwrite true")


def resolve_ckpt_path(value: str, root: str | None, subcommand: str) -> str | None:
    """`best` / `last` → <run dir>/checkpoints/<name>.ckpt; a damaged `last` falls back to the newest valid one."""
    from .callbacks.checkpointing import checkpoint_problem, newest_valid_checkpoint

    folder = checkpoint_dir(root)
    if value in ("best", "last"):
        path = folder / f"{value}.ckpt"
        if subcommand == "fit" and value == "last":
            found = newest_valid_checkpoint(folder, preferred=path) if folder.is_dir() else None
            if found is None:
                log.warning("no usable checkpoint in %s: starting a new run", folder)
            elif found != path:
                log.warning("resuming from %s instead", found)
            return str(found) if found else None
        if not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {value}: {path} does not exist; train first or pass "
                                    f"--trainer.default_root_dir of the run (or a checkpoint file)")
        value = str(path)
    if not Path(value).is_file():
        raise FileNotFoundError(f"--ckpt_path {value}: no such checkpoint file")
    if problem := checkpoint_problem(Path(value)):
        raise ValueError(f"--ckpt_path {value}: checkpoint is unusable ({problem}); pick another checkpoint")
    return value


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
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "build":
        sys.exit(run_build(args[1:]))
    try:
        LeakCLI(args=argv)
    except (ValueError, FileNotFoundError) as err:
        setup_logging("INFO")  # the error may be the log level itself
        log.debug("details", exc_info=True)
        log.error("%s", err)
        sys.exit(2)
