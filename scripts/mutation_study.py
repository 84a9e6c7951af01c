"""A small mutation study of the code that decides answers: each mutation breaks one line the way a careless edit
would, the fast tests of its package run, and the mutation is "killed" when one of them fails.

    python scripts/mutation_study.py            # every mutation
    python scripts/mutation_study.py --only 3   # one of them

The source is restored after each mutation (also on Ctrl-C). A survivor is a line no test guards: a gap to fill.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    path: str  # under leak_lightning/
    old: str  # the exact text replaced (once)
    new: str
    tests: tuple[str, ...]  # what runs (fast tests only)
    what: str


MUTATIONS = (
    Mutation("models/evaluation.py", "        return votes >= vote_fraction", "        return votes > vote_fraction",
             ("tests/models/test_decision.py", "tests/test_answers.py"),
             "a vote reaching the fraction no longer counts"),
    Mutation("models/evaluation.py", "return segment_probs.reshape(-1, num_long, num_short).mean(dim=-1)",
             "return segment_probs.reshape(-1, num_long, num_short).amax(dim=-1)",
             ("tests/training/test_evaluation.py", "tests/test_answers.py"),
             "a long window read by its loudest segment"),
    Mutation("inference/scorer.py", "return WindowScores(probs[..., model.leak_index].mean(2),",
             "return WindowScores(probs[..., model.leak_index].amax(2),",
             ("tests/inference/test_inference_path.py", "tests/inference/test_predict.py"),
             "predict's window score from the loudest segment"),
    Mutation("inference/scorer.py", "probs[..., model.leak_index].mean(2), probs.mean((1, 2)), pooled)",
             "probs[..., 0].mean(2), probs.mean((1, 2)), pooled)",
             ("tests/inference/test_inference_path.py", "tests/inference/test_predict.py", "tests/test_answers.py"),
             "predict scores the first class, not the leak class"),
    Mutation("training/file_metrics.py", "        sweep = sweep and 0 < leaks < n\n",
             "        sweep = sweep and 0 < leaks\n",
             ("tests/training/test_file_evaluation.py", "tests/training/test_evaluation.py"),
             "the threshold swept on a validation split of leaks only"),
    Mutation("training/file_metrics.py", "windows=probs[seen][:, leak_index: leak_index + 1]",
             "windows=probs[seen][:, 0:1]",
             ("tests/training/test_file_evaluation.py", "tests/models/test_recording_model.py"),
             "a recording-level model evaluated on the first class"),
    Mutation("training/file_metrics.py", "            self.fit(rule, scores, truth, leaks)\n", "            pass\n",
             ("tests/training/test_file_evaluation.py",), "validation no longer fits the decision rule"),
    Mutation("checkpoint/record.py", '"decides": "recording" if per_recording else "windows"',
             '"decides": "windows" if per_recording else "recording"',
             ("tests/checkpoint/test_checkpoint_record.py",), "the record says the other kind of model decides"),
    Mutation("checkpoint/record.py", "        state[f\"decision.{name}\"] = value.detach().cpu().clone()\n",
             "        pass\n", ("tests/checkpoint/test_checkpoint_record.py",),
             "the checkpoint keeps a stale decision rule"),
    Mutation("checkpoint/contract.py", "        return [names.index(n) for n in self.class_names]",
             "        return list(range(len(names)))", ("tests/checkpoint/test_contract.py", "tests/test_answers.py"),
             "data in another class order read without remapping"),
    Mutation("training/module.py", "weights = [round((files - c) / max(c, 1), 4) for c in counts]",
             "weights = [round(files / max(c, 1), 4) for c in counts]", ("tests/training/test_file_evaluation.py",),
             "pos_weight auto counts every file as a negative"),
    Mutation("checkpoint/migrations.py", '"vote_fraction": hp.get("vote_fraction", 0.5)}',
             '"vote_fraction": 0.5}', ("tests/checkpoint/test_checkpoint_io.py", "tests/models/test_readings.py"),
             "a 0.2 checkpoint's own vote fraction replaced by the default"),
)


def run(m: Mutation) -> tuple[bool, float]:
    path = REPO / "leak_lightning" / m.path
    source = path.read_text()
    if source.count(m.old) < 1:
        raise SystemExit(f"{m.path}: the text to mutate is gone ({m.old!r}); update scripts/mutation_study.py")
    start = time.monotonic()
    try:
        path.write_text(source.replace(m.old, m.new, 1))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider", *m.tests]
        rc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    finally:
        path.write_text(source)
    return rc != 0, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=int, nargs="*", help="mutation numbers (1-based)")
    args = parser.parse_args(argv)
    chosen = [(i, m) for i, m in enumerate(MUTATIONS, 1) if not args.only or i in args.only]
    survivors = 0
    for i, m in chosen:
        killed, seconds = run(m)
        survivors += not killed
        print(f"{i:2d} {'killed  ' if killed else 'SURVIVED'} {seconds:6.1f} s  {m.path}: {m.what}", flush=True)
    print(f"{len(chosen) - survivors} of {len(chosen)} killed")
    return 1 if survivors else 0


if __name__ == "__main__":
    raise SystemExit(main())
