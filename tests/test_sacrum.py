"""The sacrum probe: the point on S1 leaves the chain, and the vertebra above it is read as L5."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from vertedge.fusion import Fused
from vertedge.labelling import label
from vertedge.labels import LABELS
from vertedge.options import DEFAULT_OPTIONS
from vertedge.ribs import UNSEEN
from vertedge.sacrum import last_lumbar_classes, last_lumbar_likelihood, on_sacrum, sacral_start, sacrum_below
from vertedge.sequence import identify
from vertedge.volume import Volume
from vertedge_train.variations import rotated, rotation

from .conftest import SHARED_DATA, air_volume, paint_segment

GAP = 35.0  # mm between lumbar body centroids
RIBLESS = np.zeros((6, 2), np.int64)  # what the rib probe finds beside lumbar vertebrae
READS = np.array([LABELS[n] for n in ("L2", "L3", "L4", "L5", "L5")])  # the net's reading of L2-L5 and S1


def pelvis_scan(half_width_mm: tuple[float, float] = (140.0, 140.0)) -> tuple[Volume, np.ndarray]:
    """Soft tissue holding L2-L5 and S1 along S-I, `GAP` apart (points cranial -> caudal, S1 last):
    lumbar bodies with transverse processes to 45 mm lateral, S1 with alae (150-250 HU cancellous
    bone) running on into the iliac wings, plates 60-120 mm lateral from L5's level down; the scan
    reaches `half_width_mm` to the patient's right and left."""
    right, left = half_width_mm
    volume = air_volume((int((right + left) / 2.0), 120, 110), (2.0, 2.0, 2.0), center_lps=((left - right) / 2, 0.0, 0.0))
    k, j, i = np.indices(volume.hu.shape)
    world = volume.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*volume.hu.shape, 3)
    volume.hu[np.hypot(world[..., 0] / 1.2, world[..., 1] - 20.0) < 115.0] = 40
    points = np.array([[0.0, 0.0, 70.0 - GAP * r] for r in range(5)])
    for p in points[:4]:
        paint_segment(volume, world, p + [0, 0, -10], p + [0, 0, 10], 18.0, 300)
        for side in (-1.0, 1.0):
            paint_segment(volume, world, p + [side * 15, 20, 0], p + [side * 45, 25, 0], 5.0, 500)
    s1 = points[4]
    paint_segment(volume, world, s1 + [0, 0, -10], s1 + [0, 0, 10], 18.0, 250)
    for side in (-1.0, 1.0):
        paint_segment(volume, world, s1 + [side * 15, 15, 0], s1 + [side * 70, 25, -5], 14.0, 180)  # ala
        for z in np.arange(-30.0, 16.0, 5.0):  # the iliac wing, a plate from L5's level down, apart from L5
            paint_segment(volume, world, s1 + [side * 70, 30, z], s1 + [side * 120, -10, z + 10], 12.0, 400)
    return volume, points


def test_the_point_on_the_sacrum_is_found_and_no_lumbar_vertebra_is():
    volume, points = pelvis_scan()
    assert sacral_start(volume, points, RIBLESS[:5], READS) == 4
    assert sacral_start(volume, points[:4], RIBLESS[:4], READS[:4]) == 4  # L5 last: its processes end short of the wings


def test_the_sacrum_is_found_with_the_nets_point_on_l5_to_one_side():
    """A point 14 mm to the side tilts the slab across the local axis at S1 by ~20 degrees, which
    can miss one wing; the slab across the chain's axis over two rows each way still finds it."""
    volume, points = pelvis_scan()
    off = points.copy()
    off[3, 0] += 14.0
    assert sacral_start(volume, off, RIBLESS[:5], READS) == 4


def test_the_last_point_is_on_the_sacrum_when_it_is_s1():
    volume, points = pelvis_scan()
    assert on_sacrum(volume, points)  # the chain ends on S1
    assert not on_sacrum(volume, points[:4])  # ... on L5, whose processes end short of the wings


def test_the_sacrum_is_found_in_a_patient_rolled_and_tilted():
    volume, points = pelvis_scan()
    turn = rotation(tilt_deg=10.0, roll_deg=20.0)
    assert sacral_start(rotated(volume, turn, np.zeros(3)), points @ turn.T, RIBLESS[:5], READS) == 4


def test_one_side_left_out_of_the_scan_does_not_hide_the_sacrum():
    volume, points = pelvis_scan(half_width_mm=(140.0, 50.0))  # the left wing lies outside the scan
    assert sacral_start(volume, points, RIBLESS[:5], READS) == 4


def test_the_sacrum_is_found_one_gap_below_the_last_lumbar_vertebra_and_not_below_l4():
    volume, points = pelvis_scan()
    assert sacrum_below(volume, points[:4])  # under L5
    assert not sacrum_below(volume, points[:3])  # under L4 lies L5, whose processes end short of the wings
    turn = rotation(tilt_deg=15.0)
    assert sacrum_below(rotated(volume, turn, np.zeros(3)), points[:4] @ turn.T)


def test_no_sacrum_below_vertebrae_with_ribs():
    """A thoracic vertebra's ribs cross the lateral band like the alae: not below a ribbed chain."""
    volume, points = pelvis_scan()
    assert sacral_start(volume, points, np.ones((5, 2), np.int64), READS) == 5


def test_the_sacrum_is_found_where_the_net_reads_the_chain_a_level_high_and_not_where_it_reads_l4():
    """On a crop of the lower lumbar spine the net reads L2-L5 as L1-L4 and S1 as L5, a level below
    its neighbour: S1 still (the net has no sacral class, and reads it as the last lumbar one). A
    point it reads as L4 or higher is a vertebra."""
    volume, points = pelvis_scan()
    assert sacral_start(volume, points, RIBLESS[:5], READS - [1, 1, 1, 1, 0]) == 4  # L1-L4, then L5
    assert sacral_start(volume, points, RIBLESS[:5], READS - 1) == 5  # read as L4 twice: not S1


def test_the_vertebra_above_the_sacrum_is_read_as_the_last_lumbar_one():
    """Where the identification net is torn between the right levels and a chain one level high
    (L2-L5 as L1-L4), the sacrum below the last vertebra decides for the right ones; it does not
    overrule a net sure of the shifted chain on every row (the likelihood weighs one row)."""
    classes = tuple(LABELS[n] for n in ("T12", "L1", "L2", "L3", "L4", "L5", "L6"))

    def votes(high: float, right: float) -> np.ndarray:
        v = np.zeros((4, len(classes)))
        v[np.arange(4), np.arange(1, 5)] = high  # L1-L4: one level high
        v[np.arange(4), np.arange(2, 6)] = right  # L2-L5
        return v

    torn, sure = votes(0.45, 0.40), votes(0.60, 0.15)
    evidence = last_lumbar_likelihood(4, classes)
    one_high = [LABELS[n] for n in ("L1", "L2", "L3", "L4")]
    assert identify(torn[None], classes)[0].tolist() == one_high
    placed, conf = identify(torn[None], classes, evidence=evidence)
    assert placed.tolist() == [LABELS[n] for n in ("L2", "L3", "L4", "L5")]
    assert 0.0 < conf.min() and conf.max() <= 1.0
    assert identify(sure[None], classes, evidence=evidence)[0].tolist() == one_high


def test_the_last_lumbar_likelihood_weighs_only_the_last_row():
    o = DEFAULT_OPTIONS.sacrum
    classes = tuple(LABELS[n] for n in ("T12", "L4", "L5", "L6"))
    like = last_lumbar_likelihood(3, classes, o)
    np.testing.assert_allclose(like[:2], 1.0)
    np.testing.assert_allclose(like[2], [o.other, o.variant, 1.0, o.variant])
    assert last_lumbar_likelihood(0, classes, o).shape == (0, 4)


def test_without_ribs_in_the_chain_the_sacrum_names_the_last_point_l5():
    classes = tuple(LABELS[n] for n in ("T12", "L1", "L2", "L3", "L4", "L5", "L6"))
    allowed = last_lumbar_classes(RIBLESS[:4], classes)
    assert allowed[:3].all()
    assert allowed[3].tolist() == [c == LABELS["L5"] for c in classes]
    crest = RIBLESS[:4].copy()
    crest[3] = (1, 0)  # an iliac crest crossing the rib probe's ring on one side is not a rib
    assert allowed.tolist() == last_lumbar_classes(crest, classes).tolist()
    ribs = RIBLESS[:4].copy()
    ribs[0] = (1, 1)  # T12's ribs in view: the junction and the sacrum are two counts, the net decides
    assert last_lumbar_classes(ribs, classes).all()
    unseen = RIBLESS[:4].copy()
    unseen[0] = (1, -1)  # a rib and a side out of the scan: a rib still
    assert last_lumbar_classes(unseen, classes).all()
    assert last_lumbar_classes(np.zeros((0, 2), np.int64), classes).shape == (0, len(classes))


def test_a_crop_read_a_level_high_above_the_sacrum_is_counted_from_it():
    """L2-L5 above the sacrum, read by every view as L1-L4 (the real lumbar CT's middle 60 %): with
    no rib in view the count from the sacrum names them, and the labels keep the net's confidence
    (the last one with the sacrum's likelihood); not with the count turned off, nor with a rib in
    view, where the net decides."""
    classes = tuple(LABELS[n] for n in ("T12", "L1", "L2", "L3", "L4", "L5", "L6"))
    reads = np.zeros((3, 4, len(classes)))
    reads[:, np.arange(4), np.arange(1, 5)] = 0.6  # L1-L4: one level high
    reads[:, np.arange(4), np.arange(2, 6)] = 0.3  # L2-L5
    reads[:, :, 0] = 0.1
    fused = Fused(np.array([[0.0, 0.0, 70.0 - GAP * r] for r in range(4)]), np.full(4, 1.0), np.full(4, 3),
                  np.zeros((4, 3), np.int64))
    args = (fused, (reads, np.ones((3, 4), bool)), 3, classes)
    right = [LABELS[n] for n in ("L2", "L3", "L4", "L5")]
    one_high = [LABELS[n] for n in ("L1", "L2", "L3", "L4")]
    labels, conf = label(*args, rib_sides=RIBLESS[:4], above_sacrum=True, sacrum_seen=True)
    assert labels.tolist() == right
    assert conf[:3].max() < 0.5  # the net's reading, not the count's; the last row weighs the sacrum's likelihood
    off = replace(DEFAULT_OPTIONS, sacrum=replace(DEFAULT_OPTIONS.sacrum, count=False))
    assert label(*args, options=off, rib_sides=RIBLESS[:4], above_sacrum=True, sacrum_seen=True)[0].tolist() == one_high
    ribbed = RIBLESS[:4].copy()
    ribbed[0] = (1, UNSEEN)  # a rib on one side, the other out of view: no count from the ribs either
    assert label(*args, rib_sides=ribbed, above_sacrum=True, sacrum_seen=True)[0].tolist() == one_high
    assert label(*args, rib_sides=RIBLESS[:4])[0].tolist() == one_high  # no sacrum: no count


@pytest.mark.skipif(not (SHARED_DATA / "real" / "totalseg_lumbar").is_dir(), reason="no ../shared/data")
def test_on_a_real_lumbar_ct_the_point_on_s1_leaves_the_chain(monkeypatch):
    """The localization net marks S1 of the real lumbar CT (and from one view start S2 too) as more
    vertebrae: the probe finds those points (below the truth's L5, on the sacrum) and only them, and
    L5 keeps its name."""
    pytest.importorskip("onnxruntime")
    from vertedge import pipeline
    from vertedge.volume import load_volume

    case = SHARED_DATA / "real" / "totalseg_lumbar"
    truth = {v["name"]: np.array(v["world_lps_mm"]) for v in json.loads((case / "ground_truth.json").read_text())["vertebrae"]}
    found = []

    def recorded(volume, points, *args):
        start = sacral_start(volume, points, *args)
        found.append(points[start:])
        return start

    monkeypatch.setattr(pipeline, "sacral_start", recorded)
    result = pipeline.Labeler(device="cpu")(load_volume(case / "ct.nii.gz"))
    assert len(found) == DEFAULT_OPTIONS.view_starts  # one probe a run, each from its own view start
    up = (truth["L4"] - truth["L5"]) / np.linalg.norm(truth["L4"] - truth["L5"])
    for dropped in found:
        assert len(dropped) >= 1
        assert ((truth["L5"] - dropped) @ up > 20.0).all()  # mm caudal of L5's centroid along the spine: on the sacrum
    l5 = result.centroids()[LABELS["L5"]]
    assert np.linalg.norm(l5 - truth["L5"]) < 10.0
