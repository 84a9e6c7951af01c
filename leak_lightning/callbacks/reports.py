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

from ..audio.scan import printable
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
        rows = zip(outputs["owner"].tolist(), outputs["index"].tolist(), outputs["silent"].tolist(),
                   outputs["windows"].cpu(), outputs["class_probs"].cpu())
        for owner, index, silent, windows, classes in rows:
            self._pred.setdefault(owner, []).append((index, silent, windows, classes))

    @rank_zero_only
    def on_predict_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        source, names = dm.predict_input, pl_module.hparams.class_names
        root = Path(dm.predict_path)
        run_dir = Path(trainer.default_root_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "predictions.csv"

        def name(p: Path) -> str:
            return printable(p.relative_to(root) if root.is_dir() else p)

        rows = [self._prediction_row(name(p), source.status.get(i), self._pred.get(i, []), pl_module)
                for i, p in enumerate(source.paths)]
        rows += [(name(e.path), f"skipped: {e.reason}", "", 0, None, None, None) for e in dm.predict_unusable]
        rows.sort(key=lambda r: r[0])

        def write(f) -> None:
            w = csv.writer(f)
            w.writerow(["path", "status", "quality", "windows", "leak_score", "leak_decision",
                        *[f"score_{n}" for n in names]])
            for rel, status, quality, n, score, leak, classes in rows:
                if classes is None:
                    w.writerow([rel, status, quality, n, "", "", *[""] * len(names)])
                else:
                    w.writerow([rel, status, quality, n, f"{score:.6f}", int(leak),
                                *[f"{float(v):.6f}" for v in classes]])

        write_atomic(path, write)
        counts = {s: sum(1 for r in rows if r[1].split(":")[0] == s) for s in ("ok", "flagged", "silent", "skipped")}
        log.info("predicted %d recordings: %d leak, %d ok, %d flagged, %d silent, %d skipped (threshold %.2f): %s",
                 len(rows), sum(1 for r in rows if r[5]), counts["ok"], counts["flagged"], counts["silent"],
                 counts["skipped"], float(pl_module.threshold), path, extra={"colour": "success"})

    @staticmethod
    def _prediction_row(rel: str, status, scored: list, module) -> tuple:
        """(path, status, quality, windows, score, decision, class scores) of one recording.

        status: ok; flagged (scored, but clipped/out of range/truncated/partly silent: see quality);
        silent (no signal in any window: no decision, a dead sensor is not a healthy pipe);
        skipped: reason.
        """
        if status is None or status.reason:
            return rel, f"skipped: {status.reason if status else 'not decoded'}", "", 0, None, None, None
        quality = ";".join(sorted(status.flags)) or "ok"
        live = [(w, c) for _, silent, w, c in sorted(scored, key=lambda r: r[0]) if not silent]
        if not live:
            return rel, "silent", quality, status.windows, None, None, None
        windows = torch.stack([w for w, _ in live])  # silent windows take no part in the decision
        score, leak = module.decide_recording(windows)
        classes = torch.stack([c for _, c in live]).mean(0)
        return rel, "ok" if quality == "ok" else "flagged", quality, status.windows, score, leak, classes

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
        info = trainer.datamodule.infos[stage]
        scored = int(metrics["files_scored"])
        report = {"stage": stage, "dataset": str(info.path),
                  "threshold": float(module.threshold), "aggregation": module.hparams.aggregation,
                  "leak_class": module.hparams.leak_class_name, "class_names": module.hparams.class_names,
                  "ckpt_path": trainer.ckpt_path,
                  # file-level metrics count a file only when every one of its segments was scored
                  "files": {"in_split": info.num_files, "scored": scored, "partly_scored_left_out":
                            int(metrics["files_partial"]), "not_scored": info.num_files - scored -
                            int(metrics["files_partial"])},
                  "metrics": metrics}
        path = run_dir / f"{name}_report.json"
        write_atomic(path, lambda f: json.dump(report, f, indent=2))
        self._log_table(stage, metrics, module.hparams.class_names, info.num_files)
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
        for k, row in enumerate(results["files"].tolist()):  # the files scored whole, by row number
            writer.writerow([paths[row], names[truth[k]], f"{float(results['file_scores'][k]):.6f}",
                             int(results["decisions"][k]), *[f"{float(v):.6f}" for v in results["file_probs"][k]]])

    @staticmethod
    def _log_table(stage: str, m: dict, names: list[str], num_files: int) -> None:
        log.info("%s results (threshold %.2f, %d of %d files scored)", stage.upper(), m["threshold"],
                 m["files_scored"], num_files, extra={"colour": "header"})
        log.info("  file level: leak F1 %.4f  precision %.4f  recall %.4f  AUROC %.4f  accuracy %.4f",
                 m["file_leak_f1"], m["file_leak_precision"], m["file_leak_recall"], m["file_leak_auroc"],
                 m["file_accuracy"])
        log.info("  segment level: macro AP %.4f  AUROC %.4f  F1 %.4f  loss %.4f",
                 m["seg_ap_macro"], m["seg_auroc_macro"], m["seg_f1_macro"], m["loss"])
        log.info("  %-14s %8s %8s %8s", "class", "AP", "AUROC", "F1")
        for n in names:
            log.info("  %-14s %8.4f %8.4f %8.4f", n, m[f"seg_ap/{n}"], m[f"seg_auroc/{n}"], m[f"seg_f1/{n}"])
