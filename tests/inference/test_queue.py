"""The review queue's ranking (inference/queue.py), against picks worked out by hand."""

from __future__ import annotations

from datetime import datetime

from leak_lightning.inference.queue import Candidate, night_of, review_queue


def keys(queue) -> list[int]:
    return [p.key for p in queue]


def test_the_queue_alternates_the_sides_leak_first_from_the_cutoff_out_to_both_ends():
    above = [Candidate(k, 0.1 * (k + 1), f"S{k}") for k in range(10)]  # margins 0.1 .. 1.0
    below = [Candidate(10 + k, -0.05 * (k + 1), f"S{10 + k}") for k in range(10)]  # -0.05 .. -0.5
    # 3 a side among 10: ranks (k / 2)³ of 9 = 0, 1 (1.125), 9: the nearest, the second nearest, the farthest
    assert keys(review_queue(above + below, 6)) == [0, 10, 1, 11, 9, 19]
    why = review_queue(above + below, 6)[0].why
    assert why == "decided leak, 1 of 10 from the cutoff (margin +0.100, leak score 0.000)"
    # the candidates' order does not matter
    assert keys(review_queue((below + above)[::-1], 6)) == [0, 10, 1, 11, 9, 19]


def test_a_sensor_not_yet_in_the_queue_wins_within_the_band_of_its_step():
    # one side only: 7 recordings, 3 picks → target ranks 0, 1 (0.75), 6; the middle band is 0.5 .. 3.5
    sensors = ["A", "A", "B", "A", "C", "D", "E"]
    side = [Candidate(k, 0.1 * (k + 1), s) for k, s in enumerate(sensors)]
    # rank 1 is sensor A again (already picked at rank 0): rank 2 (B) is taken instead; the last step picks rank 6
    assert keys(review_queue(side, 3)) == [0, 2, 6]
    # without the sensor names every recording is its own sensor: the ranks themselves
    assert keys(review_queue([Candidate(c.key, c.margin, "") for c in side], 3)) == [0, 1, 6]


def test_among_a_used_sensors_recordings_another_night_comes_first():
    side = [Candidate(0, 0.1, "A", "n1"), Candidate(1, 0.2, "A", "n1"), Candidate(2, 0.3, "A", "n2"),
            Candidate(3, 0.4, "A", "n1"), Candidate(4, 0.5, "A", "n1")]
    # targets 0, 0 (0.125 * 4), 4; band of the second: 0 .. 2 → ranks 1 (A, n1: seen) and 2 (A, n2: new night)
    assert keys(review_queue(side, 3)) == [0, 2, 4]


def test_sizes_beyond_the_candidates_and_one_sided_sites():
    above = [Candidate(k, 0.1 * k, f"S{k}") for k in range(3)]
    below = [Candidate(3 + k, -0.1 * (k + 1), f"S{3 + k}") for k in range(2)]
    assert sorted(keys(review_queue(above + below, 50))) == [0, 1, 2, 3, 4]  # every one once
    assert review_queue(above + below, 0) == []
    assert keys(review_queue(above, 2)) == [0, 2]  # no recording decided no leak: all picks on the leak side
    assert keys(review_queue(above + below, 5)) == [0, 3, 1, 4, 2]  # 3 + 2: the side with more takes the rest
    assert keys(review_queue(above[:1] + below, 4)) == [0, 3, 4]  # one leak only: the rest from the other side


def test_a_night_runs_noon_to_noon_and_is_named_by_its_evening():
    assert night_of(datetime(2025, 11, 19, 22, 0)) == "2025-11-19"
    assert night_of(datetime(2025, 11, 20, 3, 0)) == "2025-11-19"
    assert night_of(datetime(2025, 11, 20, 12, 0)) == "2025-11-20"
    assert night_of(None) == ""


def test_equal_margins_are_ordered_by_the_leak_score():
    # a vote over one window: every margin is +0.5 or -0.5; nearest the cutoff is then the least sure leak score
    side = [Candidate(k, 0.5, f"S{k}", score=s) for k, s in enumerate([0.9, 0.3, 0.6, 0.2, 0.8])]
    other = [Candidate(5 + k, -0.5, f"T{k}", score=s) for k, s in enumerate([0.05, 0.15, 0.1])]
    # leak side by score ascending: 3 (0.2), 1, 2, 4, 0; other side by score descending: 6 (0.15), 7, 5
    assert keys(review_queue(side + other, 4)) == [3, 6, 0, 5]


def test_a_new_sensor_comes_before_a_new_night_of_a_sensor_already_queued():
    side = [Candidate(0, 0.1, "A", "n1"), Candidate(1, 0.2, "A", "n2"), Candidate(2, 0.3, "B", "n1"),
            Candidate(3, 0.4, "A", "n1"), Candidate(4, 0.5, "A", "n1")]
    # the second step's band holds ranks 1 (A's other night) and 2 (sensor B): B, though one rank farther
    assert keys(review_queue(side, 3)) == [0, 2, 4]


def test_the_sides_share_the_queue_in_proportion_at_least_three_each():
    few = [Candidate(k, 0.1 * (k + 1), f"S{k}") for k in range(25)]  # 25 decided leak
    many = [Candidate(100 + k, -0.01 * (k + 1), f"T{k}") for k in range(135)]  # 135 decided no leak
    queue = review_queue(few + many, 20)
    # 20 * 25 / 160 = 3.1 → 3 on the leak side (first, then alternating), 17 on the other
    assert [p.key < 100 for p in queue] == [True, False] * 3 + [False] * 14
    # the other side's 17 walk out by the cube of k / 16 over its 135: targets 0, 0, 0, 1, 2, 4, 7, 11, 17 (16.75),
    # 24, 33, 44, 57, 72, 90, 110, 134; a target already taken goes to the nearest rank left (1, 2, 3, 4, 5)
    assert [p.key - 100 for p in queue if p.key >= 100] == [0, 1, 2, 3, 4, 5, 7, 11, 17, 24, 33, 44, 57, 72, 90, 110,
                                                            134]
    few3 = few[:2]  # a side with fewer than 3: all of it, the rest to the other
    assert sum(p.key < 100 for p in review_queue(few3 + many, 20)) == 2
    # the other way round (a site where nearly everything is decided leak): 20 * 10 / 160 = 1.25, raised to 3
    many_leaks = [Candidate(k, 0.001 * (k + 1), f"S{k}") for k in range(150)]
    few_others = [Candidate(200 + k, -0.1 * (k + 1), f"T{k}") for k in range(10)]
    assert sum(p.key >= 200 for p in review_queue(many_leaks + few_others, 20)) == 3
