"""File-level aggregation and the threshold sweep against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from leak_lightning.models.evaluation import (
    FileScores,
    f1_per_threshold,
    file_decisions,
    file_metrics,
    score_files,
    sweep_threshold,
    window_probs,
)


def test_window_probs_mean_over_short_segments():
    # 1 file, 2 long windows of 2 short segments
    seg = torch.tensor([0.2, 0.4, 0.9, 0.7])
    torch.testing.assert_close(window_probs(seg, 2, 2), torch.tensor([[0.3, 0.8]]))


def test_vote_and_mean_decisions_by_hand():
    windows = torch.tensor([
        [0.9, 0.8, 0.1, 0.2],  # 2 of 4 windows >= 0.5 → vote 0.5; mean 0.5
        [0.6, 0.1, 0.1, 0.1],  # 1 of 4 → 0.25; mean 0.225
        [0.7, 0.7, 0.7, 0.1],  # 3 of 4 → 0.75; mean 0.55
    ])
    t = torch.tensor([0.5])
    assert file_decisions(windows, t, "vote", 0.5).tolist() == [[True, False, True]]
    assert file_decisions(windows, t, "vote", 0.6).tolist() == [[False, False, True]]
    assert file_decisions(windows, t, "mean").tolist() == [[True, False, True]]
    assert file_decisions(windows, torch.tensor([0.54]), "mean").tolist() == [[False, False, True]]


def test_f1_by_hand():
    decisions = torch.tensor([[True, True, False, False], [False, False, False, False]])
    truth = torch.tensor([True, False, True, False])
    # row 0: tp=1 fp=1 fn=1 → 2/(2+1+1) = 0.5; row 1: tp=0, fn=2 → 0
    torch.testing.assert_close(f1_per_threshold(decisions, truth), torch.tensor([0.5, 0.0]))


def test_sweep_picks_the_middle_of_the_best_plateau():
    # leak files have windows at 0.6/0.7, clean files at 0.2/0.3 (mean mode): any threshold in
    # (0.25, 0.65] separates them perfectly; the plateau on the grid 0.26..0.65 has its middle at 0.45/0.46
    windows = torch.tensor([[0.6, 0.7], [0.6, 0.7], [0.2, 0.3], [0.2, 0.3]])
    truth = torch.tensor([True, True, False, False])
    t, f1 = sweep_threshold(windows, truth, "mean")
    assert f1 == 1.0
    assert 0.449 <= t <= 0.461


def test_sweep_vote_mode_by_hand():
    # leak file: windows 0.35, 0.45 ; clean: 0.05, 0.5. Vote fraction 1.0 (all windows must vote).
    # t <= 0.05: both files leak (F1 2/3); 0.05 < t <= 0.35: only leak file → F1 1;
    # t > 0.35: none → 0. Grid points 0.06..0.35 → 30 values; middle index 15 → 0.21.
    windows = torch.tensor([[0.35, 0.45], [0.05, 0.5]])
    truth = torch.tensor([True, False])
    t, f1 = sweep_threshold(windows, truth, "vote", vote_fraction=1.0)
    assert f1 == 1.0
    assert abs(t - 0.21) < 1e-6


def hand_split():
    """3 files × (L=2 long windows × S=2 short segments), 2 classes, leak class 1."""
    probs = torch.tensor([
        # file 0 (leak): windows (0.9, 0.7) and (0.5, 0.3) → 0.8 and 0.4
        [0.1, 0.9], [0.3, 0.7], [0.5, 0.5], [0.7, 0.3],
        # file 1 (clean): windows (0.2, 0.0) and (0.2, 0.4) → 0.1 and 0.3
        [0.6, 0.2], [1.0, 0.0], [0.8, 0.2], [0.6, 0.4],
        # file 2 (leak), only its first segment scored
        [0.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0],
    ])
    targets = torch.tensor([[0.0, 1.0]] * 4 + [[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    seen = torch.tensor([True] * 9 + [False] * 3)
    return probs, targets, seen


def test_score_files_uses_only_files_scored_whole():
    scores = score_files(*hand_split(), num_long=2, num_short=2, leak_index=1)
    assert scores.index.tolist() == [0, 1] and scores.partial == 1
    torch.testing.assert_close(scores.windows, torch.tensor([[0.8, 0.4], [0.1, 0.3]]))
    # class scores are the mean over the file's segments (not the max: file 0 would be [0.7, 0.9])
    torch.testing.assert_close(scores.class_scores, torch.tensor([[0.4, 0.6], [0.75, 0.2]]))
    torch.testing.assert_close(scores.targets, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_file_metrics_by_hand():
    # 5 files: truth L L L C C; decisions L C C L C → tp 1, fn 2, fp 1
    windows = torch.tensor([[0.9], [0.6], [0.2], [0.7], [0.1]])
    targets = torch.tensor([[0.0, 1.0]] * 3 + [[1.0, 0.0]] * 2)
    class_scores = torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8], [0.9, 0.1]])
    scores = FileScores(torch.arange(5), windows, class_scores, targets, 0)
    m = file_metrics(scores, torch.tensor([True, False, False, True, False]), leak_index=1)
    assert m["file_leak_precision"].item() == pytest.approx(1 / 2)  # tp / (tp + fp)
    assert m["file_leak_recall"].item() == pytest.approx(1 / 3)  # tp / (tp + fn)
    assert m["file_leak_f1"].item() == pytest.approx(2 / 5)  # 2tp / (2tp + fp + fn)
    # mean window scores 0.9 0.6 0.2 | 0.7 0.1: of the 6 (leak, clean) pairs, 4 are ranked right
    assert m["file_leak_auroc"].item() == pytest.approx(4 / 6)
    assert m["file_accuracy"].item() == pytest.approx(3 / 5)  # argmax right for files 0, 1, 4
    assert m["files_scored"].item() == 5


def test_undefined_file_metrics_are_nan_not_zero():
    clean = FileScores(torch.arange(2), torch.tensor([[0.1], [0.2]]), torch.tensor([[0.9, 0.1], [0.8, 0.2]]),
                       torch.tensor([[1.0, 0.0], [1.0, 0.0]]), 0)
    m = file_metrics(clean, torch.tensor([False, False]), leak_index=1)  # no leak file, no leak decision
    assert all(torch.isnan(m[k]) for k in ("file_leak_f1", "file_leak_precision", "file_leak_recall",
                                            "file_leak_auroc"))
    assert m["file_accuracy"].item() == 1.0
    m = file_metrics(clean, torch.tensor([True, False]), leak_index=1)  # a false alarm: F1 is 0, not NaN
    assert m["file_leak_f1"].item() == 0.0 and m["file_leak_precision"].item() == 0.0
