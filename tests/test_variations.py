"""Everyday scan variations (vertedge_train/variations.py, the robustness benchmark's): a structure keeps
its world position, thick slices average thin ones, a rotation moves the truth with the patient."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import air_volume, paint_ball
from vertedge.volume import Volume
from vertedge_train import variations

BALLS = np.array([[0.0, 20.0, 60.0], [5.0, 15.0, 0.0], [0.0, 25.0, -60.0]])  # world LPS mm


def _body() -> Volume:
    """Soft tissue with three bony balls along S-I, off the grid centre, in a 2 x 2 x 3 mm grid."""
    vol = air_volume((60, 60, 60), (2.0, 2.0, 3.0))
    k, j, i = np.indices(vol.hu.shape)
    world = vol.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3)).reshape(*vol.hu.shape, 3)
    vol.hu[np.hypot(world[..., 0] / 45, (world[..., 1] - 10) / 35) <= 1] = 40
    for c in BALLS:
        paint_ball(vol, c, 9.0, 800)
    return vol


def _bone_centroid(vol: Volume, near: np.ndarray, radius: float = 20.0) -> np.ndarray:
    """World LPS mm centroid of the voxels above 300 HU within `radius` of `near`."""
    k, j, i = np.nonzero(vol.hu > 300)
    world = vol.index_to_world(np.stack([i, j, k], 1).astype(float))
    return world[np.linalg.norm(world - near, axis=1) < radius].mean(0)


@pytest.mark.parametrize("change", [
    lambda v: variations.pad_in_plane(v, 25.0),
    lambda v: variations.in_plane_window(v, BALLS[1], 90.0),
    lambda v: variations.si_window(v, 0.2, 0.8),
    lambda v: variations.thick_slices(v, 6.0),
    lambda v: v.reoriented((1, 2, 0), (True, False, True)),
])
def test_a_scan_variation_keeps_structures_where_they_are(change) -> None:
    vol = _body()
    varied = change(vol)
    np.testing.assert_allclose(_bone_centroid(varied, BALLS[1]), _bone_centroid(vol, BALLS[1]), atol=1.0)


def test_thick_slices_are_the_mean_of_the_thin_ones() -> None:
    vol = _body()
    thick = variations.thick_slices(vol, 6.0)
    assert thick.spacing[2] == 6.0 and thick.shape_ijk[2] == 30
    np.testing.assert_allclose(thick.hu[3], vol.hu[6:8].astype(np.float32).mean(0))


def test_si_window_counts_from_the_inferior_end_in_any_storage() -> None:
    vol = _body()
    for stored in (vol, vol.reoriented((0, 1, 2), (False, False, True))):
        lower = variations.si_window(stored, 0.0, 0.5)
        z = lower.index_to_world(np.array(np.meshgrid(*[[0, n - 1] for n in lower.shape_ijk])).reshape(3, -1).T)[:, 2]
        assert z.max() < 5.0  # the inferior half of a volume centred at z = 0


def test_rotation_turns_the_patient_and_its_truth_together() -> None:
    vol = _body()
    rot, c = variations.rotation(tilt_deg=12.0, roll_deg=20.0), BALLS[1]
    turned = variations.rotated(vol, rot, c)
    for ball in BALLS[[0, 1]]:
        moved = variations.turn_points(ball, rot, c)
        np.testing.assert_allclose(_bone_centroid(turned, moved), moved, atol=1.0)
    a, _ = turned.si_axis()
    np.testing.assert_allclose(turned.direction, vol.direction)  # still an axis-aligned grid
    assert turned.shape_ijk[a] == vol.shape_ijk[a]  # with the scan's S-I range


def test_a_scaled_patient_carries_its_truth_and_keeps_its_voxels() -> None:
    """A smaller (or larger) patient: every structure lies at c + f (x - c), distances scale by f."""
    vol = _body()
    c = BALLS[1]
    for f in (0.7, 1.25):
        small = variations.scaled(vol, f, c)
        assert np.array_equal(small.hu, vol.hu)
        for ball in BALLS[[0, 2]]:
            moved = variations.turn_points(ball, f * np.eye(3), c)
            np.testing.assert_allclose(_bone_centroid(small, moved, 20.0 * f), moved, atol=1.0)
        np.testing.assert_allclose(_bone_centroid(small, c), c, atol=1.0)  # the centre stays


def test_faint_bone_scales_contrast_over_soft_tissue_and_keeps_the_rest() -> None:
    vol = _body()
    faint = variations.with_faint_bone(vol, 0.4)
    soft = vol.hu <= 40
    np.testing.assert_array_equal(faint.hu[soft], vol.hu[soft])  # air, fat, muscle as they were
    np.testing.assert_allclose(faint.hu[vol.hu == 800], 40 + 0.4 * 760)
    np.testing.assert_allclose(_bone_centroid(faint, BALLS[1]), _bone_centroid(vol, BALLS[1]), atol=1e-6)


def test_grainy_noise_has_its_sigma_and_grains_in_plane_only() -> None:
    """A low-dose scan's noise: `sigma_hu` overall, neighbours in-plane alike, slices independent."""
    vol = _body()
    base = vol.hu.astype(np.float32)
    white = variations.with_noise(vol, 40.0, np.random.default_rng(0)).hu - base
    grain = variations.with_noise(vol, 40.0, np.random.default_rng(0), grain_mm=3.0).hu - base
    for n in (white, grain):
        assert n.std() == pytest.approx(40.0, rel=0.02)

    def corr(n: np.ndarray, axis: int) -> float:
        a, b = np.moveaxis(n, axis, 0)[:-1].ravel(), np.moveaxis(n, axis, 0)[1:].ravel()
        return float(np.corrcoef(a, b)[0, 1])

    assert abs(corr(white, 2)) < 0.05
    assert corr(grain, 2) > 0.8 and corr(grain, 1) > 0.8  # in-plane (hu is (k, j, i); S-I is k here)
    assert abs(corr(grain, 0)) < 0.05
