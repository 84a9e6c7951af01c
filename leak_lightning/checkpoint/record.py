"""The decision record: how a model's DecisionRule is written into a checkpoint, and described to the outputs that
carry it (the export sidecar, the test/validate reports, adapt's report). One writer and one describer, so a
checkpoint, its export and its reports can never give the same rule in two ways (no Lightning here)."""

from __future__ import annotations

from .contract import CHECKPOINT_FORMAT, SECTION, binding_digest

# what the checkpoint's Platt calibration reads (the same words for both kinds of model, as written since format 2)
CALIBRATION_INPUT = "logit of the mean long-window leak probability, clamped to [1e-4, 1 - 1e-4]"
# the keys of the record in the checkpoint's section (the binding digest follows them)
RECORD_KEYS = ("threshold", "threshold_validation", "calibration", "decides", "decision")


def describe_rule(rule, per_recording: bool) -> dict:
    """A DecisionRule in plain JSON values: its threshold and reading (aggregation, vote fraction), the threshold's
    precision and recall where it was chosen, the Platt calibration, which kind of model decides ("recording": a
    recording-level network's pooled probability, "windows": a rule over the frame model's window scores) and
    the rule's own description (`DecisionRule.describe`)."""
    a, b = rule.calibration.tolist()
    precision, recall = rule.threshold_stats.tolist()
    return {"threshold": float(rule.threshold), "aggregation": rule.aggregation, "vote_fraction": rule.vote_fraction,
            "threshold_validation": {"precision": precision, "recall": recall},
            "calibration": {"method": "platt", "a": a, "b": b},
            "decides": "recording" if per_recording else "windows", "decision": rule.describe()}


def write_decision_record(checkpoint: dict, rule, per_recording: bool) -> None:
    """The checkpoint's decision record from `rule`, in place: its buffers under `decision.` in the state dict, the
    section's record (RECORD_KEYS) and format, and the binding digest last, over all of it and over what the
    dict already holds (contract, site, hyper-parameters, weights). The one writer: `fit`'s saves and `adapt`."""
    state = checkpoint.setdefault("state_dict", {})
    for name, value in rule.state_dict().items():
        state[f"decision.{name}"] = value.detach().cpu().clone()
    section = checkpoint.setdefault(SECTION, {})
    section.pop("binding", None)  # re-added last, so that it is the last key as in every earlier format
    described = describe_rule(rule, per_recording)
    record = {k: described[k] for k in RECORD_KEYS}
    record["calibration"] = {**record["calibration"], "input": CALIBRATION_INPUT}
    section.update(format_version=CHECKPOINT_FORMAT, **record)
    section["binding"] = binding_digest(checkpoint)
