"""The checkpoint: its format and contract (contract.py), the migrations of earlier formats (migrations.py), the
decision record's one writer and describer (record.py), and the file I/O: atomic saves, the one checked read,
best/last (io.py).

The public names are re-exported here, resolved on first use: `contract` and `record` import no Lightning, and
importing one of them should not import `io` (Lightning's checkpoint plugin) with it."""

from __future__ import annotations

import importlib

_OWNERS = {
    "contract": ("CHECKPOINT_FORMAT", "SECTION", "DATA_STATE", "ModelContract", "binding_digest", "check_integrity",
                 "run_dir_of", "default_output"),
    "migrations": ("current_hparams", "migrate_state", "migrate"),
    "record": ("describe_rule", "write_decision_record"),
    "io": ("AtomicCheckpointIO", "read_checkpoint", "load_checkpoint", "checkpoint_problem",
           "newest_valid_checkpoint", "resolve_ckpt_path", "default_checkpoint", "refuse_to_replace_a_run",
           "last_checkpoint_note"),
}
_OWNER_OF = {name: module for module, names in _OWNERS.items() for name in names}
__all__ = sorted(_OWNER_OF)


def __getattr__(name: str):
    if name not in _OWNER_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_OWNER_OF[name]}", __name__), name)
