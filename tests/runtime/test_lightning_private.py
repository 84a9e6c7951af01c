"""The private Lightning/torch names the project uses still exist (see leak_lightning/lightning_private.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from leak_lightning.runtime import lightning_private as lp

PACKAGE = Path(lp.__file__).parents[1]  # leak_lightning/


@pytest.mark.parametrize("item", lp.USED, ids=lambda i: f"{i.owner}.{i.name}")
def test_each_private_name_exists(item):
    gone = [g for g in lp.missing() if g.startswith(item.owner) and (not item.name or g.endswith(item.name))]
    assert not gone, f"{gone} is gone from this Lightning/torch: port the code named in the reason: {item.why}"


def test_saved_loop_state_keys_exist():
    assert not lp.missing_loop_keys(), f"Lightning's fit loop state no longer has {lp.missing_loop_keys()}"


def test_missing_names_a_gone_attribute(monkeypatch):
    fake = lp.Private("lightning.pytorch.callbacks:ModelCheckpoint", "_no_such_method_here", "a test")
    monkeypatch.setattr(lp, "USED", (*lp.USED, fake))
    assert lp.missing() == ["lightning.pytorch.callbacks:ModelCheckpoint._no_such_method_here"]


def test_missing_follows_a_dotted_name_to_its_end(monkeypatch):
    owner = "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop"
    fake = lp.Private(owner, "batch_progress.current.no_such_count", "a test")
    monkeypatch.setattr(lp, "USED", (*lp.USED, fake))
    assert lp.missing() == [f"{owner}.batch_progress.current.no_such_count"]


def _private_names_used(text: str) -> tuple[set[str], set[str]]:
    """(private names read through super()/an optimizer/self, private names the text itself defines)."""
    used = set(re.findall(r"(?:super\(\)|\bopt|\bself)\.(_[a-z][a-z0-9_]*)\b", text))
    defined = set(re.findall(r"\bdef (_[a-z][a-z0-9_]*)", text))
    defined |= set(re.findall(r"\bself\.(_[a-z][a-z0-9_]*)\s*(?::[^=\n]+)?=[^=]", text))  # self._x = / self._x: T =
    defined |= set(re.findall(r"^\s+(_[a-z][a-z0-9_]*)\s*[:=]", text, re.M))  # class attributes
    defined |= set(re.findall(r"__setattr__\(self, \"(_[a-z][a-z0-9_]*)\"", text))
    return used, defined


def test_every_private_name_read_in_the_code_is_listed():
    """A private name read in the package (a `super()._x(` or `opt._x(` call, a `self._x` the package never
    defines: an attribute of a Lightning base class) must be in the register."""
    listed = {item.name.split(".")[0] for item in lp.USED}
    used, defined = set(), set()
    for path in PACKAGE.rglob("*.py"):
        u, d = _private_names_used(path.read_text())
        used, defined = used | u, defined | d
    inherited = used - defined
    assert inherited and inherited <= listed, f"unlisted private names: {sorted(inherited - listed)}"


def test_the_scan_sees_an_inherited_private_attribute():
    """The check above catches what the audit found (`self._trainer`), and not the package's own names."""
    text = "class M(L.LightningModule):\n    _cache = None\n    def _own(self):\n        self._mine = 1\n" \
           "        return self._trainer, self._mine, self._own(), self._cache\n"
    used, defined = _private_names_used(text)
    assert used - defined == {"_trainer"}


def test_the_register_docstring_counts_its_entries():
    """The count a reader sees first is the register's own: a name ported to public API lowers both."""
    said = re.search(r"^(\d+) names, each kept because", lp.__doc__, re.M)
    assert said and int(said.group(1)) == len(lp.USED), f"the docstring says {said and said.group(1)}, " \
        f"the register has {len(lp.USED)}: update leak_lightning/runtime/lightning_private.py's docstring"


def test_lightning_is_pinned_to_the_tested_minor():
    import lightning

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert re.search(r'"lightning>=2\.6,<2\.7"', text)
    assert lightning.__version__.startswith("2.6."), lightning.__version__


class _Scripted(__import__("lightning").LightningModule):
    """Logs a scripted `score` at each validation: the checkpoint callback's input, known in advance."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.layer, self.scores = torch.nn.Linear(2, 1), scores

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Metrics(__import__("lightning").pytorch.loggers.Logger):
    name, version = "metrics", 0

    def __init__(self) -> None:
        super().__init__()
        self.hp_metric: list[tuple[int, float]] = []

    def log_metrics(self, metrics, step=None) -> None:
        if "hp_metric" in metrics:
            self.hp_metric.append((step, metrics["hp_metric"]))

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass


def test_checkpoint_reports_each_new_best_and_keeps_last_current(tmp_path, ll_records, caplog):
    """Through public hooks only: a new best (and only a new best: not a worse or an equal score) is logged by
    name, value and path, hp_metric follows it, and last.ckpt follows every epoch while best.ckpt stays."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from leak_lightning.training.callbacks.checkpointing import LeakCheckpoint

    caplog.set_level("INFO", logger="leak_lightning")  # restored after the test
    scores = [0.5, 0.4, 0.7, 0.7]  # bests at epochs 0 and 2; epoch 3 only equals it
    ckpt = LeakCheckpoint(dirpath=tmp_path, filename="best", monitor="score", mode="max", save_last=True,
                          save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    logger = _Metrics()
    loader = DataLoader(TensorDataset(torch.ones(4, 2)), batch_size=2)  # 2 steps per epoch
    trainer = L.Trainer(max_epochs=len(scores), logger=logger, callbacks=[ckpt], enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu")
    trainer.fit(_Scripted(scores), loader, loader)
    best = [r.getMessage() for r in ll_records if r.getMessage().startswith("new best")]
    assert best == [f"new best score=0.5000 → {tmp_path / 'best.ckpt'}",
                    f"new best score=0.7000 → {tmp_path / 'best.ckpt'}"]
    assert logger.hp_metric == [(2, 0.5), (6, pytest.approx(0.7))]
    steps = {n: torch.load(tmp_path / f"{n}.ckpt", map_location="cpu", weights_only=False)["global_step"]
             for n in ("best", "last")}
    assert steps == {"best": 6, "last": 8}
