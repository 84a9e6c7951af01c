"""Checkpoints of earlier versions in this version's terms: their hyper-parameters (0.x's 24 flat arguments → the
net/optimizer/scheduler config of format 2) and their state (the decision buffers under `decision.`, defaults for
what they did not hold yet). Format 0 and 1 checkpoints load through these; format 2 is the current one."""

from __future__ import annotations

import copy

import torch

from ..audio.features import FeatureConfig
from ..models.decision import reading_state

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
    checkpoints from before calibration, the reading of the windows for checkpoints from before it was state,
    and steps counted under automatic optimization carried over."""
    state = checkpoint.get("state_dict", {})
    for name, default in (("threshold", torch.tensor(0.5)), ("calibration", torch.tensor([1.0, 0.0])),
                          ("threshold_stats", torch.tensor([float("nan"), float("nan")]))):
        if f"decision.{name}" not in state:
            state[f"decision.{name}"] = state.pop(name, default)
    if "decision.reading" not in state:  # its stored options were the rule: it decides exactly as before
        state["decision.reading"] = reading_state(*_stored_reading(checkpoint.get("hyper_parameters") or {}))
    # checkpoints from automatic optimization count their steps there: carry the count over, or a
    # resumed run would start again at global step 0 (loop keys: lightning_private.LOOP_KEYS)
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    auto = loop.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {}).get("step")
    manual = loop.get("epoch_loop.manual_optimization.optim_step_progress")
    if auto and manual is not None and manual["total"]["completed"] == 0 and auto["total"]["completed"] > 0:
        loop["epoch_loop.manual_optimization.optim_step_progress"] = auto


def migrate(checkpoint: dict) -> None:
    """A checkpoint dict of any earlier version in this version's terms, in place: its hyper-parameters and its
    state (what `adapt` saves again is then a current checkpoint)."""
    checkpoint["hyper_parameters"] = current_hparams(checkpoint.get("hyper_parameters") or {})
    migrate_state(checkpoint)


def _stored_reading(hp: dict) -> tuple[str, float]:
    """(aggregation, vote fraction) a checkpoint's hyper-parameters fixed before the reading was state: its
    `decision` options (a dict, or DecisionOptions when the model was built in Python), or 0.2's flat
    arguments; vote 0.5 when it names none."""
    decision = hp.get("decision", hp)  # 0.2 kept `aggregation` and `vote_fraction` among its flat arguments
    get = decision.get if isinstance(decision, dict) else lambda key, default: getattr(decision, key, default)
    aggregation, fraction = get("aggregation", "vote"), get("vote_fraction", 0.5)
    return ("mean", None) if aggregation == "mean" else ("vote", float(fraction))
