"""The review page in a real headless Chromium, opened from disk (file://, no server): a site scored by the real
`predict`, its folder written by the real `review`, and what the page shows checked against the predictions CSV
read with the csv module, the queue function run on that CSV, and sha256 of the recordings' bytes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.browser import missing, open_page, wait_ready, wait_until
from helpers.files import REPO, one_error
from synthetic import make_dataset, sensor_file_name, synth_clip

from leak_lightning.inference.predict import name_fields
from leak_lightning.inference.queue import Candidate, night_of, review_queue

pytestmark = pytest.mark.slow
if reason := missing():  # one line for the module, before anything is built
    pytest.skip(reason, allow_module_level=True)

# names a page must show as text: the first is a folder `<script>alert(1)<` holding `script>.wav`
HOSTILE = ("<script>alert(1)</script>.wav", '"><img src=x onerror=alert(1)>.wav')
QUEUE = 14  # of 20 scored recordings: the queue's choice is checked, not only its order
LONG = 25.0  # seconds: two of the recordings, several windows each


@dataclass(frozen=True)
class Built:
    recordings: Path  # the folder predict read (adapt --input)
    review: Path  # the folder review wrote
    ckpt: Path
    rows: list[dict[str, str]]  # predictions.csv
    sensors: list[dict[str, str]]  # predictions_sensors.csv


def _leak_lightning(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "leak_lightning", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"})


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _site(root: Path) -> None:
    """Six sensors over several nights (S0001 over three), two recordings with hostile names."""
    make_dataset(root, layout="pool", labels=("LEAK", "NORMAL"), files_per_label=8, sensors_per_label=3, seed=7)
    rng = np.random.default_rng(7)
    for k, stamp in enumerate(("20251121T230000", "20251123T020000")):  # long enough for several windows
        clip = synth_clip("LEAK", rng, duration_sec=LONG)
        sf.write(root / "LEAK" / sensor_file_name(1, 20 + k, stamp, 12), clip, 4096)
    for name in HOSTILE:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, synth_clip("NORMAL", rng), 4096)


@pytest.fixture(scope="module")
def built(browser, trained_run, tmp_path_factory) -> Built:
    """The site scored and its review folder built (after the browser: without one, nothing is built)."""
    root = tmp_path_factory.mktemp("review")
    recordings, predictions, ckpt = root / "district", root / "predictions.csv", trained_run / "checkpoints/best.ckpt"
    _site(recordings)
    done = _leak_lightning("predict", "--ckpt_path", ckpt, "--data.predict_path", recordings, "--output", predictions,
                           "--trainer.default_root_dir", root / "run", "--console.log_file", "null")
    assert done.returncode == 0, done.stderr[-3000:]
    done = _leak_lightning("review", "--predictions", predictions, "--recordings", recordings, "--output",
                           root / "review", "--queue", QUEUE)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _read_csv(predictions)
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(recordings).as_posix()
                                                     for p in recordings.rglob("*.wav"))
    return Built(recordings, root / "review", ckpt, rows, _read_csv(root / "predictions_sensors.csv"))


@pytest.fixture
def page(browser, built):
    """The review page opened from disk in a fresh context; no test may see it open a dialog."""
    dialogs: list[str] = []
    errors: list[str] = []
    opened = open_page(browser, (built.review / "index.html").as_uri(), dialogs, errors=errors)
    opened.errors = errors
    yield opened
    opened.context.close()
    assert dialogs == [], f"the page opened dialogs: {dialogs}"


def _ids(page) -> dict[str, int]:
    """The page's recording id of each path (its data, checked against the CSV)."""
    pairs = page.evaluate("window.LEAK_REVIEW.recordings.map(r => [r.path, r.id])")
    return dict(pairs)


def _sensor(path: str) -> str:
    return name_fields(path)[0]


def _sensor_night(path: str) -> tuple[str, str]:
    sensor, when = name_fields(path)
    return sensor, night_of(when)


def test_each_sensor_row_shows_its_verdict_and_a_mark_per_recording(built, page):
    ids = _ids(page)
    path_of = {i: p for p, i in ids.items()}
    assert sorted(ids) == sorted(r["path"] for r in built.rows)
    verdicts = dict(page.eval_on_selector_all(
        "[data-sensor]", "rows => rows.map(r => [r.dataset.sensor, (r.querySelector('.verdict') || {}).textContent])"))
    for s in (s for s in built.sensors if s["sensor"]):
        assert (verdicts.get(s["sensor"]) or "").strip() == s["sensor_decision"], s["sensor"]
    marks = page.eval_on_selector_all(
        "[data-sensor] button.mark",
        "ms => ms.map(m => [m.closest('[data-sensor]').dataset.sensor, +m.dataset.id, m.dataset.leak])")
    got, want = defaultdict(list), defaultdict(list)
    for sensor, i, leak in marks:
        got[sensor].append((path_of[i], leak))
    for r in built.rows:
        want[_sensor(r["path"])].append((r["path"], r["leak_decision"]))
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
    counted = {s["sensor"]: int(s["recordings"]) for s in built.sensors if s["sensor"]}
    assert counted == {k: len(v) for k, v in want.items() if k} and len(want[""]) == len(HOSTILE)
    assert len({_sensor_night(p)[1] for p, _ in want["S0001"]}) == 3  # the site is what it should be


def test_the_queue_is_the_queue_functions_pick_from_the_csv_in_order(built, page):
    # equal margins (a vote over few windows gives many) are ordered by the leak score
    candidates = [Candidate(k, float(r["decision_score"]) - float(r["decision_cutoff"]), *_sensor_night(r["path"]),
                            float(r["leak_score"])) for k, r in enumerate(built.rows) if r["leak_decision"]]
    assert len(candidates) == len(built.rows) > QUEUE
    picks = review_queue(candidates, QUEUE)
    ids = _ids(page)
    items = page.eval_on_selector_all("#queue > li", "els => els.map(e => [+e.dataset.id, e.textContent])")
    path_of = {i: p for p, i in ids.items()}
    assert [path_of[i] for i, _ in items] == [built.rows[p.key]["path"] for p in picks]
    for (_, text), pick in zip(items, picks):
        assert pick.why in " ".join(text.split()), text


def test_a_recordings_detail_plays_its_audio_and_draws_its_windows(built, page):
    row = next(r for r in built.rows if r["path"].startswith("LEAK/S0001~R0020~"))
    windows = [tuple(map(float, w.split("-"))) for w in row["window_seconds"].split(";")]
    assert int(row["windows"]) == len(windows) >= 2 and row["leak_decision"]
    page.locator(f'button.mark[data-id="{_ids(page)[row["path"]]}"]').click()
    wait_until(page, "p => document.querySelector('#detail-path').textContent === p", row["path"])
    assert page.locator("#detail-path").text_content() == row["path"]
    # HAVE_CURRENT_DATA: the browser decoded the WAV and knows its length
    assert wait_until(page, "() => document.querySelector('audio#player').readyState >= 2"), "the audio never loaded"
    duration = page.evaluate("document.querySelector('audio#player').duration")
    assert abs(duration - sf.info(built.recordings / row["path"]).duration) <= 0.1 and abs(duration - LONG) <= 0.1
    assert page.locator("#overlay .window").count() == len(windows)
    assert page.locator("#detail button.play-window").count() == len(windows)
    assert wait_until(page, "() => { const i = document.querySelector('img#spectrogram'); "
                            "return i.complete && i.naturalWidth > 0 }"), "the spectrogram never loaded"
    page.locator("#detail button.play-window").last.click()  # seeks to the last window's start
    seek = "t => document.querySelector('audio#player').currentTime >= t - 0.05"
    assert wait_until(page, seek, windows[-1][0]), page.evaluate("document.querySelector('audio#player').currentTime")
    page.evaluate("document.querySelector('audio#player').pause()")


def test_hostile_names_are_shown_as_text_and_never_run(built, page):
    ids = _ids(page)
    for name in HOSTILE:
        mark = page.locator(f'[data-sensor=""] button.mark[data-id="{ids[name]}"]')
        assert name in (mark.get_attribute("aria-label") or ""), mark.get_attribute("aria-label")
        mark.click()
        wait_until(page, "p => document.querySelector('#detail-path').textContent === p", name)
        assert page.locator("#detail-path").text_content() == name
    assert page.locator("img[src='x']").count() == 0
    # index.html's own scripts all load files; one without a src was written by the data
    assert page.eval_on_selector_all("script", "ss => ss.filter(s => !s.src).length") == 0


def test_the_page_runs_only_its_own_files(page):
    """index.html's Content-Security-Policy: a script that reached the DOM without a file of the folder does not
    run (a second defence behind writing names as text), and the page itself breaks none of its rules."""
    assert page.errors == []
    page.evaluate("() => { const s = document.createElement('script'); s.textContent = 'window.injected = 1';"
                  " document.body.appendChild(s); }")
    assert page.evaluate("window.injected === undefined")
    assert any("Content Security Policy" in e for e in page.errors), page.errors


@dataclass(frozen=True)
class Labelled:
    chosen: dict[str, str]  # path -> label, in queue order
    restored: dict[str, str]  # what the radios show after a reload
    count: str  # #labelled-count after the reload
    exported: Path


def _choose(queue_paths: list[str]) -> dict[str, str]:
    """The queue's first three recordings of each kind labelled by their folder (the truth), one more unsure."""
    leak = [p for p in queue_paths if p.startswith("LEAK/")][:3]
    other = [p for p in queue_paths if not p.startswith("LEAK/")][:3]
    unsure = next(p for p in queue_paths if p not in leak + other)
    chosen = {**{p: "leak" for p in leak}, **{p: "not leak" for p in other}, unsure: "unsure"}
    assert len(leak) == len(other) == 3
    return {p: chosen[p] for p in queue_paths if p in chosen}


@pytest.fixture(scope="module")
def labelled(browser, built, tmp_path_factory) -> Labelled:
    """Labels given in the queue (the first by keyboard: focus + Space), the page reloaded, labels.csv exported."""
    dialogs: list[str] = []
    page = open_page(browser, (built.review / "index.html").as_uri(), dialogs)
    ids = _ids(page)
    path_of = {i: p for p, i in ids.items()}
    chosen = _choose([path_of[int(i)] for i in page.eval_on_selector_all("#queue > li", "els => els.map(e => "
                                                                                    "e.dataset.id)")])
    for k, (path, label) in enumerate(chosen.items()):
        radio = page.locator(f'#queue input[name="label-{ids[path]}"][value="{label}"]')
        if k == 0:
            radio.focus()
            page.keyboard.press("Space")
        else:
            radio.check()
    wait_until(page, "n => document.querySelector('#labelled-count').textContent.trim().startsWith(n + ' of')",
               len(chosen))
    page.reload()
    wait_ready(page)
    checked = page.eval_on_selector_all("#queue input[type=radio]:checked", "rs => rs.map(r => [r.name, r.value])")
    restored = {path_of[int(name.removeprefix("label-"))]: value for name, value in checked}
    exported = tmp_path_factory.mktemp("exported") / "labels.csv"
    with page.expect_download() as download:
        page.locator("#export").click()
    download.value.save_as(exported)
    count = page.locator("#labelled-count").text_content()
    page.context.close()
    assert dialogs == []
    return Labelled(chosen, restored, count, exported)


def test_labels_survive_a_reload_and_export_as_labels_csv(built, labelled):
    assert labelled.restored == labelled.chosen
    assert labelled.count.strip().startswith(f"{len(labelled.chosen)} of")
    with labelled.exported.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    digest = {p: hashlib.sha256((built.recordings / p).read_bytes()).hexdigest()[:16] for p in labelled.chosen}
    assert rows[0] == ["path", "audio_digest", "label"]
    assert rows[1:] == [[p, digest[p], label] for p, label in labelled.chosen.items()]  # the queue's order


def test_adapt_fits_the_exported_labels_and_refuses_a_changed_recording(built, labelled, tmp_path):
    if "--labels" not in _leak_lightning("adapt", "--help").stdout:
        pytest.skip("adapt has no --labels option yet")
    site = tmp_path / "site"
    shutil.copytree(built.recordings, site)
    out = tmp_path / "x.ckpt"
    args = ["adapt", "--ckpt_path", built.ckpt, "--input", site, "--labels", labelled.exported, "--site", "x",
            "--folds", "3", "--output", out]
    done = _leak_lightning(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_name("x_adapt_report.json").read_text())
    assert report["labels"]["rows"] == len(labelled.chosen) and report["labels"]["unsure"] == 1, report["labels"]

    changed = next(p for p, label in labelled.chosen.items() if label == "leak")
    was = hashlib.sha256((site / changed).read_bytes()).hexdigest()[:16]
    with (site / changed).open("r+b") as f:  # one sample's bytes at the end of the data: still a valid WAV
        f.seek(-2, os.SEEK_END)
        f.write(b"\x7f\x7f")
    now = hashlib.sha256((site / changed).read_bytes()).hexdigest()[:16]
    done = _leak_lightning(*args, "--overwrite", "true")
    line = one_error(done.returncode, done.stderr)
    assert changed in line and was in line and now in line, line


def test_a_sensor_filter_leaves_only_its_row(built, page):
    page.locator("#filter-sensor").press_sequentially("S0004")
    visible = ("() => [...document.querySelectorAll('[data-sensor]')].filter(e => e.getClientRects().length)"
               ".map(e => e.dataset.sensor)")
    wait_until(page, f"() => ({visible})().join() === 'S0004'")
    assert page.evaluate(visible) == ["S0004"]


def test_every_control_has_a_name_and_tab_reaches_the_queue(page):
    unnamed = page.evaluate("""() => [...document.querySelectorAll('input, select, button, textarea')]
        .filter(e => e.type !== 'hidden')
        .filter(e => {
            const by = (e.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean)
                .map(id => (document.getElementById(id) || {}).textContent || '').join('');
            const labels = [...(e.labels || [])].map(l => l.textContent).join('');
            const own = ['button'].includes(e.tagName.toLowerCase()) ? e.textContent : '';
            return !(e.getAttribute('aria-label') || by || labels || own || e.title || '').trim();
        })
        .map(e => e.outerHTML.slice(0, 120))""")
    assert unnamed == []
    first = "document.activeElement.matches('#queue > li:first-child input[type=radio]')"
    for _ in range(400):
        if page.evaluate(first):
            break
        page.keyboard.press("Tab")
    assert page.evaluate(first), page.evaluate("document.activeElement.outerHTML.slice(0, 200)")


def _png_width(path: Path) -> int:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">I", head[16:20])[0]


def test_the_screenshot(built, page, tmp_path):
    """The README's picture: a recording's detail open and two labels given; docs/review.png with
    LEAK_UPDATE_SCREENSHOT=1."""
    ids = _ids(page)
    first = page.eval_on_selector_all("#queue > li", "els => els.slice(0, 2).map(e => +e.dataset.id)")
    page.locator(f'button.mark[data-id="{first[0]}"]').click()
    wait_until(page, "() => document.querySelector('audio#player').readyState >= 1")
    for i, label in zip(first, ("leak", "not leak")):
        page.locator(f'#queue input[name="label-{i}"][value="{label}"]').check()
    wait_until(page, "() => document.querySelector('img#spectrogram').complete")
    shot = tmp_path / "review.png"
    # the top of the page: header, sensors over nights, the recording, the queue's first item (the whole queue
    # would make the README's picture three times as tall)
    page.screenshot(path=shot, full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 1750})
    assert _png_width(shot) == 1280 and len(ids) == len(built.rows)
    if os.environ.get("LEAK_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO / "docs" / "review.png")
