"""`review` stopped by Ctrl-C or SIGTERM in a real process: one line, its exit status, and nothing left behind (no
half-written folder, no temporary, no lock); the review that was there before stays whole."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers.files import start_paused, tone, write_wav

from leak_lightning.inference.predict import SensorRule, summarise_sensors, write_outputs
from leak_lightning.inference.scorer import Prediction

PAUSED_REVIEW = """
import sys, time
from helpers import _announce
from leak_lightning.inference import review
from leak_lightning.cli import main

ready, argv = sys.argv[1], sys.argv[2:]
drawn = review.spectrogram_png

def paused(*args, **kwargs):
    drawn(*args, **kwargs)
    _announce(ready)  # one recording's spectrogram written into the temporary folder: held there
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)

review.spectrogram_png = paused
main(["review", *argv])
"""


def site(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "site"
    predictions = []
    for i in range(3):
        name = f"S0{i}~R1~2025111{i}T221500~g0.wav"
        write_wav(folder / name, tone(400 + 50 * i, 10, 4096, seed=i))
        predictions.append(Prediction(name, "ok", 0.3 * i, i > 0, 0.3 * i, {"LEAK": 0.3 * i}, [0.3 * i],
                                      windows=1, decision_score=0.3 * i, decision_cutoff=0.5,
                                      window_times=[(0.0, 10.0)]))
    csv_path = tmp_path / "predictions.csv"
    write_outputs(csv_path, predictions, ["LEAK"], summarise_sensors(predictions, SensorRule()), SensorRule())
    return folder, csv_path


@pytest.mark.slow
@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_during_review_is_one_line_and_leaves_the_old_review(tmp_path, sig, status):
    from leak_lightning.inference.review import review_site

    folder, csv_path = site(tmp_path)
    out = tmp_path / "rev"
    review_site(str(csv_path), str(folder), str(out), audio="none")
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    ready = tmp_path / "ready"
    proc = start_paused(["-c", PAUSED_REVIEW, str(ready), "--predictions", str(csv_path), "--recordings",
                         str(folder), "--output", str(out), "--overwrite", "true"], ready, "review")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    errors = [line for line in err.splitlines() if "[ERROR]" in line]
    assert proc.returncode == status and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"review interrupted ({sig.name})" in errors[0]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv", "predictions_sensors.csv", "ready",
                                                          "rev", "site"]  # no temporary folder, no lock
