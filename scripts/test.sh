#!/usr/bin/env bash
# Fresh machine → installed venv → lint, the docs site, the whole test suite (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The browser tests drive the system Chromium through Playwright (its own browser download host is out of reach on
# CI): on a fresh Debian machine, as root, install it. A failed install only skips those tests (they say how).
have_browser() {
  [ -n "${LEAK_CHROMIUM:-}" ] && return 0
  for b in chromium chromium-browser google-chrome; do command -v "$b" >/dev/null && return 0; done
  return 1
}
if ! have_browser && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  install_chromium() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }
  install_chromium || { apt-get update -qq >/dev/null 2>&1 && install_chromium; } \
    || echo "test.sh: could not install chromium with apt-get; the browser tests will be skipped" >&2
fi
.venv/bin/ruff check leak_lightning tests scripts
# the docs site, warnings (a broken link or anchor, a page outside the nav) as errors; built outside the checkout
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
.venv/bin/mkdocs build --strict --site-dir "$site_dir"  # not --quiet: mkdocs 1.6 then lets warnings pass
.venv/bin/python -m pytest -q "$@"
