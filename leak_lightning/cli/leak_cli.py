"""LeakCLI: the LightningCLI behind fit/validate/test/predict, and its checkpoint and run-directory rules."""

from __future__ import annotations

import logging
import sys
from operator import attrgetter
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from ..checkpoint.contract import ModelContract, default_output, run_dir_of
from ..checkpoint.io import (
    AtomicCheckpointIO,
    default_checkpoint,
    last_checkpoint_note,
    refuse_to_replace_a_run,
    resolve_ckpt_path,
)
from ..inference.predict import sensors_csv
from ..runtime.distributed import claim_report, watch_ranks
from ..runtime.fileio import check_output_name, check_writable_file, remove_stale_temporaries
from ..runtime.logs import LEVELS, process_rank, setup_logging
from ..runtime.rundir import DEFAULT_RUN_DIR, FolderLock, check_writable, checkpoint_dir
from .errors import run_stopped

log = logging.getLogger(__name__)
MONITOR = "val/file_leak_f1"


class LeakCLI(LightningCLI):
    """LightningCLI with the data → model links, checkpoint/early-stopping groups and CUDA defaults."""

    def __init__(self, *args, **kwargs) -> None:
        from ..data.datamodule import LeakDataModule
        from ..training.module import LeakClassifier

        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        self.contract: ModelContract | None = None  # what --ckpt_path was trained on
        self._asked: dict = {}  # --model.* options given with --ckpt_path
        self.ckpt_hparams: dict | None = None  # its hyper-parameters, in this version's arguments
        try:
            super().__init__(LeakClassifier, LeakDataModule, *args, **kwargs)
        except (RuntimeError, OSError) as err:
            if getattr(self, "trainer", None) is None:  # not a run's: before the trainer, or a bug
                raise
            self._run_stopped(err)
        finally:
            if kwargs.get("run", True):  # with run=False the caller runs the trainer: the run directory stays held
                FolderLock.release_all()

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        # parse errors raise, so `main` prints one line instead of ~100 lines of usage
        kwargs.setdefault("exit_on_error", False)
        kwargs.setdefault("prog", "python -m leak_lightning")
        return super().init_parser(**kwargs)

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument("--output", type=str | None, default=None,
                                help="the predictions CSV (default: <run dir>/predictions.csv for a run's checkpoint; "
                                     "for a site's checkpoint, or one outside a run, <ckpt dir>/<stem>_predictions.csv "
                                     "beside it)")
        if subcommand in ("validate", "test"):  # our results table says it; Lightning's would repeat it
            parser.set_defaults(verbose=False)
        return parser

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--log_level", type=str | None, default=None,
                            help=f"one of {', '.join(LEVELS)} (default: $TRAINER_LOG_LEVEL or INFO)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: start a new run even where the run directory holds an earlier run's "
                                 "checkpoints (they are replaced)")
        parser.add_argument("--resume_on_changed_data", type=bool, default=False,
                            help="fit --ckpt_path: go on although the training split is not the one the checkpoint "
                                 "was trained on (recordings added or removed since)")
        # what the data says fills the model's (and its network's) sizes; with --ckpt_path, the checkpoint's
        for attr in ("class_names", "feature_config", "train_class_counts"):
            parser.link_arguments("data", f"model.{attr}", compute_fn=self._link(attr, attrgetter(attr)),
                                  apply_on="instantiate")
        # pos_weight auto is computed from these when fit starts; a user's pos_weight cannot be a link's target
        # (jsonargparse refuses a linked value on the command line), so the counts are linked, not the weights.
        # 0 files, not None, without a training split: the model then names data.train_h5 as the fix
        parser.link_arguments("data", "model.train_files", apply_on="instantiate",
                              compute_fn=self._link("train_files", lambda dm: dm.train_files or 0))
        for attr, compute in (("num_classes", lambda dm: dm.num_classes), ("n_mels", lambda dm: dm.features.n_mels),
                              ("t_frames", lambda dm: dm.features.t_frames)):
            parser.link_arguments("data", f"model.net.init_args.{attr}", apply_on="instantiate",
                                  compute_fn=self._link(attr, compute))
        from ..training.callbacks.checkpointing import LeakCheckpoint, LeakEarlyStopping
        from ..training.callbacks.console import ConsoleLogger
        from ..training.callbacks.interrupt import GracefulInterrupt
        from ..training.callbacks.predictions import PredictionWriter
        from ..training.callbacks.reports import ReportWriter

        parser.add_lightning_class_args(LeakCheckpoint, "checkpoint")
        parser.add_lightning_class_args(LeakEarlyStopping, "early_stopping")
        parser.add_lightning_class_args(ReportWriter, "reports")
        parser.add_lightning_class_args(PredictionWriter, "predictions")
        parser.add_lightning_class_args(ConsoleLogger, "console")
        parser.add_lightning_class_args(GracefulInterrupt, "interrupt")
        parser.set_defaults({
            "model.net": {"class_path": "leak_lightning.models.LeakCNN"},
            "model.optimizer": {"class_path": "leak_lightning.models.optim.AdamW"},
            "model.scheduler": {"class_path": "leak_lightning.models.optim.CosineToEnd"},
            "trainer.default_root_dir": DEFAULT_RUN_DIR,
            "trainer.enable_model_summary": False,  # the banner gives the parameter counts
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
        given = [str(a) for a in (args if args is not None else sys.argv[1:])]
        with_dir = _logger_save_dir(given)
        super().parse_arguments(parser, with_dir if with_dir != given else args)
        sub = self.config.get("subcommand")
        if not sub:
            return
        cfg = self.config[sub]
        setup_logging(cfg.get("log_level"))
        # a checkpoint given as a file, with no run directory named, decides where the outputs go: read it first
        early = sub != "fit" and cfg.get("ckpt_path") not in (None, "best", "last") \
            and cfg["trainer"]["default_root_dir"] == DEFAULT_RUN_DIR
        if early:
            cfg["ckpt_path"], self.contract, self.ckpt_hparams = resolve_ckpt_path(cfg["ckpt_path"], None, sub)
            output = (cfg.get("output") or cfg["predictions"].get("output")) if sub == "predict" else None
            cfg["trainer"]["default_root_dir"] = str(_home(Path(cfg["ckpt_path"]), self.contract, output))
        root = cfg["trainer"]["default_root_dir"]
        _fill_run_dir(cfg["trainer"].get("logger"), root)
        if sub == "fit":
            check_writable(root)
            for key in ("train_h5", "val_h5"):  # before the run directory is claimed
                if cfg["data"].get(key) and not Path(cfg["data"][key]).exists():
                    from ..data.h5 import read_info

                    read_info(cfg["data"][key])  # raises: not found, with the fix
            self._claim(cfg, root)
        if sub != "fit" and not cfg.get("ckpt_path"):
            cfg["ckpt_path"] = default_checkpoint(root, sub)
        if cfg.get("ckpt_path") and not early:
            cfg["ckpt_path"], self.contract, self.ckpt_hparams = resolve_ckpt_path(cfg["ckpt_path"], root, sub)
        if sub != "fit":  # only now: a command that finds no checkpoint leaves no empty run directory behind
            if early:  # a folder the user did not name: say whose it is and how to choose another
                check_writable(root, f"the folder for this command's records beside {cfg['ckpt_path']},",
                               "name a writable one with --trainer.default_root_dir DIR"
                               + (" (or give --output FILE: they go beside it)" if sub == "predict" else ""))
            else:
                check_writable(root)
        if sub == "predict":
            self._predict_output(cfg, root, named_root=not early and root != DEFAULT_RUN_DIR)
        if cfg.get("ckpt_path"):
            # the checkpoint's hyper-parameters replace the model's options: note what was asked for
            asked = {a.split("=")[0][len("--model."):] for a in given if a.startswith("--model.")}
            self._asked = {k: cfg["model"].get(_key(cfg["model"], k)) for k in asked if _key(cfg["model"], k)}

    def _predict_output(self, cfg, root: str, named_root: bool) -> None:
        """predict's CSV: --output, else the checkpoint's (`default_output`): a site's checkpoint, known by its
        own site record (not by its folder), answers beside itself and never over the base model's CSV."""
        if cfg.get("output"):
            cfg["predictions"]["output"] = cfg["output"]
        elif not cfg["predictions"]["output"] and self.contract is not None:
            site = self.contract.site is not None
            if site or not named_root:
                cfg["predictions"]["output"] = str(default_output(cfg["ckpt_path"], "predictions.csv", own=site))
        # the CSV's place is checked before any recording is scored, so no scoring is thrown away
        out = Path(cfg["predictions"]["output"] or Path(root) / "predictions.csv")
        check_writable_file(out, "--output")
        check_output_name(sensors_csv(out), "--output")  # its partner, written with it
        if cfg["trainer"].get("logger") in (None, True):  # predict logs no metric: no empty lightning_logs/
            cfg["trainer"]["logger"] = False

    @staticmethod
    def _claim(cfg, root: str) -> None:
        """fit: one run at a time in a run directory (two would overwrite each other's checkpoints),
        stale temporaries of killed saves removed, an earlier run's checkpoints never replaced unasked."""
        if process_rank() == 0:  # DDP's other ranks are rank 0's children
            FolderLock(root, "--trainer.default_root_dir").acquire()  # released when the command ends
            if stale := remove_stale_temporaries(checkpoint_dir(root)):
                log.warning("removed %d temporary file(s) left by killed checkpoint saves: %s", len(stale),
                            ", ".join(p.name for p in stale))
        if not cfg.get("ckpt_path") and not cfg.get("overwrite") and not cfg["trainer"].get("fast_dev_run"):
            refuse_to_replace_a_run(root)

    def _run_stopped(self, err: RuntimeError | OSError) -> None:
        """Lightning re-raises what stopped a run; the ones a user can act on become one line (errors.run_stopped)."""
        many = self.trainer.world_size > 1 and isinstance(err, RuntimeError)
        if many:
            claim_report()  # not twice: Lightning's observer of the child ranks may be reporting it
        # only a fit has a run to resume; validate/test/predict are simply run again
        note = f"; {last_checkpoint_note(self.trainer.default_root_dir)}" if self.subcommand == "fit" else ""
        stopped = run_stopped(err, self.subcommand, self.trainer.world_size, note)
        if stopped is None:
            raise err
        raise stopped from err

    def _before_run(self) -> None:
        watch_ranks(self.trainer.default_root_dir, self.subcommand)
        if self.subcommand == "predict" and self.datamodule.predict_path:
            self.datamodule.predict_recordings()  # a bad input is one line before DDP starts ranks that each say it

    def before_validate(self) -> None:
        self._before_run()

    def before_test(self) -> None:
        self._before_run()

    def before_predict(self) -> None:
        self._before_run()

    def _bound(self, data):
        """The data module, first bound to the checkpoint's contract with --ckpt_path (checked against it,
        classes remapped by name): the model gets the checkpoint's order and frontend."""
        if self.contract is not None and data.contract is None:
            data.bind(self.contract)
        return data

    def _link(self, name: str, compute):
        """A data → model link's function: `compute` of the data module as bound (the checkpoint's class order),
        named for `--help`, which shows a link by its function's name."""
        def link(data):
            return compute(self._bound(data))

        link.__name__ = link.__qualname__ = name
        return link

    def _parse_ckpt_path(self) -> None:
        """The checkpoint's hyper-parameters rule the model's options (as in LightningCLI), taken from the
        checkpoint already read and checked, and migrated from earlier versions' arguments."""
        if self.contract is None or not self.ckpt_hparams:
            return
        hparams = {k: v for k, v in self.ckpt_hparams.items() if not k.startswith("_")}
        self.config = self.parser.parse_object({self.config.subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        model = (self.config[self.subcommand] if self.subcommand else self.config)["model"]
        def shown(value):
            return list(value) if isinstance(value, tuple) else value

        for key, value in self._asked.items():
            if model.get(_key(model, key)) != value:
                log.warning("--model.%s %s is not used: the checkpoint's hyper-parameters rule (%s=%s)", key,
                            shown(value), key, shown(model.get(_key(model, key))))
        trainer = (self.config[self.subcommand] if self.subcommand else self.config)["trainer"]
        wants_gpu = str(trainer.get("accelerator")) in ("gpu", "cuda")
        if wants_gpu and not torch.cuda.is_available():
            raise ValueError("--trainer.accelerator gpu was asked for but CUDA is not available on this "
                             "machine; use --trainer.accelerator cpu (or auto)")
        on_cuda = torch.cuda.is_available() and str(trainer.get("accelerator")) != "cpu"
        if trainer.get("precision") is None:
            trainer["precision"] = "bf16-mixed" if on_cuda else "32-true"
        elif "bf16" in str(trainer["precision"]) and not on_cuda:
            log.warning("--trainer.precision %s on a CPU runs about 20x slower than 32-true (no bf16 units); "
                        "use it on CUDA only", trainer["precision"])
        if trainer.get("benchmark") is None and on_cuda:
            trainer["benchmark"] = True

    def instantiate_trainer(self, **kwargs):
        from ..training.callbacks.checkpointing import LeakCheckpoint, LeakEarlyStopping

        group = self.config_init.get(str(self.subcommand), self.config_init)  # the subcommand's, as Lightning reads
        config = {**group.get("trainer", {}), **kwargs}
        if not config.get("plugins"):  # atomic checkpoint writes unless the user brings a CheckpointIO
            kwargs["plugins"] = [AtomicCheckpointIO()]
        dropped = set()
        if config.get("enable_checkpointing") is False:  # Lightning refuses a ModelCheckpoint then
            dropped.add(LeakCheckpoint)
            if self.subcommand == "fit":
                log.warning("--trainer.enable_checkpointing false: no best.ckpt or last.ckpt will be written "
                            "(Ctrl-C still saves last.ckpt)")
        if not group["early_stopping"].enabled:
            dropped.add(LeakEarlyStopping)
        # Lightning gives the trainer every callback group's instance: one switched off is a callback doing nothing
        for key in [k for k in group.keys() if type(group[k]) in dropped]:
            group[key] = Callback()
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "fit" and config.get("logger") is not False:  # it refuses a trainer without loggers
            ours = [i for i, c in enumerate(trainer.callbacks) if not isinstance(c, ModelCheckpoint)
                    and any(c is group[k] for k in group.keys())]
            # logged as "lr" (the schedule's name); after the groups' callbacks, where Lightning puts extra ones
            trainer.callbacks.insert(max(ours, default=len(trainer.callbacks) - 1) + 1,
                                     LearningRateMonitor(logging_interval="step"))
        return trainer

    def before_fit(self) -> None:
        self._before_run()
        cfg = self.config["fit"]
        if self.contract is not None and (change := self.datamodule.training_changes(self.contract.training)):
            if not cfg.get("resume_on_changed_data"):
                raise ValueError(f"--ckpt_path {cfg['ckpt_path']}: the training split changed: {change}; resuming "
                                 "would go on training on other recordings than the run started with. Train a new "
                                 "run (--overwrite true, or another --trainer.default_root_dir), or pass "
                                 "--resume_on_changed_data true to go on anyway")
            log.warning("resuming on a changed training split (--resume_on_changed_data true): %s", change)
        log.info("run directory %s: checkpoints in %s", self.trainer.default_root_dir,
                 checkpoint_dir(self.trainer.default_root_dir), extra={"colour": "header"})

    def after_fit(self) -> None:
        cb = self.trainer.checkpoint_callback
        if cb is not None and cb.best_model_path and cb.best_model_score is not None:
            log.info("best checkpoint (%s=%.4f): %s", cb.monitor, float(cb.best_model_score),
                     cb.best_model_path, extra={"colour": "success"})


RUN_DIR = "<run dir>"  # a logger's save_dir until the run directory is known


def _logger_save_dir(args: list) -> list:
    """`--trainer.logger CSVLogger` (any logger with a save_dir) writes into the run directory unless told
    otherwise: Lightning's loggers require the argument, and it is rarely anywhere else."""
    args = [str(a) for a in args]
    if any(a.startswith("--trainer.logger.") for a in args):
        return args
    for i, a in enumerate(args):
        name = a.split("=", 1)[1] if a.startswith("--trainer.logger=") else (
            args[i + 1] if a == "--trainer.logger" and i + 1 < len(args) else None)
        if name and name[0].isalpha() and name.lower() not in ("true", "false", "null", "none"):
            import inspect

            import lightning.pytorch.loggers as loggers

            cls = getattr(loggers, name.rsplit(".", 1)[-1], None)
            if cls is not None and "save_dir" in inspect.signature(cls).parameters:
                return [*args[: i + (1 if "=" in a else 2)], "--trainer.logger.save_dir", RUN_DIR,
                        *args[i + (1 if "=" in a else 2):]]
    return args


def _home(ckpt: Path, contract: ModelContract, output: str | None = None) -> Path:
    """validate/test/predict's run directory for a checkpoint file when none is named (not ./runs of wherever one
    stands): the checkpoint's run; for a site's checkpoint or one outside a run, `<ckpt dir>/<stem>_reports/`
    beside it (the command's config.yaml and log, validate/test's reports and plots; predict's CSV is beside the
    checkpoint), so that a site's records never replace the base model's in its run. A predict given `--output`
    keeps its records beside that file instead (`<output stem>_reports/`): a model folder may be read-only."""
    run = run_dir_of(ckpt)
    if run is not None and contract.site is None:
        return run
    if output:
        return Path(output).with_name(f"{Path(output).stem}_reports")
    return default_output(ckpt, "reports", own=True)


def _fill_run_dir(logger, root: str) -> None:
    for item in logger if isinstance(logger, list) else [logger]:
        init = getattr(item, "init_args", None)
        if init is not None and init.get("save_dir") == RUN_DIR:
            init["save_dir"] = root


def _key(model, name: str) -> str | None:
    """A --model.* option's key in the parsed config: `net.channels` is `net.init_args.channels` there."""
    if name in model:
        return name
    head, _, rest = name.partition(".")
    full = f"{head}.init_args.{rest}"
    return full if rest and full in model else None
