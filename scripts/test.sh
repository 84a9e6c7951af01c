#!/usr/bin/env bash
# Fresh machine → installed venv → the whole test suite (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check leak_lightning tests scripts
.venv/bin/python -m pytest -q "$@"
