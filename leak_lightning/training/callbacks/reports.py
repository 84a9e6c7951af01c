"""Writes `<stage>_report.json`, a per-file CSV and plots after validate/test (with a results table in the
log). `predict` has its own writer (callbacks/predictions.py)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from ...checkpoint.record import describe_rule
from ...runtime.fileio import file_digest, write_atomic
from ..file_metrics import FileResults

log = logging.getLogger(__name__)


class ReportWriter(L.Callback):
    """Results of `validate` and `test` into the run directory (rank 0 only).

    Args:
        per_file_csv: also write `<stage>_predictions.csv` (path, true label, leak score, decision,
            class scores).
        plots: also write PNGs: leaks found against false alarms (with the decisions made), F1 against
            threshold, the leak decisions against the truth (and the most likely class), and histograms of
            the number the decisions are made from with its cutoff (and log them to TensorBoard).
    """

    def __init__(self, per_file_csv: bool = True, plots: bool = True) -> None:
        self.per_file_csv, self.plots = per_file_csv, plots

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module, "val", "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test", "test")

    @rank_zero_only
    def _report(self, trainer: L.Trainer, module, stage: str, name: str) -> None:
        results = module.file_eval.result  # the pass just computed (training/file_metrics.py)
        if results is None or results.stage != stage:
            return
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = results.metrics
        info = trainer.datamodule.infos[stage]
        scored = int(metrics["files_scored"])
        rule = module.decision
        record = describe_rule(rule, module.whole_recordings)  # as the checkpoint and the export sidecar give it
        # the rule's reading (state: chosen on validation), never its options
        report = {"stage": stage, "dataset": str(info.path),
                  **{k: record[k] for k in ("threshold", "aggregation", "vote_fraction", "decision")},
                  "rule": rule.reading_text(),
                  "leak_class": module.hparams.leak_class_name, "class_names": module.class_names,
                  "ckpt_path": trainer.ckpt_path,
                  # the threshold's precision and recall on validation, and the calibration of leak_probability
                  "threshold_validation": record["threshold_validation"],
                  "calibration": {k: record["calibration"][k] for k in ("a", "b", "method")},
                  # file-level metrics count a file only when every one of its segments was scored
                  "files": {"in_split": info.num_files, "scored": scored, "partly_scored_left_out":
                            int(metrics["files_partial"]), "not_scored": info.num_files - scored -
                            int(metrics["files_partial"])},
                  # recordings of this split that were in the model's training split (null: unknown)
                  "seen_in_training": trainer.datamodule.seen_in_training.get(stage),
                  "metrics": metrics}
        # The report is written last and names the digest of every file of its set (the per-file CSV,
        # the plots): several files cannot be renamed in one step, so after a kill part-way the report
        # still says which files are its own (`"outputs"`), and files of an earlier set it does not
        # name are removed once it is in place.
        outputs: dict[str, str] = {}
        if self.per_file_csv:
            csv_path = run_dir / f"{name}_predictions.csv"
            write_atomic(csv_path, lambda f: self._write_csv(f, trainer.datamodule.file_paths(stage),
                                                             results, module.class_names))
            outputs[csv_path.name] = file_digest(csv_path)
        if self.plots and len(results.files):
            outputs.update({p.name: file_digest(p) for p in self._plot(trainer, module, results, stage, run_dir, name)})
        report["outputs"] = outputs
        path = run_dir / f"{name}_report.json"
        write_atomic(path, lambda f: json.dump(report, f, indent=2))
        for stale in [run_dir / f"{name}_predictions.csv", *run_dir.glob(f"{name}_*.png")]:
            if stale.name not in outputs:
                stale.unlink(missing_ok=True)
        self._log_table(stage, metrics, module.class_names, info.num_files, rule.reading_text())
        log.info("%s report: %s", name, path, extra={"colour": "success"})
        if self.per_file_csv:
            log.info("per-file results: %s", run_dir / f"{name}_predictions.csv")
        if len(outputs) > self.per_file_csv:
            log.info("plots: %s", ", ".join(str(run_dir / n) for n in outputs if n.endswith(".png")))

    @staticmethod
    def _plot(trainer, module, results: FileResults, stage: str, run_dir: Path, name: str) -> list[Path]:
        from lightning.pytorch.loggers import TensorBoardLogger

        from .. import plots

        figures = report_figures(module, results)
        paths = plots.save(figures, run_dir, name)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for key, fig in figures.items():
                    logger.experiment.add_figure(f"{stage}/{key}", fig, global_step=trainer.global_step, close=False)
        return paths

    @staticmethod
    def _write_csv(f, paths: list[str], results: FileResults, names: list[str]) -> None:
        writer = csv.writer(f)
        writer.writerow(["path", "true_label", "leak_score", "leak_probability", "leak_decision", "decision_score",
                         "decision_cutoff", *[f"score_{n}" for n in names]])
        truth = results.targets.argmax(-1).tolist()
        for k, row in enumerate(results.files.tolist()):  # the files scored whole, by row number
            writer.writerow([paths[row], names[truth[k]], f"{float(results.file_scores[k]):.6f}",
                             f"{float(results.file_probability[k]):.6f}", int(results.decisions[k]),
                             f"{float(results.decision_scores[k]):.6f}", f"{results.decision_cutoff:.6f}",
                             *[f"{float(v):.6f}" for v in results.file_probs[k]]])

    @staticmethod
    def _log_table(stage: str, m: dict, names: list[str], num_files: int, rule: str) -> None:
        log.info("%s results (%s; %d of %d files scored)", stage.upper(), rule, m["files_scored"], num_files,
                 extra={"colour": "header"})
        log.info("  file level: leak F1 %.4f  precision %.4f  recall %.4f  AUROC %.4f  accuracy %.4f  ECE %.4f",
                 m["file_leak_f1"], m["file_leak_precision"], m["file_leak_recall"], m["file_leak_auroc"],
                 m["file_accuracy"], m["file_leak_ece"])
        log.info("  segment level: macro AP %.4f  AUROC %.4f  F1 %.4f  loss %.4f",
                 m["seg_ap_macro"], m["seg_auroc_macro"], m["seg_f1_macro"], m["loss"])
        log.info("  %-14s %8s %8s %8s", "class", "AP", "AUROC", "F1")
        for n in names:
            log.info("  %-14s %8.4f %8.4f %8.4f", n, m[f"seg_ap/{n}"], m[f"seg_auroc/{n}"], m[f"seg_f1/{n}"])


def report_figures(module, results: FileResults | dict) -> dict:
    """The report's figures by name, from what the module holds (kept apart from the writing so the
    figures a reader gets can be checked without a Trainer)."""
    from .. import plots

    rule = module.decision
    used = (rule.aggregation, rule.vote_fraction)
    # float32 state against the options' float: the same reading when the fractions agree to float32 precision
    others = [(a, f) for a, f in rule.options.candidates()
              if a != used[0] or (f is not None and abs(f - used[1]) > 1e-6)]
    return plots.report_figures(results, module.class_names, module.leak_index, float(rule.threshold), *used, others)
