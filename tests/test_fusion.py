"""Multi-view fusion: ray intersection (Eq. 5), matching detections per vertebra, spine order."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.fusion import (
    Fused,
    detection_rays,
    distinct_vertebrae,
    fuse,
    intersect_rays,
    on_spine,
    order_along_spine,
    split_detections,
)
from vertedge.geometry import Protocol, Views, make_views, pixel_rays, project
from vertedge.labelling import spine_gaps
from vertedge.options import DEFAULT_OPTIONS, FusionOptions
from vertedge.peaks import Peaks
from vertedge.volume import Volume

N_VIEWS = 10


def _views(pixel_mm: float = 2.0) -> Views:
    """K=10 views of an empty 300 x 300 x 700 mm box centred on the world origin (LPS, k superior)."""
    shape_kji = (140, 60, 60)
    spacing = np.array([5.0, 5.0, 5.0])
    origin = -(np.array(shape_kji[::-1]) - 1) / 2 * spacing
    volume = Volume(np.zeros(shape_kji, np.int16), spacing, origin, np.eye(3))
    return make_views(volume, Protocol(n_views=N_VIEWS, pixel_mm=pixel_mm))


def _spine(n: int = 24, tilt_deg: float = 0.0) -> np.ndarray:
    """(n, 3) LPS mm body centroids cranial -> caudal: lordosis/kyphosis, S-shaped scoliosis, gaps 15 -> 35 mm."""
    z = np.linspace(320.0, -320.0, 4001)
    curve = np.stack(
        [
            18.0 * np.sin(np.pi * (z + 320.0) / 320.0),  # scoliosis: S in the coronal plane
            30.0 + 25.0 * np.sin(2 * np.pi * z / 640.0),  # kyphosis over lordosis (sagittal)
            z,
        ],
        axis=1,
    )
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve, axis=0), axis=1))])
    gaps = np.linspace(15.0, 35.0, n - 1)
    s = 10.0 + np.concatenate([[0.0], np.cumsum(gaps)])
    points = np.stack([np.interp(s, arc, curve[:, a]) for a in range(3)], axis=1)
    t = np.deg2rad(tilt_deg)  # tilt about the L-R axis: the spine leans towards anterior
    rot = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    return points @ rot.T


def _detections(
    views: Views, points: np.ndarray, visible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat detections of points (n, 3) in the views where visible (K, n): view (M,), vertebra (M,), rc (M, 2)."""
    rc, _ = project(views, points)
    if visible is None:
        visible = np.ones(rc.shape[:2], bool)
    view, vertebra = np.nonzero(visible)
    return view, vertebra, rc[view, vertebra]


def _peaks(view: np.ndarray, rc: np.ndarray) -> Peaks:
    """Peaks with unit scores."""
    return Peaks(view=view.astype(np.int64), rc=np.asarray(rc, float), score=np.ones(len(view)))


def _errors(fused: Fused, truth: np.ndarray) -> np.ndarray:
    """(n,) distance mm from each true point to the fused point at the same position in the order."""
    assert len(fused) == len(truth)
    return np.linalg.norm(fused.points_lps - truth, axis=1)


# ---------------------------------------------------------------- intersect_rays


def test_three_axis_rays_meet_at_their_point() -> None:
    p = np.array([3.0, -7.0, 11.0])
    dirs = np.eye(3)
    origins = p - 50.0 * dirs
    np.testing.assert_allclose(intersect_rays(origins, dirs), p, atol=1e-12)


def test_two_skew_lines_give_midpoint_of_common_perpendicular() -> None:
    origins = np.array([[0.0, 0.0, 0.0], [1.0, 5.0, 2.0]])
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # closest points (1, 0, 0) on the first line and (1, 0, 2) on the second
    np.testing.assert_allclose(intersect_rays(origins, dirs), [1.0, 0.0, 1.0], atol=1e-12)


def test_zero_weight_ignores_ray_and_single_ray_is_undetermined() -> None:
    p = np.array([1.0, 2.0, 3.0])
    dirs = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    origins = p - 10 * dirs
    origins[2] += [40.0, 0.0, 0.0]  # an outlier ray
    assert np.linalg.norm(intersect_rays(origins, dirs) - p) > 1.0
    np.testing.assert_allclose(intersect_rays(origins, dirs, np.array([1.0, 1.0, 0.0])), p, atol=1e-12)
    assert np.isnan(intersect_rays(origins[:1], dirs[:1])).all()


def test_rays_of_projected_points_meet_at_them_batched() -> None:
    views = _views()
    rng = np.random.default_rng(3)
    points = rng.uniform([-80, -60, -250], [80, 100, 250], size=(50, 3))
    rc, _ = project(views, points)
    origins, dirs = pixel_rays(views, rc)  # (K, N, 3)
    fitted = intersect_rays(origins.transpose(1, 0, 2), dirs.transpose(1, 0, 2))
    assert fitted.shape == (50, 3)
    np.testing.assert_allclose(fitted, points, atol=1e-6)
    pairs = intersect_rays(
        np.stack([origins[0], origins[3]], axis=1)[None].repeat(2, 0),
        np.stack([dirs[0], dirs[3]], axis=1)[None].repeat(2, 0),
    )
    assert pairs.shape == (2, 50, 3)
    np.testing.assert_allclose(pairs[1], points, atol=1e-6)


# ---------------------------------------------------------------- fuse


def test_fuse_ideal_detections_exact_count_and_order() -> None:
    views, truth = _views(), _spine(24)
    view, _, rc = _detections(views, truth)
    rng = np.random.default_rng(4)
    shuffle = rng.permutation(len(view))  # fusion must not rely on the input order
    fused = fuse(_peaks(view[shuffle], rc[shuffle]), views)
    assert _errors(fused, truth).max() < 0.1
    assert fused.n_views.tolist() == [N_VIEWS] * 24
    assert fused.residual_mm.max() < 1e-6
    assert fused.support.shape == (24, N_VIEWS)
    # support points, per view, at the detection of that vertebra
    np.testing.assert_array_equal(view[shuffle][fused.support], np.arange(N_VIEWS)[None].repeat(24, 0))
    np.testing.assert_allclose(rc[shuffle][fused.support], project(views, truth)[0].transpose(1, 0, 2))


def test_fuse_jittered_detections() -> None:
    views, truth = _views(), _spine(20)
    view, _, rc = _detections(views, truth)
    rng = np.random.default_rng(5)
    rc = rc + rng.uniform(-1.5, 1.5, rc.shape)
    fused = fuse(_peaks(view, rc), views)
    assert _errors(fused, truth).max() < 1.5
    assert fused.n_views.min() >= N_VIEWS - 1


def test_fuse_degraded_detections() -> None:
    """Misses in 3 of 10 views, spurious blobs, an end vertebra in 3 views only, and jitter."""
    views, truth = _views(), _spine(22)
    rng = np.random.default_rng(6)
    visible = np.ones((N_VIEWS, len(truth)), bool)
    for v in (4, 9, 15):
        visible[rng.choice(N_VIEWS, 3, replace=False), v] = False
    visible[:, -1] = False
    visible[[0, 3, 6], -1] = True  # the caudal end vertebra, cut by the field of view
    view, _, rc = _detections(views, truth, visible)
    rc = rc + rng.uniform(-1.0, 1.0, rc.shape)
    spurious_view = np.array([2, 2, 7])
    spurious_rc = np.array([[200.0, 150.0], [431.0, 170.0], [300.0, 120.0]])
    fused = fuse(_peaks(np.concatenate([view, spurious_view]), np.concatenate([rc, spurious_rc])), views)
    assert _errors(fused, truth).max() < 2.0
    assert fused.n_views[[4, 9, 15]].tolist() == [7, 7, 7]
    assert fused.n_views[-1] == 3
    assert not np.isin(np.arange(len(view), len(view) + 3), fused.support).any()


def test_a_detection_two_objects_share_serves_one_and_points_fit_their_own_detections() -> None:
    """An object 50 mm behind vertebra 5 along view 0's ray is one blob with it in that view.

    The vertebra, seen in more views, takes the shared detection; the object keeps its other three.
    Every point is Eq. 5 on its support's rays, its residual and view count describe those rays,
    and a detection serves one point at most, in its own view's column.
    """
    views, truth = _views(), _spine(12)
    ray = truth[5] - views.sources[0]
    behind = truth[5] + 50.0 * ray / np.linalg.norm(ray)
    view, _, rc = _detections(views, truth)
    seen_behind = np.array([1, 2, 3])
    view = np.concatenate([view, seen_behind])
    rc = np.concatenate([rc, project(views, behind[None])[0][seen_behind, 0]])
    rc = rc + np.random.default_rng(9).uniform(-1.0, 1.0, rc.shape)
    peaks = _peaks(view, rc)
    fused = fuse(peaks, views, FusionOptions(max_off_spine_mm=1e3))  # keep the object beside the spine
    assert len(fused) == 13
    found = np.argmin(np.linalg.norm(fused.points_lps - behind, axis=1))
    assert np.linalg.norm(fused.points_lps[found] - behind) < 2.0
    np.testing.assert_array_equal(view[fused.support[found][fused.support[found] >= 0]], seen_behind)
    used = fused.support >= 0
    taken = fused.support[used]
    assert len(np.unique(taken)) == len(taken)
    np.testing.assert_array_equal(view[taken], np.nonzero(used)[1])
    np.testing.assert_array_equal(fused.n_views, used.sum(axis=1))
    origins, dirs = (x[fused.support] for x in detection_rays(peaks, views))  # (n, K, 3); -1 entries unused
    np.testing.assert_allclose(intersect_rays(origins, dirs, used.astype(float)), fused.points_lps, atol=1e-9)
    v = fused.points_lps[:, None] - origins
    perp = v - np.einsum("nki,nki->nk", v, dirs)[..., None] * dirs
    rms = np.sqrt(np.where(used, np.einsum("nki,nki->nk", perp, perp), 0.0).sum(axis=1) / fused.n_views)
    np.testing.assert_allclose(fused.residual_mm, rms, atol=1e-9)


def test_fuse_needs_min_views() -> None:
    views, truth = _views(), _spine(8)
    visible = np.ones((N_VIEWS, 8), bool)
    visible[:, 3] = False
    visible[[0, 2], 3] = True  # vertebra 3 only in two views, 72 degrees apart
    view, _, rc = _detections(views, truth, visible)
    fused = fuse(_peaks(view, rc), views)
    assert len(fused) == 7
    assert np.linalg.norm(fused.points_lps - truth[3], axis=1).min() > 10.0
    assert len(fuse(_peaks(view, rc), views, FusionOptions(min_views=2))) == 8
    with pytest.raises(ValueError):
        FusionOptions(min_views=1)
    for bad in ({"split_regular": 0.9}, {"split_part": 1.5}, {"split_views": 0.0}):
        with pytest.raises(ValueError, match="split_regular"):
            FusionOptions(**bad)
    assert FusionOptions(split_regular=None, split_views=0.0).split_regular is None  # the rule off


def test_fuse_nothing() -> None:
    views = _views()
    fused = fuse(_peaks(np.zeros(0, np.int64), np.zeros((0, 2))), views)
    assert len(fused) == 0 and fused.support.shape == (0, N_VIEWS)
    lone = fuse(_peaks(np.array([0, 5]), np.array([[100.0, 100.0], [100.0, 100.0]])), views)
    assert len(lone) == 0


# ---------------------------------------------------------------- order_along_spine


def test_order_recovers_shuffled_scoliotic_spine() -> None:
    truth = _spine(24)
    truth[:, 0] *= 3.0  # strong scoliosis
    rng = np.random.default_rng(7)
    shuffle = rng.permutation(24)
    order = order_along_spine(truth[shuffle])
    np.testing.assert_array_equal(shuffle[order], np.arange(24))


def test_order_follows_a_strongly_tilted_spine_where_z_fails() -> None:
    truth = _spine(24, tilt_deg=80.0)
    assert not np.array_equal(np.argsort(-truth[:, 2]), np.arange(24))  # z alone would misorder
    rng = np.random.default_rng(8)
    shuffle = rng.permutation(24)
    np.testing.assert_array_equal(shuffle[order_along_spine(truth[shuffle])], np.arange(24))


def test_order_small_inputs() -> None:
    assert order_along_spine(np.zeros((0, 3))).tolist() == []
    assert order_along_spine(np.array([[0.0, 0.0, -5.0], [0.0, 0.0, 5.0]])).tolist() == [1, 0]


# ---------------------------------------------------------------- on_spine


def test_on_spine_keeps_a_scoliotic_spine_with_a_missed_vertebra() -> None:
    truth = _spine(24)
    truth[:, 0] *= 3.0  # strong scoliosis
    chain = np.delete(truth, 10, axis=0)  # one vertebra not detected: a double gap
    assert on_spine(chain, 25.0).all()


def test_on_spine_drops_a_lateral_stray_inside_or_at_the_end_and_a_detached_pair() -> None:
    truth = _spine(12)
    beside = truth[5] + [60.0, 0.0, -8.0]  # between vertebrae 5 and 6, 60 mm to the side
    chain = np.insert(truth, 6, beside, axis=0)
    assert np.flatnonzero(~on_spine(chain, 25.0)).tolist() == [6]
    below = truth[-1] + [45.0, 0.0, -30.0]
    assert np.flatnonzero(~on_spine(np.vstack([truth, below]), 25.0)).tolist() == [12]
    # two stray points in line with each other, cut off from the spine by a wide gap
    step = truth[-1] - truth[-2]
    pair = truth[-1] + [70.0, 0.0, 0.0] + np.array([1.0, 2.0])[:, None] * (step + [0.0, 0.0, -60.0])
    assert np.flatnonzero(~on_spine(np.vstack([truth, pair]), 25.0)).tolist() == [12, 13]


# ---------------------------------------------------------------- distinct_vertebrae


def test_distinct_vertebrae_drops_the_weaker_of_a_split_pair_only() -> None:
    truth = _spine(12)
    n_views, residual = np.full(12, 9), np.full(12, 1.0)
    assert distinct_vertebrae(truth, n_views, residual, 0.5).all()
    # vertebra 4 found a second time 0.3 gaps below, in fewer views: that point goes, either order
    twin = truth[4] + 0.3 * (truth[5] - truth[4])
    chain = np.insert(truth, 5, twin, axis=0)
    nv, res = np.insert(n_views, 5, 4), np.insert(residual, 5, 2.0)
    assert np.flatnonzero(~distinct_vertebrae(chain, nv, res, 0.5)).tolist() == [5]
    nv[[4, 5]] = 4, 9
    assert np.flatnonzero(~distinct_vertebrae(chain, nv, res, 0.5)).tolist() == [4]
    # a missed vertebra (a double gap) and a weak vertebra at the normal gap stay
    sparse = np.delete(truth, 6, axis=0)
    nv = np.full(11, 9)
    nv[5] = 3
    assert distinct_vertebrae(sparse, nv, np.ones(11), 0.5).all()
    assert distinct_vertebrae(chain[:3], np.ones(3), np.ones(3), 0.5).all()


def test_a_weakly_seen_point_halfway_between_two_vertebrae_leaves_the_chain() -> None:
    options = DEFAULT_OPTIONS.fusion
    split = (options.split_regular, options.split_part, options.split_views)
    truth = _spine(12)
    n_views = np.full(12, 9)
    assert split_detections(truth, n_views, *split).all()
    # a stray point 0.45 of the way from vertebra 6 to 7, in 3 views: it goes, and only it, even
    # with a second one beside it (two short gaps in a row do not hide each other)
    chain = np.insert(truth, 7, truth[6] + 0.45 * (truth[7] - truth[6]), axis=0)
    nv = np.insert(n_views, 7, 3)
    assert np.flatnonzero(~split_detections(chain, nv, *split)).tolist() == [7]
    two = np.insert(chain, 5, truth[4] + 0.55 * (truth[5] - truth[4]), axis=0)
    assert np.flatnonzero(~split_detections(two, np.insert(nv, 5, 3), *split)).tolist() == [5, 8]
    # seen in more than half the views of a neighbour, it may be a vertebra: it stays
    nv[7] = 5
    assert split_detections(chain, nv, *split).all()
    # a vertebra seen in 3 views between regular neighbours (the chest CT's) stays: its gaps are regular
    weak = n_views.copy()
    weak[6] = 3
    assert split_detections(truth, weak, *split).all()
    # ... and so does one beside a missed vertebra: the neighbours' distance is not one gap
    sparse = np.delete(truth, 7, axis=0)
    weak = np.full(11, 9)
    weak[6] = 3
    assert split_detections(sparse, weak, *split).all()
    assert split_detections(chain[:3], np.r_[9, 3, 9], *split).all()


def test_two_points_at_one_level_of_the_spine_are_one_vertebra_when_gaps_are_read_along_it() -> None:
    # two vertebrae the decode named apart that the CT puts beside each other, not one below the
    # other (a point moved onto a body at another's level): 0.6 gaps apart straight, none along
    # the spine; at a third of a gap along it, one of them is off its body, and both stay
    truth = _spine(12)
    across = np.cross(truth[6] - truth[4], [0.0, 1.0, 0.0])
    beside = truth[5] + 0.6 * np.linalg.norm(truth[6] - truth[5]) * across / np.linalg.norm(across)
    chain = np.insert(truth, 6, beside, axis=0)
    nv, res = np.insert(np.full(12, 9), 6, 4), np.ones(13)
    same = DEFAULT_OPTIONS.body.same_body_gap
    assert distinct_vertebrae(chain, nv, res, same).all()
    assert np.flatnonzero(~distinct_vertebrae(chain, nv, res, same, gaps=spine_gaps)).tolist() == [6]
    # along the spine a regular chain stays whole, and so does a point a third of a gap below another
    assert distinct_vertebrae(truth, np.full(12, 9), np.ones(12), same, gaps=spine_gaps).all()
    below = np.insert(truth, 6, truth[5] + (truth[6] - truth[5]) / 3, axis=0)
    assert distinct_vertebrae(below, nv, res, same, gaps=spine_gaps).all()
