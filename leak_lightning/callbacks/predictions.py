"""`predict`'s callback: the scored windows of every recording → one CSV row each (predict.summarise)."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from ..audio.scan import printable
from ..predict import Prediction, summarise, write_csv

log = logging.getLogger("leak_lightning.predict")


class PredictionWriter(BasePredictionWriter):
    """`predict`: a row for every recording (and every unusable name) in a CSV.

    Args:
        output: the CSV to write; None: `<run dir>/predictions.csv`.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.predictions: list[Prediction] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self._scored: dict[int, list] = {}

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        rows = zip(prediction["owner"].tolist(), prediction["index"].tolist(), prediction["silent"].tolist(),
                   prediction["windows"].cpu(), prediction["class_probs"].cpu())
        for owner, index, silent, windows, classes in rows:
            self._scored.setdefault(owner, []).append((index, silent, windows, classes))

    def on_predict_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        source, root = dm.predict_input, Path(dm.predict_path)

        def name(p: Path) -> str:
            return printable(p.relative_to(root) if root.is_dir() else p)

        predictions = [summarise(name(p), self._scored.get(i, []), source.status[i].flags, pl_module,
                                 source.status[i].reason) for i, p in enumerate(source.paths)]
        predictions += [Prediction(name(e.path), f"skipped: {e.reason}") for e in dm.predict_unusable]
        self.predictions = sorted(predictions, key=lambda p: p.path)
        path = Path(self.output) if self.output else Path(trainer.default_root_dir) / "predictions.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_csv(path, self.predictions, pl_module.class_names)
        counts = {s: sum(p.status.split(":")[0] == s for p in self.predictions)
                  for s in ("ok", "flagged", "silent", "unscored", "skipped")}
        log.info("predicted %d recordings: %d leak, %d ok, %d flagged, %d silent, %d unscored, %d skipped "
                 "(threshold %.2f): %s", len(self.predictions), sum(bool(p.leak) for p in self.predictions),
                 counts["ok"], counts["flagged"], counts["silent"], counts["unscored"], counts["skipped"],
                 float(pl_module.decision.threshold), path, extra={"colour": "success"})
