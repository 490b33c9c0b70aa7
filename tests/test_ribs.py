"""The rib probe: which vertebrae bear ribs, and what that weighs in the decode."""

from __future__ import annotations

import dataclasses

import numpy as np

from vertedge.labels import LABELS, SPINE_ORDER
from vertedge.options import DEFAULT_OPTIONS
from vertedge.ribs import UNSEEN, likelihood, rib_sides
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


def test_the_probe_reads_world_positions_in_any_grid():
    volume, points = chest_scan()
    regrid = volume.reoriented((2, 0, 1), (True, False, True))
    np.testing.assert_array_equal(rib_sides(regrid, points), rib_sides(volume, points))
    shifted = dataclasses.replace(volume, origin=volume.origin + [3.0, -2.0, 1.0])
    np.testing.assert_array_equal(rib_sides(shifted, points + [3.0, -2.0, 1.0]), rib_sides(volume, points))
