"""The package's architecture holds: import-linter's contracts in pyproject.toml ([tool.importlinter]) are kept."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.files import REPO

LINT = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    # cwd first on the path so a copy in tmp_path is the package analysed, not the checkout; no cache file left
    env = {**os.environ, "PYTHONPATH": str(cwd), "NO_COLOR": "1"}
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "pyproject.toml"], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_the_contracts_are_kept():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", done.stdout), done.stdout


PLANTED = {
    # audio (a bottom layer) importing the CLI (the top one) is named, with the line that does it
    "upward import": ("audio/scan.py", "\n\ndef _planted():\n    from ..cli import main\n\n    return main\n",
                      ("Layers: cli on top", "BROKEN", "leak_lightning.audio.scan -> leak_lightning.cli")),
    "lightning below the trainer": ("models/cnn.py", "\n\nimport lightning  # noqa: E402,F401\n",
                                    ("leak_lightning.models is not allowed to import lightning",)),
}


@pytest.mark.parametrize("case", PLANTED)
def test_a_planted_import_breaks_its_contract(case, tmp_path):
    module, planted, said = PLANTED[case]
    shutil.copytree(REPO / "leak_lightning", tmp_path / "leak_lightning",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "leak_lightning" / module
    path.write_text(path.read_text() + planted)
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    for words in said:
        assert words in done.stdout, done.stdout
