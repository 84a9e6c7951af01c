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

One standard synthetic corpus (leak_lightning.synthetic) is built and trained on twice (configs/demo.yaml,
augmentation on / off). Each condition is a fresh corpus of `--test-files` recordings per class (5
classes), drawn with other sensors and seeds: in-domain, pipe resonances ×0.8/×0.9/×1.1/×1.2, sensor
gain −12/+12 dB, a background noise the training corpus never has (machinery), and another sample
rate and bit depth (44.1 kHz PCM_24). Each recording is scored through LeakDetector (the same path
as `predict`); the table gives file-level leak F1, precision, recall (at the checkpoint's
threshold), AUROC and the calibrated probability's ECE.

    python scripts/benchmark_robustness.py --sites --train-files 60 --epochs 12 --test-files 40 --train-seeds 0 1

`--sites` measures `adapt` instead, on sites further from the training corpus than the augmentation
reaches (resonances x0.7 and x1.35 where it warps up to ±20 %, +18 dB where it shifts up to ±12 dB, a
machinery background it never mixes in, and resonances x1.3 with machinery). Per site the augmented
model scores every recording once; then, per draw, n labelled recordings (n = 10, 20, 50: a fifth of
them leaks, at least 3) adapt its decision rule exactly as `adapt` does (leak_lightning.adapt.refit_rule:
cross-validated, the base rule kept unless adapting is better), and the leak F1 of the base rule and of the
adapted one are measured on the site's other recordings. The table gives medians over training seeds
and draws, with their range. Also printed: `adapt --unlabelled` then `adapt`; with `--finetune-steps N`,
`adapt --finetune_steps N` at the sizes of `--finetune-labelled`; and the ceiling of any threshold (the
best F1 of one picked on all the site's recordings with their labels), with the base network and after
`adapt --unlabelled`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_auroc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from leak_lightning.builder.build import build_dataset  # noqa: E402
from leak_lightning.cli import main as cli  # noqa: E402
from leak_lightning.evaluation import expected_calibration_error  # noqa: E402
from leak_lightning.logs import setup_logging  # noqa: E402
from leak_lightning.predict import LeakDetector  # noqa: E402
from leak_lightning.synthetic import Conditions, make_dataset  # noqa: E402

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
AUGMENTATION_OFF = ["--model.augment.warp", "0", "--model.augment.gain_db", "0", "--model.augment.tilt_db", "0",
                    "--model.augment.eq_db", "0", "--model.augment.background_p", "0", "--model.augment.mixup_p", "0"]


def train_h5(work: Path, args) -> Path:
    return work / f"train_h5_{args.train_files}"


def train(work: Path, args, augmented: bool, seed: int = 0) -> Path:
    extra = f"_{hashlib.sha1(' '.join(args.extra).encode()).hexdigest()[:8]}" if args.extra else ""
    settings = f"{args.train_files}_e{args.epochs}_p{args.patience}{extra}{f'_s{seed}' if seed else ''}"
    run = work / f"run_{'augmented' if augmented else 'plain'}_{settings}"
    if (run / "checkpoints" / "best.ckpt").is_file() and not args.retrain:
        return run / "checkpoints" / "best.ckpt"
    h5 = train_h5(work, args)
    data = [f"--data.{k}_h5={h5 / f'{v}_DATASET.H5'}" for k, v in
            (("train", "TRAINING"), ("val", "VALIDATION"), ("test", "TESTING"))]
    t0 = time.perf_counter()
    cli(["fit", "--config", str(REPO / "configs/demo.yaml"), *data, f"--trainer.default_root_dir={run}",
         f"--trainer.max_epochs={args.epochs}", f"--early_stopping.patience={args.patience}", "--overwrite=true",
         "--console.log_file=null", "--trainer.enable_progress_bar=false", f"--seed_everything={seed}", *args.extra,
         *([] if augmented else AUGMENTATION_OFF)])
    log.info("trained %s in %.0f s", run.name, time.perf_counter() - t0)
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
    ap.add_argument("--extra", action="append", default=[], help="one more fit option for both models (repeat), e.g. "
                    "--extra=--checkpoint.monitor=val/loss")
    ap.add_argument("--sites", action="store_true", help="measure `adapt` on the sites instead (see above)")
    ap.add_argument("--labelled", type=int, nargs="+", default=[10, 20, 50], help="--sites: labelled recordings")
    ap.add_argument("--draws", type=int, default=5, help="--sites: labelled sets drawn per size and training seed")
    ap.add_argument("--finetune-steps", type=int, default=0, help="--sites: also adapt with this --finetune_steps "
                    "(at the sizes of --finetune-labelled; (folds + 1) fine-tunes per draw)")
    ap.add_argument("--finetune-labelled", type=int, nargs="+", default=[20], help="--sites: sizes to fine-tune at")
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
    from leak_lightning.adapt import leak_figures

    return leak_figures(decided, truth)["f1"]


def sites(work: Path, args) -> None:
    """Leak F1 out of the box and after `adapt` with n labelled recordings, on each site's other recordings."""
    from leak_lightning.adapt import (
        MIN_PER_SIDE,
        SiteRecording,
        finetuned,
        leak_windows_of,
        reestimate_norms,
        refit_rule,
        site_segments,
    )
    from leak_lightning.evaluation import sweep_threshold

    rows: dict[str, dict[str, list[float]]] = {}
    for train_seed in args.train_seeds:
        det = LeakDetector.from_checkpoint(train(work, args, True, train_seed), device="cpu")
        for name in ("in-domain", *SITES):
            scored = [(det.leak_windows(p)[1], leak) for p, leak in corpus(work, name, 0, args.test_files)]
            windows = [w for w, _ in scored if w is not None]
            truth = torch.tensor([leak for w, leak in scored if w is not None])
            site = rows.setdefault(name, {})
            base_decided = det.model.decision.decide(windows)
            site.setdefault("all: base rule", []).append(_f1(base_decided, truth))
            site.setdefault("all: false alarms", []).append(int((base_decided & ~truth).sum()))
            # without labels: the batch-norm statistics re-estimated on all the site's recordings (adapt --unlabelled)
            fresh = LeakDetector.from_checkpoint(train(work, args, True, train_seed), device="cpu")
            paths = [p for p, _ in corpus(work, name, 0, args.test_files)]
            reestimate_norms(fresh, [q for q, (w, _) in zip(paths, scored) if w is not None])
            again = [fresh.leak_windows(q)[1] for q, (w, _) in zip(paths, scored) if w is not None]
            again = [w if w is not None else torch.zeros(1) for w in again]
            unlabelled = fresh.model.decision.decide(again)
            site.setdefault("unlabelled", []).append(_f1(unlabelled, truth))
            site.setdefault("unlabelled: false alarms", []).append(int((unlabelled & ~truth).sum()))
            # the ceiling of any threshold: the one with the best F1 picked on all the site's recordings themselves
            options = det.model.decision.options
            for key, scores in (("ceiling: base", windows), ("ceiling: norms", again)):
                site.setdefault(key, []).append(sweep_threshold(scores, truth, options.aggregation,
                                                                options.vote_fraction)[1])
            if args.finetune_steps:
                kept_paths = [q for q, (w, _) in zip(paths, scored) if w is not None]
                recs = [SiteRecording(q, q.parent.name, bool(leak), w, "", site_segments(det, q))
                        for q, w, leak in zip(kept_paths, windows, truth.tolist())]
            g = torch.Generator().manual_seed(train_seed)
            for n in args.labelled:
                want_leaks = max(MIN_PER_SIDE, round(n / 5))
                for draw in range(args.draws):
                    leaks = torch.nonzero(truth).flatten()
                    others = torch.nonzero(~truth).flatten()
                    pick = torch.cat([leaks[torch.randperm(len(leaks), generator=g)[:want_leaks]],
                                      others[torch.randperm(len(others), generator=g)[: n - want_leaks]]])
                    held = torch.ones(len(truth), dtype=torch.bool)
                    held[pick] = False
                    rest = [w for w, h in zip(windows, held) if h]
                    site.setdefault(f"{n}: base rule", []).append(_f1(det.model.decision.decide(rest), truth[held]))
                    for ties in ("adapt", "keep"):  # an adapted rule only as good as the base one: taken, or not
                        rule, *_ = refit_rule([windows[i] for i in pick.tolist()], truth[pick], det.model.decision,
                                              min(5, want_leaks, n - want_leaks), draw, ties)
                        key = f"{n}: adapted" + ("" if ties == "keep" else ", ties adapt")
                        site.setdefault(key, []).append(_f1(rule.decide(rest), truth[held]))
                    # both: adapt --unlabelled on all the site's recordings, then adapt on the n labelled ones
                    rule, *_ = refit_rule([again[i] for i in pick.tolist()], truth[pick], fresh.model.decision,
                                          min(5, want_leaks, n - want_leaks), draw, "keep")
                    site.setdefault(f"{n}: norms + adapted", []).append(
                        _f1(rule.decide([w for w, h in zip(again, held) if h]), truth[held]))
                    if args.finetune_steps and n in args.finetune_labelled:  # adapt --finetune_steps, as adapt does
                        picked = [recs[i] for i in pick.tolist()]
                        rescore, base_head = finetuned(det.model, picked, args.finetune_steps, draw)
                        rule, _, _, kept, _ = refit_rule([r.windows for r in picked], truth[pick], det.model.decision,
                                                         min(5, want_leaks, n - want_leaks), draw, "keep", rescore)
                        rest_ft = ([w for w, h in zip(windows, held) if h] if kept  # the base head: its scores
                                   else [leak_windows_of(det.model, r.segments) for r, h in zip(recs, held) if h])
                        det.model.net.head.load_state_dict(base_head)
                        site.setdefault(f"{n}: fine-tuned", []).append(_f1(rule.decide(rest_ft), truth[held]))
            print(f"  {name} (training seed {train_seed}): {len(windows)} recordings scored", file=sys.stderr,
                  flush=True)

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} [{min(values):.3f}, {max(values):.3f}]"

    print(f"\nleak F1 per site: the augmented model (configs/demo.yaml, {args.train_files} training recordings per "
          f"class) out of the box and after `adapt` with n labelled recordings of the site, measured on the site's "
          f"other recordings; median [min, max] over training seeds {args.train_seeds} x {args.draws} draws; "
          f"{args.test_files} recordings per class and site")
    head = ["out of the box"] + [f"adapted, n={n}" for n in args.labelled] + ["unlabelled", "false alarms: out of "
                                                                                "the box / unlabelled"]
    print(f"| site | {' | '.join(head)} |")
    print("|---|" + "---|" * len(head))
    for name, site in rows.items():
        cells = [cell(site["all: base rule"])] + [cell(site[f"{n}: adapted"]) for n in args.labelled]
        cells += [cell(site["unlabelled"]), f"{statistics.median(site['all: false alarms']):.0f} / "
                                            f"{statistics.median(site['unlabelled: false alarms']):.0f}"]
        print(f"| {name} | {' | '.join(cells)} |")
    print("\nadapt --unlabelled on all the site's recordings, then adapt on the n labelled ones:")
    for name, site in rows.items():
        print(f"  {name}: " + ", ".join(f"n={n} {cell(site[f'{n}: norms + adapted'])}" for n in args.labelled))
    if args.finetune_steps:
        print(f"\nadapt --finetune_steps {args.finetune_steps} (the head fine-tuned, then the rule re-fitted; the base "
              f"kept unless cross-validation says better):")
        for name, site in rows.items():
            print(f"  {name}: " + ", ".join(f"n={n} {cell(site[f'{n}: fine-tuned'])}" for n in args.finetune_labelled))
    print("\nthe ceiling of any threshold: the best leak F1 of one picked on all the site's recordings themselves, "
          "with the base network / after adapt --unlabelled:")
    for name, site in rows.items():
        print(f"  {name}: {cell(site['ceiling: base'])} / {cell(site['ceiling: norms'])}")
    print("\nadapted, when a cross-validated tie takes the adapted rule (adapt keeps the base rule on a tie):")
    for name, site in rows.items():
        print(f"  {name}: " + ", ".join(f"n={n} {cell(site[f'{n}: adapted, ties adapt'])}" for n in args.labelled))
    print("\nthe same draws' held-out recordings under the base rule (the comparison for each adapted column):")
    for name, site in rows.items():
        print(f"  {name}: " + ", ".join(f"n={n} {cell(site[f'{n}: base rule'])}" for n in args.labelled))


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
