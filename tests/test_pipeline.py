"""Post-net pipeline on the maps a perfect network would give: peaks -> fusion -> vote -> decode."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.boxes import square_half_px
from vertedge.fusion import Fused, fuse
from vertedge.geometry import Protocol, Views, make_views, pixel_mm_at_depth, project
from vertedge.labelling import label, may_be_one_vertebra, may_skip_one, peaks_of, view_votes
from vertedge.labels import SPINE_ORDER
from vertedge.options import DEFAULT_OPTIONS
from vertedge.phantom import make_phantom

SIGMA_PX, AMPLITUDE, THRESHOLD = 2.0, 10.0, 3.0
CLASSES = SPINE_ORDER


def ideal_heatmaps(views: Views, points_rc: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """(K, H, W) heatmaps: a Gaussian of SIGMA_PX at each (K, n, 2) (row, col); NaN rows are left out."""
    rows, cols = np.indices(views.shape)
    heat = np.zeros((views.n_views, *views.shape), np.float32)
    for k in range(views.n_views):
        for r, c in points_rc[k][~np.isnan(points_rc[k, :, 0])]:
            heat[k] = np.maximum(heat[k], AMPLITUDE * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * SIGMA_PX**2)))
    if rng is not None:
        heat += rng.normal(0, 0.3, heat.shape).astype(np.float32)
    return heat


def ideal_probabilities(views: Views, points_lps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, 1 + C, H, W) one-hot maps: each vertebra's class in its 22 mm square, background elsewhere."""
    rc, depth = project(views, points_lps)
    half = square_half_px(pixel_mm_at_depth(views, depth), DEFAULT_OPTIONS.id_square_mm)
    index = np.zeros((views.n_views, *views.shape), np.intp)
    for k in range(views.n_views):
        for (r, c), h, lab in zip(rc[k], half[k], labels):
            r0, r1 = int(round(r - h)), int(round(r + h)) + 1
            c0, c1 = int(round(c - h)), int(round(c + h)) + 1
            index[k, max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = 1 + CLASSES.index(int(lab))
    return np.moveaxis(np.eye(1 + len(CLASSES), dtype=np.float32)[index], -1, 1)


@pytest.fixture(scope="module")
def spine():
    """A full-spine phantom's true centroids and a K=10 geometry of 2 mm pixels at the isocentre."""
    ph = make_phantom(11, "full", shape=(64, 64, 150), spacing=(6.0, 6.0, 5.0))
    labels = np.array(sorted(ph.centroids, key=CLASSES.index))
    points = np.array([ph.centroids[lab] for lab in labels])
    views = make_views(ph.volume, Protocol(pixel_mm=4.0, n_views=10))
    return views, points, labels


def _run(views: Views, heat: np.ndarray, prob: np.ndarray):
    fused = fuse(peaks_of(heat, views, THRESHOLD), views)
    labels, _ = label(fused, view_votes(fused, views, prob), views.n_views, CLASSES)
    return fused.points_lps, labels


def _match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Distance (mm) from each true point to the nearest found point."""
    return np.linalg.norm(truth[:, None] - found[None], axis=-1).min(axis=1)


def test_ideal_maps_give_every_vertebra_labelled_within_1mm(spine):
    views, points, labels = spine
    rc, _ = project(views, points)
    found, found_labels = _run(views, ideal_heatmaps(views, rc), ideal_probabilities(views, points, labels))
    assert len(found) == len(points)
    assert _match(found, points).max() < 1.0
    np.testing.assert_array_equal(found_labels, labels)  # found is ordered cranial -> caudal like labels


def test_degraded_maps_lose_or_duplicate_no_vertebra(spine):
    views, points, labels = spine
    rng = np.random.default_rng(5)
    rc, _ = project(views, points)
    rc = rc + rng.uniform(-2, 2, rc.shape)  # 1-2 px detector jitter
    missing = len(points) // 2
    rc[[1, 4, 8], missing] = np.nan  # one vertebra missed in 3 of 10 views
    heat = ideal_heatmaps(views, rc, rng)
    spurious_rc, _ = project(views, points[missing][None] + np.array([[60.0, 40.0, 0.0]]))
    heat[3] += ideal_heatmaps(views, spurious_rc)[3]  # a blob in view 3 that is no vertebra
    prob = ideal_probabilities(views, points, labels)
    wrong = np.roll(np.arange(1, prob.shape[1]), 1)  # every class read as its neighbour
    prob[[2, 6], 1:] = prob[[2, 6]][:, wrong]
    found, found_labels = _run(views, heat, prob)
    assert len(found) == len(points)
    # +-2 px of jitter is +-4 mm at the isocentre in each view; least squares over the views averages it
    error = _match(found, points)
    assert error.max() < 4.0 and error.mean() < 2.0
    np.testing.assert_array_equal(found_labels, labels)


def test_duplicate_labels_keep_the_best_supported_row():
    from vertedge.fusion import Fused
    from vertedge.labelling import one_per_label

    fused = Fused(
        points_lps=np.zeros((5, 3)),
        residual_mm=np.array([1.0, 2.0, 0.5, 1.0, 3.0]),
        n_views=np.array([10, 9, 3, 10, 10]),
        support=np.zeros((5, 10), np.int64),
    )
    labels = np.array([20, 21, 21, 22, 22])
    np.testing.assert_array_equal(one_per_label(labels, fused), [0, 1, 3])


def test_two_points_found_in_most_views_are_never_one_vertebra() -> None:
    n_views = np.array([3, 10, 9, 3, 10, 7, 6])
    points = np.zeros((7, 3))
    points[:, 2] = -20.0 * np.arange(7)
    points[4:, 2] += 12.0  # rows 3 and 4 are 8 mm apart: they may be one vertebra
    fused = Fused(points, np.zeros(7), n_views, np.zeros((7, 10), np.int64))
    # row 0, seen in 3 views a full gap above row 1, may be a stray blob the DP absorbs; rows 5, 6
    # are not both solid (6 < 7 views) but both seen in half the views, a full gap apart
    assert may_be_one_vertebra(fused, 10).tolist() == [True, False, True, True, False, False]
    # a chain of three has no local gap, so only the views decide there
    short = Fused(points[1:4], np.zeros(3), n_views[1:4], np.zeros((3, 10), np.int64))
    assert may_be_one_vertebra(short, 10).tolist() == [False, True]


def test_a_full_step_of_the_spines_rhythm_is_a_vertebra_however_few_views_found_it() -> None:
    """Seven points 20 mm apart along a spine leaning 30 degrees, rows 3 and 4 found in 4 of 10
    views: a full gap along the spine inside a regular rhythm is two vertebrae. A point the views
    fused beside a vertebra (20 mm to its side, 2 mm lower: a full gap in 3D, none along the
    spine) may be that vertebra found twice."""
    axis = np.array([0.0, np.sin(np.radians(30.0)), -np.cos(np.radians(30.0))])
    points = 20.0 * np.arange(7)[:, None] * axis
    n_views = np.array([8, 8, 8, 4, 4, 8, 8])
    fused = Fused(points, np.zeros(7), n_views, np.zeros((7, 10), np.int64))
    assert not may_be_one_vertebra(fused, 10)[3]
    beside = np.insert(points, 4, points[3] + [20.0, 0.0, 0.0] + 2.0 * axis, axis=0)
    fused = Fused(beside, np.zeros(8), np.insert(n_views, 4, 3), np.zeros((8, 10), np.int64))
    assert may_be_one_vertebra(fused, 10)[3]


def test_a_label_is_skipped_only_where_the_gap_holds_a_missed_vertebra() -> None:
    """Eight points 20 mm apart along a leaning spine, the fifth missed: only the 40 mm gap may hold
    a vertebra the views missed (the DP's "skip one"); a chain of three gaps or fewer cannot tell."""
    axis = np.array([0.0, np.sin(np.radians(30.0)), -np.cos(np.radians(30.0))])
    points = np.delete(20.0 * np.arange(8)[:, None] * axis, 4, axis=0)
    fused = Fused(points, np.zeros(7), np.full(7, 8), np.zeros((7, 10), np.int64))
    assert may_skip_one(fused).tolist() == [False, False, False, True, False, False]
    short = Fused(points[:3], np.zeros(3), np.full(3, 8), np.zeros((3, 10), np.int64))
    assert may_skip_one(short).tolist() == [True, True]


def test_the_shorter_steps_at_the_top_of_the_thorax_are_vertebrae_too() -> None:
    """A chest's chain: gaps of 16-17 mm at its top (T1-T3), 21-23 mm below, the top rows found in
    3-4 of 10 views. A top gap is 0.8 of the gaps the chain's end is measured against, yet regular
    between regular gaps: a vertebra, not T2 found twice. The first gap, with nothing above it to
    tell its rhythm by, may still be one vertebra found twice, and so may a point that splits one
    step into two gaps that together are one regular step (a vertebra found twice, 14 and 15 mm
    from its neighbours where 20-22 mm is the step)."""
    gaps = np.array([16.0, 16.0, 17.0, 21.0, 22.0, 22.0, 23.0, 23.0])
    s = -np.r_[0.0, np.cumsum(gaps)]
    points = np.stack([np.zeros_like(s), 1e-3 * s**2, s], axis=1)  # the thoracic kyphosis
    n_views = np.array([3, 3, 4, 3, 8, 8, 8, 8, 8])
    fused = Fused(points, np.zeros(9), n_views, np.zeros((9, 10), np.int64))
    same_ok = may_be_one_vertebra(fused, 10)
    assert same_ok[0] and not same_ok[1:].any()
    split = np.r_[0.0, -np.cumsum([20.0, 20.0, 21.0, 14.0, 15.0, 22.0, 22.0, 22.0])]
    points = np.stack([np.zeros_like(split), np.zeros_like(split), split], axis=1)
    fused = Fused(points, np.zeros(9), np.full(9, 4), np.zeros((9, 10), np.int64))
    assert may_be_one_vertebra(fused, 10)[1:7].tolist() == [False, False, True, True, False, False]


def test_upright_axis_is_the_spine_axis_only_where_the_spine_leans() -> None:
    """The views are rendered again about the vertebrae's principal axis when it leans more than
    the threshold from the scan's S-I axis; a near-upright chain, two points or no threshold: never."""
    from vertedge.pipeline import upright_axis

    from .conftest import rotation

    si = np.array([0.0, 0.0, 1.0])
    s = np.linspace(-100, 100, 7)[:, None]
    bend = np.zeros((7, 3))
    bend[:, 1] = 0.002 * s[:, 0] ** 2  # a curve in the sagittal plane: the chord is what counts
    for lean, expect in ((10.0, True), (2.0, False)):
        axis = rotation("x", lean) @ si
        points = s * axis + bend + [5.0, -20.0, 300.0]
        found = upright_axis(points[::-1], si, 3.0)  # cranio-caudal order does not matter
        assert (found is not None) == expect
        if expect:
            assert found @ axis > np.cos(np.radians(1.0)) and found[2] > 0
    leaning = s * (rotation("x", 10.0) @ si)
    assert upright_axis(leaning[:2], si, 3.0) is None
    assert upright_axis(leaning, si, None) is None
