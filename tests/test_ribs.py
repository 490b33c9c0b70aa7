"""The rib probe: which vertebrae bear ribs, and what that weighs in the decode."""

from __future__ import annotations

import dataclasses

import numpy as np

from vertedge.fusion import Fused
from vertedge.labelling import label
from vertedge.labels import LABELS, NAMES, SPINE_ORDER, region
from vertedge.options import DEFAULT_OPTIONS
from vertedge.ribs import UNSEEN, junction_classes, likelihood, rib_bearing_classes, rib_sides
from vertedge.sequence import identify
from vertedge.volume import Volume
from vertedge_train.variations import rotated, rotation

from .conftest import air_volume, paint_segment

GAP = 25.0  # mm between body centroids
RIBBED = (2, 3, 4)  # the chain rows that bear ribs


def chest_scan(half_width_mm: float = 120.0, lean_mm: float = 0.0) -> tuple[Volume, np.ndarray]:
    """Soft tissue holding seven vertebral bodies along S-I, `GAP` apart (points cranial -> caudal),
    each with transverse processes to 36 mm lateral; rows `RIBBED` have a rib on each side from
    25 to 100 mm lateral, rising to the vertebra's upper half as a real rib does; beside the top
    vertebra a scapula (a plate 75-100 mm lateral) and a clavicle (in front of the spine). The top
    vertebra lies `lean_mm` in front of the others (the spine's curve at C7) and 24 mm below the
    scan's top edge."""
    n = int(2 * half_width_mm / 2.0)
    volume = air_volume((n, n, 100), (2.0, 2.0, 2.0))
    k, j, i = np.indices(volume.hu.shape)
    world = volume.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*volume.hu.shape, 3)
    volume.hu[np.hypot(world[..., 0], world[..., 1] - 20.0) < 110.0] = 40
    points = np.array([[0.0, 0.0, 75.0 - GAP * r] for r in range(7)])
    points[0, 1] -= lean_mm
    for row, p in enumerate(points):
        paint_segment(volume, world, p + [0, 0, -8], p + [0, 0, 8], 14.0, 300)
        for side in (-1.0, 1.0):
            paint_segment(volume, world, p + [side * 12, 12, 2], p + [side * 36, 22, 2], 4.0, 500)
            if row in RIBBED:
                paint_segment(volume, world, p + [side * 25, 10, 6], p + [side * 60, 25, 4], 3.5, 600)
                paint_segment(volume, world, p + [side * 60, 25, 4], p + [side * 100, 5, 0], 3.5, 600)
    top = points[0]
    for side in (-1.0, 1.0):
        paint_segment(volume, world, top + [side * 75, 45, -5], top + [side * 100, 35, 5], 5.0, 600)
        paint_segment(volume, world, top + [side * 15, -55, 0], top + [side * 110, -40, 0], 5.0, 600)
    return volume, points


def test_ribs_are_found_beside_the_vertebrae_that_bear_them_and_nowhere_else():
    volume, points = chest_scan()
    sides = rib_sides(volume, points)
    expect = np.array([[1, 1] if row in RIBBED else [0, 0] for row in range(len(points))])
    np.testing.assert_array_equal(sides, expect)


def test_only_the_rows_asked_for_are_probed_in_the_whole_chains_frames():
    volume, points = chest_scan()
    rows = np.array([1, 3])
    sides = rib_sides(volume, points, rows=rows)
    np.testing.assert_array_equal(sides[rows], rib_sides(volume, points)[rows])  # [0, 0] and [1, 1]
    assert (np.delete(sides, rows, axis=0) == UNSEEN).all()


def test_ribs_are_found_in_a_patient_rolled_and_tilted():
    volume, points = chest_scan()
    turn = rotation(tilt_deg=10.0, roll_deg=25.0)
    turned = rotated(volume, turn, np.zeros(3))
    sides = rib_sides(turned, points @ turn.T)
    assert (sides[list(RIBBED)] == 1).all()
    assert (sides[[0, 1, 5, 6]] == 0).all()


def test_a_vertebra_near_the_scans_edge_at_the_spines_curved_end_is_seen_ribless():
    """The chest CT's C7: 20 mm below the scan's top edge and 11 mm in front of T1. Across the
    local axis, which leans with the curve, the probe's slab leaves the scan; across the whole
    chain's axis it stays in view and shows no rib."""
    volume, points = chest_scan(lean_mm=12.0)
    local_only = dataclasses.replace(DEFAULT_OPTIONS.ribs, whole_chain=False)
    assert (rib_sides(volume, points, local_only)[0] == UNSEEN).all()
    expect = np.array([[1, 1] if row in RIBBED else [0, 0] for row in range(len(points))])
    np.testing.assert_array_equal(rib_sides(volume, points), expect)


def test_a_side_the_scan_does_not_show_is_unseen_not_ribless():
    volume, points = chest_scan(half_width_mm=60.0)  # the ring (40-68 mm) leaves the scan
    assert (rib_sides(volume, points) == UNSEEN).all()
    assert (rib_sides(volume, points[:1]) == UNSEEN).all()  # one point has no spine axis


def test_what_the_probe_saw_weighs_against_the_classes_it_contradicts():
    o = DEFAULT_OPTIONS.ribs
    classes = SPINE_ORDER
    sides = np.array([[1, 1], [0, 0], [1, UNSEEN], [UNSEEN, UNSEEN]])
    like = likelihood(sides, classes, o)
    col = {label: j for j, label in enumerate(classes)}
    c7, t1, t13, l1, l5 = (col[LABELS[n]] for n in ("C7", "T1", "T13", "L1", "L5"))
    np.testing.assert_allclose(like[0, [c7, t1, t13, l1, l5]], [o.ribs_if_none**2, 1, 1, o.ribs_if_none**2, 1])
    np.testing.assert_allclose(like[1, [c7, t1, t13, l1, l5]], [1, o.none_if_ribs**2, o.none_if_ribs**2, 1, 1])
    np.testing.assert_allclose(like[2, [c7, t1, l1]], [o.ribs_if_none, 1, o.ribs_if_none])
    np.testing.assert_allclose(like[3], 1.0)


def test_no_ribs_beside_the_top_vertebra_turn_a_chain_read_a_level_low_into_c7_t1():
    """The identification net reads the chest CT's C7 as T1 and the levels below it one too low
    at the top of the chain, and the decode follows it; ribs found from the second vertebra on,
    none beside the first, put the chain right."""
    classes = tuple(LABELS[n] for n in ("C6", "C7", "T1", "T2", "T3", "T4"))
    votes = np.array([
        [0.05, 0.19, 0.65, 0.10, 0.01, 0.0],  # C7, read as T1
        [0.0, 0.05, 0.30, 0.57, 0.08, 0.0],  # T1, read as T2
        [0.0, 0.0, 0.05, 0.43, 0.52, 0.0],  # T2, read as T3
        [0.0, 0.0, 0.0, 0.05, 0.66, 0.29],  # T3
    ])
    sides = np.array([[0, 0], [1, 1], [1, 1], [1, 1]])
    read, _ = identify(votes[None], classes)
    assert read.tolist() == [LABELS[n] for n in ("T1", "T2", "T3", "T4")]
    with_ribs, conf = identify(votes[None], classes, evidence=likelihood(sides, classes))
    assert with_ribs.tolist() == [LABELS[n] for n in ("C7", "T1", "T2", "T3")]
    assert 0.0 < conf.min() and conf.max() <= 1.0


def test_the_junction_is_the_last_vertebra_with_a_rib_above_three_seen_without():
    classes = SPINE_ORDER
    col = {label: j for j, label in enumerate(classes)}
    reads = np.array([LABELS[n] for n in ("T11", "L1", "L2", "L3", "L4", "L5", "L5")])  # a level low
    sides = np.array([[1, 1], [UNSEEN, 1], [0, 0], [0, 0], [0, 0]])
    allowed = junction_classes(sides, reads[:5], classes)
    named = [[classes[j] for j in np.flatnonzero(row)] for row in allowed]
    assert named[1] == [LABELS["T12"], LABELS["T13"]] and named[2] == [LABELS["L1"]]
    assert allowed[[0, 3, 4]].all()
    assert not allowed[2, col[LABELS["L2"]]]
    # one side seen without a rib (a short rib, or a transverse process read as one): no junction
    assert junction_classes(np.array([[1, 0], [0, 0], [0, 0], [0, 0]]), reads[1:5], classes).all()
    # a side of the rows below unseen: they may still bear ribs
    assert junction_classes(np.array([[1, 1], [0, UNSEEN], [0, 0], [0, 0]]), reads[1:5], classes).all()
    # two ribless rows at the scan's caudal edge: the lower ribs may have left the scan beside them
    assert junction_classes(sides[1:4], reads[1:4], classes).all()
    # the net reads the first ribless row two levels above L1: the probe's miss, more likely
    thoracic = np.array([LABELS[n] for n in ("T9", "T10", "T11", "T12", "L1")])
    assert junction_classes(sides, thoracic, classes).all()
    # the top of a chest CT: C7's transverse process read as a rib above ribless rows, the thorax below
    chest_top = np.array([[1, UNSEEN], [0, 0], [0, 0], [0, 0], [1, 1], [1, 1]])
    assert junction_classes(chest_top, np.array([LABELS[n] for n in ("C6", "C7", "T1", "T1", "T2", "T3")]), classes).all()
    # ribs missed on three thoracic vertebrae: the junction is still the last rib above three without
    missed = np.vstack([sides[[0, 2, 3, 4]], sides])
    at = junction_classes(missed, np.concatenate([reads[:4], reads[:5]]), classes)
    assert at[:5].all() and at[5].sum() == 2 and at[6].sum() == 1


def _chain(n: int, gap_mm: float = 30.0) -> Fused:
    """A straight chain of `n` points `gap_mm` apart along S-I, each found in all of 10 views."""
    points = np.stack([np.zeros(n), np.zeros(n), -gap_mm * np.arange(n)], axis=1)
    return Fused(points, np.zeros(n), np.full(n, 10), np.zeros((n, 10), dtype=np.int64))


def test_without_the_sacrum_the_junction_turns_a_chain_read_a_level_low_below_the_ribs():
    """The real lumbar CT's upper half: the net reads T12-L3 as L1-L4 with most of every row's
    vote, ribs found both sides of the top vertebra and none below. The rib likelihood alone weighs
    one row against three; the junction names T12 and the count follows it, with the net's
    disagreement left in the confidences."""
    classes = tuple(LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3", "L4", "L5"))
    votes = np.zeros((1, 4, len(classes)))
    for i in range(4):
        votes[0, i, i + 1: i + 4] = [0.25, 0.7, 0.05]  # T12 read as L1 (0.7), T12 0.25, ...
    sides = np.array([[1, 1], [0, 0], [0, 0], [0, 0]])
    per_view = (votes, np.ones((1, 4), dtype=bool))
    # the rib-bearing rule alone names the top row thoracic (rib_bearing_classes): off here
    ribs = dataclasses.replace(DEFAULT_OPTIONS.ribs, bearing=False)
    junction = dataclasses.replace(DEFAULT_OPTIONS, ribs=ribs)
    off = dataclasses.replace(DEFAULT_OPTIONS, ribs=dataclasses.replace(ribs, junction=False))
    names = [[LABELS[n] for n in row.split()] for row in ("T12 L1 L2 L3", "L1 L2 L3 L4")]
    read, conf = label(_chain(4), per_view, 10, classes, junction, rib_sides=sides)
    assert read.tolist() == names[0]
    # the top row's ribs outweigh the net's L1 on their own; below it the junction forces the labels,
    # not the confidences: the net gave each right label a quarter of its vote
    assert conf[0] > 0.5 and conf[1:].max() < 0.5
    assert label(_chain(4), per_view, 10, classes, off, rib_sides=sides)[0].tolist() == names[1]
    # with the sacrum right below, three ribless rows are not a lumbar spine: a count is wrong, the net's reading stands
    assert label(_chain(4), per_view, 10, classes, junction, rib_sides=sides, sacrum_seen=True)[0].tolist() == names[1]
    # with it, the top row is T12 (or T13) whatever else is in view
    assert label(_chain(4), per_view, 10, classes, rib_sides=sides, sacrum_seen=True)[0].tolist() == names[0]


def test_the_ribless_vertebrae_between_the_last_rib_and_the_sacrum_are_counted():
    """Fresh phantom 754, an L6 spine from T12 to the sacrum: the net reads it a level high as a
    whole (T11 on T12, ..., L5 on L6, the usual lumbar look). The last rib and the sacrum are two
    counts; six ribless vertebrae between them are L1-L6, whatever the net reads, and five L1-L5."""
    classes = tuple(LABELS[n] for n in ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "L6"))

    def read(n_lumbar: int, first: int, options=DEFAULT_OPTIONS) -> str:
        """The labels of T12 and `n_lumbar` ribless rows above the sacrum that the net reads from
        classes[first] down."""
        n = n_lumbar + 1
        votes = np.full((1, n, len(classes)), 0.2 / len(classes))
        votes[0, np.arange(n), first + np.arange(n)] += 0.8
        sides = np.vstack([[1, 1], np.zeros((n_lumbar, 2), int)])
        labels = label(_chain(n), (votes, np.ones((1, n), dtype=bool)), 10, classes, options, rib_sides=sides,
                       above_sacrum=True, sacrum_seen=True)[0]
        return " ".join(NAMES[x] for x in labels)

    assert read(6, first=1) == "T12 L1 L2 L3 L4 L5 L6"
    assert read(5, first=2) == "T12 L1 L2 L3 L4 L5"
    never = dataclasses.replace(DEFAULT_OPTIONS, ribs=dataclasses.replace(DEFAULT_OPTIONS.ribs, lumbar_counts=()))
    assert read(6, first=1, options=never) == "T11 T12 L1 L2 L3 L4 L5"


def test_a_t13_is_named_only_with_the_cervical_spine_in_the_chain():
    """Fresh phantom 3322, a thoracic crop T1-T12 with ribs at every row: the net reads it a level
    low as a whole (T2-T13). Only a count from above tells a thirteenth rib-bearing vertebra from
    T12: without a cervical vertebra in the chain the decode names no T13, with one it may."""
    classes = tuple(LABELS[n] for n in ("C6", "C7", "T1", "T2", "T3", "T4", "T5", "T6", "T7", "T8", "T9", "T10",
                                        "T11", "T12", "T13", "L1"))

    def read(n_neck: int, options=DEFAULT_OPTIONS) -> str:
        """The labels of `n_neck` ribless rows read C6, C7 and twelve rib-bearing rows below them read T2-T13."""
        n = n_neck + 12
        votes = np.full((1, n, len(classes)), 0.2 / len(classes))
        votes[0, np.arange(n), 2 - n_neck + 1 + np.arange(n)] += 0.8
        sides = np.vstack([np.zeros((n_neck, 2), int), np.ones((12, 2), int)])
        labels = label(_chain(n), (votes, np.ones((1, n), dtype=bool)), 10, classes, options, rib_sides=sides)[0]
        return " ".join(NAMES[x] for x in labels)

    thoracic = " ".join(f"T{i}" for i in range(1, 13))
    assert read(0) == thoracic
    off = dataclasses.replace(DEFAULT_OPTIONS, t13_from_above=False)
    assert read(0, off) == " ".join(f"T{i}" for i in range(2, 14))
    # C6 and C7 above them, ribless, read as C7 and T1: the decode may count to T13 (here the net's reading)
    assert read(2).split()[-1] == "T13"


def test_the_probe_reads_world_positions_in_any_grid():
    volume, points = chest_scan()
    regrid = volume.reoriented((2, 0, 1), (True, False, True))
    np.testing.assert_array_equal(rib_sides(regrid, points), rib_sides(volume, points))
    shifted = dataclasses.replace(volume, origin=volume.origin + [3.0, -2.0, 1.0])
    np.testing.assert_array_equal(rib_sides(shifted, points + [3.0, -2.0, 1.0]), rib_sides(volume, points))


def test_a_vertebra_with_ribs_on_both_sides_is_named_no_cervical_or_upper_lumbar_class():
    """The angiography crop round T12: the net reads its thoracic vertebrae as the cervical spine.
    Ribs on both sides leave them the thoracic classes (and L5/L6, beside which the iliac crests
    reach the probe's ring); one side found leaves every class."""
    classes = SPINE_ORDER
    col = {label: j for j, label in enumerate(classes)}
    allowed = rib_bearing_classes(np.array([[1, 1], [1, 0], [1, UNSEEN], [0, 0]]), classes)
    kept = [classes[j] for j in np.flatnonzero(allowed[0])]
    assert kept == [c for c in classes if region(c) == "thoracic"] + [LABELS["L5"], LABELS["L6"]]
    assert allowed[1:].all()
    votes = np.zeros((1, 4, len(classes)))
    for i, (read, truth) in enumerate(zip(("C3", "C4", "C5", "C6"), ("T9", "T10", "T11", "T12"))):
        votes[0, i, col[LABELS[read]]], votes[0, i, col[LABELS[truth]]] = 0.97, 0.03  # past the likelihood
    per_view = (votes, np.ones((1, 4), dtype=bool))
    sides = np.ones((4, 2), dtype=np.int64)
    named, _ = label(_chain(4), per_view, 10, classes, rib_sides=sides)
    assert named.tolist() == [LABELS[n] for n in ("T9", "T10", "T11", "T12")]
    off = dataclasses.replace(DEFAULT_OPTIONS, ribs=dataclasses.replace(DEFAULT_OPTIONS.ribs, bearing=False))
    assert label(_chain(4), per_view, 10, classes, off, rib_sides=sides)[0].tolist() == [
        LABELS[n] for n in ("C3", "C4", "C5", "C6")]
