"""File-level aggregation and the threshold sweep against hand-computed cases."""

from __future__ import annotations

import torch

from leak_lightning.evaluation import f1_per_threshold, file_decisions, sweep_threshold, window_probs


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
