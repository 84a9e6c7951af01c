"""`adapt`: a trained detector's decision rule re-fitted to a new site from a few labelled recordings of it.

The network's ranking of recordings travels well to pipes and sensors it never heard; its threshold and
calibration do not (a louder pump, more distant leaks move every score). Here the base checkpoint scores the
site's recordings as `predict` does, the threshold and the Platt calibration are fitted again on them, and
the gain is measured by cross-validation: every recording is decided by a rule fitted on the other folds,
never on itself. Unless that cross-validated F1 is above the base rule's (or, for a recording-level model, equal
to it: `tie_policy`), the base rule is kept and the log says so: adapting never silently makes things worse. The
result is a new checkpoint that records the site, its recordings, the base checkpoint and the figures before and
after.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio.scan import AUDIO_SUFFIXES, printable, scan_audio
from ..checkpoint.contract import DATA_STATE, SECTION, default_output
from ..checkpoint.io import AtomicCheckpointIO, read_checkpoint
from ..checkpoint.migrations import migrate
from ..checkpoint.record import describe_rule, write_decision_record
from ..models.decision import DecisionOptions, DecisionRule
from ..models.evaluation import decision_counts
from ..runtime.fileio import check_writable_file, file_digest, foreign, name_max, write_atomic
from ..runtime.rundir import FolderLock
from .labels import NOT_LEAK, Labels, load_labels

log = logging.getLogger(__name__)
MIN_PER_SIDE = 3  # leak and non-leak recordings each: the fewest that cross-validate a threshold at all


@dataclass
class SiteRecording:
    path: Path
    label: str
    leak: bool
    windows: torch.Tensor  # the leak probabilities of its long windows (what the decision rule reads)
    digest: str  # sha256 of the file's bytes (first 16 hex digits)
    segments: torch.Tensor | None = None  # (W, L, S, n_mels, T) log-mel of its non-silent windows (fine-tuning)


def site_segments(det, path: Path) -> torch.Tensor:
    """The log-mel segments of a recording's non-silent windows, as the model sees them (float16 values)."""
    from ..audio.decode import WindowReader

    parts = [det.model.segments_of(torch.from_numpy(w[~s]).to(det.device))
             for w, s in WindowReader(path, det.spec) if (~s).any()]
    return torch.cat(parts)


@torch.no_grad()
def leak_windows_of(model, segments: torch.Tensor) -> torch.Tensor:
    """A recording's long-window leak probabilities from its segments: what the decision rule reads."""
    model.eval()
    return model.score_segments(segments)[0].reshape(-1).cpu()  # on the CPU, as the truth is


def finetune_head(model, recordings: list[SiteRecording], steps: int, seed: int, lr: float = 1e-3,
                  batch: int = 256) -> None:
    """`steps` AdamW steps on the network's head only (the last, fully connected layers), with the training
    augmentations, on the recordings' segments and their labels; batch-norm statistics and every convolution
    stay as trained. The head alone: a few dozen recordings cannot retrain the features without forgetting
    them, while the head is where a site's other balance of classes and levels shows."""
    names = model.class_names
    x = torch.cat([r.segments.reshape(-1, *r.segments.shape[-2:]) for r in recordings])
    y = torch.cat([torch.nn.functional.one_hot(torch.tensor(names.index(r.label)), len(names)).float()
                   .expand(r.segments[..., 0, 0].numel(), -1) for r in recordings]).to(x.device)
    head = model.net.head
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    model.eval()
    model.augment.train()
    head.train()  # its dropout, as in training
    devices = [x.device] if x.is_cuda else []
    # the augmentation's and dropout's draws come from the global RNG: the same for a seed, and left as they were
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            for _ in range(steps):
                idx = torch.randint(len(x), (min(batch, len(x)),), generator=g).to(x.device)
                loss = model.step_loss(x[idx], y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        finally:
            model.eval()


def leak_figures(decided: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Leak precision, recall and F1 of decisions against the truth (NaN where a denominator is empty)."""
    tp, fn, fp, _ = decision_counts(decided, truth)
    nan = float("nan")
    return {"f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
            "precision": tp / (tp + fp) if tp + fp else nan, "recall": tp / (tp + fn) if tp + fn else nan,
            "false_alarms": fp, "missed": fn, "found": tp}


def folds_of(truth: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """(N,) fold number per recording: leaks and non-leaks each dealt round the folds in a seeded order."""
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty(len(truth), dtype=torch.long)
    for side in (truth, ~truth):
        members = torch.nonzero(side).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        fold[members] = torch.arange(len(members)) % folds
    return fold


def cross_validated(windows: list[torch.Tensor], truth: torch.Tensor, fold: torch.Tensor, make_rule,
                    rescore=None) -> torch.Tensor:
    """Each recording decided by a rule fitted on the other folds only → (N,) decisions. `rescore(fitting)`, when
    given, first fits the model itself on the recordings marked in `fitting` (the fine-tune) and returns every
    recording's windows scored again."""
    decided = torch.zeros(len(truth), dtype=torch.bool)
    for k in range(int(fold.max()) + 1):
        held = fold == k
        current = rescore(~held) if rescore is not None else windows
        rule = make_rule()
        rule.fit([w for w, h in zip(current, held) if not h], truth[~held])
        decided[held] = rule.decide([w for w, h in zip(current, held) if h])
    return decided


def tie_policy(model) -> str:
    """What a cross-validated tie between the adapted rule and the base one does: "keep" the base rule for the
    frame model (taking ties lowered the held-out F1 of the sites its base rule already served, by 0.01-0.03),
    "adapt" for a recording-level model (one number per recording gives the cross-validation few distinct
    outcomes, so its adapted rules often only tie: keeping them cost 0.01-0.08 held-out F1 at six of seven sites
    with 20 labels and saved 0.01 at one). Both measured by scripts/benchmark_robustness.py --sites
    (docs/benchmarks.md)."""
    return "adapt" if model.whole_recordings else "keep"


def keeps_base_rule(before_f1: float, after_f1: float, ties: str = "keep") -> bool:
    """Whether the base rule stays: the adapted one's cross-validated F1 is below it, or only equal to it under
    ties="keep" (`tie_policy`), or undefined (NaN) where the base rule's is defined. A base F1 of NaN (no leak
    found and none falsely flagged) loses to any defined F1."""
    if math.isnan(after_f1):
        return True
    if math.isnan(before_f1):
        return False
    return after_f1 < before_f1 or (ties == "keep" and after_f1 == before_f1)


def refit_rule(windows: list[torch.Tensor], truth: torch.Tensor, base_rule: DecisionRule, folds: int, seed: int,
               ties: str = "keep", rescore=None, options: DecisionOptions | None = None):
    """The decision rule for a site's labelled recordings → (rule, base figures, cross-validated adapted figures,
    whether the base rule was kept, the folds). The rule is fitted on all of them unless that is no better.
    Every fold's rule and the final one choose their reading as validation does (`options`, by default the base
    rule's: with "auto" a site gets its own reading, and the cross-validated figures count that choice too).
    `rescore`: see `cross_validated`; it is called once more on all the recordings when the adaptation is kept."""
    options = options or base_rule.options
    before = leak_figures(base_rule.decide(windows), truth)
    fold = folds_of(truth, folds, seed)
    after = leak_figures(cross_validated(windows, truth, fold, lambda: DecisionRule(options), rescore), truth)
    kept = keeps_base_rule(before["f1"], after["f1"], ties)
    rule = DecisionRule(options)
    if kept:
        rule.load_state_dict(base_rule.state_dict())
    else:
        rule.fit(rescore(torch.ones_like(truth)) if rescore is not None else windows, truth)
        rule.record(torch.tensor(after["precision"]), torch.tensor(after["recall"]))
    return rule, before, after, kept, fold


def reestimate_norms(det, paths: list[Path], batch: int = 1024, seed: int = 0) -> int:
    """Unlabelled adaptation: every batch-norm layer of the network gets the statistics of the site's audio in
    place of the training corpus's; nothing else changes. What a model can honestly learn from a site without
    labels: where its levels and spectra sit. The segments of all recordings are shuffled together into
    batches, as in training (batches of one recording each would leave out the variance between recordings),
    and the batches' statistics averaged (momentum None). Returns the number of segments read."""
    net = det.model.net
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    if not norms:
        raise ValueError("--unlabelled: the checkpoint's network has no batch-norm layer to re-estimate")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: every recording counts alike, in any order
        m.train()
    f = det.model.features
    x = torch.cat([site_segments(det, p).reshape(-1, f.n_mels, f.t_frames) for p in paths])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(x.device)
    # a recording-level network keeps every batch-norm in its frame encoder: its frames are what is re-estimated
    frames = getattr(net, "encode", net) if det.model.whole_recordings else net
    try:
        with torch.no_grad():
            # batches of (nearly) equal size: momentum None averages the batches' statistics with equal weights
            for part in order.chunk(max(1, -(-len(x) // batch))):
                frames(x[part])
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            m.eval()
    return len(x)


def finetuned(model, recordings: list[SiteRecording], steps: int, seed: int):
    """`rescore` for `refit_rule`: the head, from the base one, fine-tuned on the marked recordings; then every
    recording scored again."""
    base_head = copy.deepcopy(model.net.head.state_dict())

    def rescore(fitting: torch.Tensor) -> list[torch.Tensor]:
        model.net.head.load_state_dict(base_head)
        finetune_head(model, [r for r, f in zip(recordings, fitting) if f], steps, seed)
        return [leak_windows_of(model, r.segments) for r in recordings]

    return rescore, base_head


def find_site_recordings(root: Path, class_names: list[str]) -> list[tuple[Path, str]]:
    """`root/<LABEL>/...` audio files (any container predict reads), each label one of the checkpoint's classes."""
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: no such folder; give the site's recordings as <LABEL>/*.wav")
    labels = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not labels:
        raise ValueError(f"--input {root}: no <LABEL>/ folders in it; put the site's recordings in folders named "
                         f"after the checkpoint's classes ({', '.join(class_names)}), e.g. {root}/LEAK/*.wav")
    unknown = [p.name for p in labels if p.name not in class_names]
    if unknown:
        raise ValueError(f"--input {root}: label folder(s) {unknown} are not classes of the checkpoint "
                         f"{class_names}; name the folders after its classes")
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES]
    if loose:
        log.warning("%d recording(s) directly in %s are not in a <LABEL>/ folder and are not used (%s, ...)",
                    len(loose), root, printable(loose[0].name))
    found = []
    for folder in labels:
        paths, problems = scan_audio(folder, AUDIO_SUFFIXES)
        for problem in problems:
            log.warning("skipped %s: %s", printable(problem.path), problem.reason)
        found += [(p, folder.name) for p in paths]
    return found


def adapt_checkpoint(ckpt_path: str, input: str, site: str, output: str | None = None, folds: int = 5,
                     seed: int = 0, finetune_steps: int = 0, unlabelled: bool = False, overwrite: bool = False,
                     device: str = "auto", labels: str | None = None) -> dict:
    """Adapt `ckpt_path` to the site whose recordings are under `input`.

    Args:
        ckpt_path: the base checkpoint (written by `fit`, or by an earlier `adapt`).
        input: the site's recordings as `<LABEL>/*` (the build layout; labels are the checkpoint's classes);
            with --labels, the folder its paths are relative to; with --unlabelled, any folder of recordings.
        site: the site's name, kept in the checkpoint and shown by `predict` and `LeakDetector`.
        output: the adapted checkpoint (default: `<base run dir>/sites/<site>.ckpt`, or for a base checkpoint
            outside a run `<its dir>/<its stem>_sites/<site>.ckpt`); its report beside it (and inside it).
        folds: cross-validation folds (at most the number of leak and of non-leak recordings).
        seed: the folds' shuffle (and the fine-tune's batches).
        finetune_steps: before re-fitting the rule, this many steps of fine-tuning the network's head (its
            fully connected layers) on the site's recordings with the training augmentations; cross-validated
            like the rule (each fold fine-tuned without its own recordings). 0: the rule only.
        unlabelled: no labels: re-estimate the network's batch-norm statistics on the site's audio instead
            (the threshold stays; the log gives the share of recordings decided leak before and after).
        overwrite: replace an existing `output` (and its report).
        device: "auto" (CUDA when there is one), "cpu" or "cuda".
        labels: the site's labels as a labels.csv exported by the review page (`review`), in place of
            `<LABEL>/` folders: a row per recording (path, audio digest, label: leak, not leak or unsure); `input`
            is then the folder its paths are relative to (the one `predict` read).
    """
    if not re.fullmatch(r"[\w.-]+", site or ""):
        raise ValueError(f"--site {site!r}: use letters, digits, '.', '-' or '_' (it names the checkpoint file)")
    if folds < 2:
        raise ValueError(f"--folds {folds}: cross-validation needs 2 or more")
    if device not in ("auto", "cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"--device {device}: use auto, cpu, or cuda on a machine with CUDA")
    if finetune_steps < 0 or (finetune_steps and unlabelled):
        raise ValueError(f"--finetune_steps {finetune_steps}: use 0 or more, and only with labelled recordings")
    if labels is not None and unlabelled:
        raise ValueError(f"--labels {labels} with --unlabelled true: give one of them (labels adapt the rule, "
                         "--unlabelled the norms)")
    if labels is not None and finetune_steps:
        # the head is fitted on classes, and "not leak" names none of the other classes
        raise ValueError(f"--finetune_steps {finetune_steps} with --labels: labels.csv says leak or not leak, not "
                         "which class, and the head is fine-tuned on classes; adapt the rule only (without "
                         "--finetune_steps), or give the recordings as <LABEL>/ folders")
    base = Path(ckpt_path)
    ckpt, contract = read_checkpoint(base)
    # checked before the model loads or any recording is scored: a bad row is one line at once
    read = load_labels(labels, input, contract.leak_class_name) if labels is not None else None
    if finetune_steps and (ckpt.get(SECTION) or {}).get("decides") == "recording":
        raise ValueError(f"--finetune_steps {finetune_steps}: {base} is a recording-level model, whose head is "
                         "fitted on whole recordings; fine-tuning it on a site is not supported: adapt its rule "
                         "(without --finetune_steps), or its norms (--unlabelled true)")
    out = Path(output) if output else default_output(base, "sites") / f"{site}.ckpt"
    report_path = out.with_name(f"{out.stem}_adapt_report.json")
    _check_names(out, report_path, site, output)
    # one adapt at a time into one output: a second one would silently replace the first one's result
    with FolderLock(out.parent, "--output", name=f".{out.name}.lock"):
        if out.exists() and not overwrite:
            raise FileExistsError(f"--output {out} exists: pass --overwrite true to replace it, or another --output")
        report = _adapted(base, ckpt, contract, input, site, folds, seed, finetune_steps, unlabelled, device, out,
                          read)
        _publish(report, out, report_path)
    kept = " (the base rule and weights kept: adapting was no better)" if report.get("kept_base_rule") else ""
    log.info("checkpoint for site %s: %s%s (report %s)", site, out, kept, report_path, extra={"colour": "success"})
    return report


def _check_names(out: Path, report_path: Path, site: str, output: str | None) -> None:
    """Every name adapt will write, checked before any recording is scored (a site name too long for the file
    system would otherwise fail after all the work)."""
    fix = "use a shorter --site" if output is None else "use a shorter --output name"
    for path in (out, report_path, out.with_name(f".{out.name}.lock")):
        limit = name_max(path.parent)
        if len(os.fsencode(path.name)) > limit:
            raise ValueError(f"--output {path}: the name is {len(os.fsencode(path.name))} bytes, longer than this file "
                             f"system takes ({limit}); {fix}")
    for path in (out, report_path):
        check_writable_file(path, "--output")


def _adapted(base: Path, ckpt: dict, contract, input: str, site: str, folds: int, seed: int, finetune_steps: int,
             unlabelled: bool, device: str, out: Path, labels: Labels | None = None) -> dict:
    """The site scored and the rule (or the norms) adapted: the report, with the adapted checkpoint under
    `"_checkpoint"` (the report is inside it, so the two can never disagree)."""
    from .predict import LeakDetector

    det = LeakDetector.from_checkpoint(base, device)
    about = {"name": site, "base_checkpoint": {"path": str(base), "sha256": file_digest(base)},
             "digest_kind": "sha256 of the file, first 16 hex digits"}
    trained = _training_digests(ckpt, unlabelled)
    if unlabelled:
        site_info, report = _unlabelled(det, Path(input), trained)
    else:
        site_info, report = _labelled(det, Path(input), contract, folds, seed, finetune_steps, trained, labels)
        reused = _fitted_on_before((ckpt.get(SECTION) or {}).get("site"), site_info["digests"])
        site_info["reused_from_base_site"] = report["reused_from_base_site"] = reused
    adapted = copy.deepcopy(ckpt)
    migrate(adapted)
    model = det.model
    for name, value in model.state_dict().items():  # the fine-tuned head, or the re-estimated norms
        if name.startswith("net."):
            adapted["state_dict"][name] = value.detach().cpu().clone()
    record = describe_rule(model.decision, model.whole_recordings)
    calibration = {k: record["calibration"][k] for k in ("a", "b")}
    report = {"site": site, "checkpoint": str(out), "base_checkpoint": str(base), "threshold": record["threshold"],
              "calibration": calibration, **report}
    # plain JSON values only: the report travels inside the checkpoint (read back by the safe unpickler)
    adapted.setdefault(SECTION, {})["site"] = {**about, **site_info,
                                               "report": json.loads(json.dumps(report, default=float))}
    write_decision_record(adapted, model.decision, model.whole_recordings)  # the rule, the record, the binding
    return {**report, "_checkpoint": adapted}


def _publish(report: dict, out: Path, report_path: Path) -> None:
    """The checkpoint, then its JSON report written from it. A report beside a checkpoint is never another
    adaptation's: the earlier report is removed before the new checkpoint takes its place (and put back if
    that fails), so a kill between the two renames leaves the new checkpoint without its JSON, whose report
    it holds inside (`leak_lightning.site.report`); the JSON names the checkpoint's sha256."""
    adapted = report.pop("_checkpoint")
    # a link or another user's file planted at the report's name while the site was scored is never read (it
    # would be copied here if the save failed), removed or written through
    if os.path.lexists(report_path) and (why := foreign(report_path, os.lstat(report_path))) is not None:
        raise ValueError(f"--output {why}")
    earlier = report_path.read_bytes() if report_path.is_file() else None
    report_path.unlink(missing_ok=True)
    try:
        AtomicCheckpointIO().save_checkpoint(adapted, out)
    except BaseException:
        if earlier is not None:  # the earlier checkpoint stays, and so does its report
            write_atomic(report_path, lambda f: f.write(earlier.decode("utf-8")))
        raise
    mine = {**adapted[SECTION]["site"]["report"], "checkpoint_sha256": file_digest(out)}
    write_atomic(report_path, lambda f: json.dump(mine, f, indent=2))


def _training_digests(ckpt: dict, unlabelled: bool) -> tuple[str, set[int]] | None:
    """(kind, digests) of the recordings the checkpoint was trained on, as `shared_with_training` reads them; None
    where unknown (a split built without digests; or digests of file name and label for unlabelled recordings)."""
    training = (ckpt.get(DATA_STATE) or {}).get("training_data") or {}
    kind, recordings = training.get("digest_kind") or "name", training.get("recordings")
    if recordings is None or (unlabelled and kind != "audio"):
        return None
    return kind, set(recordings.numpy().view(np.uint64).tolist())


def _training_key(det, path: Path, label: str, kind: str) -> int | None:
    """A recording's digest as the builder keeps it in a split: of its decoded clip ("audio"), or of its file name
    and label ("name", splits built before audio digests)."""
    if kind == "audio":
        from ..audio.decode import clip_or_reason
        from ..builder.workers import audio_digest

        clip = clip_or_reason(path, det.spec)
        return None if isinstance(clip, str) else audio_digest(clip.samples)
    return int.from_bytes(hashlib.blake2b(f"{path.name}\0{label}".encode(), digest_size=8).digest(), "little")


def _in_training(det, path: Path, label: str, trained: tuple[str, set[int]]) -> bool:
    """Whether a recording is in the checkpoint's training split. A "not leak" label (labels.csv) names no class:
    by file name it is there when its name is there under any class but the leak class."""
    kind, digests = trained
    if kind == "audio" or label != NOT_LEAK:
        return _training_key(det, path, label, kind) in digests
    leak_name = det.model.hparams.leak_class_name
    return any(_training_key(det, path, name, kind) in digests for name in det.model.class_names if name != leak_name)


def _fitted_on_before(base_site: dict | None, digests: list[str]) -> int:
    """How many of these recordings the base checkpoint's own labelled adaptation was fitted on (0 for a
    checkpoint from `fit`, or one adapted without labels). Its rule is then scored on recordings it was
    fitted on: its 'before' figures are not held out, and they favour keeping it."""
    if not base_site or base_site.get("unlabelled"):
        return 0
    reused = len(set(digests) & set(base_site.get("digests", [])))
    if reused:
        log.warning("%d of these %d recordings are ones the base checkpoint was already adapted on (site %r): "
                    "its rule's figures on them are not held out and favour keeping it; for a fair comparison "
                    "adapt its own base checkpoint (%s) instead", reused, len(digests), base_site.get("name"),
                    base_site.get("base_checkpoint", {}).get("path", "named in its site record"))
    return reused


def _scored(det, paths: list[tuple[Path, str]], trained: tuple[str, set[int]] | None = None,
            root: Path | None = None):
    """The recordings scored once each: the same file twice (a copy, another name) would be held out in one
    fold and fitted in another, and the same file under two labels cannot be both. Recordings the checkpoint
    was trained on (`trained`) are left out: the model's scores on them are optimistic, so they would flatter
    the base rule's figures and pull the threshold (as `test` warns for them). → (recordings, skipped, how many
    of them were in the training split: None where unknown)."""
    recordings, skipped, seen, in_training = [], [], {}, 0
    for path, label in paths:
        digest = file_digest(path)[:16]
        if digest in seen:
            first, first_label = seen[digest]
            if first_label != label:
                raise ValueError(f"{printable(path)} ({label}) is the same file as {printable(first)} "
                                 f"({first_label}): one recording cannot be both; keep it under one label")
            log.warning("not used: %s is the same file as %s", printable(path), printable(first))
            skipped.append({"path": printable(path), "status": f"the same file as {printable(first)}"})
            continue
        seen[digest] = (path, label)
        if trained is not None and _in_training(det, path, label, trained):
            in_training += 1
            skipped.append({"path": printable(path), "status": "in the training split of the checkpoint"})
            continue
        prediction, windows = det.leak_windows(path)
        if windows is None:
            skipped.append({"path": printable(path), "status": prediction.status})
            log.warning("not used: %s (%s)", printable(path), prediction.status)
            continue
        recordings.append(SiteRecording(path, label, label == det.model.hparams.leak_class_name, windows, digest))
    if in_training:
        same = "hold the same audio as" if trained[0] == "audio" else "have the file name and label of"
        log.warning("%d of %d recordings in %s %s recordings in the training split of the checkpoint: the model's "
                    "scores on them are optimistic, so they are left out of the adaptation and of its figures "
                    "before and after; adapt on recordings the model was not trained on", in_training,
                    len(seen), root, same)
    return recordings, skipped, (in_training if trained is not None else None)


def _labelled(det, root: Path, contract, folds: int, seed: int, finetune_steps: int = 0,
              trained: tuple[str, set[int]] | None = None, labels: Labels | None = None) -> tuple[dict, dict]:
    """The decision rule re-fitted on the site's labelled recordings (cross-validated; the model's rule is
    replaced in place). `labels`: a labels.csv's recordings under `root`, in place of `root/<LABEL>/` folders."""
    leak_name = contract.leak_class_name
    paths = labels.pairs if labels is not None else find_site_recordings(root, list(contract.class_names))
    recordings, skipped, in_training = _scored(det, paths, trained, root)
    truth = torch.tensor([r.leak for r in recordings], dtype=torch.bool)
    leaks, others = int(truth.sum()), int((~truth).sum())
    if leaks < MIN_PER_SIDE or others < MIN_PER_SIDE:
        where, more = (f"--labels {labels.path}", "label") if labels is not None else (f"--input {root}", "record")
        raise ValueError(f"{where}: {leaks} {leak_name} and {others} other recording(s) of the site were "
                         f"scored; adapting needs at least {MIN_PER_SIDE} of each to cross-validate the threshold "
                         f"({more} {max(0, MIN_PER_SIDE - leaks)} more {leak_name} and "
                         f"{max(0, MIN_PER_SIDE - others)} more other recording(s)"
                         f"{_left_out(in_training)})")
    k = min(folds, leaks, others)
    windows = [r.windows for r in recordings]
    base_rule = det.model.decision
    base_threshold = float(base_rule.threshold)
    if finetune_steps:
        for r in recordings:
            r.segments = site_segments(det, r.path)
        rescore, base_head = finetuned(det.model, recordings, finetune_steps, seed)
        rule, before, after, kept, fold = refit_rule(windows, truth, base_rule, k, seed, rescore=rescore)
        if kept:
            det.model.net.head.load_state_dict(base_head)
    else:
        rule, before, after, kept, fold = refit_rule(windows, truth, base_rule, k, seed, tie_policy(det.model))
    log.info("%d recordings (%d %s), %d-fold cross-validation", len(recordings), leaks, leak_name, k)
    for name, m in (("base rule", before), ("adapted (cross-validated)", after)):
        log.info("  %-26s leak F1 %.3f, precision %.3f, recall %.3f (%d found, %d missed, %d false alarms)", name,
                 m["f1"], m["precision"], m["recall"], m["found"], m["missed"], m["false_alarms"])
    if kept:
        log.warning("the cross-validated leak F1 after adapting (%.3f) is not above the base rule's (%.3f): the base "
                    "threshold and calibration are kept", after["f1"], before["f1"])
    elif after["f1"] == before["f1"]:
        log.info("the adapted rule only ties the base rule in cross-validation (leak F1 %.3f); taken, as for every "
                 "recording-level model (on held-out recordings a tie taken was better more often than not: "
                 "docs/benchmarks.md)",
                 after["f1"])
    base_described, base_text = base_rule.describe(), base_rule.reading_text()
    log.info("decision rule: %s → %s%s", base_text, rule.reading_text(), " (base kept)" if kept else "")
    base_rule.load_state_dict(rule.state_dict())
    rules = {"base_rule": base_described, "rule": rule.describe()}
    figures = {"before": before, "after_cross_validated": after}
    info = {"recordings": len(recordings), "leaks": leaks, "folds": k, "seed": seed, "unlabelled": False,
            "finetune_steps": finetune_steps, "finetuned": "net.head" if finetune_steps and not kept else None,
            "digests": [r.digest for r in recordings], "base_threshold": base_threshold, "kept_base_rule": kept,
            "ties": tie_policy(det.model),
            "seen_in_training": in_training, **rules, **figures}
    if labels is not None:
        info["labels"] = labels.about()
    report = {"recordings": len(recordings), "leaks": leaks, "folds": k, "kept_base_rule": kept,
              "ties": tie_policy(det.model), "base_threshold": base_threshold, **rules, **figures,
              "seen_in_training": in_training, "skipped": skipped,
              "rows": [{"path": printable(r.path), "label": r.label, "score": float(r.windows.mean()),
                        "fold": int(f)} for r, f in zip(recordings, fold)]}
    if labels is not None:
        report["labels"] = labels.about()
    return info, report


def _left_out(in_training: int | None) -> str:
    return f"; {in_training} more left out: they are in the checkpoint's training split" if in_training else ""


def _unlabelled(det, root: Path, trained: tuple[str, set[int]] | None = None) -> tuple[dict, dict]:
    """The network's batch-norm statistics re-estimated on the site's recordings (no labels: the rule stays)."""
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: no such folder of recordings")
    paths, problems = scan_audio(root, AUDIO_SUFFIXES)
    for problem in problems:
        log.warning("skipped %s: %s", printable(problem.path), problem.reason)
    before, skipped, in_training = _scored(det, [(p, "") for p in paths], trained, root)
    if len(before) < MIN_PER_SIDE:
        raise ValueError(f"--input {root}: {len(before)} recording(s) of the site were scored; re-estimating the "
                         f"network's statistics needs at least {MIN_PER_SIDE} (record more of the site"
                         f"{_left_out(in_training)})")
    segments = reestimate_norms(det, [r.path for r in before])
    after, _, _ = _scored(det, [(r.path, "") for r in before])
    rule = det.model.decision
    leak_before = int(sum(bool(rule.decide([r.windows])[0]) for r in before))
    leak_after = int(sum(bool(rule.decide([r.windows])[0]) for r in after))
    log.info("%d recordings (%d segments) re-estimated the network's batch-norm statistics; decided leak: %d "
             "with the base checkpoint, %d adapted (most recordings of a site are not leaks: more is more false "
             "alarms, unless the site leaks)", len(before), segments, leak_before, leak_after)
    if abs(leak_after - leak_before) > max(2, 0.2 * max(leak_before, leak_after)):
        log.warning("without labels it cannot be told which is right: %d recordings decided leak before and %d "
                    "after; check a few of them, or adapt with labelled recordings of the site", leak_before,
                    leak_after)
    info = {"recordings": len(before), "unlabelled": True, "segments": segments, "seen_in_training": in_training,
            "digests": [r.digest for r in before], "decided_leak": {"before": leak_before, "after": leak_after}}
    report = {**info, "skipped": skipped,
              "rows": [{"path": printable(b.path), "score_before": float(b.windows.mean()),
                        "score_after": float(a.windows.mean())} for b, a in zip(before, after)]}
    return info, report
