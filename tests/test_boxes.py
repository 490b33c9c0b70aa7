"""Square means around projected points against a plain loop over pixels."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.boxes import box_means

from .conftest import cuda_gpu


def _loop_means(maps, rc, half):
    """Reference: average of the pixels whose centre lies within `half` of the point, per square."""
    k_views, n_ch, h, w = maps.shape
    out = np.zeros((*rc.shape[:2], n_ch))
    for k in range(k_views):
        for i, ((r, c), hp) in enumerate(zip(rc[k], half[k])):
            rows = [y for y in range(h) if abs(y - r) <= hp]
            cols = [x for x in range(w) if abs(x - c) <= hp]
            if rows and cols:
                out[k, i] = maps[k][:, rows][:, :, cols].mean(axis=(1, 2))
    return out


def _random_squares(seed: int, shape: tuple[int, int, int, int], n: int, max_half: float):
    """Random maps (K, C, H, W), n square centres per view (some outside the image) and half sides."""
    rng = np.random.default_rng(seed)
    k, _, h, w = shape
    maps = rng.random(shape).astype(np.float32)
    rc = np.stack([rng.uniform(-3, h + 3, (k, n)), rng.uniform(-3, w + 3, (k, n))], -1)
    return maps, rc, rng.uniform(1.0, max_half, (k, n))


def test_box_means_match_a_pixel_loop_including_clipped_squares():
    maps, rc, half = _random_squares(0, (3, 4, 40, 50), 7, 6.5)
    means, valid = box_means(maps, rc, half)
    np.testing.assert_allclose(means, _loop_means(maps, rc, half), rtol=1e-5)
    inside = (rc[..., 0] >= -0.5) & (rc[..., 0] <= 39.5) & (rc[..., 1] >= -0.5) & (rc[..., 1] <= 49.5)
    np.testing.assert_array_equal(valid, inside)


def test_box_means_of_no_points():
    means, valid = box_means(np.zeros((2, 3, 8, 8), np.float32), np.zeros((2, 0, 2)), np.zeros((2, 0)))
    assert means.shape == (2, 0, 3) and valid.shape == (2, 0)


@pytest.mark.gpu
@cuda_gpu
def test_box_means_of_device_maps_equal_host_ones():
    import cupy

    maps, rc, half = _random_squares(1, (4, 6, 64, 48), 9, 8.0)
    host, host_valid = box_means(maps, rc, half)
    device, device_valid = box_means(cupy.asarray(maps), rc, half)
    assert isinstance(device, np.ndarray)  # only the means come back
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(device_valid, host_valid)
