"""Report plots for validate/test (matplotlib, headless): what a user looks at before trusting a threshold.

All plots are file level, as the decisions are, and speak in recordings, leaks found and false alarms:
the reader is a water engineer, not the person who trained the model. Figures are built without pyplot
(no display, no global state), saved as PNG next to the JSON report, and handed back for loggers that
take figures (TensorBoard).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from ..models.evaluation import DEFAULT_GRID, decision_counts, f1_per_threshold, file_decisions
from ..runtime.fileio import replacing

STAGE_WORDS = {"val": "validation", "test": "test"}


def _figure(width: float, height: float, cols: int = 1, width_ratios: list[float] | None = None):
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols, width_ratios=width_ratios) if cols > 1 else fig.subplots()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _integer_counts(ax) -> None:
    """Counts of recordings: whole-number ticks only (no 0.5 recording), never in 1e+01 notation."""
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def decision_summary(decisions: torch.Tensor, truth: torch.Tensor, sep: str = " ") -> str:
    """'10 of 12 leaks found, 1 false alarm among 40 recordings without a leak' (`sep` after the comma: a line
    break in a title that must fit above a small matrix)."""
    found, missed, alarms, clear = decision_counts(decisions, truth)
    return (f"{found} of {_plural(found + missed, 'leak')} found,{sep}{_plural(alarms, 'false alarm')} "
            f"among {_plural(alarms + clear, 'recording')} without a leak")


def score_words(aggregation: str, threshold: float) -> str:
    """What the number a leak decision is made from is (evaluation.decision_basis), in words."""
    if aggregation == "vote":
        return f"share of the recording's windows\nat or above the threshold {threshold:.2f}"
    return "mean window leak probability\nof the recording"


def leak_curves(scores: torch.Tensor, truth: torch.Tensor, decisions: torch.Tensor, threshold: float) -> Figure:
    """Precision-recall and ROC of the file leak score, with the operating point of the decisions."""
    fig, (pr_ax, roc_ax) = _figure(10, 4.4, cols=2)
    t = truth.int()
    found, missed, alarms, clear = decision_counts(decisions, truth)
    if 0 < int(t.sum()) < len(t):
        precision, recall, _ = binary_precision_recall_curve(scores, t)
        fpr, tpr, _ = binary_roc(scores, t)
        curve = dict(color="tab:blue", label="every possible cutoff on the mean window leak probability")
        pr_ax.plot(recall.numpy(), precision.numpy(), **curve)
        roc_ax.plot(fpr.numpy(), tpr.numpy(), **curve)
    point = dict(color="tab:red", zorder=3, label=f"the decisions made (threshold {threshold:.2f}): "
                                                  f"{found} of {found + missed} leaks found, "
                                                  f"{_plural(alarms, 'false alarm')}")
    if found + alarms:
        pr_ax.scatter([found / max(found + missed, 1)], [found / (found + alarms)], **point)
    roc_ax.scatter([alarms / max(alarms + clear, 1)], [found / max(found + missed, 1)], **point)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="no better than chance")
    pr_ax.set(xlabel="share of the leaks found", ylabel="share of leak decisions that are right",
              title="Leaks found against trust in a leak decision", xlim=(0, 1.02), ylim=(0, 1.02))
    roc_ax.set(xlabel="share of recordings without a leak raised as false alarms", ylabel="share of the leaks found",
               title="Leaks found against false alarms", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (pr_ax, roc_ax):
        ax.legend(loc="lower left", fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def f1_against_threshold(windows: torch.Tensor, truth: torch.Tensor, aggregation: str, vote_fraction: float | None,
                         threshold: float, others: list[tuple[str, float | None]] = ()) -> Figure:
    """The F1 the decisions would have at each threshold, with the threshold used; `others`: the other readings
    validation tried (DecisionOptions.candidates), drawn faintly, so the reader sees why this one was taken."""
    fig, ax = _figure(6.5, 4.2)
    f1 = f1_per_threshold(file_decisions(windows, DEFAULT_GRID, aggregation, vote_fraction or 0.5), truth)
    ax.plot(DEFAULT_GRID.numpy(), f1.numpy(), color="tab:blue",
            label=f"the rule used: {_reading_words(aggregation, vote_fraction)}")
    for k, (other, fraction) in enumerate(others):
        f1 = f1_per_threshold(file_decisions(windows, DEFAULT_GRID, other, fraction or 0.5), truth)
        ax.plot(DEFAULT_GRID.numpy(), f1.numpy(), color="tab:grey", lw=0.8, alpha=0.7, ls=(0, (1 + k, 1 + k)),
                label=f"also tried: {_reading_words(other, fraction)}")
    ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold used: {threshold:.2f}")
    if aggregation == "vote":
        xlabel = (f"threshold on each window's leak probability\n(a recording is a leak when at least "
                  f"{vote_fraction:.0%} of its windows reach it)")
    else:
        xlabel = "threshold on the mean window leak probability of a recording"
    ax.set(xlabel=xlabel, ylabel="F1 score of the leak decisions\n(1 = every leak found, no false alarm)",
           title="How good the leak decisions are at each threshold", ylim=(0, 1.02))
    ax.legend(fontsize=7 if others else None)
    ax.grid(alpha=0.3)
    return fig


def _reading_words(aggregation: str, vote_fraction: float | None) -> str:
    if aggregation == "vote":
        return f"a leak when at least {vote_fraction:.0%} of its windows reach the threshold"
    return "a leak when its mean window reaches the threshold"


def _matrix(ax, matrix: np.ndarray, rows: list[str], cols: list[str], cells: np.ndarray | None = None) -> None:
    """A count matrix with the whole-number count (and a word, when given) in every cell."""
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    for (i, j), v in np.ndenumerate(matrix):
        text = str(int(v)) if cells is None else f"{int(v)}\n{cells[i, j]}"
        ax.text(j, i, text, ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    tilt = len(cols) > 2  # class names side by side would overlap
    ax.set_xticks(range(len(cols)), cols, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(len(rows)), rows)


def confusion(decisions: torch.Tensor, truth: torch.Tensor, class_scores: torch.Tensor, targets: torch.Tensor,
              names: list[str], stage: str = "test") -> Figure:
    """Left: recordings by truth (rows) and the leak decision made (columns). Right: by true class and the
    class the model scored highest (the leak decision is made from the leak score, not from this)."""
    n = len(names)
    fig, (leak_ax, class_ax) = _figure(4.6 + 1.1 * n + 2.5, max(4.2, 1.0 * n + 2.2), cols=2,
                                       width_ratios=[4.6, 1.1 * n + 2.5])
    found, missed, alarms, clear = decision_counts(decisions, truth)
    _matrix(leak_ax, np.array([[found, missed], [alarms, clear]]), ["leak", "no leak"], ["leak", "no leak"],
            cells=np.array([["found", "missed"], ["false alarm", "rightly clear"]]))
    where = STAGE_WORDS.get(stage, stage)
    leak_ax.set(xlabel="decided by the model", ylabel="true state of the recording",
                title=f"Leak decisions on the {where} recordings:\n{decision_summary(decisions, truth, sep=chr(10))}")
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (targets.argmax(-1).numpy(), class_scores.argmax(-1).numpy()), 1)
    _matrix(class_ax, matrix, names, names)
    class_ax.set(xlabel="class the model scored highest", ylabel="true class",
                 title=f"Most likely class of each {where} recording:\n"
                       f"{int(np.trace(matrix))} of {_plural(int(matrix.sum()), 'recording')} right")
    return fig


def score_histograms(decision_scores: torch.Tensor, cutoff: float, truth: torch.Tensor, class_scores: torch.Tensor,
                     targets: torch.Tensor, names: list[str], aggregation: str, threshold: float) -> Figure:
    """First: the number each leak decision is made from, leaks against the rest, and the cutoff it is
    compared with. Then per class: the class's mean probability on its own recordings and on the others."""
    cols = 3  # rows of three: every title and axis label keeps its width
    rows = -(-(len(names) + 1) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(rows, cols, squeeze=False).flatten()
    for spare in grid[len(names) + 1:]:
        spare.remove()
    axes = grid[: len(names) + 1]
    bins = np.linspace(0, 1, 21)
    ax, t = axes[0], truth.bool()
    ax.hist(decision_scores[~t].numpy(), bins=bins, alpha=0.6, color="tab:grey",
            label=f"recordings without a leak ({int((~t).sum())})")
    ax.hist(decision_scores[t].numpy(), bins=bins, alpha=0.7, color="tab:orange", label=f"leaks ({int(t.sum())})")
    ax.axvline(cutoff, color="tab:red", ls="--", label=f"decided a leak at {cutoff:.2f} or more")
    ax.set(title="What a leak decision is made from", xlabel=score_words(aggregation, threshold),
           ylabel="recordings", xlim=(0, 1))
    for k, (ax, name) in enumerate(zip(axes[1:], names)):
        own = targets[:, k].bool()
        ax.hist(class_scores[~own, k].numpy(), bins=bins, alpha=0.6, color="tab:grey",
                label=f"other recordings ({int((~own).sum())})")
        ax.hist(class_scores[own, k].numpy(), bins=bins, alpha=0.7, color="tab:orange",
                label=f"{name} recordings ({int(own.sum())})")
        ax.set(title=f"How sure the model is of {name}", xlabel=f"mean {name} probability\nof the recording",
               xlim=(0, 1))
    for ax in axes:
        _integer_counts(ax)
        ax.legend(fontsize=7)
    return fig


def report_figures(results: dict, names: list[str], leak_index: int, threshold: float, aggregation: str,
                   vote_fraction: float | None, others: list[tuple[str, float | None]] = ()) -> dict[str, Figure]:
    """The report's figures, for the rule's reading (`aggregation`, `vote_fraction`: DecisionRule's, not its
    options'); `others`: the other readings it was chosen among."""
    truth = results["targets"][:, leak_index].bool()
    decisions = results["decisions"].bool()
    return {
        "pr_roc": leak_curves(results["file_scores"], truth, decisions, threshold),
        "f1_threshold": f1_against_threshold(results["windows"], truth, aggregation, vote_fraction, threshold, others),
        "confusion": confusion(decisions, truth, results["file_probs"], results["targets"], names, results["stage"]),
        "scores": score_histograms(results["decision_scores"], float(results["decision_cutoff"]), truth,
                                   results["file_probs"], results["targets"], names, aggregation, threshold),
    }


def save(figures: dict[str, Figure], folder: Path, prefix: str) -> list[Path]:
    paths = []
    for name, fig in figures.items():
        path = folder / f"{prefix}_{name}.png"
        with replacing(path) as tmp:
            fig.savefig(tmp, format="png")
        paths.append(path)
    return paths
