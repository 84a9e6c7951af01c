"""Command line: `build` (dataset builder) and the LightningCLI subcommands fit/validate/test."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time
import warnings
from argparse import ArgumentError
from functools import partial
from pathlib import Path

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .contract import ModelContract
from .fileio import remove_stale_temporaries
from .logs import LEVELS, process_rank, setup_logging
from .rundir import DEFAULT_RUN_DIR, FolderLock, check_writable, checkpoint_dir

log = logging.getLogger(__name__)
MONITOR = "val/file_leak_f1"


class LeakCLI(LightningCLI):
    """LightningCLI with the data → model links, checkpoint/early-stopping groups and CUDA defaults."""

    def __init__(self, *args, **kwargs) -> None:
        from .data.datamodule import LeakDataModule
        from .module import LeakClassifier

        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self.contract: ModelContract | None = None  # what --ckpt_path was trained on
        self._asked: dict = {}  # --model.* options given with --ckpt_path
        # fit stops before an earlier run's checkpoints unless resuming or --overwrite was asked
        # for, so Lightning's generic warning about them would only repeat the user's choice
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
        # LeakDataModule restores the exact batch position itself (its state_dict): the resume is exact
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch")
        # evaluating a checkpoint from another run directory: its best/last bookkeeping is not needed
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        super().__init__(LeakClassifier, LeakDataModule, *args, **kwargs)

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # parse errors raise, so `main` prints one line instead of ~100 lines of usage
        kwargs.setdefault("exit_on_error", False)
        return super().init_parser(**kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--log_level", type=str | None, default=None,
                            help=f"one of {', '.join(LEVELS)} (default: $TRAINER_LOG_LEVEL or INFO)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: start a new run even where the run directory holds an earlier run's "
                                 "checkpoints (they are replaced)")
        for attr in ("num_classes", "class_names", "feature_config"):
            parser.link_arguments("data", f"model.{attr}", compute_fn=partial(self._data_says, attr),
                                  apply_on="instantiate")
        from .callbacks.checkpointing import LeakCheckpoint, LeakEarlyStopping
        from .callbacks.console import ConsoleLogger
        from .callbacks.interrupt import GracefulInterrupt
        from .callbacks.reports import ReportWriter

        parser.add_lightning_class_args(LeakCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LeakEarlyStopping, "early_stopping")
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
        root = cfg["trainer"]["default_root_dir"]
        check_writable(root)
        if sub == "fit" and process_rank() == 0:  # DDP's other ranks are rank 0's children
            # one run at a time in a run directory: two would overwrite each other's checkpoints
            FolderLock(root, "--trainer.default_root_dir").acquire()  # released when the command ends
            if stale := remove_stale_temporaries(checkpoint_dir(root)):
                log.warning("removed %d temporary file(s) left by killed checkpoint saves: %s", len(stale),
                            ", ".join(p.name for p in stale))
        if sub == "fit" and not cfg.get("ckpt_path") and not cfg.get("overwrite") \
                and not cfg["trainer"].get("fast_dev_run"):
            refuse_to_replace_a_run(root)
        if sub != "fit" and not cfg.get("ckpt_path"):
            cfg["ckpt_path"] = default_checkpoint(root, sub)
        if cfg.get("ckpt_path"):
            cfg["ckpt_path"], self.contract = resolve_ckpt_path(cfg["ckpt_path"], root, sub)
            # the checkpoint's hyper-parameters replace the model's options: note what was asked for
            given = {a.split("=")[0][len("--model."):] for a in (args or sys.argv[1:]) if str(a).startswith("--model.")}
            self._asked = {k: cfg["model"].get(k) for k in given if k in cfg["model"]}

    def _run_subcommand(self, subcommand: str) -> None:
        # Lightning re-raises what stopped a run; the ones a user can act on become one line here
        try:
            super()._run_subcommand(subcommand)
        except (RuntimeError, OSError) as err:
            if self.trainer.world_size > 1 and isinstance(err, RuntimeError):
                raise ValueError(f"a DDP rank stopped, so the run cannot go on ({_first(err)}); "
                                 f"{_last_checkpoint_note(self.trainer.default_root_dir)}") from err
            if isinstance(err, OSError):
                where = f"{err.filename}: " if getattr(err, "filename", None) else ""
                raise ValueError(f"{where}{err.strerror or _first(err)}; "
                                 f"{_last_checkpoint_note(self.trainer.default_root_dir)}") from err
            raise
        finally:
            FolderLock.release_all()

    def _data_says(self, attr: str, data):
        """A data → model link. With --ckpt_path the data is first bound to the checkpoint's contract
        (checked against it, classes remapped by name): the model gets the checkpoint's order and frontend."""
        if self.contract is not None and data.contract is None:
            data.bind(self.contract)
        return getattr(data, attr)

    def before_instantiate_classes(self) -> None:
        model = (self.config[self.subcommand] if self.subcommand else self.config)["model"]
        def shown(value):
            return list(value) if isinstance(value, tuple) else value

        for key, value in self._asked.items():
            if model.get(key) != value:
                log.warning("--model.%s %s is not used: the checkpoint's hyper-parameters rule (%s=%s)", key,
                            shown(value), key, shown(model.get(key)))
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
        from .callbacks.checkpointing import AtomicCheckpointIO, LeakCheckpoint, LeakEarlyStopping

        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if not config.get("plugins"):  # atomic checkpoint writes unless the user brings a CheckpointIO
            config["plugins"] = [AtomicCheckpointIO()]
        callbacks = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        dropped = set()
        if config.get("enable_checkpointing") is False:  # Lightning refuses a ModelCheckpoint then
            dropped.add(LeakCheckpoint)
            if self.subcommand == "fit":
                log.warning("--trainer.enable_checkpointing false: no best.ckpt or last.ckpt will be written "
                            "(Ctrl-C still saves last.ckpt)")
        if not self._get(self.config_init, "early_stopping").enabled:
            dropped.add(LeakEarlyStopping)
        return self._instantiate_trainer(config, [c for c in callbacks if type(c) not in dropped])

    def before_fit(self) -> None:
        log.info("run directory %s: checkpoints in %s", self.trainer.default_root_dir,
                 checkpoint_dir(self.trainer.default_root_dir), extra={"colour": "header"})

    def after_fit(self) -> None:
        cb = self.trainer.checkpoint_callback
        if cb is not None and cb.best_model_path:
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


def _first(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    # gloo: "[/path/pair.cc:561] Connection closed by peer [...]. This is typically caused by ..."
    text = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". This is typically")[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _last_checkpoint_note(root: str | None) -> str:
    """Where the run stands on disk, and the command that goes on from there."""
    from .callbacks.interrupt import resume_command

    last = checkpoint_dir(root) / "last.ckpt"
    if not last.is_file():
        return "no checkpoint was saved yet: run the same command again"
    saved = time.strftime("%H:%M:%S", time.localtime(last.stat().st_mtime))
    return f"{last} (saved {saved}) is intact; resume with: {resume_command()}"


def default_checkpoint(root: str | None, subcommand: str) -> str:
    """validate/test/predict without --ckpt_path: the run directory's best.ckpt, never an untrained model."""
    best = checkpoint_dir(root) / "best.ckpt"
    if not best.is_file():
        raise ValueError(f"{subcommand} needs a trained model: pass --ckpt_path FILE|best|last (no best.ckpt in "
                         f"{best.parent}; train first or set --trainer.default_root_dir to the run's folder)")
    log.info("no --ckpt_path given: using %s", best)
    return "best"


def resolve_ckpt_path(value: str, root: str | None, subcommand: str) -> tuple[str | None, ModelContract | None]:
    """`best` / `last` → <run dir>/checkpoints/<name>.ckpt (a damaged `last` falls back to the newest valid
    one when resuming), checked, with what the checkpoint was trained on."""
    from .callbacks.checkpointing import load_checkpoint, newest_valid_checkpoint

    folder = checkpoint_dir(root)
    if value in ("best", "last"):
        path = folder / f"{value}.ckpt"
        if subcommand == "fit" and value == "last":
            if not (folder.is_dir() and any(folder.glob("*.ckpt"))):
                raise FileNotFoundError(f"--ckpt_path last: {folder} holds no checkpoint to resume; drop "
                                        "--ckpt_path to start a new run, or set --trainer.default_root_dir "
                                        "to the run's folder")
            found = newest_valid_checkpoint(folder, preferred=path)
            if found is None:
                log.warning("no usable checkpoint in %s: starting a new run", folder)
                return None, None
            if found != path:
                log.warning("resuming from %s instead", found)
            path = found
        elif not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {value}: {path} does not exist; train first or pass "
                                    f"--trainer.default_root_dir of the run (or a checkpoint file)")
        value = str(path)
    if not Path(value).is_file():
        raise FileNotFoundError(f"--ckpt_path {value}: no such checkpoint file")
    ckpt = load_checkpoint(Path(value))
    if isinstance(ckpt, str):
        raise ValueError(f"--ckpt_path {value}: checkpoint is unusable ({ckpt}); pick another checkpoint")
    return value, ModelContract.from_checkpoint(ckpt, value)


def build_parser() -> ArgumentParser:
    from .builder.build import build_dataset

    parser = ArgumentParser(prog="python -m leak_lightning build", exit_on_error=False,
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
    try:
        cfg = parser.parse_args(argv)
        setup_logging(cfg.pop("log_level"))
    except (ArgumentError, ValueError) as err:
        setup_logging("INFO")
        log.error("%s; see `python -m leak_lightning build --help` for the options", _one_line(err, argv))
        return 2
    cfg.pop("config", None)
    from .builder.build import build_dataset

    # SIGTERM unwinds like Ctrl-C so the temporary files are removed on the way out.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        build_dataset(**parser.instantiate_classes(cfg).as_dict())
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        log.error("%s", err)
        return 2
    except (OSError, RuntimeError) as err:  # a full disk, a lost mount: discarded, the old dataset untouched
        errno = getattr(err, "errno", None) or (28 if "errno = 28" in str(err) else None)
        reason = os.strerror(errno) if errno else str(err).splitlines()[0]
        log.debug("details", exc_info=True)
        log.error("%s: %s while writing the dataset; nothing was replaced (an earlier dataset there is intact) "
                  "and the temporary files were removed; free space or choose another --output",
                  cfg.get("output"), reason)
        from .builder.writer import UNCLOSED

        if UNCLOSED:  # h5py would crash freeing the half-closed file at exit: leave without freeing it
            logging.shutdown()
            os._exit(2)
        return 2
    except KeyboardInterrupt as err:
        log.error("build interrupted (%s): temporary files removed, existing outputs untouched",
                  err or "SIGINT")
        return 143 if str(err) == "SIGTERM" else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == "build":
        sys.exit(run_build(args[1:]))
    try:
        LeakCLI(args=argv)
    except ArgumentError as err:  # a bad flag, value or config file: the error, then where to look
        _fail(f"{_one_line(err, args)}; see `python -m leak_lightning {_subcommand(args)} --help` for the options")
    except (ValueError, FileNotFoundError) as err:
        if str(err).startswith("Call to compute_fn of link") and err.__cause__ is not None:
            err = err.__cause__  # our own check, raised inside a data → model link
        _fail(_worker_error(str(err)))
    finally:
        FolderLock.release_all()


def _worker_error(message: str) -> str:
    """A DataLoader worker's error arrives as 'Caught ValueError in DataLoader worker ... Original Traceback
    ...': keep the original message."""
    if message.startswith("Caught ") and "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message


def _fail(message: str) -> None:
    setup_logging("INFO")  # the error may be the log level itself
    log.debug("details", exc_info=True)
    log.error("%s", message)
    sys.exit(2)


def _one_line(err: Exception, args: list[str]) -> str:
    """jsonargparse's multi-line parse error as one line; a YAML error names its file and line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    if lines[0].startswith("Problems parsing config"):
        for path in (b for a, b in zip(args, args[1:]) if a in ("--config", "-c")):
            try:
                yaml.safe_load(Path(path).read_text())
            except (OSError, yaml.YAMLError) as yerr:
                where = getattr(yerr, "problem_mark", None)
                line = f" line {where.line + 1}, column {where.column + 1}" if where else ""
                return f"{path}:{line}: not valid YAML ({getattr(yerr, 'problem', None) or yerr})"
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text += " " + lines[1]
    given = next((line for line in lines[2:] if line.startswith("Given value:")), None)
    return f"{text} ({given})" if given else text


def _subcommand(args: list[str]) -> str:
    return next((a for a in args if a in ("fit", "validate", "test", "predict")), "")
