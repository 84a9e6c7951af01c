#!/usr/bin/env bash
# Fresh machine → installed venv → lint, the docs site, the whole test suite (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check leak_lightning tests scripts
# the docs site, warnings (a broken link or anchor, a page outside the nav) as errors; built outside the checkout
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
.venv/bin/mkdocs build --strict --site-dir "$site_dir"  # not --quiet: mkdocs 1.6 then lets warnings pass
.venv/bin/python -m pytest -q "$@"
