"""What a large site costs the `review` command and the page it writes: build time, folder size, time to first paint.

    python scripts/benchmark_review.py --workdir /tmp/review_bench
    python scripts/benchmark_review.py --ckpt runs/x/checkpoints/best.ckpt --sensors 500 --nights 10 --seconds 2

A synthetic site of `--sensors` loggers x `--nights` nights (one short recording a night each, in one folder, named
`SENSOR~RECORDING~TIME~GAIN.wav` as scripts/synthetic.py writes them; a fifth of the sensors leak) is scored by
`python -m leak_lightning predict` with `--ckpt` (default: a tiny configs/demo.yaml model trained here for
`--epochs`), then `python -m leak_lightning review` builds its folder `--repeats` times (each in a fresh process,
as a user runs it; the median is printed). Then the folder's size, in all and per part (audio, spectrograms, data.js,
the page's own files), and headless Chromium (Playwright) opens index.html from disk `--loads` times, each in a
fresh browser context: the paint timing's first-contentful-paint and the time until the page says it is ready
(`document.body.dataset.ready == "1"`), both from the start of the navigation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic import make_dataset, sensor_file_name  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIRST_NIGHT = datetime(2025, 11, 19, 22, 0)
# Records when the page first says it is ready; set before any of the page's own scripts run, so the moment is the
# page's own and not the polling's.
READY_WATCH = """
window.__readyAt = null;
new MutationObserver(() => {
  if (window.__readyAt === null && document.body && document.body.dataset.ready === "1") {
    window.__readyAt = performance.now();
  }
}).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ["data-ready"]});
"""


def leak(*argv: str) -> float:
    """Run `python -m leak_lightning ...` in a fresh process → its wall seconds; a failure stops the benchmark."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "leak_lightning", *argv, "--log_level", "WARNING"], cwd=REPO,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv[:1])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def make_site(folder: Path, sensors: int, nights: int, seconds: float) -> int:
    """`sensors` x `nights` recordings in one folder, one a night per sensor between 22:00 and 02:00."""
    if (folder / "done").is_file():
        return len(list(folder.glob("*.wav")))
    shutil.rmtree(folder, ignore_errors=True)
    raw = folder.with_name(folder.name + "_raw")
    shutil.rmtree(raw, ignore_errors=True)
    labels = 5  # scripts/synthetic.py's classes: the sensors are spread over them, a fifth of them LEAK
    if sensors % labels:
        raise SystemExit(f"--sensors {sensors}: use a multiple of {labels} (each class gets as many sensors)")
    written = make_dataset(raw, layout="pool", files_per_label=sensors // labels * nights,
                           sensors_per_label=sensors // labels, seed=7, duration_sec=seconds)
    folder.mkdir(parents=True)
    for path in written:
        sensor, recording, _, gain = path.stem.split("~")
        number, night = int(sensor[1:]), int(recording[1:]) - 1
        when = FIRST_NIGHT + timedelta(days=night, minutes=(number * 37) % 240)
        path.rename(folder / sensor_file_name(number, night + 1, when.strftime("%Y%m%dT%H%M%S"), int(gain[1:])))
    shutil.rmtree(raw)
    (folder / "done").write_text("")
    return len(written)


def tiny_checkpoint(work: Path, epochs: int) -> Path:
    """A configs/demo.yaml model trained for a few epochs on a small synthetic corpus (what it decides hardly
    matters here: the page's cost is the recordings')."""
    ckpt = work / f"tiny_e{epochs}" / "checkpoints" / "best.ckpt"
    if ckpt.is_file():
        return ckpt
    wav, data = work / "tiny_wav", work / "tiny_h5"
    make_dataset(wav, layout="origin", files_per_label=20, sensors_per_label=4, seed=0)
    leak("build", "--input", str(wav), "--output", str(data), "--overwrite", "true")
    leak("fit", "--config", "configs/demo.yaml", *[f"--data.{k}_h5={data / f'{v}_DATASET.H5'}" for k, v in
         (("train", "TRAINING"), ("val", "VALIDATION"), ("test", "TESTING"))],
         f"--trainer.default_root_dir={ckpt.parent.parent}", f"--trainer.max_epochs={epochs}", "--overwrite=true")
    return ckpt


def sizes(folder: Path) -> dict[str, int]:
    """Bytes in the review folder: all, and per part."""
    parts = {"audio": 0, "spectrograms": 0, "data.js": 0, "page": 0}
    for path in folder.rglob("*"):
        if path.is_file():
            top = path.relative_to(folder).parts[0]
            parts[top if top in parts else "page"] += path.stat().st_size
    return {"total": sum(parts.values()), **parts}


def page_loads(index: Path, loads: int, timeout_s: float) -> list[tuple[float | None, float]]:
    """(first-contentful-paint ms or None where Chromium gave none, ready ms) per load of the page from disk; a
    script error on the page stops the benchmark (its timings would not be the page's)."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
        try:
            for _ in range(loads):
                context = browser.new_context()  # no cache or storage carried from the load before
                page = context.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda err, errors=errors: errors.append(str(err)))
                page.add_init_script(READY_WATCH)
                page.goto(index.resolve().as_uri(), wait_until="commit", timeout=timeout_s * 1000)
                # a selector, not wait_for_function: the page's Content-Security-Policy forbids the eval that one needs
                page.wait_for_selector('body[data-ready="1"]', state="attached", timeout=timeout_s * 1000)
                ready = page.evaluate("window.__readyAt")
                paint = page.evaluate("(performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime"
                                      " ?? null")
                if errors:
                    raise SystemExit(f"{index}: the page raised {errors[0]}")
                out.append((paint, ready))
                context.close()
        finally:
            browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/leak_review_bench"))
    ap.add_argument("--ckpt", type=Path, default=None, help="the checkpoint predict scores with (default: a tiny "
                    "configs/demo.yaml model trained in the workdir)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the tiny model (without --ckpt)")
    ap.add_argument("--sensors", type=int, default=500, help="loggers at the site (a multiple of 5)")
    ap.add_argument("--nights", type=int, default=10, help="recordings per logger, one a night")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each recording")
    ap.add_argument("--repeats", type=int, default=3, help="review builds timed (the median is printed)")
    ap.add_argument("--loads", type=int, default=3, help="page loads timed in headless Chromium")
    ap.add_argument("--rescore", action="store_true", help="run predict again even if the site's CSV exists")
    ap.add_argument("--audio", choices=["all", "queue", "none"], default="all", help="review's --audio")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a page load may take to be ready")
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    site = work / f"site_{args.sensors}x{args.nights}_{args.seconds:g}s"
    count = make_site(site, args.sensors, args.nights, args.seconds)
    predictions = work / f"{site.name}_predictions.csv"
    predict_s = ckpt = None
    if args.rescore or not predictions.is_file():  # the CSV is the review's input, not what is measured here
        ckpt = args.ckpt or tiny_checkpoint(work, args.epochs)
        predict_s = leak("predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(site), "--output",
                         str(predictions))
    out = work / f"{site.name}_review"
    builds = [leak("review", "--predictions", str(predictions), "--recordings", str(site), "--output", str(out),
                   "--audio", args.audio, "--overwrite", "true") for _ in range(args.repeats)]
    size = sizes(out)
    loads = page_loads(out / "index.html", args.loads, args.timeout)
    paints = [p for p, _ in loads if p is not None]
    mb = 1e6
    print(f"\nreview of a {count}-recording site ({args.sensors} sensors x {args.nights} nights, {args.seconds:g} s "
          f"recordings); predictions {'reused' if ckpt is None else f'of {ckpt} in {predict_s:.1f} s'}; "
          f"{os.cpu_count()} CPUs")
    print("| what | measured |\n|---|---|")
    print(f"| review build, median of {len(builds)} (fresh processes) | {statistics.median(builds):.1f} s "
          f"[{min(builds):.1f}, {max(builds):.1f}] |")
    print(f"| folder, all (--audio {args.audio}) | {size['total'] / mb:.1f} MB |")
    for part in ("audio", "spectrograms", "data.js", "page"):
        print(f"| {part} | {size[part] / mb:.2f} MB |")
    print(f"| first contentful paint, median of {len(paints)} loads | "
          + (f"{statistics.median(paints):.0f} ms [{min(paints):.0f}, {max(paints):.0f}] |" if paints else "none |"))
    ready = [r for _, r in loads]
    print(f"| ready (body data-ready=1), median of {len(ready)} loads | {statistics.median(ready):.0f} ms "
          f"[{min(ready):.0f}, {max(ready):.0f}] |")


if __name__ == "__main__":
    main()
