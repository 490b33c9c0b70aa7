"""The consensus of runs from several view starts (`vertedge.consensus`)."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.consensus import Run, consensus, geometric_median, matches, pooled_sides

GAP_MM = 25.0


def chain(labels: list[int], shift_mm: float = 0.0, confidence: float = 0.9, flagged: bool = False) -> Run:
    """A straight chain along S (+z), one vertebra a gap, the first at z = 0 (+ shift)."""
    n = len(labels)
    points = np.zeros((n, 3))
    points[:, 2] = -GAP_MM * np.arange(n) + shift_mm
    return Run(np.array(labels), points, np.full(n, confidence), np.full(n, flagged))


def test_runs_that_agree_keep_their_labels_and_the_median_of_their_points() -> None:
    runs = [chain([10, 11, 12], 0.0), chain([10, 11, 12], 2.0), chain([10, 11, 12], -9.0)]
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5)
    assert agreed.index == 0
    np.testing.assert_array_equal(agreed.n_agree, [3, 3, 3])
    # on a line the geometric median is the middle point: the run 9 mm off does not pull it (the mean: -2.3)
    np.testing.assert_allclose(agreed.points_lps[:, 2], [0.0, -25.0, -50.0], atol=1e-6)
    np.testing.assert_allclose(agreed.confidence, 0.9)
    assert not agreed.needs_review.any()


def test_the_run_a_level_off_is_outvoted_and_what_it_disputes_is_flagged() -> None:
    off = chain([11, 12, 13], 0.0, confidence=0.95)  # the protocol's own start, one level off
    runs = [off, chain([10, 11, 12]), chain([10, 11, 12], 1.0)]
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5)
    assert agreed.index == 1
    # every vertebra is disputed by the first run: flagged, and its confidence at most the cap
    assert agreed.needs_review.all()
    np.testing.assert_array_equal(agreed.n_agree, [2, 2, 2])
    np.testing.assert_allclose(agreed.confidence, 0.5)


def test_a_label_most_runs_flag_is_flagged_whichever_run_is_kept() -> None:
    flagged, clear = chain([10, 11], flagged=True), chain([10, 11])
    for runs in ([flagged, flagged, clear], [clear, flagged, flagged], [flagged, clear, flagged]):
        agreed = consensus(runs, alone_mm=8.0, most_if_review=0.4)
        assert agreed.index == 0  # all agree: the earliest is kept
        assert agreed.needs_review.all()
        np.testing.assert_allclose(agreed.confidence, 0.4)
    one = consensus([flagged, clear, clear], alone_mm=8.0, most_if_review=0.4)
    assert not one.needs_review.any()  # one run's flag of three is not the consensus
    np.testing.assert_allclose(one.confidence, 0.9)


def test_a_label_on_the_neighbours_point_is_no_agreement() -> None:
    a = chain([10, 11, 12])
    b = chain([10, 11, 12], shift_mm=-0.6 * GAP_MM)  # every point nearer a's next vertebra than its own half-gap
    np.testing.assert_array_equal(matches(a, b, alone_mm=8.0), [-1, -1, -1])
    np.testing.assert_array_equal(matches(a, chain([10, 11, 12], shift_mm=-0.4 * GAP_MM), alone_mm=8.0), [0, 1, 2])


def test_a_lone_vertebra_agrees_within_the_lone_reach_only() -> None:
    a = chain([20])
    assert matches(a, chain([20], shift_mm=7.0), alone_mm=8.0)[0] == 0
    assert matches(a, chain([20], shift_mm=9.0), alone_mm=8.0)[0] == -1


def test_of_runs_that_agree_alike_the_most_confident_is_kept() -> None:
    # the real lumbar CT's lower half: each start finds one point, no two agree, and the protocol's
    # own start holds the least confident one
    runs = [chain([24], shift_mm=-60.0, confidence=0.40), Run(np.zeros(0, int), np.zeros((0, 3)), np.zeros(0),
            np.zeros(0, bool)), chain([24], confidence=0.42)]
    assert consensus(runs, alone_mm=8.0, most_if_review=0.5).index == 2
    assert consensus(runs, alone_mm=8.0, most_if_review=0.5, tie_by_confidence=False).index == 0
    # a weak vertebra only one run found counts neither way: the chest CT's C7 at 0.05
    reaching = Run(np.array([7, 8, 9, 10]), np.stack([np.zeros(4), np.zeros(4), GAP_MM * (1 - np.arange(4))], axis=1),
                   np.array([0.05, 0.9, 0.9, 0.9]), np.zeros(4, bool))
    agreed = consensus([reaching, chain([8, 9, 10], 1.0), chain([8, 9, 10], -1.0)], alone_mm=8.0, most_if_review=0.5)
    assert agreed.index == 0 and agreed.labels[0] == 7
    # more agreement outweighs confidence
    runs = [chain([10, 11, 12], confidence=0.3), chain([10, 11, 12], 1.0, confidence=0.3), chain([11, 12, 13], confidence=0.9)]
    assert consensus(runs, alone_mm=8.0, most_if_review=0.5).index == 0


def test_a_missed_vertebra_lowers_the_mean_confidence() -> None:
    runs = [chain([10, 11, 12], confidence=0.9), chain([10, 11], confidence=0.9), chain([10, 11, 12], confidence=0.6)]
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5)
    assert agreed.index == 0
    np.testing.assert_array_equal(agreed.n_agree, [3, 3, 2])
    np.testing.assert_allclose(agreed.confidence, [0.8, 0.8, 0.5])
    np.testing.assert_array_equal(agreed.needs_review, [False, False, True])


@pytest.mark.parametrize("n_empty", [1, 3])
def test_runs_without_vertebrae(n_empty: int) -> None:
    empty = Run(np.zeros(0, int), np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool))
    runs = [empty] * n_empty + [chain([10, 11])] * (3 - n_empty)
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5)
    if n_empty == 3:
        assert agreed.index == 0 and agreed.points_lps.shape == (0, 3)
    else:
        assert agreed.index == 1
        assert agreed.needs_review.all()  # the empty run found none of them
        np.testing.assert_allclose(agreed.confidence, 0.5)  # 2/3 of 0.9, capped


def test_one_run_is_its_own_consensus() -> None:
    run = Run(np.array([10, 11]), np.array([[0.0, 0, 0], [0, 0, -25]]), np.array([0.3, 0.8]), np.array([True, False]))
    agreed = consensus([run], alone_mm=8.0, most_if_review=0.5)
    assert agreed.index == 0
    np.testing.assert_array_equal(agreed.points_lps, run.points_lps)
    np.testing.assert_array_equal(agreed.confidence, run.confidence)
    np.testing.assert_array_equal(agreed.needs_review, run.needs_review)


def test_the_geometric_median_has_the_least_summed_distance_to_its_points() -> None:
    rng = np.random.default_rng(3)
    points = rng.normal(scale=5.0, size=(4, 6, 3))
    weights = np.ones((4, 6))
    weights[3, :3] = 0.0  # the first three columns: three points only
    x = geometric_median(points, weights)

    def summed(at: np.ndarray) -> np.ndarray:
        return (weights * np.linalg.norm(points - at, axis=2)).sum(axis=0)

    for step in rng.normal(scale=0.3, size=(50, 6, 3)):
        assert (summed(x) <= summed(x + step) + 1e-6).all()
    # two points: their midpoint; one: itself
    two = geometric_median(points[:2], np.ones((2, 6)))
    np.testing.assert_allclose(two, points[:2].mean(axis=0))
    np.testing.assert_allclose(geometric_median(points[:1], np.ones((1, 6))), points[0])


def test_another_runs_vertebrae_beyond_the_kept_chain_continue_it_flagged() -> None:
    longer = chain([9, 10, 11, 12, 13, 14], shift_mm=GAP_MM, confidence=0.6)  # one more above, two more below
    runs = [chain([10, 11, 12]), chain([10, 11, 12], 1.0), longer]
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5, regular_ratio=1.4)
    assert agreed.index == 0
    np.testing.assert_array_equal(agreed.labels, [9, 10, 11, 12, 13, 14])
    np.testing.assert_array_equal(agreed.source, [[2, 0], [0, 0], [0, 1], [0, 2], [2, 4], [2, 5]])
    np.testing.assert_allclose(agreed.points_lps[:, 2], GAP_MM * np.arange(1, -5, -1), atol=1e-6)
    np.testing.assert_array_equal(agreed.needs_review, [True, False, False, False, True, True])
    np.testing.assert_allclose(agreed.confidence[[0, 4, 5]], 0.2)  # one run's 0.6 over three runs
    np.testing.assert_array_equal(agreed.n_agree, [1, 3, 3, 3, 1, 1])
    # off by default: the kept run's chain as it is
    np.testing.assert_array_equal(consensus(runs, alone_mm=8.0, most_if_review=0.5).labels, [10, 11, 12])


@pytest.mark.parametrize("other", [
    chain([10, 11, 12, 15]),  # the next label is no successor of the kept end's
    Run(np.array([10, 11, 12, 13]), np.array([[0.0, 0, z] for z in (0, -25, -50, -100)]),
        np.full(4, 0.9), np.zeros(4, bool)),  # two gaps on: a vertebra between is missing
    chain([11, 12, 13, 14]),  # a level off: it does not agree with the kept end
    chain([10, 11, 12, 13], confidence=0.3),  # a run that doubts its own vertebrae lends none
])
def test_only_a_continuation_of_the_kept_chain_joins_it(other: Run) -> None:
    runs = [chain([10, 11, 12]), chain([10, 11, 12], 1.0), other]
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5, regular_ratio=1.4)
    np.testing.assert_array_equal(agreed.labels, [10, 11, 12])


def test_no_variant_level_continues_the_chain() -> None:
    runs = [chain([18, 19]), chain([18, 19], 1.0), chain([18, 19, 28, 20])]  # T11, T12, then T13, L1
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5, regular_ratio=1.4)
    np.testing.assert_array_equal(agreed.labels, [18, 19])
    runs[2] = chain([18, 19, 20])
    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5, regular_ratio=1.4)
    np.testing.assert_array_equal(agreed.labels, [18, 19, 20])


def test_a_rib_one_run_found_fills_the_side_another_could_not_see() -> None:
    z = -GAP_MM * np.arange(3)
    points = [np.stack([np.zeros(3), np.zeros(3), z + dz], axis=1) for dz in (0.0, 4.0, -3.0)]
    sides = [np.array([[-1, -1], [0, 0], [0, -1]]),  # the top unseen: a scan's edge
             np.array([[1, 1], [0, 0], [-1, -1]]),
             np.array([[-1, 0], [0, 0], [0, 0]])]
    pooled = pooled_sides(points, sides, alone_mm=8.0)
    # a rib another run found fills an unseen side; a side seen without one lends nothing; what a
    # run saw itself stays
    np.testing.assert_array_equal(pooled[0], [[1, 1], [0, 0], [0, -1]])
    np.testing.assert_array_equal(pooled[1], [[1, 1], [0, 0], [-1, -1]])
    np.testing.assert_array_equal(pooled[2], [[1, 0], [0, 0], [0, 0]])
    # a run's point on the neighbour's vertebra (over half a gap off) lends nothing
    far = [points[0], points[0] - np.array([0, 0, 0.6 * GAP_MM])]
    np.testing.assert_array_equal(pooled_sides(far, sides[:2], alone_mm=8.0)[0][0], [-1, -1])
    # a run without points, or alone
    np.testing.assert_array_equal(pooled_sides([points[0], np.zeros((0, 3))], [sides[0], np.zeros((0, 2), int)],
                                                alone_mm=8.0)[0], sides[0])


def test_a_vertebra_the_scan_does_not_show_whole_does_not_continue_the_chain() -> None:
    runs = [chain([10, 11, 12]), chain([10, 11, 12], 1.0), chain([10, 11, 12, 13, 14])]

    def whole(point: np.ndarray, step: np.ndarray) -> bool:
        return point[2] > -80.0  # the scan ends 80 mm below the first vertebra: 13 at -75 mm is in it, 14 is not

    agreed = consensus(runs, alone_mm=8.0, most_if_review=0.5, regular_ratio=1.4, whole=whole)
    np.testing.assert_array_equal(agreed.labels, [10, 11, 12, 13])
