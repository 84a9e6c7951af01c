"""Writes `<stage>_report.json` and a per-file CSV after validate/test (with a results table in the
log), and `predictions.csv` after predict."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ..fileio import write_atomic

log = logging.getLogger(__name__)


class ReportWriter(L.Callback):
    """Results of `validate` and `test` into the run directory (rank 0 only).

    Args:
        per_file_csv: also write `<stage>_predictions.csv` (path, true label, leak score, decision,
            class scores).
    """

    def __init__(self, per_file_csv: bool = True) -> None:
        self.per_file_csv = per_file_csv

    # ---- predict: one row per recording ---------------------------------------------------
    def on_predict_start(self, trainer, pl_module) -> None:
        self._pred: dict[int, list] = {}

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        for i, owner in enumerate(outputs["owner"].tolist()):
            self._pred.setdefault(owner, []).append((outputs["windows"][i].cpu(), outputs["class_probs"][i].cpu()))

    @rank_zero_only
    def on_predict_end(self, trainer, pl_module) -> None:
        source = trainer.datamodule.predict_input
        names = pl_module.hparams.class_names
        root = Path(trainer.datamodule.predict_dir)
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "predictions.csv"

        rows = []  # (relative path, status, windows, score, decision, class scores)
        for i, wav in enumerate(source.paths):
            rel = wav.relative_to(root).as_posix() if root.is_dir() else wav.name
            if i not in self._pred:
                rows.append((rel, f"skipped: {source.skipped.get(i, 'no audio')}", 0, None, None, None))
                continue
            windows = torch.stack([wv for wv, _ in self._pred[i]])
            score, leak = pl_module.decide_recording(windows)
            classes = torch.stack([c for _, c in self._pred[i]]).mean(0)
            rows.append((rel, "ok", len(windows), score, leak, classes))

        def write(f) -> None:
            w = csv.writer(f)
            w.writerow(["path", "status", "windows", "leak_score", "leak_decision", *[f"score_{n}" for n in names]])
            for rel, status, n, score, leak, classes in rows:
                if classes is None:
                    w.writerow([rel, status, n, "", "", *[""] * len(names)])
                else:
                    w.writerow([rel, status, n, f"{score:.6f}", int(leak), *[f"{float(v):.6f}" for v in classes]])

        write_atomic(path, write)
        leaks = sum(1 for r in rows if r[4])
        log.info("predicted %d recordings (%d leak, %d skipped; threshold %.2f): %s", len(self._pred), leaks,
                 len(source.skipped), float(pl_module.threshold), path, extra={"colour": "success"})

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._report(trainer, pl_module, "val", "validate")

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        self._report(trainer, pl_module, "test", "test")

    @rank_zero_only
    def _report(self, trainer: L.Trainer, module, stage: str, name: str) -> None:
        results = module.last_results
        if not results or results["stage"] != stage:
            return
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics = results["metrics"]
        report = {"stage": stage, "dataset": str(trainer.datamodule.infos[stage].path),
                  "threshold": float(module.threshold), "aggregation": module.hparams.aggregation,
                  "leak_class": module.hparams.leak_class_name, "class_names": module.hparams.class_names,
                  "ckpt_path": trainer.ckpt_path, "metrics": metrics}
        path = run_dir / f"{name}_report.json"
        write_atomic(path, lambda f: json.dump(report, f, indent=2))
        self._log_table(stage, metrics, module.hparams.class_names)
        log.info("%s report: %s", name, path, extra={"colour": "success"})
        if self.per_file_csv:
            csv_path = run_dir / f"{name}_predictions.csv"
            write_atomic(csv_path, lambda f: self._write_csv(f, trainer.datamodule.file_paths(stage),
                                                             results, module.hparams.class_names))
            log.info("per-file results: %s", csv_path)

    @staticmethod
    def _write_csv(f, paths: list[str], results: dict, names: list[str]) -> None:
        writer = csv.writer(f)
        writer.writerow(["path", "true_label", "leak_score", "leak_decision", *[f"score_{n}" for n in names]])
        truth = results["targets"].argmax(-1).tolist()
        for i, path in enumerate(paths):
            writer.writerow([path, names[truth[i]], f"{float(results['file_scores'][i]):.6f}",
                             int(results["decisions"][i]),
                             *[f"{float(v):.6f}" for v in results["file_probs"][i]]])

    @staticmethod
    def _log_table(stage: str, m: dict, names: list[str]) -> None:
        log.info("%s results (threshold %.2f)", stage.upper(), m["threshold"], extra={"colour": "header"})
        log.info("  file level: leak F1 %.4f  precision %.4f  recall %.4f  AUROC %.4f  accuracy %.4f",
                 m["file_leak_f1"], m["file_leak_precision"], m["file_leak_recall"], m["file_leak_auroc"],
                 m["file_accuracy"])
        log.info("  segment level: macro AP %.4f  AUROC %.4f  F1 %.4f  loss %.4f",
                 m["seg_ap_macro"], m["seg_auroc_macro"], m["seg_f1_macro"], m["loss"])
        log.info("  %-14s %8s %8s %8s", "class", "AP", "AUROC", "F1")
        for n in names:
            log.info("  %-14s %8.4f %8.4f %8.4f", n, m[f"seg_ap/{n}"], m[f"seg_auroc/{n}"], m[f"seg_f1/{n}"])
