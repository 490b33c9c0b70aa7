"""The bodies read from the CT: points set off along or across the spine come back to their bodies."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vertedge import metrics
from vertedge.body import body_centres, column_predictions, onto_column, period_mm
from vertedge.labels import SPINE_ORDER
from vertedge.options import DEFAULT_OPTIONS
from vertedge.phantom import make_phantom
from vertedge.ribs import chain_frames
from vertedge.volume import Volume, load_volume
from vertedge_train.variations import rotated, rotation

from .conftest import SHARED_DATA, air_volume


def chain(centroids: dict[int, np.ndarray], cut: dict[int, bool] | frozenset[int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) world LPS mm body centroids and (n,) their labels, cranial -> caudal, cut ones left out."""
    labels = np.array([k for k in sorted(centroids, key=SPINE_ORDER.index)
                       if not (cut[k] if isinstance(cut, dict) else k in cut)])
    return np.array([centroids[k] for k in labels]), labels


def whole_bodies(centroids: dict[int, np.ndarray], cut: dict[int, bool] | frozenset[int]) -> np.ndarray:
    """(n, 3) world LPS mm body centroids in chain order (cranial -> caudal), cut ones left out."""
    return chain(centroids, cut)[0]


@pytest.fixture(scope="module")
def thoracic_chain() -> tuple[Volume, np.ndarray, np.ndarray]:
    ph = make_phantom(3, "thoracic")
    return (ph.volume, *chain(ph.centroids, ph.cut))


def errors(points: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """|error| mm (n,) along the spine, across it (lateral) and front-back, in the truth's frames."""
    axis, lateral, posterior, _ = chain_frames(truth)
    d = points - truth
    return (np.abs((d * axis).sum(1)), np.abs((d * lateral).sum(1)), np.abs((d * posterior).sum(1)))


@pytest.fixture(scope="module")
def thoracic(thoracic_chain) -> tuple[Volume, np.ndarray]:
    return thoracic_chain[:2]


@pytest.fixture(scope="module")
def lumbar() -> tuple[Volume, np.ndarray]:
    ph = make_phantom(5, "lumbar")
    return ph.volume, whole_bodies(ph.centroids, ph.cut)


@pytest.mark.parametrize("gaps", [0.3, -0.3])
@pytest.mark.parametrize("region", ["thoracic", "lumbar"])
def test_points_set_off_along_the_spine_come_back_to_their_bodies(region, gaps, request):
    volume, truth = request.getfixturevalue(region)
    axis = chain_frames(truth)[0]
    start = truth + gaps * period_mm(truth)[:, None] * axis  # where the nets put the real chest CT's points
    along, _, _ = errors(body_centres(volume, start), truth)
    assert np.median(along) <= 1.5 and along.max() <= 4.0, along.round(1)


@pytest.mark.parametrize("region", ["thoracic", "lumbar"])
def test_points_set_off_along_and_behind_their_bodies_come_back_to_them(region, request):
    """The profile along the spine is read through the body: from the point where the nets put it,
    at the back of its body, it crosses the canal's edge and the arch (the chest CT on thick slices)."""
    volume, truth = request.getfixturevalue(region)
    axis, _, posterior, _ = chain_frames(truth)
    start = truth + period_mm(truth)[:, None] * (0.3 * axis + 0.4 * posterior)
    along, _, front_back = errors(body_centres(volume, start), truth)
    assert along.max() <= 1.5 and front_back.max() <= 2.0, (along.round(1), front_back.round(1))


def test_points_in_the_spinal_canal_come_forward_to_their_bodies(thoracic):
    volume, truth = thoracic
    posterior = chain_frames(truth)[2]
    start = truth + 0.75 * period_mm(truth)[:, None] * posterior  # behind the body: in the canal
    _, _, front_back = errors(body_centres(volume, start), truth)
    assert front_back.max() <= 2.0, front_back.round(1)


def test_points_in_a_canal_as_bright_as_muscle_come_forward_to_their_bodies(lumbar):
    """The phantom's lumbar canal is drawn as soft tissue (41-55 HU), as a real canal reads where
    the cord and its walls blur in (the chest CT in a spine-centred field of view): a small bony
    ring closed round the point with a body in front of it tells it from a faint body's marrow."""
    volume, truth = lumbar
    posterior = chain_frames(truth)[2]
    start = truth + 0.6 * period_mm(truth)[:, None] * posterior  # behind the body: in the canal
    _, _, front_back = errors(body_centres(volume, start), truth)
    assert front_back.max() <= 2.0, front_back.round(1)


def test_a_faint_body_is_not_taken_for_the_canal():
    """An osteoporotic body (bone density 0.19: marrow near 60 HU) shows bone in front of its middle
    and behind it too, its cortex; its points stay in it."""
    ph = make_phantom(742)
    truth = whole_bodies(ph.centroids, ph.cut)
    _, _, front_back = errors(body_centres(ph.volume, truth), truth)
    assert front_back.max() <= 3.0, front_back.round(1)


def test_points_in_front_of_the_bodies_are_not_taken_for_the_canal(thoracic):
    volume, truth = thoracic
    posterior = chain_frames(truth)[2]
    start = truth - 0.75 * period_mm(truth)[:, None] * posterior  # in the mediastinum, the body behind
    without_canal = replace(DEFAULT_OPTIONS.body, canal_reach_gaps=0.0)
    np.testing.assert_allclose(body_centres(volume, start), body_centres(volume, start, without_canal))


@pytest.mark.parametrize("roll_deg", [0.0, 25.0])
def test_points_set_off_across_the_spine_come_back_to_the_midline(lumbar, roll_deg):
    volume, truth = lumbar
    turn, centre = rotation(roll_deg=roll_deg), truth.mean(axis=0)
    if roll_deg:
        volume, truth = rotated(volume, turn, centre), (truth - centre) @ turn.T + centre
    lateral = chain_frames(truth)[1]
    _, across, front_back = errors(body_centres(volume, truth + 5.0 * lateral), truth)
    assert across.max() <= 1.5 and front_back.max() <= 2.5, (across.round(1), front_back.round(1))


def test_a_scan_without_bodies_leaves_the_points_where_they_are():
    volume = air_volume((80, 80, 120), (2.0, 2.0, 2.0))
    volume.hu[:] = 40  # soft tissue and nothing else: no centre of symmetry is clearer than another
    points = np.array([[0.0, 0.0, 60.0 - 25.0 * r] for r in range(5)])
    np.testing.assert_array_equal(body_centres(volume, points), points)


def test_points_not_read_stay_and_do_not_move_their_neighbours(thoracic):
    volume, truth = thoracic
    axis = chain_frames(truth)[0]
    start = truth + 0.3 * period_mm(truth)[:, None] * axis
    read = np.ones(len(truth), bool)
    read[:2] = False
    moved = body_centres(volume, start, read=read)
    np.testing.assert_array_equal(moved[:2], start[:2])
    assert np.median(errors(moved[2:], truth[2:])[0]) <= 1.5


REAL = SHARED_DATA / "real"


@pytest.mark.skipif(not (REAL / "popi_thorax").is_dir(), reason="no ../shared/data")
def test_the_chest_ct_points_where_the_nets_put_them_come_back_to_the_bodies():
    """The localization net puts the real chest CT's T1-T10 7-8 mm cranial of their bodies."""
    truth_by_label, cut = metrics.read_points(REAL / "popi_thorax" / "ground_truth.json")
    truth = whole_bodies(truth_by_label, frozenset(cut))
    axis = chain_frames(truth)[0]
    moved = body_centres(load_volume(REAL / "popi_thorax" / "ct.nii.gz"), truth + 7.5 * axis)
    along, across, front_back = errors(moved, truth)
    assert np.median(along) <= 2.0 and np.median(np.linalg.norm(moved - truth, axis=1)) <= 3.0, along.round(1)


@pytest.mark.skipif(not (REAL / "totalseg_lumbar").is_dir(), reason="no ../shared/data")
def test_the_lumbar_ct_points_off_the_midline_come_back_to_it():
    """The nets put the real lumbar CT's points 4-5 mm to the patient's right of its bodies."""
    truth_by_label, cut = metrics.read_points(REAL / "totalseg_lumbar" / "ground_truth.json")
    truth = whole_bodies(truth_by_label, frozenset(cut))
    lateral = chain_frames(truth)[1]
    moved = body_centres(load_volume(REAL / "totalseg_lumbar" / "ct.nii.gz"), truth - 5.0 * lateral)
    _, across, _ = errors(moved, truth)
    assert across.max() <= 2.0, across.round(1)


def test_a_body_cut_by_the_scans_edge_is_not_moved_across_the_spine(lumbar):
    volume, truth = lumbar
    top = truth[0]
    k_top = int(round(volume.world_to_index(top)[volume.si_axis()[0]]))
    lo, hi = np.zeros(3, int), np.array(volume.shape_ijk)
    si = volume.si_axis()[0]
    # keep the scan from the top body's centre down: its slab is half outside
    if volume.si_axis()[1] @ volume.direction[:, si] > 0:
        hi[si] = k_top + 1
    else:
        lo[si] = k_top
    cut = volume.subvolume(lo, hi)
    lateral = chain_frames(truth)[1]
    start = truth + 5.0 * lateral
    moved = body_centres(cut, start)
    np.testing.assert_allclose((moved[0] - start[0]) @ lateral[0], 0.0, atol=1e-9)
    _, across, _ = errors(moved[1:], truth[1:])
    assert across.max() <= 1.5


@pytest.mark.parametrize("seed, region", [(3, "thoracic"), (5, "lumbar"), (742, "whole")])
def test_bodies_on_their_column_stay(seed, region):
    ph = make_phantom(seed, region) if region != "whole" else make_phantom(seed)
    truth, labels = chain(ph.centroids, ph.cut)
    np.testing.assert_array_equal(onto_column(ph.volume, truth, labels), truth)


@pytest.mark.parametrize("where", ["front", "behind", "along"])
def test_a_body_off_its_column_is_read_again_between_its_neighbours(thoracic_chain, where):
    """One point 0.9 of a gap off its body, beyond what the pairs of neighbours either side, above
    and below allow (the real chest CT's T10 under noise was 0.7 of a gap in front of its body),
    comes back to it; its neighbours stay."""
    volume, truth, labels = thoracic_chain
    axis, _, posterior, _ = chain_frames(truth)
    k = len(truth) // 2
    start = truth.copy()
    shift = {"front": -posterior[k], "behind": posterior[k], "along": axis[k]}[where]
    start[k] += 0.9 * period_mm(truth)[k] * shift
    moved = onto_column(volume, start, labels)
    assert np.linalg.norm(moved[k] - truth[k]) <= 3.0, moved[k] - truth[k]
    others = np.arange(len(truth)) != k
    np.testing.assert_array_equal(moved[others], start[others])


def test_an_end_of_the_chain_is_judged_but_not_moved(thoracic_chain):
    """Beyond two levels the column's curve may put a body half a gap off their line: an end point
    off it stays, and so does its neighbour, which the pair above still places."""
    volume, truth, labels = thoracic_chain
    posterior = chain_frames(truth)[2]
    start = truth.copy()
    start[-1] += 1.0 * period_mm(truth)[-1] * posterior[-1]
    np.testing.assert_array_equal(onto_column(volume, start, labels), start)


def test_no_pair_across_a_missed_level_judges_a_point(thoracic_chain):
    volume, truth, labels = thoracic_chain
    k = len(truth) // 2
    kept = np.arange(len(truth)) != k  # level k missed: its neighbours are not adjacent levels
    _, tolerance = column_predictions(truth[kept], labels[kept])
    assert np.isnan(tolerance[0, k - 1]) and np.isnan(tolerance[0, k])
    assert np.isnan(tolerance[2, k - 2]) and np.isnan(tolerance[1, k + 1])
    assert np.isfinite(tolerance[1, k - 1]) and np.isfinite(tolerance[2, k])


def test_points_not_read_are_not_moved_onto_the_column(thoracic_chain):
    volume, truth, labels = thoracic_chain
    posterior = chain_frames(truth)[2]
    k = len(truth) // 2
    start = truth.copy()
    start[k] += 0.7 * period_mm(truth)[k] * posterior[k]
    read = np.ones(len(truth), bool)
    read[k] = False
    np.testing.assert_array_equal(onto_column(volume, start, labels, read=read), start)


@pytest.mark.skipif(not (REAL / "popi_thorax").is_dir(), reason="no ../shared/data")
def test_the_chest_ct_body_the_nets_put_in_front_of_the_spine_comes_back_to_it():
    """Under 20 HU of noise the nets put the real chest CT's T10 17 mm in front of its body."""
    truth_by_label, cut = metrics.read_points(REAL / "popi_thorax" / "ground_truth.json")
    truth, labels = chain(truth_by_label, frozenset(cut))
    k = int(np.flatnonzero(labels == 17)[0])  # T10
    posterior = chain_frames(truth)[2]
    start = truth.copy()
    start[k] -= 17.0 * posterior[k]
    moved = onto_column(load_volume(REAL / "popi_thorax" / "ct.nii.gz"), start, labels)
    assert np.linalg.norm(moved[k] - truth[k]) <= 3.0, moved[k] - truth[k]
