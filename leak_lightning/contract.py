"""What a checkpoint was trained on, and checking data against it (no Lightning here).

The checkpoint is the authority (DESIGN.md): evaluation and prediction take its class names,
leak class and feature config, check the data's against them, remap a different class order by
name, and refuse a different class set or frontend with one line naming both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .features import FeatureConfig

CHECKPOINT_FORMAT = 1  # the `leak_lightning` section of a checkpoint; bump when its meaning changes
SECTION = "leak_lightning"
DATA_STATE = "LeakDataModule"  # Lightning files a data module's state_dict under its class name


@dataclass(frozen=True)
class ModelContract:
    class_names: tuple[str, ...]
    leak_class_name: str
    features: FeatureConfig
    source: str  # the checkpoint, for messages
    # the training split it was fitted on (LeakDataModule.training_data): its file, build and recordings
    training: dict | None = None

    @classmethod
    def from_checkpoint(cls, ckpt: dict, source: str | Path) -> ModelContract:
        """From a loaded checkpoint: its `leak_lightning` section, else (older files) its hyper-parameters."""
        section = ckpt.get(SECTION) or {}
        version = int(section.get("format_version", 0))
        if version > CHECKPOINT_FORMAT:
            raise ValueError(f"{source}: written by a newer leak_lightning (checkpoint format {version}; this "
                             f"version reads up to {CHECKPOINT_FORMAT}); upgrade leak_lightning to use it")
        hp = ckpt.get("hyper_parameters") or {}
        names = section.get("class_names") or hp.get("class_names")
        features = section.get("feature_config") or hp.get("feature_config")
        leak = section.get("leak_class_name") or hp.get("leak_class_name")
        if not names or not features or not leak:
            raise ValueError(f"{source}: not a leak_lightning checkpoint (no class names, leak class or feature "
                             "config in it); pass a checkpoint written by `python -m leak_lightning fit`")
        training = (ckpt.get(DATA_STATE) or {}).get("training_data")
        return cls(tuple(names), str(leak), FeatureConfig.from_dict(features), str(source), training)

    def section(self, threshold: float) -> dict:
        """The contract part of the checkpoint's `leak_lightning` section (`LeakClassifier.on_save_checkpoint`
        adds the threshold's validation statistics and the calibration)."""
        return {"format_version": CHECKPOINT_FORMAT, "class_names": list(self.class_names),
                "leak_class_name": self.leak_class_name, "feature_config": asdict(self.features),
                "threshold": threshold}

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
