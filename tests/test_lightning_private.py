"""The private Lightning/torch names the project uses still exist (see leak_lightning/lightning_private.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_lightning_is_pinned_to_the_tested_minor():
    import lightning

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert re.search(r'"lightning>=2\.6,<2\.7"', text)
    assert lightning.__version__.startswith("2.6."), lightning.__version__
