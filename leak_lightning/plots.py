"""Report plots for validate/test (matplotlib, headless): what a user looks at before trusting a threshold.

All plots are file level, as the decisions are. Figures are built without pyplot (no display, no global
state), saved as PNG next to the JSON report, and handed back for loggers that take figures (TensorBoard).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from .evaluation import DEFAULT_GRID, f1_per_threshold, file_decisions
from .fileio import replacing


def _figure(width: float, height: float, cols: int = 1):
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, cols) if cols > 1 else fig.subplots()


def leak_curves(scores: torch.Tensor, truth: torch.Tensor, decisions: torch.Tensor, threshold: float) -> Figure:
    """Precision-recall and ROC of the file leak score, with the operating point of the decisions."""
    fig, (pr_ax, roc_ax) = _figure(10, 4.2, cols=2)
    t = truth.int()
    tp = int((decisions & truth).sum())
    fp, fn, tn = int((decisions & ~truth).sum()), int((~decisions & truth).sum()), int((~decisions & ~truth).sum())
    if 0 < int(t.sum()) < len(t):
        precision, recall, _ = binary_precision_recall_curve(scores, t)
        fpr, tpr, _ = binary_roc(scores, t)
        pr_ax.plot(recall.numpy(), precision.numpy(), color="tab:blue")
        roc_ax.plot(fpr.numpy(), tpr.numpy(), color="tab:blue")
    point = dict(color="tab:red", zorder=3, label=f"decisions at threshold {threshold:.2f}")
    if tp + fp:
        pr_ax.scatter([tp / max(tp + fn, 1)], [tp / (tp + fp)], **point)
    roc_ax.scatter([fp / max(fp + tn, 1)], [tp / max(tp + fn, 1)], **point)
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    pr_ax.set(xlabel="recall", ylabel="precision", title="leak: precision-recall (files)", xlim=(0, 1.02),
              ylim=(0, 1.02))
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="leak: ROC (files)",
               xlim=(0, 1), ylim=(0, 1.02))
    for ax in (pr_ax, roc_ax):
        if ax.get_legend_handles_labels()[0]:  # no leak decided: no operating point on the PR curve
            ax.legend(loc="lower left")
        ax.grid(alpha=0.3)
    return fig


def f1_against_threshold(windows: torch.Tensor, truth: torch.Tensor, aggregation: str, vote_fraction: float,
                         threshold: float) -> Figure:
    fig, ax = _figure(6, 4)
    f1 = f1_per_threshold(file_decisions(windows, DEFAULT_GRID, aggregation, vote_fraction), truth)
    ax.plot(DEFAULT_GRID.numpy(), f1.numpy(), color="tab:blue")
    ax.axvline(threshold, color="tab:red", ls="--", label=f"threshold {threshold:.2f}")
    ax.set(xlabel="threshold", ylabel="file leak F1", title=f"F1 against threshold ({aggregation})", ylim=(0, 1.02))
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def confusion(class_scores: torch.Tensor, targets: torch.Tensor, names: list[str]) -> Figure:
    """Files by true class (rows) and top-scoring class (columns)."""
    n = len(names)
    matrix = np.zeros((n, n), dtype=int)
    np.add.at(matrix, (targets.argmax(-1).numpy(), class_scores.argmax(-1).numpy()), 1)
    fig, ax = _figure(1.1 * n + 2.5, 1.0 * n + 1.5)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="top class", ylabel="true class", title="files")
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_yticklabels(names)
    return fig


def score_histograms(class_scores: torch.Tensor, targets: torch.Tensor, names: list[str]) -> Figure:
    """Per class: the class's file scores of files that are (and are not) of that class."""
    fig, axes = _figure(3.2 * len(names), 3, cols=len(names))
    axes = np.atleast_1d(axes)
    bins = np.linspace(0, 1, 21)
    for k, (ax, name) in enumerate(zip(axes, names)):
        own = targets[:, k].bool()
        ax.hist(class_scores[~own, k].numpy(), bins=bins, alpha=0.6, label="other files", color="tab:grey")
        ax.hist(class_scores[own, k].numpy(), bins=bins, alpha=0.7, label=name, color="tab:orange")
        ax.set(title=name, xlabel="score", ylabel="files" if k == 0 else None)
        ax.legend(fontsize=7)
    return fig


def report_figures(results: dict, names: list[str], leak_index: int, threshold: float, aggregation: str,
                   vote_fraction: float) -> dict[str, Figure]:
    truth = results["targets"][:, leak_index].bool()
    return {
        "pr_roc": leak_curves(results["file_scores"], truth, results["decisions"].bool(), threshold),
        "f1_threshold": f1_against_threshold(results["windows"], truth, aggregation, vote_fraction, threshold),
        "confusion": confusion(results["file_probs"], results["targets"], names),
        "scores": score_histograms(results["file_probs"], results["targets"], names),
    }


def save(figures: dict[str, Figure], folder: Path, prefix: str) -> list[Path]:
    paths = []
    for name, fig in figures.items():
        path = folder / f"{prefix}_{name}.png"
        with replacing(path) as tmp:
            fig.savefig(tmp, format="png")
        paths.append(path)
    return paths
