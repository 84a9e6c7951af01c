"""Which 20 recordings to label: the review queue's choice against 20 drawn at random, and the queue's variants,
on the site benchmark's sites.

    python scripts/benchmark_queue.py --workdir /tmp/leak_robustness --corpus-seeds 0 1

Uses the models `benchmark_robustness.py --sites` trained in the same workdir (training seed 0: the frame model and
the recording model) and its site corpora (`--corpus-seeds`: 0 is the one `--sites` measures; another seed draws
fresh recordings of the same sites). Each site is scored once (LeakDetector, as `predict`). Then per draw: a random
80 % of the site stands for what a crew has recorded; the queue picks 20 of them (from the predictions and the names
alone, as `review` does), 20 more are drawn at random from the same pool; a reviewer labels each with the truth;
each set adapts the rule as `adapt --labels` does (fewer than 3 of either kind: adapt refuses, the base rule stays);
both are scored on the same held-out recordings (the site less both sets). Printed per model and variant: leak F1,
queue / random, median over draws, the draws where the queue did at least as well, and the sites where its median
is below random's.

Variants: "shipped" is leak_lightning.inference.queue as it is; "even" shares the picks evenly between the sides
(the first version) with the square spacing; "proportional^p" shares them in proportion to the sides' recordings
(at least 3 each) with the k-th of K picks at (k / (K - 1))^p of the way out. The shipped spacing was chosen on
corpus seed 0 (by the fewest sites where the queue is worse than random over both models, then the mean F1) and
then measured on corpus seed 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark_robustness as sites  # noqa: E402

import leak_lightning.inference.queue as queue  # noqa: E402
from leak_lightning.inference.adapt import MIN_PER_SIDE, leak_figures, refit_rule, tie_policy  # noqa: E402
from leak_lightning.inference.predict import LeakDetector  # noqa: E402

SHIPPED = (queue._share, queue._targets)  # the variants replace these two private rules of the queue, nothing else


def even(size: int, above: int, below: int) -> tuple[int, int]:
    a = min(above, (size + 1) // 2)
    b = min(below, size - a)
    return min(above, size - b), b


def spacing(power: float):
    def targets(picks: int, size: int) -> list[int]:
        return [0] if picks == 1 else [round((k / (picks - 1)) ** power * (size - 1)) for k in range(picks)]
    return targets


VARIANTS = {"shipped": SHIPPED, "even^2": (even, spacing(2)),
            **{f"proportional^{p:g}": (SHIPPED[0], spacing(p)) for p in (1, 1.5, 2, 3)}}


def scored_site(det: LeakDetector, recordings) -> tuple[list, list[torch.Tensor], torch.Tensor]:
    rows, windows, truth = [], [], []
    for path, leak in recordings:
        prediction, w = det.leak_windows(path)
        if w is None:
            continue
        rows.append(queue.candidate_of(len(rows), str(path), prediction.decision_score, prediction.decision_cutoff,
                                       prediction.leak_score))
        windows.append(w)
        truth.append(leak)
    return rows, windows, torch.tensor(truth)


def draw(candidates, windows, truth, base, ties: str, size: int, seed: int) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    pool = torch.randperm(len(truth), generator=g)[: round(0.8 * len(truth))].tolist()
    picks = {"queue": [p.key for p in queue.review_queue([candidates[i] for i in pool], size)],
             "random": [pool[j] for j in torch.randperm(len(pool), generator=g)[:size].tolist()]}
    held = torch.ones(len(truth), dtype=torch.bool)
    for pick in picks.values():
        held[pick] = False
    rest = [w for w, h in zip(windows, held) if h]
    out = []
    for pick in picks.values():
        leaks = int(truth[pick].sum())
        rule = base
        if min(leaks, len(pick) - leaks) >= MIN_PER_SIDE:
            rule = refit_rule([windows[i] for i in pick], truth[pick], base, min(5, leaks, len(pick) - leaks), seed,
                              ties)[0]
        out.append(leak_figures(rule.decide(rest), truth[held])["f1"])
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/leak_robustness"))
    ap.add_argument("--corpus-seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--size", type=int, default=20)
    ap.add_argument("--train-files", type=int, default=60)
    ap.add_argument("--test-files", type=int, default=40)
    ap.add_argument("--run-suffix", default="60_e30_p10_e9a5fbdf", help="the trained runs' settings part of their name")
    args = ap.parse_args()
    runs = {"frame": f"run_augmented_{args.run_suffix}", "recording": f"run_recording_augmented_{args.run_suffix}"}
    for kind, run in runs.items():
        det = LeakDetector.from_checkpoint(args.workdir / run / "checkpoints" / "best.ckpt", device="cpu")
        base, ties = det.model.decision, tie_policy(det.model)
        for seed in args.corpus_seeds:
            scored = {name: scored_site(det, sites.corpus(args.workdir, name, seed, args.test_files))
                      for name in ("in-domain", *sites.SITES)}
            for variant, (share, targets) in VARIANTS.items():
                queue._share, queue._targets = share, targets
                cells, worse = [], []
                for name, (candidates, windows, truth) in scored.items():
                    runs_ = [draw(candidates, windows, truth, base, ties, args.size, d) for d in range(args.draws)]
                    q, r = statistics.median(a for a, _ in runs_), statistics.median(b for _, b in runs_)
                    cells.append(f"{name} {q:.3f}/{r:.3f} ({sum(a >= b for a, b in runs_)})")
                    worse += [name] if q < r else []
                queue._share, queue._targets = SHIPPED
                print(f"{kind}, corpus seed {seed}, {variant}: queue worse than random at {len(worse)} of "
                      f"{len(scored)} sites; " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
