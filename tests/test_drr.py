"""CPU DRR: blobs land where geometry says; line integrals equal analytic chord lengths."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.drr import normalize, render
from vertedge.geometry import Protocol, make_views, pixel_rays, project

from .conftest import air_volume, paint_ball, rotation


def test_dense_ball_appears_where_it_projects():
    vol = air_volume((70, 60, 50), (1.3, 1.1, 2.0), rotation("z", 25), (3, -7, 40))
    ball = np.array([15.0, 5.0, 55.0])
    paint_ball(vol, ball, 4.0, 3000)
    protocol = Protocol(pixel_mm=2.0, n_views=10)
    views = make_views(vol, protocol)
    images = render(vol, views, protocol)
    expected, _ = project(views, ball[None])
    rows, cols = np.indices(views.shape)
    for k in range(views.n_views):
        w = images[k]
        centroid = np.array([(w * rows).sum(), (w * cols).sum()]) / w.sum()
        assert np.linalg.norm(centroid - expected[k, 0]) < 1.0, k


def _chord_mm(origins: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Length (mm) of rays' intersection with the axis-aligned box [lo, hi] (same frame as the rays)."""
    with np.errstate(divide="ignore"):
        ta, tb = (lo - origins) / dirs, (hi - origins) / dirs
    t0 = np.minimum(ta, tb).max(-1)
    t1 = np.maximum(ta, tb).min(-1)
    return np.clip(t1 - t0, 0, None)


# Midpoint sampling of the trilinear ramp at a face errs by up to ~step/4 per face: a coarse
# 2 mm step (over 1-1.5 mm voxels) is held to 2 %.
@pytest.mark.parametrize(("step_mm", "rtol"), [(0.5, 0.01), (1.0, 0.01), (2.0, 0.02)])
def test_uniform_box_line_integrals_equal_chord_lengths(step_mm, rtol):
    direction = rotation("z", 30) @ rotation("x", 15)
    vol = air_volume((60, 50, 40), (1.0, 1.2, 1.5), direction, (0, 0, 0))
    lo_idx, hi_idx = np.array([10, 8, 6]), np.array([49, 41, 33])  # water from voxel lo to hi inclusive
    vol.hu[lo_idx[2] : hi_idx[2] + 1, lo_idx[1] : hi_idx[1] + 1, lo_idx[0] : hi_idx[0] + 1] = 0
    protocol = Protocol(pixel_mm=3.0, n_views=5, step_mm=step_mm)
    views = make_views(vol, protocol)
    images = render(vol, views, protocol)
    rows, cols = np.indices(views.shape)
    rc = np.broadcast_to(np.stack([rows, cols], -1).reshape(1, -1, 2), (views.n_views, rows.size, 2))
    origins, dirs = pixel_rays(views, rc)
    # the box in index space, faces half a voxel outside the outer voxel centres
    m = vol.index_to_world_matrix
    o_idx = vol.world_to_index(origins)
    d_idx = dirs @ np.linalg.inv(m).T
    lengths_idx = _chord_mm(o_idx, d_idx, lo_idx - 0.5, hi_idx + 0.5)  # t is in mm: d_idx is per mm
    measured = images.reshape(views.n_views, -1) / protocol.mu_water_per_mm
    # rays well inside: long, and not grazing a face, where the half-voxel trilinear ramp runs along them
    inner = _chord_mm(o_idx, d_idx, lo_idx + 1.0, hi_idx - 1.0)
    outer = _chord_mm(o_idx, d_idx, lo_idx - 2.0, hi_idx + 2.0)
    through = (lengths_idx > 20.0) & (outer - inner < 10.0)
    assert through.sum() > 500
    np.testing.assert_allclose(measured[through], lengths_idx[through], rtol=rtol)
    # rays that miss the box (and its interpolation margin) integrate air only
    assert np.abs(measured[outer == 0]).max() < 1e-6


def test_normalize_is_shared_across_views(structured_volume):
    protocol = Protocol(pixel_mm=4.0, n_views=4)
    views = make_views(structured_volume, protocol)
    line_integrals = render(structured_volume, views, protocol)
    images = normalize(line_integrals, protocol)
    ratio = images[line_integrals > 0.1] / line_integrals[line_integrals > 0.1]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert np.percentile(images, protocol.norm_percentile) == pytest.approx(1.0, rel=1e-4)


def test_reoriented_storage_renders_the_same_images(structured_volume):
    protocol = Protocol(pixel_mm=4.0, n_views=6)
    reference = render(structured_volume, make_views(structured_volume, protocol), protocol)
    for perm, flips in [((0, 1, 2), (True, True, False)), ((2, 0, 1), (False, True, True))]:
        other = structured_volume.reoriented(perm, flips)
        images = render(other, make_views(other, protocol), protocol)
        np.testing.assert_allclose(images, reference, atol=1e-3 * reference.max())


def test_content_box_skips_only_air(structured_volume):
    from vertedge.drr import content_box

    box = content_box(structured_volume)
    assert box.hu.size < structured_volume.hu.size
    assert np.shares_memory(box.hu, structured_volume.hu)  # a view, no copy
    # the same voxel sits at the same world point in both
    k, j, i = np.argwhere(box.hu > -500)[0]
    world = box.index_to_world(np.array([i, j, k], float))
    i2, j2, k2 = np.rint(structured_volume.world_to_index(world)).astype(int)
    assert structured_volume.hu[k2, j2, i2] == box.hu[k, j, i]
    # everything outside the box is air
    outside = structured_volume.hu.copy()
    lo = np.rint(structured_volume.world_to_index(box.origin)).astype(int)
    ni, nj, nk = box.shape_ijk
    outside[lo[2] : lo[2] + nk, lo[1] : lo[1] + nj, lo[0] : lo[0] + ni] = -1000
    assert (outside <= -500).all()


@pytest.mark.parametrize("hu", [-1000, -300, 0, 150, 400, 1800])
def test_kernel_integrates_the_intensity_transform(hu):
    """A uniform slab of one HU: every ray through it integrates mu_per_mm(HU) x its chord (bone term included)."""
    from vertedge.drr import mu_per_mm

    vol = air_volume((40, 40, 40), (1.0, 1.0, 1.0))
    vol.hu[:] = hu  # fills the whole box: each ray's chord is its clipped length, trilinear is exact
    protocol = Protocol(pixel_mm=4.0, n_views=3, step_mm=1.0, bone_hu=120.0, bone_gain=5.0)
    views = make_views(vol, protocol)
    images = render(vol, views, protocol)
    rows, cols = np.indices(views.shape)
    rc = np.broadcast_to(np.stack([rows, cols], -1).reshape(1, -1, 2), (views.n_views, rows.size, 2))
    origins, dirs = pixel_rays(views, rc)
    chord = _chord_mm(vol.world_to_index(origins), dirs @ np.linalg.inv(vol.index_to_world_matrix).T,
                      np.full(3, -0.5), np.full(3, 39.5))
    expected = float(mu_per_mm(np.array(hu), protocol)) * chord
    np.testing.assert_allclose(images.reshape(views.n_views, -1), expected, rtol=1e-5, atol=1e-6)


def test_relative_mu_by_hand():
    """Air 0, water 1, below air clamped to 0; above bone_hu the bone term adds gain per 1000 HU."""
    from vertedge.drr import relative_mu

    hu = np.array([-2000.0, -1000.0, -300.0, 0.0, 120.0, 400.0, 1120.0])
    np.testing.assert_allclose(relative_mu(hu, 120.0, 5.0), [0.0, 0.0, 0.7, 1.0, 1.12, 1.4 + 1.4, 2.12 + 5.0])
    assert relative_mu(400.0, 120.0, 5.0) == pytest.approx(2.8)  # scalars too (the kernel's use)


def test_content_bounds_agree_between_the_numba_pass_and_array_reductions():
    """The host (Numba) and the device path's reductions (run here on NumPy) give the same box."""
    from vertedge.drr import CONTENT_HU, _reduced_bounds, content_bounds

    rng = np.random.default_rng(3)
    for _ in range(20):
        hu = np.full(tuple(rng.integers(1, 12, 3)), -1000, np.int16)
        n = int(rng.integers(0, 4))
        for k, j, i in zip(*(rng.integers(0, s, n) for s in hu.shape), strict=True):
            hu[k, j, i] = rng.choice([-499, 200, 1000])
        hu[0, 0, 0] = CONTENT_HU  # at the threshold: not content
        got, ref = content_bounds(hu), _reduced_bounds(hu, CONTENT_HU)
        above = np.argwhere(hu > CONTENT_HU)[:, ::-1]  # (i, j, k)
        if above.size == 0:
            assert got is None and ref is None
            continue
        assert got is not None and ref is not None
        np.testing.assert_array_equal(got[0], above.min(0))
        np.testing.assert_array_equal(got[1], above.max(0))
        np.testing.assert_array_equal(np.concatenate(got), np.concatenate(ref))


def test_backend_table_names_its_devices_and_the_cpu_backend_is_drr(structured_volume):
    from vertedge.drr_backends import DRR_BACKENDS

    assert {name: backend.device for name, backend in DRR_BACKENDS.items()} == {"cpu": "cpu", "cuda": "cuda"}
    cpu = DRR_BACKENDS["cpu"]
    assert cpu.synchronize is None and DRR_BACKENDS["cuda"].synchronize is not None
    protocol = Protocol(pixel_mm=4.0, n_views=3)
    views = make_views(structured_volume, protocol)
    images = cpu.images(structured_volume, views, protocol)
    np.testing.assert_array_equal(images, normalize(render(structured_volume, views, protocol), protocol))


def test_phantom_saved_lps_ras_permuted_gives_same_drrs_and_projections(tmp_path):
    from vertedge.phantom import make_phantom
    from vertedge.volume import load_volume, save_volume

    protocol = Protocol(pixel_mm=5.0, n_views=6, step_mm=2.0)
    images, projected = {}, {}
    for orientation in ("LPS", "RAS", "permuted"):
        ph = make_phantom(4, "lumbar", shape=(80, 64, 90), spacing=(3.0, 3.0, 3.0), orientation=orientation)
        save_volume(ph.volume, tmp_path / f"{orientation}.nii.gz")
        volume = load_volume(tmp_path / f"{orientation}.nii.gz")
        views = make_views(volume, protocol)
        images[orientation] = render(volume, views, protocol)
        labels = sorted(ph.centroids)
        projected[orientation] = project(views, np.array([ph.centroids[lab] for lab in labels]))[0]
    assert len({im.shape for im in images.values()}) == 1
    for orientation in ("RAS", "permuted"):
        np.testing.assert_allclose(images[orientation], images["LPS"], atol=1e-3 * images["LPS"].max())
        np.testing.assert_allclose(projected[orientation], projected["LPS"], atol=1e-6)
