"""Every private name of Lightning (and torch) this project relies on, with the reason, in one place.

Lightning is pinned to the minor version these were checked against (pyproject: lightning>=2.6,<2.7).
`missing()` lists those that are gone; tests/test_lightning_private.py fails naming each one, so an
upgrade shows at once what to port instead of breaking a run days later.

12 names, each kept because no public API does its job (the reason is on each entry): LightningOptimizer's step
hooks (a public `opt.step()` runs the per-step hooks a block of steps avoids), two LightningCLI subcommand
internals, three ModelCheckpoint rules for last.ckpt (2.6 has no public "save last now"; a new best is found
from the public `best_model_score`), the DDP child observer (no public hook for a lost
rank), the live count of finished batches (the public stateful-loader state counts prefetched batches and is
restored after the loader is built) and torch's compile-error base class (`torch.compiler` exports none).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Private:
    owner: str  # "module:Class" or "module"
    name: str  # attribute of the owner ("" for a module itself)
    why: str


USED: tuple[Private, ...] = (
    # --- training/module.py: blocks of optimizer steps in one Lightning step ------------------------
    Private("lightning.pytorch.core.optimizer:LightningOptimizer", "_on_before_step",
            "a step inside a block advances the progress counts behind trainer.global_step without "
            "Lightning's per-step hooks (LeakClassifier.training_step); the public opt.step() runs those hooks, "
            "the per-step cost a block exists to pay once"),
    Private("lightning.pytorch.core.optimizer:LightningOptimizer", "_on_after_step", "as _on_before_step"),
    # --- cli/leak_cli.py: LeakCLI (no public hook knows which subcommand's parser it builds) -----------
    Private("lightning.pytorch.cli:LightningCLI", "_prepare_subcommand_parser",
            "predict's --output option and validate/test's quiet default are added per subcommand"),
    Private("lightning.pytorch.cli:LightningCLI", "_parse_ckpt_path",
            "a checkpoint's hyper-parameters are migrated to the current module's arguments before they "
            "are parsed, from the checkpoint already read and checked (not a second, unchecked read)"),
    # --- training/callbacks/checkpointing.py: last.ckpt kept current (LeakCheckpoint._keep_last_current) -----
    # Lightning 2.6 rewrites last.ckpt only in a step that saved a top-k file, so neither the public API nor a
    # second ModelCheckpoint keeps it current; these keep Lightning's own rules for when and how it saves
    Private("lightning.pytorch.callbacks:ModelCheckpoint", "_should_skip_saving_checkpoint",
            "last.ckpt is written after every validation, once per step (a step saved already is skipped)"),
    Private("lightning.pytorch.callbacks:ModelCheckpoint", "_should_save_on_train_epoch_end",
            "last.ckpt is saved in the hook Lightning saves in (epoch end or validation end): the callbacks' and "
            "loops' state in it then match what a resumed run expects"),
    Private("lightning.pytorch.callbacks:ModelCheckpoint", "_save_last_checkpoint",
            "writes last.ckpt with Lightning's bookkeeping (last_model_path, the step saved, the loggers told)"),
    # --- runtime/distributed.py: a lost DDP rank is reported in one line, exit 2 ----------------------
    # (lightning.fabric.plugins.environments is public, but only says how ranks were launched; nothing public
    # observes the child ranks or replaces what happens when one dies)
    Private("lightning.fabric.strategies.launchers.subprocess_script:_ChildProcessObserver", "_terminate_all",
            "Lightning SIGKILLs rank 0 when a child rank dies (exit -9, no words); replaced by a one-line "
            "report with the resume command (distributed._lost_rank)"),
    Private("lightning.fabric.strategies.launchers.subprocess_script:_ChildProcessObserver", "_child_processes",
            "the child ranks' Popen objects, read in _lost_rank"),
    Private("lightning.fabric.strategies.launchers.subprocess_script:_ChildProcessObserver", "_termination_signal",
            "the signal Lightning stops the other children with, kept"),
    # --- data/datamodule.py: exact resume -------------------------------------------------------------
    Private("lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop", "batch_progress.current.processed",
            "the training batches read from the live count of batches whose step is done (trainer.fit_loop."
            "epoch_loop), so a resumed epoch continues at the batch after the last saved one; the public "
            "stateful-loader protocol saves the loader's own position, one prefetched batch ahead, and restores "
            "it after the loader is built when configure_optimizers reads estimated_stepping_batches, and "
            "trainer.global_step counts optimizer steps, not batches"),
    # --- torch: the compile wrapper tells compile errors from runtime errors by type ------------------
    Private("torch._dynamo.exc", "TorchDynamoException",
            "models/compiled.py falls back to eager on these (compile failures) and on nothing else; "
            "torch.compiler exports no base class of compile errors (only PrecompileError)"),
)

# Keys of Lightning's saved loop state that the project reads or edits in a checkpoint dict:
# training/module.py (steps counted under automatic optimization carried over to manual), callbacks/interrupt.py
# (a Ctrl-C save rewound to before validation).
LOOP_KEYS: tuple[str, ...] = (
    "epoch_loop.batch_progress",
    "epoch_loop.val_loop.batch_progress",
    "epoch_loop.manual_optimization.optim_step_progress",
    "epoch_loop.automatic_optimization.optim_progress",
)

# Third-party message text still read, where no type or attribute carries the information; none of it
# decides anything but the words of the one-line error a user sees:
# - torch re-raises a DataLoader worker's exception as a new one of the same type whose text ("Caught ...
#   Original Traceback ...") is the only carrier of the original message (cli.errors.worker_error);
# - gloo's lost-peer error starts with its source location and ends in advice about another cause
#   (". This is typically ..."), both cut from the line (cli.errors.typed_first_line);
# - jsonargparse's parse error spreads over lines; its "Given value:" line is appended to the first
#   (cli.errors.parse_error_line);
# - warning filters match the text of Lightning's and torch's warnings, which carry no category of
#   their own (runtime.logs.quiet_lightning, training/module.py, checkpoint.io.load_checkpoint);
# - torch's safe unpickler names the global it refused ("GLOBAL os.system ...") only in its UnpicklingError's
#   text, among advice to load with weights_only=False that the line leaves out (checkpoint.io.load_problem).


def _resolve(owner: str):
    module, _, cls = owner.partition(":")
    obj = importlib.import_module(module)
    obj = getattr(obj, cls) if cls else obj
    if cls == "LightningOptimizer":  # its step hooks are set per instance, in __init__
        import torch

        obj = obj(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))
    if cls == "_ChildProcessObserver":  # its attributes too (a thread object, never started)
        obj = obj(main_pid=0, child_processes=[])
    if cls == "_TrainingEpochLoop":  # the live one, as the data module reads it
        import lightning as L

        obj = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False).fit_loop.epoch_loop
        if not isinstance(obj, getattr(importlib.import_module(module), cls)):  # another class now: listed as gone
            raise AttributeError(f"trainer.fit_loop.epoch_loop is a {type(obj).__name__}, not a {cls}")
    return obj


def _has(obj, dotted: str) -> bool:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def missing() -> list[str]:
    """`owner.name` of every listed private name that this Lightning/torch no longer has."""
    gone = []
    for item in USED:
        try:
            owner = _resolve(item.owner)
        except (ImportError, AttributeError):
            gone.append(item.owner)
            continue
        if item.name and not _has(owner, item.name):
            gone.append(f"{item.owner}.{item.name}")
    return gone


def missing_loop_keys() -> list[str]:
    """The LOOP_KEYS a fresh fit loop's state_dict no longer has."""
    import lightning as L

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    keys = trainer.fit_loop.state_dict()
    return [k for k in LOOP_KEYS if k not in keys]
