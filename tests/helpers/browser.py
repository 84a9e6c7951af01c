"""A real headless Chromium for the page tests, driven by Playwright for Python.

Playwright's own browser download needs its host, which CI cannot reach, so the tests launch the system Chromium
(`scripts/test.sh` installs it with apt-get on a fresh Debian machine as root). Without one the tests skip with one
line saying how to get one.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
HOW = "run `sudo apt-get install chromium` (or set LEAK_CHROMIUM=/path/to/chrome)"
TIMEOUT_MS = 60_000  # a state the page reaches, waited for generously: the test machine may be busy


def find_chromium() -> str | None:
    """$LEAK_CHROMIUM, else the first of NAMES on PATH; None when there is none."""
    chosen = os.environ.get("LEAK_CHROMIUM")
    if chosen:
        return shutil.which(chosen) or chosen
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def missing() -> str | None:
    """Why the browser tests cannot run here, as the one line that says how to enable them; None when they can."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed: run `bash scripts/setup.sh` (the dev extra)"
    return None if find_chromium() else f"no Chromium found: {HOW}"


@pytest.fixture(scope="session")
def browser() -> Iterator:
    """One headless Chromium per session (each test opens its own context: its own storage and downloads)."""
    if reason := missing():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if not Path(executable).is_file():
        pytest.fail(f"LEAK_CHROMIUM={executable}: no such file; point it at a Chromium or Chrome executable")
    with sync_playwright() as p:
        # a found browser that will not start is a fault to see, not a reason to skip
        launched = p.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


def open_page(browser, url: str, dialogs: list[str], width: int = 1280, height: int = 900,
              errors: list[str] | None = None):
    """A fresh context (empty storage) on `url`, returned once the page says it has rendered
    (`document.body.dataset.ready == "1"`); every dialog it opens is recorded in `dialogs` and dismissed, and
    every console error and uncaught exception in `errors` (a Content-Security-Policy refusal is one)."""
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    if errors is not None:
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    wait_ready(page)
    return page


def wait_ready(page) -> None:
    page.wait_for_function("document.body && document.body.dataset.ready === '1'", timeout=TIMEOUT_MS)


def wait_until(page, expression: str, arg=None) -> bool:
    """Wait for the page's `expression` (a JS function of `arg`) to be truthy; False when it never gets there, so
    that the caller's assert shows what the page holds instead of a bare timeout."""
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_MS)
    except PageTimeout:
        return False
    return True
