"""The private Lightning/torch names the project uses still exist (see leak_lightning/lightning_private.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from leak_lightning import lightning_private as lp

PACKAGE = Path(lp.__file__).parent


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


def test_every_private_call_in_the_code_is_listed():
    """A `super()._x(` or `opt._x(` call on a Lightning class in the package must be in the register."""
    listed = {item.name for item in lp.USED}
    used = set()
    for path in PACKAGE.rglob("*.py"):
        used |= set(re.findall(r"(?:super\(\)|\bopt)\.(_[a-z][a-z_]+)\(", path.read_text()))
    assert used and used <= listed, f"unlisted private names: {sorted(used - listed)}"


def test_lightning_is_pinned_to_the_tested_minor():
    import lightning

    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert re.search(r'"lightning>=2\.6,<2\.7"', text)
    assert lightning.__version__.startswith("2.6."), lightning.__version__
