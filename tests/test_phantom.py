"""The synthetic spine CT: determinism, ground truth consistent with the voxels, anatomy, files, orientation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vertedge.labels import NAMES, SPINE_ORDER
from vertedge.phantom import REGIONS, BoneHU, PhantomParams, make_phantom, save_phantom
from vertedge.verse import read_verse_ctd
from vertedge.volume import load_volume

SMALL = {"shape": (96, 96, 160), "spacing": (3.0, 3.0, 2.5)}


def _nearest_hu(volume, points):
    """HU of the voxel nearest to each world LPS point (N, 3); -inf outside the grid."""
    ijk = np.rint(volume.world_to_index(np.asarray(points, float))).astype(int)
    n = np.array(volume.shape_ijk)
    inside = np.all((ijk >= 0) & (ijk < n), axis=-1)
    ijk = np.clip(ijk, 0, n - 1)
    out = volume.hu[ijk[..., 2], ijk[..., 1], ijk[..., 0]].astype(float)
    return np.where(inside, out, -np.inf)


def _voxel_centres(volume):
    """World LPS mm (N, 3) of every voxel centre."""
    ni, nj, nk = volume.shape_ijk
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    return volume.index_to_world(np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(float))


@pytest.fixture(scope="module")
def small_phantoms():
    """A few small phantoms of assorted regions (built once for the module)."""
    return {
        region: make_phantom(seed, region, **SMALL)
        for seed, region in enumerate(("full", "cervical", "thoracic", "lumbar"))
    }


def test_deterministic_per_seed():
    a = make_phantom(11, "lumbar", **SMALL)
    b = make_phantom(11, "lumbar", **SMALL)
    c = make_phantom(12, "lumbar", **SMALL)
    assert np.array_equal(a.volume.hu, b.volume.hu)
    assert a.centroids.keys() == b.centroids.keys()
    assert all(np.array_equal(a.centroids[k], b.centroids[k]) for k in a.centroids)
    assert a.params == b.params
    assert a.volume.hu.shape != c.volume.hu.shape or not np.array_equal(a.volume.hu, c.volume.hu)


BONE_TOL_HU = 60.0  # below the seed's cancellous HU: noise (median of 27 voxels: a few HU), cupping (<= 40 HU)


def _cancellous_hu(ph) -> float:
    """The cancellous-bone HU the phantom's seed chose (its bodies' core; C1-C2 and arches denser)."""
    return ph.spec.bone.cancellous


def test_centroids_inside_bone_of_their_body(small_phantoms):
    for ph in small_phantoms.values():
        assert ph.centroids
        for label, c in ph.centroids.items():
            assert ph.bodies[label].contains(c[None])[0], NAMES[label]
            if not ph.cut[label]:  # median over the 3x3x3 nearest voxels: noise reaches 30 HU
                step = ph.volume.index_to_world_matrix
                around = c + np.stack(np.meshgrid(*[[-1, 0, 1]] * 3), -1).reshape(-1, 3) @ step.T
                assert np.median(_nearest_hu(ph.volume, around)) > _cancellous_hu(ph) - BONE_TOL_HU, NAMES[label]


def test_voxel_centroid_of_body_matches_ground_truth():
    ph = make_phantom(3, "lumbar", shape=(128, 128, 120), spacing=(1.5, 1.5, 1.5), orientation="LPS")
    pts = _voxel_centres(ph.volume)
    hu = ph.volume.hu.transpose(2, 1, 0).ravel(order="F")  # voxel order of _voxel_centres
    checked = 0
    for label, body in ph.bodies.items():
        if ph.cut[label]:
            continue
        inside = body.contains(pts)
        assert np.linalg.norm(pts[inside].mean(0) - ph.centroids[label]) < 1.5, NAMES[label]
        assert np.median(hu[inside]) > _cancellous_hu(ph) - BONE_TOL_HU, NAMES[label]  # drawn as bone
        checked += 1
    assert checked >= 3


def test_order_and_spacing_along_the_spine(small_phantoms):
    for ph in small_phantoms.values():
        labels = [lab for lab in SPINE_ORDER if lab in ph.centroids]
        z = np.array([ph.centroids[lab][2] for lab in labels])
        assert np.all(np.diff(z) < 0), labels
        steps = np.linalg.norm(np.diff([ph.centroids[lab] for lab in labels], axis=0), axis=1)
        assert np.all((steps > 15) & (steps < 45)), steps
        # consecutive labels only: the field of view never skips a vertebra
        variant = ph.params["variant"]
        spine = [lab for lab in SPINE_ORDER if (lab != 28 or variant == "T13") and (lab != 25 or variant == "L6")]
        first = spine.index(labels[0])
        assert labels == spine[first : first + len(labels)]


@pytest.mark.parametrize(
    "region, allowed, must",
    [("cervical", range(1, 10), {3, 4, 5}), ("lumbar", (*range(18, 26), 28), {21, 22, 23}),
     ("thoracic", (*range(6, 22), 28), {12, 13, 14})],
)
def test_regions_give_their_labels(region, allowed, must):
    for seed in (0, 1):
        ph = make_phantom(seed, region, shape=(64, 64, 80))
        assert set(ph.centroids) <= set(allowed)
        assert must <= set(ph.centroids)
        assert ph.params["region"] == region


def test_variants_t13_and_l6_occur():
    seen = {}
    for seed in range(60):
        ph = make_phantom(seed, "lumbar", shape=(32, 32, 48), spacing=(6.0, 6.0, 6.0))
        seen.setdefault(ph.params["variant"], ph)
    assert {"normal", "T13", "L6"} <= set(seen)
    # the variant's extra vertebra carries its own label
    assert 25 in make_phantom_variant(seen, "L6").centroids
    assert 28 in make_phantom_variant(seen, "T13").centroids
    assert 25 not in seen["normal"].centroids and 28 not in seen["normal"].centroids


def make_phantom_variant(seen, variant):
    """Rebuild a seed of the given variant with a field of view covering the thoracolumbar junction."""
    seed = seen[variant].params["seed"]
    return make_phantom(seed, "full", shape=(32, 32, 160), spacing=(8.0, 8.0, 6.0))


def test_seed_chooses_orientation_spacing_and_region():
    orientations, regions, anisotropic = set(), set(), False
    for seed in range(40):
        ph = make_phantom(seed, shape=(16, 16, 16))
        orientations.add(ph.params["orientation"])
        regions.add(ph.params["region"])
        sp = np.array(ph.params["spacing_lps"])
        anisotropic |= sp[2] > 2 * sp[0]
    assert orientations == {"LPS", "RAS", "permuted"}
    assert regions == set(REGIONS)
    assert anisotropic


def test_same_world_content_in_every_orientation():
    vols = {o: make_phantom(5, "thoracic", orientation=o, **SMALL) for o in ("LPS", "RAS", "permuted")}
    assert vols["RAS"].volume.axcodes() == ("R", "A", "S")
    assert vols["permuted"].volume.axcodes() != ("L", "P", "S")
    ref = vols["LPS"]
    rng = np.random.default_rng(0)
    lo, hi = ref.volume.index_to_world(np.zeros(3)), ref.volume.index_to_world(np.array(ref.volume.shape_ijk) - 1.0)
    pts = rng.uniform(lo, hi, size=(500, 3))
    for ph in vols.values():
        assert ph.centroids.keys() == ref.centroids.keys()
        for k in ref.centroids:
            assert np.allclose(ph.centroids[k], ref.centroids[k], atol=1e-9)
        assert np.array_equal(_nearest_hu(ph.volume, pts), _nearest_hu(ref.volume, pts))


def test_air_lungs_and_bone_where_expected():
    ph = make_phantom(2, "thoracic", shape=(128, 128, 100), spacing=(3.0, 3.0, 3.0), orientation="LPS")
    hu = ph.volume.hu
    centre = ph.centroids[14]
    # air anterior of the chest, inside the reconstruction circle
    y_air = ph.volume.index_to_world(np.array([64, 8, 50]))
    assert abs(_nearest_hu(ph.volume, np.array([[centre[0], y_air[1], centre[2]]]))[0] + 1000) < 120
    # lungs: a large share of the thoracic slice is below -700 HU but above air
    k = int(round(ph.volume.world_to_index(centre)[2]))
    sl = hu[k]
    assert ((sl < -700) & (sl > -950)).mean() > 0.05
    assert (hu > 400).any() and (hu < -900).any()


def test_ribs_meet_the_upper_half_of_their_vertebra():
    """Rib heads 2-9 lie in the disc above their body, 1 and 10-12 on its upper half; every rib
    leaves the spine (its tubercle) above the body's centre, as in real thoracic vertebrae."""
    from vertedge.phantom.spine import build_spine
    from vertedge.phantom.thorax import RibCage
    from vertedge.phantom.torso import Torso

    prm = PhantomParams.draw(np.random.default_rng(3), "full", None)
    spine = build_spine(prm)
    cage = RibCage.build(prm, spine, Torso.build(prm, spine))
    thoracic = [lv for lv in spine.vertebrae if 8 <= lv.label <= 19 or lv.label == 28]
    assert len(cage.ribs) == 2 * len(thoracic)
    for rank, lv in enumerate(thoracic, start=1):
        for rib in cage.ribs[2 * rank - 2: 2 * rank]:
            head_z = (lv.rot @ (rib.head - lv.center))[2]  # mm along the vertebra's own axis
            if 2 <= rank <= 9:
                assert lv.dims.h < head_z < lv.dims.h + lv.dims.disc
            else:
                assert 0.3 * lv.dims.h < head_z < lv.dims.h
            assert rib.bone[0][2] > lv.center[2] + 0.3 * lv.dims.h  # world S-I: the tubercle


def test_save_phantom_files_round_trip(tmp_path):
    ph = make_phantom(4, "lumbar", orientation="permuted", **SMALL)
    written = save_phantom(ph, tmp_path / "case1.nii.gz")
    assert [p.name for p in written] == ["case1.nii.gz", "case1_ctd.json", "case1_gt.json"]
    vol = load_volume(written[0])
    assert np.array_equal(vol.hu, ph.volume.hu)
    assert np.allclose(vol.direction, ph.volume.direction) and np.allclose(vol.origin, ph.volume.origin, atol=1e-3)
    back = read_verse_ctd(written[1], vol)
    assert back.keys() == ph.centroids.keys()
    for k, c in ph.centroids.items():
        assert np.linalg.norm(back[k] - c) < 1e-3
    ctd = json.loads(written[1].read_text())
    assert ctd[0] == {"direction": list(vol.axcodes())}
    gt = json.loads(written[2].read_text())
    assert set(gt) == {"vertebrae", "phantom"}
    for entry in gt["vertebrae"]:
        assert set(entry) == {"label", "name", "world_lps_mm", "cut_by_field_of_view"}
        assert entry["name"] == NAMES[entry["label"]]
        assert np.allclose(entry["world_lps_mm"], ph.centroids[entry["label"]], atol=1e-3)
        assert entry["cut_by_field_of_view"] == ph.cut[entry["label"]]
    assert gt["phantom"]["seed"] == 4


def test_field_of_view_cut_is_flagged():
    cuts = 0
    for seed in range(12):
        ph = make_phantom(seed, "thoracolumbar", shape=(24, 24, 60), spacing=(12.0, 12.0, 5.0))
        v = ph.volume
        n = np.array(v.shape_ijk)
        for label, body in ph.bodies.items():
            ext = v.world_to_index(body.extremes())
            outside = bool(np.any(ext < -0.5) or np.any(ext > n - 0.5))
            assert ph.cut[label] == outside
            cuts += outside
    assert cuts > 0


def test_params_record_reads_back():
    ph = make_phantom(8, "lumbar", shape=(16, 16, 16))
    spec = ph.spec
    assert spec.region == "lumbar" and isinstance(spec.scoliosis, tuple) and isinstance(spec.anchor_lps, tuple)
    assert PhantomParams.from_dict(spec.to_dict()) == spec
    assert json.loads(json.dumps(spec.to_dict())) == spec.to_dict()  # plain JSON types
    assert {k: ph.params[k] for k in spec.to_dict()} == spec.to_dict()


def test_the_rib_probe_finds_the_phantoms_ribs_as_it_finds_real_ones():
    """Ribs are mostly compact bone: the rib probe tuned on real CT (which finds the real chest
    CT's ribs beside every vertebra, benchmarks/realism.py) finds the phantom's beside T4-T8 too,
    not only where the bone is dense (with the vertebral shell's cortex: 80 % of these sides)."""
    from vertedge.labels import LABELS
    from vertedge.ribs import rib_sides

    found = []
    for seed in (1, 2, 3):  # bone density 0.69, 0.35, 0.85
        ph = make_phantom(seed, "thoracic")
        labels = sorted((k for k in ph.centroids if not ph.cut[k]), key=SPINE_ORDER.index)
        sides = rib_sides(ph.volume, np.array([ph.centroids[k] for k in labels]))
        rows = sides[[i for i, k in enumerate(labels) if LABELS["T4"] <= k <= LABELS["T8"]]]
        found += (rows[rows >= 0] == 1).tolist()
    assert len(found) >= 24 and np.mean(found) >= 0.9


def test_bone_hu_spans_osteoporotic_to_young_adult():
    weak, strong = BoneHU.for_density(0.15), BoneHU.for_density(1.5)  # the ends of the drawn density range
    assert (weak.cancellous, weak.cortical) == pytest.approx((55.5, 269.5))
    assert (strong.cancellous, strong.cortical) == pytest.approx((285.0, 715.0))


def test_bad_arguments_are_refused():
    from vertedge.errors import VertedgeError

    with pytest.raises(VertedgeError):
        make_phantom(0, "pelvis")
    with pytest.raises(VertedgeError):
        make_phantom(0, orientation="XYZ")
