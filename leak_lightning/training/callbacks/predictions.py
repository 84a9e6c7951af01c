"""`predict`'s callback: the scored windows of every recording → one CSV row each (inference.scorer.WindowScorer,
the scoring path `LeakDetector` takes too)."""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter

from ...audio.scan import printable
from ...inference.predict import (
    Prediction,
    SensorRule,
    finish_outputs,
    sensors_csv,
    summarise_sensors,
    write_outputs,
)
from ...inference.scorer import WindowScorer, WindowScores

__all__ = ["PredictionWriter", "sensors_csv"]

log = logging.getLogger("leak_lightning.predict")


class PredictionWriter(BasePredictionWriter):
    """`predict`: a row for every recording (and every unusable name) in a CSV.

    Beside it, `<name>_sensors.csv`: per sensor (the id in `S0012~R0003~20251119T101500~g12.wav` names) its
    recordings, how many were decided leak, the first and last of them, and a decision over the sensor by the
    rule `sensor_k` of the last `sensor_n` scored recordings ("order unknown" where names whose time cannot be read
    could change it: predict.summarise_sensors); recordings without a sensor id are listed as such. The two CSVs
    are published as one unit (predict.write_outputs).

    Args:
        output: the CSV to write; None: `<run dir>/predictions.csv`.
        sensor_k: a sensor is a leak when this many ...
        sensor_n: ... of its last this many scored recordings (by the time in their names) are leaks.
    """

    def __init__(self, output: str | None = None, sensor_k: int = 2, sensor_n: int = 3) -> None:
        super().__init__(write_interval="batch")
        self.output = output
        self.rule = SensorRule(sensor_k, sensor_n)
        self.predictions: list[Prediction] = []

    def on_predict_start(self, trainer, pl_module) -> None:
        self._scored: dict[int, list] = {}
        if trainer.is_global_zero:  # before scoring: a pair a killed predict left half moved is whole again
            finish_outputs(self._path(trainer))
        if trainer.is_global_zero and (line := pl_module.site_line()):
            log.info("%s", line, extra={"colour": "header"})

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        scores = WindowScores(prediction["windows"], prediction["class_probs"], prediction.get("pooled"))
        rows = WindowScorer.rows(prediction["index"].tolist(), prediction["silent"].tolist(), scores)
        for owner, row in zip(prediction["owner"].tolist(), rows):
            self._scored.setdefault(owner, []).append(row)

    def on_predict_end(self, trainer, pl_module) -> None:
        dm = trainer.datamodule
        source, root = dm.predict_input, Path(dm.predict_path)

        def name(p: Path) -> str:
            return printable(p.relative_to(root) if root.is_dir() else p)

        # each rank summarises its own recordings (the decision rule is the checkpoint's, the same everywhere)
        scorer: WindowScorer = pl_module.scorer
        predictions = [scorer.summarise(name(p), self._scored.get(i, []), source.status[i].flags,
                                        source.status[i].reason, source.status[i].times)
                       for i, p in enumerate(source.paths)]
        predictions += [Prediction(name(e.path), f"skipped: {e.reason}") for e in dm.predict_unusable]
        if trainer.world_size > 1:  # rows, not windows, travel: a few hundred bytes a recording
            import torch.distributed as dist

            parts: list = [None] * trainer.world_size
            dist.all_gather_object(parts, predictions)
            predictions = [p for part in parts for p in part]
        if not trainer.is_global_zero:
            return
        self.predictions = sorted(predictions, key=lambda p: p.path)
        path = self._path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sensors = summarise_sensors(self.predictions, self.rule)
        sensor_path = write_outputs(path, self.predictions, pl_module.class_names, self.sensors, self.rule)
        counts = {s: sum(p.status.split(":")[0] == s for p in self.predictions)
                  for s in ("ok", "flagged", "silent", "unscored", "skipped")}
        log.info("predicted %d recordings: %d leak, %d ok, %d flagged, %d silent, %d unscored, %d skipped "
                 "(threshold %.2f): %s", len(self.predictions), sum(bool(p.leak) for p in self.predictions),
                 counts["ok"], counts["flagged"], counts["silent"], counts["unscored"], counts["skipped"],
                 float(pl_module.decision.threshold), path, extra={"colour": "success"})
        named = [s for s in self.sensors if s.sensor]
        log.info("%d sensor(s): %d leak (%s), %d too few scored, %d order unknown (see the note); %d recording(s) "
                 "without a sensor id in the name: %s", len(named), sum(s.decision == "leak" for s in named),
                 self.rule, sum(s.decision.startswith("too few") for s in named),
                 sum(s.decision == "order unknown" for s in named), len(self.sensors) - len(named), sensor_path,
                 extra={"colour": "success"})

    def _path(self, trainer) -> Path:
        return Path(self.output) if self.output else Path(trainer.default_root_dir) / "predictions.csv"
