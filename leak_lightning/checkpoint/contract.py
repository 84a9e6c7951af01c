"""What a checkpoint was trained on, and checking data against it (no Lightning here).

The checkpoint is the authority (docs/design.md): evaluation and prediction take its class names,
leak class and feature config, check the data's against them, remap a different class order by
name, and refuse a different class set or frontend with one line naming both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..audio.features import FeatureConfig

# the `leak_lightning` section of a checkpoint; bump when its meaning changes. 2: the model is built from
# net/optimizer/scheduler config and its decision buffers sit under `decision.` (format 1 is migrated on load)
CHECKPOINT_FORMAT = 2
SECTION = "leak_lightning"
DATA_STATE = "LeakDataModule"  # Lightning files a data module's state_dict under its class name
# the state that turns scores into answers: LeakClassifier.decision's buffers (top-level keys before 0.2). The digest
# reads only the keys a checkpoint holds, so one written before `reading` was state still verifies
DECISION_BUFFERS = ("threshold", "calibration", "threshold_stats", "reading")


def binding_digest(ckpt: dict) -> str:
    """sha256 binding a checkpoint's contract section to what it must agree with: the model's
    hyper-parameters, every weight's shape, the decision buffers' values and the training split's
    identity. Written by `record.write_decision_record` (last: from the last hook of a save, when all of these
    are in the dict, and from `adapt`) and checked on every read: an edited class list, a dropped class or swapped
    hyper-parameters no longer match."""
    section = {k: v for k, v in (ckpt.get(SECTION) or {}).items() if k != "binding"}
    state = ckpt.get("state_dict") or {}
    training = dict((ckpt.get(DATA_STATE) or {}).get("training_data") or {})
    recordings = training.pop("recordings", None)
    if recordings is not None:
        training["recordings_sha256"] = hashlib.sha256(recordings.numpy().tobytes()).hexdigest()
    payload = {"section": section, "hyper_parameters": ckpt.get("hyper_parameters") or {},
               "shapes": {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")},
               "decision": {k: v.tolist() for k in DECISION_BUFFERS
                            if (v := state.get(f"decision.{k}", state.get(k))) is not None},
               "training": training}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=_stable).encode()).hexdigest()


def _stable(value) -> str:
    """What the digest reads of a hyper-parameter that is not plain data: a function or class by its name (its
    repr holds a memory address, another in every process), anything else by its repr."""
    name = getattr(value, "__qualname__", None) if callable(value) else None
    return f"{value.__module__}.{name}" if isinstance(name, str) else repr(value)


def check_integrity(ckpt: dict, source: str | Path) -> None:
    """One line (ValueError) when a checkpoint's parts disagree: its digest, its class lists, its output layer."""
    section, hp = ckpt.get(SECTION) or {}, ckpt.get("hyper_parameters") or {}
    fix = "use the checkpoint as `fit` wrote it, or train again"
    if "binding" in section and section["binding"] != binding_digest(ckpt):
        raise ValueError(f"{source}: the checkpoint's contract does not match its digest: its class list, "
                         f"threshold, hyper-parameters or weights were changed after it was written; {fix}")
    names = section.get("class_names") or hp.get("class_names") or []
    if hp.get("class_names") is not None and list(hp["class_names"]) != list(names):
        raise ValueError(f"{source}: its contract names the classes {list(names)} but its hyper-parameters "
                         f"{list(hp['class_names'])}; {fix}")
    if hp.get("num_classes") is not None and hp["num_classes"] != len(names):
        raise ValueError(f"{source}: {len(names)} class names {list(names)} but num_classes={hp['num_classes']}; {fix}")
    outputs = [v.shape[0] for k, v in (ckpt.get("state_dict") or {}).items()
               if k.startswith("net.head.") and k.endswith(".bias")]
    if names and outputs and outputs[-1] != len(names):
        raise ValueError(f"{source}: {len(names)} class names {list(names)} but the network has {outputs[-1]} "
                         f"outputs; {fix}")


@dataclass(frozen=True)
class ModelContract:
    class_names: tuple[str, ...]
    leak_class_name: str
    features: FeatureConfig
    source: str  # the checkpoint, for messages
    # the training split it was fitted on (LeakDataModule.training_data): its file, build and recordings
    training: dict | None = None
    # the site record of a checkpoint written by `adapt` (None: fit's): its answers are the site's, not the run's
    site: dict | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str | Path) -> ModelContract:
        """From a loaded checkpoint: its `leak_lightning` section, else (older files) its hyper-parameters."""
        section = ckpt.get(SECTION) or {}
        version = int(section.get("format_version", 0))
        if version > CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: written by a newer leak_lightning (checkpoint format {version}; this "
                             f"version reads up to {CHECKPOINT_FORMAT}); upgrade leak_lightning to use it")
        check_integrity(ckpt, source)
        hp = ckpt.get("hyper_parameters") or {}
        names = section.get("class_names") or hp.get("class_names")
        features = section.get("feature_config") or hp.get("feature_config")
        leak = section.get("leak_class_name") or hp.get("leak_class_name")
        if not names or not features or not leak:
            raise ValueError(f"{source}: not a leak_lightning checkpoint (no class names, leak class or feature "
                             "config in it); pass a checkpoint written by `python -m leak_lightning fit`")
        training = (ckpt.get(DATA_STATE) or {}).get("training_data")
        return cls(tuple(names), str(leak), FeatureConfig.from_dict(features), str(source), training,
                   section.get("site"))

    def section(self) -> dict:
        """The contract part of the checkpoint's `leak_lightning` section (`record.write_decision_record` adds the
        decision record and the binding). The class list and leak class repeat the hyper-parameters' on purpose:
        `check_integrity` compares the two, which is what refuses a one-sided edit of a checkpoint without a
        digest (as all were before the binding)."""
        return {"format_version": CHECKPOINT_FORMAT, "class_names": list(self.class_names),
                "leak_class_name": self.leak_class_name, "feature_config": asdict(self.features)}

    def columns_for(self, names: list[str], features: FeatureConfig, data: str | Path) -> list[int]:
        """For each of the checkpoint's classes, its column in data whose classes are `names`.

        Same classes in another order are remapped by name; another class set or frontend is refused.
        """
        if sorted(names) != sorted(self.class_names):
            raise ValueError(f"{data}: classes {list(names)} differ from the classes {list(self.class_names)} "
                             f"the checkpoint {self.source} was trained on; use data built with those classes "
                             "or a checkpoint trained on these")
        if diff := features.differences(self.features):
            got = ", ".join(f"{k}={a}" for k, (a, _) in diff.items())
            want = ", ".join(f"{k}={b}" for k, (_, b) in diff.items())
            flags = " ".join(f"--features.{k} {b}" for k, (_, b) in diff.items())
            raise ValueError(f"{data}: built with {got}, but the checkpoint {self.source} was trained on {want}; "
                             f"rebuild the data with `build ... {flags}` or use a checkpoint trained on this data")
        return [names.index(n) for n in self.class_names]


RUN_SUBFOLDERS = ("checkpoints", "sites")  # where a run keeps its checkpoints: fit's, and adapt's


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to: `<run>` for `<run>/checkpoints/X.ckpt` or `<run>/sites/X.ckpt`,
    None for a checkpoint anywhere else (one copied to a models folder, downloaded, sent by a colleague)."""
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name in RUN_SUBFOLDERS else None


def default_output(ckpt_path: str | Path, name: str, own: bool = False) -> Path:
    """Where a command puts what it makes from a checkpoint when no output is named: `<run>/<name>` for a
    checkpoint of a run, else beside the checkpoint under its own name, `<ckpt dir>/<stem>_<name>`. `own`: beside
    it even in a run (a site's checkpoint: its answers never replace the base model's). The one rule of predict,
    export and adapt, so that no command writes into the current directory unless told to."""
    ckpt = Path(ckpt_path)
    run = run_dir_of(ckpt)
    return run / name if run is not None and not own else ckpt.with_name(f"{ckpt.stem}_{name}")
