"""Checkpoint files: written atomically, read once and checked, resolved from `best`/`last`, and a usable
one found to resume from. Below callbacks/, export, predict and the CLI, which all use it."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import pickletools
import re
import shutil
import time
import warnings
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ..runtime.fileio import fsync_dir, replacing
from ..runtime.logs import bytes_human
from ..runtime.rundir import checkpoint_dir, resume_command
from .contract import ModelContract
from .migrations import current_hparams

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

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's own reads (fit's resume, validate/test/predict --ckpt_path) through the project's one:
        the safe unpickler whatever `weights_only` says, and a refused file is one line naming it."""
        return read_checkpoint(path)[0]


# Beyond tensors and plain values, checkpoints of earlier versions hold numpy arrays: the Ctrl-C callback kept
# numpy's RNG state as one until 53b6c01. Rebuilding an array runs nothing; numpy 1 and 2 name its reconstructor
# differently, so both names are allowed (the function itself found through the public __reduce__).
_RECONSTRUCT = np.zeros(0).__reduce__()[0]
EARLIER_TYPES = (np.ndarray, np.dtype, type(np.dtype(np.uint32)),  # the state's keys: a uint32 array
                 (_RECONSTRUCT, "numpy.core.multiarray._reconstruct"),
                 (_RECONSTRUCT, "numpy._core.multiarray._reconstruct"))
_DATA_NAMES = {"collections.OrderedDict", "_codecs.encode",  # the latter: bytes under pickle protocol 2
               "numpy.ndarray", "numpy.dtype", f"numpy.dtypes.{type(np.dtype(np.uint32)).__name__}",
               "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
DATA_NOT_CODE = "a checkpoint is data, never code, and nothing from it ran"


@contextlib.contextmanager
def safe_unpickling():
    """EARLIER_TYPES allowed in torch's safe unpickler for the `with` block only (never `add_safe_globals`: code
    that imports this package keeps torch's own rules)."""
    with torch.serialization.safe_globals(list(EARLIER_TYPES)), warnings.catch_warnings():
        # torch warns of a pickle protocol its safe unpickler does not read, then refuses the file: said once
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        yield


def load_problem(err: Exception, path: Path | None = None) -> str:
    """Why a checkpoint could not be read, in one line; what the safe unpickler refused is named."""
    text = str(err)
    if isinstance(err, pickle.UnpicklingError):
        # the refused type travels only in the message's words (listed in lightning_private.py); torch's
        # advice around it (weights_only=False) is left out
        found = re.search(r"GLOBAL (\S+)", text)
        if named := [found[1]] if found else (_foreign_globals(path) if path else []):
            return f"it holds {', '.join(named)}, which the safe unpickler refuses: {DATA_NOT_CODE}"
        detail = " ".join(text.partition("WeightsUnpickler error:")[2].partition("Check the documentation")[0].split())
        return f"not data the safe unpickler reads ({detail or 'unreadable'})"
    return f"{type(err).__name__}: {text.splitlines()[0] if text else 'unreadable'}"


_PUSH_STR = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}
_NO_PUSH = {"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME", "PROTO"}


def _foreign_globals(path: Path) -> list[str]:
    """The globals outside torch that a zip checkpoint's pickle names, read opcode by opcode (nothing is built).

    For a file torch's unpickler stops at before naming one (a pickle protocol it does not read)."""
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        named, pushed, memo = [], [None, None], {}
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                named.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL":  # its module and name are the two strings pushed just before
                named.append(f"{pushed[-2]}.{pushed[-1]}")
            if op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1]
            elif op.name not in _NO_PUSH:
                pushed.append(arg if op.name in _PUSH_STR else memo.get(arg) if "GET" in op.name else None)
    except (OSError, ValueError, zipfile.BadZipFile, StopIteration):  # not a zip, no pickle, a damaged one
        return []
    return sorted({n for n in named if not _tensor_machinery(n)})


def _tensor_machinery(name: str) -> bool:
    """A global that data names: torch's tensor rebuilders, storages and dtypes, and _DATA_NAMES."""
    module, _, attr = name.rpartition(".")
    return (module == "torch._utils" or name in _DATA_NAMES
            or module == "torch" and (attr.endswith("Storage") or isinstance(getattr(torch, attr, None), torch.dtype)))


def load_checkpoint(path: Path | IO[bytes]) -> dict | str:
    """The checkpoint at `path` (or in a file object) read by torch's safe unpickler (never `weights_only=False`),
    or why it cannot be used (one line). Every read of a checkpoint comes here, Lightning's own through
    AtomicCheckpointIO."""
    try:
        with safe_unpickling():
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, refused type, empty file, not a checkpoint at all...
        return load_problem(err, path)
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
        raise unusable(f"{flag} {path}", ckpt)
    refuse_foreign_code(ckpt, f"{flag} {path}")
    return ckpt, ModelContract.from_checkpoint(ckpt, path)


def refuse_foreign_code(ckpt: dict, where: str) -> None:
    """One line when the arguments a checkpoint rebuilds its model from name code outside the trusted packages:
    its hyper-parameters, and the older keys Lightning's own loader merges into them."""
    named = sorted({n for key in ("module_arguments", "hparams", "hyper_parameters")  # Lightning's loader merges
                    for n in foreign_code(ckpt.get(key))})  # all three: each is checked whole
    if named:
        raise unusable(where, f"its hyper-parameters name {', '.join(named)} to import and call, outside "
                       f"{', '.join(TRUSTED_ROOTS)}: {DATA_NOT_CODE}; if you trust that code, name its package in "
                       f"{TRUSTED_ENV}")


# A checkpoint's hyper-parameters name the classes that rebuild its model (`class_path`, and Lightning's
# `_instantiator`): strings the safe unpickler passes, which the CLI and `for_inference` then import and call.
# Only these packages are imported on a checkpoint's word; a user's own network package is trusted by name.
TRUSTED_ROOTS = ("leak_lightning", "torch", "lightning")
TRUSTED_ENV = "LEAK_LIGHTNING_TRUSTED_PACKAGES"
LIGHTNING_INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"
_CALLABLE_SLOTS = ("net", "optimizer", "scheduler")  # jsonargparse also takes a bare import path there


def foreign_code(hparams) -> list[str]:
    """The import paths in a checkpoint's hyper-parameters outside the trusted packages (sorted, unique)."""
    trusted = {*TRUSTED_ROOTS, *filter(None, os.environ.get(TRUSTED_ENV, "").replace(",", " ").split())}
    named: list[str] = []

    def visit(value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "class_path" or (k in _CALLABLE_SLOTS and isinstance(v, str)):
                    named.append(str(v))
                else:
                    visit(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)

    hparams = hparams if isinstance(hparams, dict) else {}
    visit({k: v for k, v in hparams.items() if k != "_instantiator"})
    # the instantiator is called with (class, arguments): only Lightning's own, never another function
    instantiator = hparams.get("_instantiator", LIGHTNING_INSTANTIATOR)
    named += [str(instantiator)] if instantiator != LIGHTNING_INSTANTIATOR else []
    return sorted({n for n in named if n.split(".", 1)[0] not in trusted or n == instantiator})


def unusable(where: str, problem: str) -> ValueError:
    """The one-line error for a checkpoint that cannot be used, and the fix."""
    return ValueError(f"{where}: not a usable checkpoint ({problem}); pick one written by "
                      "`python -m leak_lightning fit` or `adapt`")


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
