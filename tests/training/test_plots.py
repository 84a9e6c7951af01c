"""The report plots a water engineer reads: leak decisions counted as decided, the cutoff used drawn on the
scores, whole-number counts and no jargon. Six hand-made recordings; every count below is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from leak_lightning.models.evaluation import decision_basis, file_decisions
from leak_lightning.training.plots import report_figures

NAMES = ["NO_LEAK", "NOISE", "LEAK"]
LEAK = 2
# Four windows per recording. With threshold 0.45 the share of windows at or above it is
# 0.75, 0.5, 0, 0.5, 0, 0.25; with the vote cutoff 0.5 recordings 0, 1 (leaks) and 3 (no leak) are leaks.
WINDOWS = torch.tensor([[0.9, 0.8, 0.7, 0.2],   # leak, found
                        [0.6, 0.6, 0.1, 0.1],   # leak, found (exactly at the cutoff), NOISE scored highest
                        [0.1, 0.2, 0.3, 0.4],   # leak, missed
                        [0.9, 0.9, 0.1, 0.1],   # no leak: false alarm
                        [0.1, 0.1, 0.1, 0.1],   # no leak, rightly clear
                        [0.2, 0.6, 0.1, 0.1]])  # NOISE, rightly clear
# class order NO_LEAK, NOISE, LEAK; the LEAK column is the mean window (0.65, 0.35, 0.25, 0.5, 0.1, 0.25)
CLASS_SCORES = torch.tensor([[0.20, 0.15, 0.65], [0.20, 0.45, 0.35], [0.60, 0.15, 0.25],
                             [0.10, 0.40, 0.50], [0.70, 0.20, 0.10], [0.15, 0.60, 0.25]])
TARGETS = torch.eye(3)[[LEAK, LEAK, LEAK, 0, 0, 1]]
THRESHOLD, VOTE_FRACTION = 0.45, 0.5


def results(aggregation: str = "vote", stage: str = "test") -> dict:
    """What the module leaves in `last_results`, made as the module makes it."""
    basis, cutoff = decision_basis(WINDOWS, THRESHOLD, aggregation, VOTE_FRACTION)
    decided = file_decisions(WINDOWS, torch.tensor([THRESHOLD]), aggregation, VOTE_FRACTION)[0]
    return {"stage": stage, "metrics": {}, "decision_scores": basis, "decision_cutoff": cutoff,
            "files": torch.arange(6), "file_probs": CLASS_SCORES, "file_scores": WINDOWS.mean(-1),
            "decisions": decided, "windows": WINDOWS, "file_probability": WINDOWS.mean(-1), "targets": TARGETS}


def figures(aggregation: str = "vote", stage: str = "test") -> dict:
    figs = report_figures(results(aggregation, stage), NAMES, LEAK, THRESHOLD, aggregation, VOTE_FRACTION)
    for fig in figs.values():
        fig.canvas.draw()  # ticks and their labels are only final once drawn
    return figs


def cells(ax) -> np.ndarray:
    """The whole numbers written in a matrix's cells, in the image's shape."""
    shape = ax.images[0].get_array().shape
    counts = [int(t.get_text().split("\n")[0]) for t in ax.texts]
    return np.array(counts).reshape(shape)


def words(fig) -> list[str]:
    """Every title, axis label, tick label and legend entry of a figure."""
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def test_hand_made_recordings_decide_as_the_comments_say():
    r = results()
    assert r["decisions"].tolist() == [True, True, False, True, False, False]
    assert r["decision_scores"].tolist() == [0.75, 0.5, 0.0, 0.5, 0.0, 0.25] and r["decision_cutoff"] == 0.5


def test_confusion_counts_the_leak_decisions_not_the_top_class():
    leak_ax, class_ax = figures()["confusion"].axes
    # rows: leak, no leak (truth); columns: leak, no leak (decided). The top class would make it [[1, 2], [1, 2]].
    assert cells(leak_ax).tolist() == [[2, 1], [1, 2]]
    assert (leak_ax.images[0].get_array() == np.array([[2, 1], [1, 2]])).all()
    assert leak_ax.get_title() == ("Leak decisions on the test recordings:\n"
                                   "2 of 3 leaks found,\n1 false alarm among 3 recordings without a leak")
    assert [t.get_text() for t in leak_ax.get_xticklabels()] == ["leak", "no leak"]
    # the most likely class, kept beside it: rows true, columns scored highest (NO_LEAK, NOISE, LEAK)
    assert cells(class_ax).tolist() == [[1, 0, 1], [0, 1, 0], [1, 1, 1]]
    assert class_ax.get_title() == "Most likely class of each test recording:\n3 of 6 recordings right"


def test_confusion_title_names_the_validation_split():
    assert figures(stage="val")["confusion"].axes[0].get_title().startswith("Leak decisions on the validation")


def vertical_line(ax) -> tuple[float, str]:
    """The one vertical line of an axes: where it stands and its legend label."""
    lines = [line for line in ax.lines if len(set(np.asarray(line.get_xdata(), dtype=float))) == 1]
    assert len(lines) == 1, [line.get_label() for line in ax.lines]
    return float(lines[0].get_xdata()[0]), lines[0].get_label()


@pytest.mark.parametrize("aggregation, cutoff, xlabel, leak_scores", [
    ("vote", 0.5, "share of the recording's windows\nat or above the threshold 0.45", [0.0, 0.5, 0.75]),
    ("mean", THRESHOLD, "mean window leak probability\nof the recording", [0.25, 0.35, 0.65])])
def test_score_histogram_marks_the_cutoff_the_decisions_used(aggregation, cutoff, xlabel, leak_scores):
    ax = figures(aggregation)["scores"].axes[0]
    x, label = vertical_line(ax)
    assert x == pytest.approx(cutoff) and label == f"decided a leak at {cutoff:.2f} or more"
    assert ax.get_xlabel() == xlabel and ax.get_ylabel() == "recordings"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["recordings without a leak (3)", "leaks (3)", f"decided a leak at {cutoff:.2f} or more"]
    # bars of 0.05: the leaks' scores (vote 0.75, 0.5, 0; mean 0.65, 0.35, 0.25) one per bar
    heights = [p.get_height() for p in ax.patches]
    assert sum(heights) == 6 and max(heights) == 1
    # the leaks' bars (the second 20 bars) stand at the numbers the decisions compared with the cutoff
    leak_bars = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches[20:] if p.get_height()]
    assert len(leak_bars) == 3
    assert all(any(lo - 1e-6 <= v < hi + 1e-6 for lo, hi in leak_bars) for v in leak_scores), leak_bars


def test_f1_plot_marks_the_threshold_used():
    ax = figures()["f1_threshold"].axes[0]
    x, label = vertical_line(ax)
    assert x == pytest.approx(THRESHOLD) and label == "threshold used: 0.45"


def test_recording_counts_are_whole_numbers():
    figs = figures()
    for ax in figs["scores"].axes:  # at most one recording per bar: a plain locator would tick 0.2, 0.4, ...
        assert isinstance(ax.yaxis.get_major_locator(), MaxNLocator)
        ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        assert all(lbl.get_text().lstrip("−-").isdigit() for lbl in ax.get_yticklabels() if lbl.get_text())
    for ax in figs["confusion"].axes:
        assert all(t.get_text().split("\n")[0].isdigit() for t in ax.texts)


def test_no_jargon_in_any_figure():
    for aggregation in ("vote", "mean"):
        for name, fig in figures(aggregation).items():
            text = " ".join(words(fig))
            for jargon in ("vote", "seg_", "file_", "aggregation", "(files)", "e+"):
                assert jargon not in text, (name, jargon, text)
