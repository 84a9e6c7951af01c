"""Detection on networks the model was not trained on: file-level leak F1 under shifted conditions,
for a model trained with and without augmentation, side by side in one run.

    python scripts/benchmark_robustness.py --workdir /tmp/robust
    python scripts/benchmark_robustness.py --workdir /tmp/robust --train-files 200 --test-files 200 --seeds 0 1
    python scripts/benchmark_robustness.py --train-files 60 --test-files 40 --epochs 12 --train-seeds 0 1 2

Whether augmentation helps is a claim about training, so it is measured over training seeds
(`--train-seeds`: each trains both models with that `seed_everything`): the last table gives, per
condition, F1 with minus F1 without augmentation for each training seed, their median and range.

Corpora and trained runs are kept in the workdir under names that carry their settings (corpus size,
epochs, patience, extra options), so a re-run reuses only what matches.

One standard synthetic corpus (scripts/synthetic.py) is built and trained on twice (configs/demo_frame.yaml,
augmentation on / off). Each condition is a fresh corpus of `--test-files` recordings per class (5
classes), drawn with other sensors and seeds: in-domain, pipe resonances ×0.8/×0.9/×1.1/×1.2, sensor
gain −12/+12 dB, a background noise the training corpus never has (machinery), and another sample
rate and bit depth (44.1 kHz PCM_24). Each recording is scored through LeakDetector (the same path
as `predict`); the table gives file-level leak F1, precision, recall (at the checkpoint's
threshold), AUROC and the calibrated probability's ECE.

    python scripts/benchmark_robustness.py --sites --train-files 60 --epochs 12 --test-files 40 --train-seeds 0 1

`--sites` measures `adapt` instead, on sites further from the training corpus than the augmentation
reaches (resonances x0.7 and x1.35 where it warps up to ±20 %, +18 dB where it shifts up to ±12 dB, a
machinery background it never mixes in, and resonances x1.3 with machinery), for both kinds of model on the
same corpora and seeds (`--models frame recording`: configs/demo_frame.yaml, LeakCNN, the frame model whose window
reading is chosen on validation, and configs/demo.yaml, RecordingNet, which pools the whole recording). Per site each
augmented model scores every recording once; then, per draw, n labelled recordings (n = 10, 20, 50: a fifth of
them leaks, at least 3) adapt its decision rule exactly as `adapt` does (leak_lightning.inference.adapt.refit_rule:
cross-validated, the base rule kept unless adapting is better), and the leak F1 of the base rule and of the
adapted one are measured on the site's other recordings. The table gives medians over training seeds
and draws, with their range. Also printed: `adapt --unlabelled` then `adapt`; with `--finetune-steps N`,
`adapt --finetune_steps N` at the sizes of `--finetune-labelled` (frame model); the ceiling of any threshold
(the best F1 of one picked on all the site's recordings with their labels, over the rule's candidate
readings), with the base network and after `adapt --unlabelled`; AUROC; how often adapt's keep-or-take test
kept the base rule while a rule fitted on the same labels did better on the held-out recordings; and each
model's training seconds per epoch and predict recordings per second.

The review queue (`--queue-size`, 20): per draw, a random 80 % of the site's scored recordings stands for what a crew
has recorded; the queue of `review` (leak_lightning.inference.queue, which reads only the predictions and the names)
picks `--queue-size` of them and as many are drawn at random from the same pool; a reviewer labels each with the
truth, each set adapts the rule as `adapt --labels` does (refused, the base rule kept, with fewer than MIN_PER_SIDE
of either kind), and both rules are scored on the same held-out recordings (the site less both sets).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import Conditions, make_dataset  # noqa: E402

from leak_lightning.builder.build import build_dataset  # noqa: E402
from leak_lightning.checkpoint.io import read_checkpoint  # noqa: E402
from leak_lightning.cli import main as cli  # noqa: E402
from leak_lightning.inference.adapt import MIN_PER_SIDE  # noqa: E402
from leak_lightning.inference.predict import LeakDetector  # noqa: E402
from leak_lightning.inference.queue import Candidate, candidate_of, review_queue  # noqa: E402
from leak_lightning.models.evaluation import expected_calibration_error  # noqa: E402
from leak_lightning.runtime.logs import setup_logging  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("leak_lightning.benchmark")
CONDITIONS: dict[str, dict] = {
    "in-domain": {},
    "resonances x0.8": {"conditions": Conditions(resonance_scale=0.8)},
    "resonances x0.9": {"conditions": Conditions(resonance_scale=0.9)},
    "resonances x1.1": {"conditions": Conditions(resonance_scale=1.1)},
    "resonances x1.2": {"conditions": Conditions(resonance_scale=1.2)},
    "gain -12 dB": {"conditions": Conditions(gain_db=-12.0)},
    "gain +12 dB": {"conditions": Conditions(gain_db=12.0)},
    "machinery background": {"conditions": Conditions(background="machinery")},
    "44.1 kHz PCM_24": {"sample_rate": 44100, "subtype": "PCM_24"},
}
SITES: dict[str, dict] = {
    "resonances x0.7": {"conditions": Conditions(resonance_scale=0.7)},
    "resonances x1.35": {"conditions": Conditions(resonance_scale=1.35)},
    "gain +18 dB": {"conditions": Conditions(gain_db=18.0)},
    "machinery background": {"conditions": Conditions(background="machinery")},
    "x1.3 and machinery": {"conditions": Conditions(resonance_scale=1.3, background="machinery")},
    "distant leaks (1/3 level)": {"conditions": Conditions(leak_level=1 / 3)},
}
CONDITIONS.update({k: v for k, v in SITES.items() if k not in CONDITIONS})
# The two kinds of model the site benchmark compares, on the same corpora and seeds: the frame model of
# configs/demo_frame.yaml and the recording-level model of configs/demo.yaml.
MODELS: dict[str, dict] = {
    "frame": {"about": "LeakCNN, one 125 ms frame at a time, its windows read by the rule chosen on validation",
              "config": "configs/demo_frame.yaml", "args": []},
    "recording": {"about": "RecordingNet, the whole recording pooled", "config": "configs/demo.yaml", "args": []},
}
AUGMENTATION_OFF = ["--model.augment.warp", "0", "--model.augment.gain_db", "0", "--model.augment.tilt_db", "0",
                    "--model.augment.eq_db", "0", "--model.augment.background_p", "0", "--model.augment.mixup_p", "0"]


def train_h5(work: Path, args) -> Path:
    return work / f"train_h5_{args.train_files}"


def train(work: Path, args, augmented: bool, seed: int = 0, model: str = "frame") -> Path:
    config = args.config or MODELS[model]["config"]
    options = [*MODELS[model]["args"], *args.extra] + ([config] if args.config else [])
    extra = f"_{hashlib.sha1(' '.join(options).encode()).hexdigest()[:8]}" if options else ""
    settings = f"{args.train_files}_e{args.epochs}_p{args.patience}{extra}{f'_s{seed}' if seed else ''}"
    kind = "" if model == "frame" else f"{model}_"
    run = work / f"run_{kind}{'augmented' if augmented else 'plain'}_{settings}"
    if (run / "benchmark_training.json").is_file() and not args.retrain:
        return run / "checkpoints" / "best.ckpt"
    h5 = train_h5(work, args)
    data = [f"--data.{k}_h5={h5 / f'{v}_DATASET.H5'}" for k, v in
            (("train", "TRAINING"), ("val", "VALIDATION"), ("test", "TESTING"))]
    t0 = time.perf_counter()
    cli(["fit", "--config", str(REPO / config), *data, f"--trainer.default_root_dir={run}",
         f"--trainer.max_epochs={args.epochs}", f"--early_stopping.patience={args.patience}", "--overwrite=true",
         "--console.log_file=null", "--trainer.enable_progress_bar=false", f"--seed_everything={seed}", *options,
         *([] if augmented else AUGMENTATION_OFF)])
    seconds = time.perf_counter() - t0
    epochs = read_checkpoint(run / "checkpoints" / "last.ckpt")[0]["epoch"] + 1
    (run / "benchmark_training.json").write_text(json.dumps({"seconds": seconds, "epochs": epochs,
                                                             "seconds_per_epoch": seconds / epochs}))
    log.info("trained %s in %.0f s (%d epochs)", run.name, seconds, epochs)
    return run / "checkpoints" / "best.ckpt"


def corpus(work: Path, name: str, seed: int, files: int) -> list[tuple[Path, bool]]:
    folder = work / f"test_{files}_seed{seed}_{name.replace(' ', '_').replace('.', '')}"
    if not (folder / "done").is_file():
        make_dataset(folder, layout="pool", files_per_label=files, sensors_per_label=max(10, files // 4),
                     seed=1000 + seed, **CONDITIONS[name])
        (folder / "done").write_text("")
    return [(p, p.parent.name == "LEAK") for p in sorted(folder.rglob("*.wav"))]


def score(det: LeakDetector, recordings: list[tuple[Path, bool]]) -> dict[str, float]:
    results = [det.predict(p) for p, _ in recordings]
    kept = [(r, leak) for r, (_, leak) in zip(results, recordings) if r.leak is not None]
    decided = torch.tensor([r.leak for r, _ in kept])
    truth = torch.tensor([leak for _, leak in kept])
    tp, fp, fn = int((decided & truth).sum()), int((decided & ~truth).sum()), int((~decided & truth).sum())
    prob = torch.tensor([r.leak_probability for r, _ in kept])
    return {"f1": 2 * tp / max(2 * tp + fp + fn, 1), "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "auroc": float(binary_auroc(torch.tensor([r.leak_score for r, _ in kept]), truth.int())),
            "ece": expected_calibration_error(prob, truth), "files": len(kept), "unscored": len(results) - len(kept)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/leak_robustness"))
    ap.add_argument("--train-files", type=int, default=100, help="training corpus: recordings per class")
    ap.add_argument("--test-files", type=int, default=100, help="per condition: recordings per class (x5 classes)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="test corpora seeds (the spread is printed)")
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                    help="training seeds: both models are trained once per seed (the gain's range is printed)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--retrain", action="store_true", help="train again even if the runs exist")
    ap.add_argument("--config", default=None, help="the fit config of every model trained (default: configs/"
                    "demo_frame.yaml for the frame model, configs/demo.yaml for the recording model)")
    ap.add_argument("--extra", action="append", default=[], help="one more fit option for both models (repeat), e.g. "
                    "--extra=--checkpoint.monitor=val/loss")
    ap.add_argument("--sites", action="store_true", help="measure `adapt` on the sites instead (see above)")
    ap.add_argument("--labelled", type=int, nargs="+", default=[10, 20, 50], help="--sites: labelled recordings")
    ap.add_argument("--draws", type=int, default=5, help="--sites: labelled sets drawn per size and training seed")
    ap.add_argument("--finetune-steps", type=int, default=0, help="--sites: also adapt with this --finetune_steps "
                    "(at the sizes of --finetune-labelled; (folds + 1) fine-tunes per draw)")
    ap.add_argument("--finetune-labelled", type=int, nargs="+", default=[20], help="--sites: sizes to fine-tune at")
    ap.add_argument("--queue-size", type=int, default=20, help="--sites: labels the review queue picks against as "
                    "many drawn at random")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["frame", "recording"],
                    help="--sites: the model kinds to compare (each trained per training seed)")
    args = ap.parse_args()
    setup_logging("WARNING")
    torch.manual_seed(0)
    work = args.workdir
    if not (train_h5(work, args) / "dataset.json").is_file():
        wav = work / f"train_wav_{args.train_files}"
        make_dataset(wav, layout="origin", files_per_label=args.train_files,
                     sensors_per_label=max(12, args.train_files // 5), seed=0)
        build_dataset(wav, train_h5(work, args), overwrite=True, progress=False)
    if args.sites:
        return sites(work, args)
    table: dict[str, dict[str, list[dict]]] = {}
    for train_seed in args.train_seeds:
        detectors = {kind: LeakDetector.from_checkpoint(train(work, args, kind == "with", train_seed), device="cpu")
                     for kind in ("without", "with")}
        for name in CONDITIONS:
            for seed in args.seeds:
                recordings = corpus(work, name, seed, args.test_files)
                for kind, det in detectors.items():
                    row = {**score(det, recordings), "train_seed": train_seed}
                    table.setdefault(name, {}).setdefault(kind, []).append(row)
            print(f"  scored {name} (training seed {train_seed})", file=sys.stderr, flush=True)
    report(table, args)


def _f1(decided: torch.Tensor, truth: torch.Tensor) -> float:
    from leak_lightning.inference.adapt import leak_figures

    return leak_figures(decided, truth)["f1"]


def sites(work: Path, args) -> None:
    """Per model kind and site: leak F1 out of the box and after `adapt` with n labelled recordings (on the site's
    other recordings), AUROC, the best-threshold ceiling, false alarms; training seconds per epoch and predict
    recordings per second."""
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    costs: dict[str, dict[str, list[float]]] = {}
    for train_seed in args.train_seeds:
        for kind in args.models:
            ckpt = train(work, args, True, train_seed, kind)
            det = LeakDetector.from_checkpoint(ckpt, device="cpu")
            cost = costs.setdefault(kind, {})
            cost.setdefault("train s/epoch", []).append(training_cost(ckpt))
            for name in ("in-domain", *SITES):
                site_rows(work, args, det, ckpt, name, train_seed, rows.setdefault(kind, {}).setdefault(name, {}),
                          cost if name == "in-domain" else None)
                print(f"  {kind}: {name} (training seed {train_seed})", file=sys.stderr, flush=True)
    print_sites(rows, costs, args)


def training_cost(ckpt: Path) -> float:
    """Seconds per training epoch of the run (written by `train`)."""
    import json

    return json.loads((ckpt.parent.parent / "benchmark_training.json").read_text())["seconds_per_epoch"]


def site_rows(work: Path, args, det: LeakDetector, ckpt: Path, name: str, train_seed: int, site: dict,
              cost: dict | None) -> None:
    from leak_lightning.inference.adapt import (
        SiteRecording,
        finetuned,
        leak_windows_of,
        reestimate_norms,
        refit_rule,
        site_segments,
        tie_policy,
    )
    from leak_lightning.models.decision import DecisionRule
    from leak_lightning.models.evaluation import sweep

    recordings = corpus(work, name, 0, args.test_files)
    t0 = time.perf_counter()
    results = [(p, *det.leak_windows(p), leak) for p, leak in recordings]
    scored = [(w, leak) for _, _, w, leak in results]
    if cost is not None:  # predict's path (LeakDetector), the same recordings for every model
        cost.setdefault("predict recordings/s", []).append(len(recordings) / (time.perf_counter() - t0))
    windows = [w for w, _ in scored if w is not None]
    truth = torch.tensor([leak for w, leak in scored if w is not None])
    base = det.model.decision
    base_decided = base.decide(windows)
    site.setdefault("all: base rule", []).append(_f1(base_decided, truth))
    site.setdefault("all: false alarms", []).append(int((base_decided & ~truth).sum()))
    site.setdefault("auroc", []).append(float(binary_auroc(torch.stack([w.mean() for w in windows]), truth.int())))
    site.setdefault("reading", []).append(base.reading_text())
    # without labels: the batch-norm statistics re-estimated on all the site's recordings (adapt --unlabelled)
    fresh = LeakDetector.from_checkpoint(ckpt, device="cpu")
    paths = [p for p, _ in recordings]
    kept_paths = [q for q, (w, _) in zip(paths, scored) if w is not None]
    reestimate_norms(fresh, kept_paths)
    again = [fresh.leak_windows(q)[1] for q in kept_paths]
    again = [w if w is not None else torch.zeros(1) for w in again]
    unlabelled = fresh.model.decision.decide(again)
    site.setdefault("unlabelled", []).append(_f1(unlabelled, truth))
    site.setdefault("unlabelled: false alarms", []).append(int((unlabelled & ~truth).sum()))
    # the ceiling of any threshold: the best F1 of one picked on all the site's recordings themselves, with the
    # rule's own candidate readings
    candidates = base.options.candidates()
    for key, scores in (("ceiling: base", windows), ("ceiling: norms", again)):
        site.setdefault(key, []).append(max(sweep(scores, truth, a, f or 0.5).f1 for a, f in candidates))
    finetune = args.finetune_steps and not det.model.whole_recordings
    if finetune:
        recs = [SiteRecording(q, q.parent.name, bool(leak), w, "", site_segments(det, q))
                for q, w, leak in zip(kept_paths, windows, truth.tolist())]
    queue_rows(site, [(pred, p) for p, pred, w, _ in results if w is not None], windows, truth, base,
               tie_policy(det.model), train_seed, args)
    g = torch.Generator().manual_seed(train_seed)
    for n in args.labelled:
        want_leaks = max(MIN_PER_SIDE, round(n / 5))
        for draw in range(args.draws):
            leaks, others = torch.nonzero(truth).flatten(), torch.nonzero(~truth).flatten()
            pick = torch.cat([leaks[torch.randperm(len(leaks), generator=g)[:want_leaks]],
                              others[torch.randperm(len(others), generator=g)[: n - want_leaks]]])
            held = torch.ones(len(truth), dtype=torch.bool)
            held[pick] = False
            rest = [w for w, h in zip(windows, held) if h]
            folds = min(5, want_leaks, n - want_leaks)
            base_f1 = _f1(base.decide(rest), truth[held])
            site.setdefault(f"{n}: base rule", []).append(base_f1)
            policy = tie_policy(det.model)  # what adapt does on a tie for this kind of model
            for ties in ("adapt", "keep"):  # an adapted rule only as good as the base one: taken, or not
                rule, _, _, kept, _ = refit_rule([windows[i] for i in pick.tolist()], truth[pick], base, folds, draw,
                                                 ties)
                key = f"{n}: adapted" + ("" if ties == policy else ", the other tie policy")
                site.setdefault(key, []).append(_f1(rule.decide(rest), truth[held]))
                if ties == "keep":  # the keep-or-take test: kept while a rule fitted on the labels did better?
                    fitted = DecisionRule(base.options)
                    fitted.fit([windows[i] for i in pick.tolist()], truth[pick])
                    better = _f1(fitted.decide(rest), truth[held]) > base_f1
                    site.setdefault(f"{n}: kept", []).append(int(kept))
                    site.setdefault(f"{n}: kept, a fitted rule better", []).append(int(kept and better))
            # both: adapt --unlabelled on all the site's recordings, then adapt on the n labelled ones
            rule, *_ = refit_rule([again[i] for i in pick.tolist()], truth[pick], fresh.model.decision, folds, draw,
                                  policy)
            site.setdefault(f"{n}: norms + adapted", []).append(
                _f1(rule.decide([w for w, h in zip(again, held) if h]), truth[held]))
            if finetune and n in args.finetune_labelled:  # adapt --finetune_steps, as adapt does
                picked = [recs[i] for i in pick.tolist()]
                rescore, base_head = finetuned(det.model, picked, args.finetune_steps, draw)
                rule, _, _, kept, _ = refit_rule([r.windows for r in picked], truth[pick], base, folds, draw, "keep",
                                                 rescore)
                rest_ft = ([w for w, h in zip(windows, held) if h] if kept  # the base head: its scores
                           else [leak_windows_of(det.model, r.segments) for r, h in zip(recs, held) if h])
                det.model.net.head.load_state_dict(base_head)
                site.setdefault(f"{n}: fine-tuned", []).append(_f1(rule.decide(rest_ft), truth[held]))


QUEUE_POOL = 0.8  # the share of a site's recordings a crew has recorded when it labels (drawn anew per draw)


def labelled_rule(windows: list[torch.Tensor], truth: torch.Tensor, pick: list[int], base, policy: str,
                  seed: int):
    """The rule `adapt --labels` gives the picked recordings → (rule, refused): refused, the base rule, where they
    hold fewer than MIN_PER_SIDE of either kind (adapt stops with an error there)."""
    from leak_lightning.inference.adapt import refit_rule

    leaks = int(truth[pick].sum())
    others = len(pick) - leaks
    if min(leaks, others) < MIN_PER_SIDE:
        return base, True
    rule, *_ = refit_rule([windows[i] for i in pick], truth[pick], base, min(5, leaks, others), seed, policy)
    return rule, False


def queue_draw(windows: list[torch.Tensor], truth: torch.Tensor, candidates: list[Candidate], base, policy: str,
               size: int, seed: int) -> dict[str, float]:
    """One draw of the queue against chance: leak F1 on the same held-out recordings of the base rule and of the
    rules adapted on `size` labels the review queue picks and on `size` drawn at random from the same pool.
    `candidates[i]` is recording i (its key i); the truth only labels the picks, as a reviewer would."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randperm(len(truth), generator=g)[: round(QUEUE_POOL * len(truth))].tolist()
    picks = {"queue": [p.key for p in review_queue([candidates[i] for i in pool], size)],
             "random": [pool[j] for j in torch.randperm(len(pool), generator=g)[:size].tolist()]}
    held = torch.ones(len(truth), dtype=torch.bool)
    for pick in picks.values():
        held[pick] = False
    rest = [w for w, h in zip(windows, held) if h]
    out = {"base": _f1(base.decide(rest), truth[held])}
    for key, pick in picks.items():
        rule, refused = labelled_rule(windows, truth, pick, base, policy, seed)
        out[key], out[f"{key} refused"] = _f1(rule.decide(rest), truth[held]), int(refused)
    return out


def queue_rows(site: dict, scored: list, windows: list[torch.Tensor], truth: torch.Tensor, base, policy: str,
               train_seed: int, args) -> None:
    """`args.draws` draws of `queue_draw` for a site's scored recordings (`scored`: (Prediction, path) each)."""
    candidates = [candidate_of(i, str(path), pred.decision_score, pred.decision_cutoff, pred.leak_score)
                  for i, (pred, path) in enumerate(scored)]  # as `review` reads them from the CSV
    for draw in range(args.draws):
        row = queue_draw(windows, truth, candidates, base, policy, args.queue_size, 1000 * train_seed + draw)
        for key, value in row.items():
            site.setdefault(f"review: {key}", []).append(value)
        site.setdefault("review: queue >= random", []).append(int(row["queue"] >= row["random"]))


def print_queue(rows: dict, args) -> None:
    """The queue column's detail and its targets."""
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"

    n = args.queue_size
    print(f"\nthe review queue's {n} labels against {n} drawn at random from the same pool ({QUEUE_POOL:.0%} of the "
          "site's recordings, drawn anew per draw), each adapting the rule as `adapt --labels` does; leak F1 on the "
          "same held-out recordings, median [min, max] over training seeds x draws; draws the queue did at least as "
          "well; draws refused (fewer than "
          f"{MIN_PER_SIDE} of one kind: the base rule kept), queue / random; the base rule on the same recordings:")
    for kind, by_site in rows.items():
        for name, site in by_site.items():
            draws = len(site["review: queue"])
            print(f"  {kind}, {name}: queue {cell(site['review: queue'])}, random {cell(site['review: random'])}, "
                  f"queue >= random {sum(site['review: queue >= random'])}/{draws}, refused "
                  f"{sum(site['review: queue refused'])} / {sum(site['review: random refused'])} of {draws}, base rule "
                  f"{cell(site['review: base'])}")
    for kind, by_site in rows.items():
        worse = [name for name, s in by_site.items()
                 if statistics.median(s["review: queue"]) < statistics.median(s["review: random"])]
        low = {name: statistics.median(s["review: queue"]) for name, s in by_site.items()}
        below = [name for name, f1 in low.items() if f1 < 0.95]
        print(f"  {kind}: queue's {n} never worse than random (median per site): "
              f"{'met' if not worse else 'not met'} ({len(by_site) - len(worse)} of {len(by_site)} sites"
              f"{'; worse at ' + ', '.join(worse) if worse else ''}); leak F1 >= 0.95 at every site with them: "
              f"{'met' if not below else 'not met'} (lowest {min(low.values()):.3f}"
              f"{'; below at ' + ', '.join(below) if below else ''})")


def print_sites(rows: dict, costs: dict, args) -> None:
    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}"

    print(f"\nleak F1 per site, out of the box and after `adapt` with n labelled recordings of the site (measured on "
          f"the site's other recordings); median [min, max] over training seeds {args.train_seeds} x {args.draws} "
          f"draws; {args.test_files} recordings per class and site ({args.train_files} training recordings per class, "
          "each model's demo config and --extra options)")
    head = ["out of the box", "AUROC", "ceiling"] + [f"adapted, n={n}" for n in args.labelled] + [
        "unlabelled", "false alarms: out of the box / unlabelled", f"adapt, {args.queue_size} labels: queue / random"]
    for kind, by_site in rows.items():
        print(f"\n{kind} model ({MODELS[kind]['about']}):")
        print(f"| site | {' | '.join(head)} |")
        print("|---|" + "---|" * len(head))
        for name, site in by_site.items():
            cells = [med(site["all: base rule"]), med(site["auroc"]), med(site["ceiling: base"])]
            cells += [cell(site[f"{n}: adapted"]) for n in args.labelled]
            cells += [med(site["unlabelled"]), f"{statistics.median(site['all: false alarms']):.0f} / "
                                               f"{statistics.median(site['unlabelled: false alarms']):.0f}",
                      f"{med(site['review: queue'])} / {med(site['review: random'])}"]
            print(f"| {name} | {' | '.join(cells)} |")
    print("\ncost, median over training seeds: training seconds per epoch; predict recordings per second "
          "(LeakDetector, one process, the in-domain site's recordings):")
    for kind, cost in costs.items():
        print(f"  {kind}: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in cost.items()))
    if {"frame", "recording"} <= costs.keys():
        ratio = (statistics.median(costs["recording"]["predict recordings/s"])
                 / statistics.median(costs["frame"]["predict recordings/s"]))
        print(f"  predict throughput, recording / frame model: {ratio:.2f} (target >= 0.8)")
    for kind, by_site in rows.items():
        worst = min(statistics.median(s["all: base rule"]) for s in by_site.values())
        worst20 = min(statistics.median(s["20: adapted"]) for s in by_site.values()) \
            if 20 in args.labelled else float("nan")
        print(f"  {kind}: lowest site F1 out of the box {worst:.3f} (target >= 0.9), after 20 labels {worst20:.3f} "
              "(target >= 0.95)")
    print_queue(rows, args)
    print("\nthe rule's reading per site (chosen on validation; the same for every site out of the box):")
    for kind, by_site in rows.items():
        print(f"  {kind}: {sorted(set(r for s in by_site.values() for r in s['reading']))}")
    print("\nthe keep-or-take test of adapt, keeping ties: draws where the base rule was kept, and of those, draws "
          "where a rule fitted on the same labels did better on the held-out recordings:")
    for kind, by_site in rows.items():
        for name, site in by_site.items():
            print(f"  {kind}, {name}: " + ", ".join(
                f"n={n} ({max(MIN_PER_SIDE, round(n / 5))} leaks) kept {sum(site[f'{n}: kept'])}/"
                f"{len(site[f'{n}: kept'])}, better existed {sum(site[f'{n}: kept, a fitted rule better'])}"
                for n in args.labelled))
    def per_size(title: str, key: str) -> None:
        """One line per model and site: the cells of `key` at each number of labelled recordings."""
        print(f"\n{title}")
        for kind, by_site in rows.items():
            for name, site in by_site.items():
                print(f"  {kind}, {name}: " + ", ".join(f"n={n} {cell(site[f'{n}: {key}'])}" for n in args.labelled))

    per_size("adapt --unlabelled on all the site's recordings, then adapt on the n labelled ones:", "norms + adapted")
    if args.finetune_steps:
        print(f"\nadapt --finetune_steps {args.finetune_steps} (frame model: the head fine-tuned, then the rule "
              "re-fitted; the base kept unless cross-validation says better):")
        for name, site in rows.get("frame", {}).items():
            print(f"  {name}: " + ", ".join(f"n={n} {cell(site[f'{n}: fine-tuned'])}" for n in args.finetune_labelled))
    print("\nthe ceiling of any threshold (the best leak F1 of one picked on all the site's recordings themselves), "
          "with the base network / after adapt --unlabelled:")
    for kind, by_site in rows.items():
        for name, site in by_site.items():
            print(f"  {kind}, {name}: {cell(site['ceiling: base'])} / {cell(site['ceiling: norms'])}")
    per_size("adapted under the other tie policy (adapt keeps the base rule on a tie for the frame model, takes the "
             "adapted one for the recording model: adapt.tie_policy):", "adapted, the other tie policy")
    per_size("the same draws' held-out recordings under the base rule (the comparison for each adapted column):",
             "base rule")


def report(table: dict, args) -> None:
    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    files = table["in-domain"]["with"][0]["files"]
    print(f"\nfile-level leak detection, {files} recordings per condition, median over test seeds {args.seeds} "
          f"and training seeds {args.train_seeds}")
    print(f"{'condition':22s} | {'without augmentation':^34s} | {'with augmentation':^34s} | F1 spread over")
    print(f"{'':22s} | {'F1':>6s} {'P':>6s} {'R':>6s} {'AUROC':>6s} {'ECE':>6s} | "
          f"{'F1':>6s} {'P':>6s} {'R':>6s} {'AUROC':>6s} {'ECE':>6s} | seeds: w/o, with")
    base = {k: med(table["in-domain"][k], "f1") for k in ("without", "with")}
    worst = 0.0
    for name, kinds in table.items():
        cells = []
        for kind in ("without", "with"):
            cells.append(" ".join(f"{med(kinds[kind], key):6.3f}" for key in ("f1", "precision", "recall", "auroc",
                                                                                "ece")))
        spread = [max(r["f1"] for r in kinds[k]) - min(r["f1"] for r in kinds[k]) for k in ("without", "with")]
        print(f"{name:22s} | {cells[0]} | {cells[1]} | {spread[0]:.3f}, {spread[1]:.3f}")
        worst = max(worst, base["with"] - med(kinds["with"], "f1"))
    print(f"\nwith augmentation: the largest F1 drop from in-domain is {worst:.3f} (target <= 0.05); "
          f"in-domain F1 {base['with']:.3f} with, {base['without']:.3f} without (target: not lower)")
    print(f"\nF1 with minus F1 without augmentation, per training seed {args.train_seeds} (median over the test "
          "seeds): median [min, max]")
    for name, kinds in table.items():
        gains = []
        for seed in args.train_seeds:
            f1 = {k: statistics.median(r["f1"] for r in kinds[k] if r["train_seed"] == seed) for k in kinds}
            gains.append(f1["with"] - f1["without"])
        print(f"{name:22s} | {statistics.median(gains):+.3f} [{min(gains):+.3f}, {max(gains):+.3f}] | "
              + " ".join(f"{g:+.3f}" for g in gains))


if __name__ == "__main__":
    main()
