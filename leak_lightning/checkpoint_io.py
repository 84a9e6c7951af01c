"""Checkpoint files: written atomically, read once and checked, resolved from `best`/`last`, and a usable
one found to resume from. Below callbacks/, export, predict and the CLI, which all use it."""

from __future__ import annotations

import copy
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO  # listed in lightning_private.py

from .contract import ModelContract
from .features import FeatureConfig
from .fileio import fsync_dir, replacing
from .logs import bytes_human
from .rundir import checkpoint_dir, resume_command

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the target directory, fsync, then `os.replace` into place.

    A crash or SIGKILL during a save leaves the previous checkpoint untouched and loadable;
    Lightning's default writes the final path directly.
    """

    def _open_tmp(self, tmp: Path):
        return open(tmp, "wb")

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with replacing(path) as tmp, self._open_tmp(tmp) as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(path.parent)  # make the rename itself durable
        except (OSError, RuntimeError) as err:  # a full disk shows as either, through torch.save's zip writer
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            free = shutil.disk_usage(path.parent).free
            if free < 2**26:  # the zip writer's own words ("unexpected pos ...") would not say so
                reason = f"the disk is full: {bytes_human(free)} free"
            raise ValueError(f"cannot save checkpoint {path} ({reason}); the checkpoints already in {path.parent} "
                             f"are intact: free some space, then resume with: {resume_command()}") from err


def load_checkpoint(path: Path) -> dict | str:
    """The checkpoint at `path`, or why it cannot be used (one line)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, unpickling error, empty file, not a checkpoint at all...
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'unreadable'}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "loops" not in ckpt:
        return "not a complete Lightning training checkpoint"
    return ckpt


def read_checkpoint(path: str | Path, flag: str = "--ckpt_path"):
    """(checkpoint dict, its ModelContract) of a file written by `fit`, read once; else one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such checkpoint file")
    ckpt = load_checkpoint(path)
    if isinstance(ckpt, str):
        raise ValueError(f"{flag} {path}: not a usable checkpoint ({ckpt}); pick one written by "
                         "`python -m leak_lightning fit`")
    return ckpt, ModelContract.from_checkpoint(ckpt, path)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it loads and looks like a Lightning checkpoint."""
    ckpt = load_checkpoint(path)
    return ckpt if isinstance(ckpt, str) else None


def newest_valid_checkpoint(folder: Path, preferred: Path | None = None) -> Path | None:
    """`preferred` if it is valid, else the newest valid *.ckpt in `folder`; problems are logged by name."""
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    if preferred is not None:
        candidates = [preferred] + [c for c in candidates if c != preferred]
    for path in candidates:
        if not path.is_file():
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        log.warning("checkpoint %s is unusable (%s); trying an older one", path, problem)
    return None


def refuse_to_replace_a_run(root: str | None) -> None:
    """A new fit would overwrite best.ckpt/last.ckpt of the run already in `root`: stop first."""
    folder = checkpoint_dir(root)
    found = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if found:
        raise ValueError(f"{folder} already holds {', '.join(found)} from an earlier run: resume it with "
                         "--ckpt_path last, start elsewhere with --trainer.default_root_dir DIR, or replace "
                         "it with --overwrite true")


def last_checkpoint_note(root: str | None) -> str:
    """Where the run stands on disk, and the command that goes on from there."""
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


def resolve_ckpt_path(value: str, root: str | None, subcommand: str) -> tuple[str | None, ModelContract | None,
                                                                            dict | None]:
    """`best` / `last` → <run dir>/checkpoints/<name>.ckpt (a damaged `last` falls back to the newest valid
    one when resuming), checked: (path, what the checkpoint was trained on, its hyper-parameters in this
    version's arguments)."""
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
                return None, None, None
            if found != path:
                log.warning("resuming from %s instead", found)
            path = found
        elif not path.is_file():
            raise FileNotFoundError(f"--ckpt_path {value}: {path} does not exist; train first or pass "
                                    f"--trainer.default_root_dir of the run (or a checkpoint file)")
        value = str(path)
    ckpt, contract = read_checkpoint(value)
    return value, contract, current_hparams(ckpt.get("hyper_parameters") or {})


# ---- checkpoints of earlier versions: their arguments and state in this version's ------------------
_OLD_NET = ("channels", "hidden", "dropout", "layout")


def current_hparams(hp: dict) -> dict:
    """A checkpoint's hyper-parameters in this version's arguments (those of 0.x, 24 flat arguments, mapped)."""
    if "net" in hp or "num_classes" not in hp:
        return dict(hp)
    hp = copy.deepcopy(dict(hp))
    features = FeatureConfig.from_dict(hp["feature_config"])
    net = {"num_classes": hp["num_classes"], "n_mels": features.n_mels, "t_frames": features.t_frames}
    net.update({k: list(hp[k]) if k == "channels" else hp[k] for k in _OLD_NET if k in hp})
    augment = dict(hp.get("augment") or {})
    augment.update({k: hp[k] for k in ("freq_mask", "time_mask") if k in hp})
    return {
        "net": {"class_path": "leak_lightning.models.LeakCNN", "init_args": net},
        "optimizer": {"class_path": "leak_lightning.models.optim.AdamW",
                      "init_args": {"lr": hp.get("lr", 1e-3), "weight_decay": hp.get("weight_decay", 1e-2),
                                    "fused": hp.get("fused_adamw")}},
        "scheduler": {"class_path": "leak_lightning.models.optim.CosineToEnd",
                      "init_args": {"min_lr_ratio": hp.get("min_lr_ratio", 0.01)}},
        "class_names": hp["class_names"], "feature_config": hp["feature_config"],
        "leak_class_name": hp.get("leak_class_name", "LEAK"), "pos_weight": hp.get("pos_weight"),
        "augment": augment,
        "decision": {"aggregation": hp.get("aggregation", "vote"), "vote_fraction": hp.get("vote_fraction", 0.5)},
        "compile": {"enabled": hp.get("compile"), "mode": hp.get("compile_mode", "default"),
                    "cache": hp.get("compile_cache")},
        "grad_clip": hp.get("grad_clip"),
        **({"_instantiator": hp["_instantiator"]} if "_instantiator" in hp else {}),
    }


def migrate_state(checkpoint: dict) -> None:
    """A checkpoint dict of an earlier version, in place: the decision buffers under `decision.`, defaults for
    checkpoints from before calibration, and steps counted under automatic optimization carried over."""
    state = checkpoint.get("state_dict", {})
    for name, default in (("threshold", torch.tensor(0.5)), ("calibration", torch.tensor([1.0, 0.0])),
                          ("threshold_stats", torch.tensor([float("nan"), float("nan")]))):
        if f"decision.{name}" not in state:
            state[f"decision.{name}"] = state.pop(name, default)
    # checkpoints from automatic optimization count their steps there: carry the count over, or a
    # resumed run would start again at global step 0 (loop keys: lightning_private.LOOP_KEYS)
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    auto = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if auto and manual is not None and manual["total"]["completed"] == 0 and auto["total"]["completed"] > 0:
        loop["epoch_loop.manual_optimization.optim_step_progress"] = auto


