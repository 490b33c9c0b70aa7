"""Counting from the ends of the spine: labels are trusted only where a count from C1 or the sacrum reaches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from vertedge.anchors import median_hu, review, room_mm, supported
from vertedge.labels import LABELS
from vertedge.options import DEFAULT_OPTIONS
from vertedge.ribs import UNSEEN
from vertedge.volume import Volume

from .conftest import SHARED_DATA, air_volume, rotation

UNSUPPORTED_CONFIDENCE = DEFAULT_OPTIONS.review.unsupported_confidence
# the junction taken on trust (the rule up to stop 60): for the tests of a terminus and of the count's
# steps, which a lumbar chain with nothing above its L1 would otherwise never let stand
ON_TRUST = dataclasses.replace(DEFAULT_OPTIONS.review, junction_seen=False)
GAP = 35.0  # mm between lumbar body centroids
LUMBAR = np.array([LABELS[n] for n in ("L1", "L2", "L3", "L4", "L5")])


def lumbar_scan(below_l5_mm: float, beyond_hu: int, n: int = 5) -> tuple[Volume, np.ndarray]:
    """A body of soft tissue holding `n` vertebrae along S-I, `GAP` apart, the last ("L5") at
    z = -70 mm (points cranial -> caudal, world LPS mm), the scan ending `below_l5_mm` under it, and
    a 30 mm block of `beyond_hu` one gap below it (the sacrum)."""
    top, bottom = (n - 3) * GAP + 20.0, -(2 * GAP + below_l5_mm)
    volume = air_volume((60, 60, int(round(top - bottom))), (2.0, 2.0, 1.0), None, (0.0, 0.0, (top + bottom) / 2))
    points = np.array([[0.0, 0.0, (n - 3) * GAP - i * GAP] for i in range(n)])
    world = volume.index_to_world(np.stack(np.meshgrid(*map(np.arange, volume.shape_ijk), indexing="ij"), -1))
    world = world.transpose(2, 1, 0, 3)  # (k, j, i, 3) like hu
    hu = np.where(np.linalg.norm(world[..., :2], axis=-1) < 50.0, 40, -1000)
    sacrum = np.abs(world[..., 2] - (points[-1, 2] - GAP)) < 15.0
    hu = np.where(sacrum & (np.linalg.norm(world[..., :2], axis=-1) < 25.0), beyond_hu, hu)
    return dataclasses.replace(volume, hu=hu.astype(np.int16)), points


def test_a_lumbar_spine_ending_on_the_sacrum_is_counted_from_it():
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    assert supported(volume, points, LUMBAR, np.full(5, 0.8), ON_TRUST).all()
    conf, flag = review(volume, points, LUMBAR, np.full(5, 0.8), ON_TRUST)
    np.testing.assert_allclose(conf, 0.8)
    assert not flag.any()


@pytest.mark.parametrize(
    "below_l5_mm, beyond_hu, why",
    [(30.0, 250, "the scan ends before a further vertebra would be in view"),
     (80.0, 40, "soft tissue, not the sacrum, lies beyond the last point")],
)
def test_no_terminus_no_trust(below_l5_mm, beyond_hu, why):
    volume, points = lumbar_scan(below_l5_mm, beyond_hu)
    conf, flag = review(volume, points, LUMBAR, np.full(5, 0.9))
    assert flag.all(), why
    assert (conf <= UNSUPPORTED_CONFIDENCE).all(), why


def test_the_sacrum_found_below_the_last_vertebra_makes_it_a_terminus():
    """Where the place one gap beyond the chain is soft tissue (the lumbosacral angle puts it in
    front of the sacrum) or the scan ends under S1, the sacrum probe's finding counts."""
    for below_l5_mm, beyond_hu in ((80.0, 40), (45.0, 250)):
        volume, points = lumbar_scan(below_l5_mm, beyond_hu)
        assert not supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST).any()
        assert supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST, sacrum_below=True).all()
    assert not supported(volume, points, LUMBAR - 1, np.full(5, 0.9), ON_TRUST, sacrum_below=True).any()  # T12-L4


def test_no_count_starts_from_a_last_point_on_the_sacrum():
    """S1 kept in the chain and read as L5 (an S-I crop): bone lies beyond it, so it would pass for
    the last lumbar vertebra, and every label counted from it would be a level off."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    assert supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST).all()
    assert not supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST, last_on_sacrum=True).any()
    conf, flag = review(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST, last_on_sacrum=True)
    assert flag.all() and (conf <= UNSUPPORTED_CONFIDENCE).all()


def test_a_count_that_disagrees_with_the_terminus_is_not_trusted():
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    one_up = LUMBAR - 1  # T12-L4: the net read every level one too high
    assert not supported(volume, points, one_up, np.full(5, 0.9), ON_TRUST).any()
    # ending on L4 is anatomy when a T13 is decoded above (24 presacral vertebrae), with its ribs seen
    with_t13 = np.array([LABELS[n] for n in ("T13", "L1", "L2", "L3", "L4")])
    ribs = np.array([[1, 1], *[[0, 0]] * 4])
    assert supported(volume, points, with_t13, np.full(5, 0.9), ribs=ribs).tolist() == [False, True, True, True, True]
    with_l6 = np.array([LABELS[n] for n in ("L2", "L3", "L4", "L5", "L6")])
    assert supported(volume, points, with_l6, np.full(5, 0.9), ON_TRUST).all()


def neck_scan() -> tuple[Volume, np.ndarray]:
    """Tissue everywhere (neck and head) and C1-C7 18 mm apart, C1 60 mm under the scan's top."""
    volume = air_volume((40, 40, 200), (2.0, 2.0, 1.0), None, (0.0, 0.0, 0.0))
    volume = dataclasses.replace(volume, hu=np.full_like(volume.hu, 30))
    return volume, np.array([[0.0, 0.0, 40.0 - 18.0 * i] for i in range(7)])


CERVICAL = np.array([LABELS[f"C{i}"] for i in range(1, 8)])


def test_the_count_stops_at_a_missed_vertebra_and_past_a_doubtful_one():
    volume, points = neck_scan()
    missed = np.delete(points, 3, axis=0)  # C4 not found: a gap of two levels between C3 and C5
    labels = np.delete(CERVICAL, 3)
    # C3 too is left out: beside an irregular gap a vertebra may itself be the odd detection
    assert supported(volume, missed, labels, np.full(6, 0.9)).tolist() == [True] * 2 + [False] * 4
    doubtful = np.full(7, 0.9)
    doubtful[2] = 0.3  # the net doubts C3: the count is not carried past it
    assert supported(volume, points, CERVICAL, doubtful).tolist() == [True] * 3 + [False] * 4
    conf, flag = review(volume, points, CERVICAL, doubtful)
    assert flag.tolist() == [False, False, True, True, True, True, True]
    assert conf[3:].max() <= UNSUPPORTED_CONFIDENCE


def test_the_count_does_not_reach_a_vertebra_with_an_irregular_gap_beyond_it():
    """C5 found twice (phantom 740 under 60 HU noise): the second detection, 14 mm below C5, is
    decoded "C6" and the real C6 is absorbed into C7 below it; the gap before the false "C6" is
    regular (0.8 of its neighbours'), the one after it is not (2.2), so the count ends at C5."""
    volume, points = neck_scan()
    chain = np.vstack([points[:5], [[0.0, 0.0, 40.0 - 72.0 - 14.0]], points[6:] - [0.0, 0.0, 18.0]])
    reached = supported(volume, chain, CERVICAL, np.full(7, 0.9))
    assert reached.tolist() == [True] * 5 + [False] * 2


def test_the_count_does_not_step_onto_a_vertebra_the_decode_merged_from_several_detections():
    """Two vertebrae found as three close detections, decoded as one vertebra plus its duplicates
    (phantom 507 tilted: C3 and C4 so read, the chain below a level off, "C3" at 0.54): the gaps
    around the kept point look regular, so the count from C1 stops before it, not past it."""
    volume, points = neck_scan()
    merged = np.zeros(7, bool)
    merged[3] = True
    assert supported(volume, points, CERVICAL, np.full(7, 0.9), merged=merged).tolist() == [True] * 3 + [False] * 4
    assert supported(volume, points, CERVICAL, np.full(7, 0.9)).all()
    at_the_terminus = np.zeros(7, bool)
    at_the_terminus[0] = True  # the count's own start may be one (S1 absorbed into L5 on real CT)
    assert supported(volume, points, CERVICAL, np.full(7, 0.9), merged=at_the_terminus).all()


def test_no_count_starts_from_an_end_few_views_found():
    """A point found in under half the views may be S1 found again below L5 (a v6 phantom: the
    sacrum probe missed it, the net read it "L5" and the real L5 "L4", and the count from it
    trusted L1-L5 a level off at 0.78-0.94); from the other end the count still stands."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    assert supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST).all()
    weak_end = np.ones(5, bool)
    weak_end[-1] = False
    assert not supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST, seen=weak_end).any()
    weak_inside = np.ones(5, bool)
    weak_inside[2] = False  # only the terminus must be seen by most views
    assert supported(volume, points, LUMBAR, np.full(5, 0.9), ON_TRUST, seen=weak_inside).all()
    volume, points = neck_scan()
    weak_c1 = np.ones(7, bool)
    weak_c1[0] = False
    assert not supported(volume, points, CERVICAL, np.full(7, 0.9), seen=weak_c1).any()


def test_a_count_from_the_sacrum_that_stops_below_l1_never_stands_below_more_spine():
    """Stopped below L1 (a missed or doubted vertebra) with more spine above, the count cannot be
    checked against the thoracolumbar junction: six lumbar vertebrae would shift it all. Taking
    the junction on trust, it stood at the top of the scan."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    missed = np.delete(points, 1, axis=0)  # L2 not found: a gap of two levels between L1 and L3
    assert not supported(volume, missed, np.delete(LUMBAR, 1), np.full(4, 0.9), ON_TRUST).any()
    doubtful = np.array([0.9, 0.9, 0.3, 0.9, 0.9])
    assert not supported(volume, points, LUMBAR, doubtful, ON_TRUST).any()
    top = np.array([LABELS[n] for n in ("L3", "L4", "L5")])  # the scan shows nothing above L3
    assert supported(volume, points[2:], top, np.full(3, 0.9), ON_TRUST).all()
    assert not supported(volume, points[2:], top, np.full(3, 0.9)).any()


def test_a_count_from_the_sacrum_stops_at_the_thoracolumbar_junction():
    """Above L1 lies T12 or T13: a variant the count cannot see, so the count ends at L1."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250, n=7)
    labels = np.array([LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")])
    ribs = np.array([[1, 1], [1, 1], *[[0, 0]] * 5])
    assert supported(volume, points, labels, np.full(7, 0.9), ribs=ribs).tolist() == [False, False, *[True] * 5]


RIB_ABOVE_L1_UNSEEN = np.array([[1, 1], [UNSEEN, 0], *[[0, 0]] * 5])  # T12's ring leaves the scan on one side


@pytest.mark.parametrize("ribs", [np.zeros((7, 2), int), np.array([[1, 1], [1, 1], [1, 0], *[[0, 0]] * 4])],
                         ids=["no rib above L1", "a rib beside L1"])
def test_ribs_that_refute_the_junction_stop_a_sure_count(ribs):
    """Five lumbar vertebrae or six is told by the last rib-bearing one, not by the net: it reads
    an L6 spine's L1-L6 as T12-L5 at 0.8-0.9. Where the probe sees the vertebra above L1 in full
    without a rib, or a rib beside L1, a count from the sacrum (which assumes five) that stops at
    L1 below more spine is not trusted, however sure the net."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250, n=7)
    labels = np.array([LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")])
    assert not supported(volume, points, labels, np.full(7, 0.95), ribs=ribs).any()


@pytest.mark.parametrize("ribs", [None, RIB_ABOVE_L1_UNSEEN], ids=["not probed", "T12 leaves the scan"])
@pytest.mark.parametrize("doubt", [None, 1, 2])
def test_an_unseen_junction_taken_on_trust_stands_on_the_nets_confidence(ribs, doubt):
    """Where the probe cannot see the vertebra above L1 in full, a count from the sacrum with the
    junction taken on trust stands as a reader's count of a lumbar CT does, on the net's confidence
    in T12 and L1: in doubt when the net doubts either. By default it does not stand at all."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250, n=7)
    labels = np.array([LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")])
    confidence = np.full(7, 0.9)
    if doubt is not None:
        confidence[doubt] = 0.4
    reached = supported(volume, points, labels, confidence, ON_TRUST, ribs=ribs)
    assert reached.tolist() == ([False, False, *[True] * 5] if doubt is None else [False] * 7)
    assert not supported(volume, points, labels, confidence, ribs=ribs).any()  # unless it is taken on trust


def test_a_cut_vertebra_above_l1_taken_on_trust_leaves_the_count_to_l1():
    """Where the probe sees neither side of the vertebra above L1 (the scan's edge cuts it) and the
    junction is taken on trust, the net's doubt about that cut vertebra does not stop the count;
    its doubt about L1 does."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250, n=7)
    labels = np.array([LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")])
    ribs = np.array([[UNSEEN, UNSEEN], [UNSEEN, UNSEEN], *[[0, 0]] * 5])
    doubt_t12 = np.array([0.9, 0.4, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert supported(volume, points, labels, doubt_t12, ON_TRUST, ribs=ribs).tolist() == [False, False, *[True] * 5]
    doubt_l1 = np.array([0.9, 0.9, 0.4, 0.9, 0.9, 0.9, 0.9])
    assert not supported(volume, points, labels, doubt_l1, ON_TRUST, ribs=ribs).any()
    one_side_seen = ribs.copy()
    one_side_seen[1, 1] = 0  # no rib on a side seen: T12's doubt counts again
    assert not supported(volume, points, labels, doubt_t12, ON_TRUST, ribs=one_side_seen).any()


def test_ribs_above_l1_and_none_beside_it_check_the_junction():
    """The rib probe sees what tells five lumbar vertebrae from six: a rib beside the vertebra
    above L1 and none beside L1 let the count from the sacrum stand, even where the net doubts
    T12; no rib above L1 (six lumbar vertebrae read as five) does not."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250, n=7)
    labels = np.array([LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5")])
    confidence = np.full(7, 0.9)
    confidence[1] = 0.4
    ribs = np.array([[1, 1], [1, 0], *[[0, 0]] * 5])
    assert supported(volume, points, labels, confidence, ribs=ribs).tolist() == [False, False, *[True] * 5]
    no_rib_above = ribs.copy()
    no_rib_above[1] = 0
    assert not supported(volume, points, labels, confidence, ribs=no_rib_above).any()
    rib_beside_l1 = ribs.copy()
    rib_beside_l1[2] = [1, 0]
    assert not supported(volume, points, labels, confidence, ribs=rib_beside_l1).any()


def test_a_count_from_the_sacrum_stands_only_where_the_ribs_show_the_junction():
    """Fresh phantom 3507, an L6 spine scanned from L1 to the sacrum: L1 at the scan's top edge,
    the probe sees neither of its sides, the net reads it "T12" at 0.41 and L2-L6 as L1-L5 at
    0.7-0.99, and a count from the sacrum that assumes five lumbar vertebrae trusted them all a
    level off. Nothing in view tells five from six, so the count stands only where the probe
    sees a rib beside the vertebra above L1 and none beside L1."""
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250, n=6)
    labels = np.array([LABELS[n] for n in ("T12", "L1", "L2", "L3", "L4", "L5")])
    confidence = np.array([0.41, 0.73, 0.74, 0.86, 0.94, 0.99])
    unseen_above = np.array([[UNSEEN, UNSEEN], *[[0, 0]] * 5])
    conf, flag = review(volume, points, labels, confidence, ribs=unseen_above)
    assert flag.all() and (conf <= UNSUPPORTED_CONFIDENCE).all()
    assert supported(volume, points, labels, confidence, ON_TRUST, ribs=unseen_above).tolist() == [False, *[True] * 5]
    rib_above = np.array([[1, 1], *[[0, 0]] * 5])
    assert supported(volume, points, labels, confidence, ribs=rib_above).tolist() == [False, *[True] * 5]
    assert not supported(volume, points[1:], labels[1:], confidence[1:], ribs=unseen_above[1:]).any()  # nothing above


def test_counted_down_from_c1_under_the_skull():
    volume, points = neck_scan()
    assert supported(volume, points, CERVICAL, np.full(7, 0.8)).all()
    assert not supported(volume, points, CERVICAL + 1, np.full(7, 0.8)).any()  # C2 under the skull: no
    air_above = volume.hu.copy()
    air_above[volume.hu.shape[0] - 55 :] = -1000  # air from 5 mm above "C1": what ends there is no skull
    assert not supported(dataclasses.replace(volume, hu=air_above), points, CERVICAL, np.full(7, 0.8)).any()


def test_a_vertebra_at_the_edge_of_the_scan_is_never_trusted():
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    # L1 moved to 5 mm under the scan's top: cut by the field of view, whatever counts reach it
    top = volume.index_to_world(np.array([0, 0, volume.shape_ijk[2] - 1]))[2] + 0.5
    edge = points.copy()
    edge[0, 2] = top - 5.0
    reached = supported(volume, edge, LUMBAR, np.full(5, 0.9), ON_TRUST)
    assert not reached[0] and reached[1:].all()


def test_room_is_the_distance_to_the_scans_edge_in_any_grid():
    volume = air_volume((50, 40, 60), (1.5, 1.5, 2.0), rotation("z", 15), (5.0, -20.0, 100.0))
    down = np.array([0.0, 0.0, -1.0])
    start = np.array([5.0, -20.0, 100.0])
    # the grid's k axis is world z: from the centre to the bottom face is half of 60 x 2 mm
    assert room_mm(volume, start, down) == pytest.approx(60.0, abs=1e-6)
    oblique = np.array([0.6, 0.0, -0.8])
    regrid = volume.reoriented((1, 2, 0), (True, False, True))
    assert room_mm(regrid, start, oblique) == pytest.approx(room_mm(volume, start, oblique), abs=1e-6)
    assert room_mm(volume, start + 1000.0, down) == 0.0


def test_median_hu_reads_world_positions_and_air_outside():
    volume, points = lumbar_scan(below_l5_mm=80.0, beyond_hu=250)
    sacrum = points[-1] + np.array([0.0, 0.0, -GAP])
    assert median_hu(volume, sacrum, 8.0) == 250
    assert median_hu(volume, points[0] + np.array([0.0, 0.0, 500.0]), 8.0) == -1024


@pytest.mark.skipif(not (SHARED_DATA / "real" / "tptbox_l3").is_dir(), reason="no ../shared/data")
def test_a_110mm_crop_gets_no_confident_label():
    """The TPTBox L3 sample shows neither end of the spine: every label needs review, at most 0.5."""
    pytest.importorskip("onnxruntime")
    from vertedge.pipeline import Labeler
    from vertedge.volume import load_volume

    result = Labeler(device="cpu")(load_volume(SHARED_DATA / "real" / "tptbox_l3" / "ct.nii.gz"))
    assert result.vertebrae
    assert all(v.needs_review and v.confidence <= UNSUPPORTED_CONFIDENCE for v in result.vertebrae)
