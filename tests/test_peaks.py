"""Density-peak centroids from heatmaps: sub-pixel accuracy, no extra peaks, close blobs, noise."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.peaks import Peaks, candidates, find_peaks

from .conftest import cuda_gpu

AMPLITUDE = 10.0
THRESHOLD = 3.0


def _render_blobs(shape: tuple[int, int, int], blobs: np.ndarray, sigma: float) -> np.ndarray:
    """Heatmaps (K, rows, cols) float32 with a Gaussian of AMPLITUDE at each blob (view, row, col)."""
    rr, cc = np.mgrid[: shape[1], : shape[2]]
    out = np.zeros(shape, np.float32)
    for k, r, c in blobs:
        out[int(k)] += AMPLITUDE * np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2))
    return out


def _spine_blobs(rng: np.random.Generator, n_views: int, n_per_view: int, spacing_px: float) -> np.ndarray:
    """(n_views * n_per_view, 3) (view, row, col) sub-pixel blob centres, a wavy column per view."""
    rows = 12.0 + spacing_px * np.arange(n_per_view)
    blobs = [
        np.stack(
            [
                np.full(n_per_view, k, float),
                rows + rng.uniform(-0.5, 0.5, n_per_view),
                40.0 + 8.0 * np.sin(rows / 30.0 + k) + rng.uniform(-0.5, 0.5, n_per_view),
            ],
            axis=1,
        )
        for k in range(n_views)
    ]
    return np.concatenate(blobs)


def _match(peaks: Peaks, blobs: np.ndarray) -> np.ndarray:
    """(N,) distance px from each true blob to the nearest peak of its view."""
    d = np.linalg.norm(blobs[:, None, 1:] - peaks.rc[None], axis=2)
    d[blobs[:, None, 0] != peaks.view[None]] = np.inf
    return d.min(axis=1)


@pytest.mark.parametrize("sigma", [2.0, 3.0, 4.0])
def test_gaussians_recovered_subpixel(sigma: float) -> None:
    rng = np.random.default_rng(1)
    blobs = _spine_blobs(rng, n_views=3, n_per_view=8, spacing_px=5 * sigma)
    heat = _render_blobs((3, int(20 + 40 * sigma), 80), blobs, sigma)
    peaks = find_peaks(heat, THRESHOLD, min_distance_px=2 * sigma)
    assert len(peaks) == len(blobs)
    assert np.bincount(peaks.view).tolist() == [8, 8, 8]
    # weighting by value - threshold keeps the edge pixels' cut from biasing the centroid (raw: ~0.1 px)
    assert _match(peaks, blobs).max() < 0.05
    assert np.all(np.abs(peaks.score - AMPLITUDE) < 1.0)


def test_peaks_sorted_by_view_then_row() -> None:
    blobs = np.array([[1, 60.0, 30.0], [0, 40.0, 30.0], [0, 10.0, 50.0], [1, 20.0, 20.0]])
    peaks = find_peaks(_render_blobs((2, 80, 80), blobs, 3.0), THRESHOLD, 6.0)
    assert peaks.view.tolist() == [0, 0, 1, 1]
    assert np.all(np.diff(peaks.rc[:2, 0]) > 0) and np.all(np.diff(peaks.rc[2:, 0]) > 0)
    assert peaks.in_view(1).shape == (2, 2)


def test_noise_gives_no_extra_peaks() -> None:
    rng = np.random.default_rng(2)
    sigma = 3.0
    blobs = _spine_blobs(rng, n_views=4, n_per_view=10, spacing_px=16.0)
    heat = _render_blobs((4, 180, 80), blobs, sigma)
    heat += rng.normal(0.0, 0.4, heat.shape).astype(np.float32)
    peaks = find_peaks(heat, THRESHOLD, min_distance_px=2 * sigma)
    assert len(peaks) == len(blobs)
    assert _match(peaks, blobs).max() < 0.5


def test_close_blobs_separated_and_merged_below_min_distance() -> None:
    sigma = 3.0
    blobs = np.array([[0, 30.0, 30.0], [0, 39.0, 31.0]])  # 9.06 px apart, about 3 sigma
    heat = _render_blobs((1, 70, 60), blobs, sigma)
    peaks = find_peaks(heat, THRESHOLD, min_distance_px=6.0)
    assert len(peaks) == 2
    # the neighbour's tail pulls each centroid a little towards it
    assert _match(peaks, blobs).max() < 0.5
    assert len(find_peaks(heat, THRESHOLD, min_distance_px=12.0)) == 1


def test_empty_and_flat_heatmaps() -> None:
    peaks = find_peaks(np.zeros((3, 32, 32), np.float32), THRESHOLD, 5.0)
    assert len(peaks) == 0 and peaks.rc.shape == (0, 2)
    plateau = np.zeros((1, 32, 32), np.float32)
    plateau[0, 10:14, 10:14] = 5.0  # equal values: ties must still give one centre
    peaks = find_peaks(plateau, THRESHOLD, 5.0)
    assert len(peaks) == 1
    np.testing.assert_allclose(peaks.rc[0], [11.5, 11.5])


def test_candidates_capped_per_view_keep_highest() -> None:
    heat = _render_blobs((2, 40, 40), np.array([[0, 20.0, 20.0], [1, 10.0, 10.0]]), 3.0)
    view, rc, value = candidates(heat, THRESHOLD, max_candidates=5)
    assert np.bincount(view).tolist() == [5, 5]
    for k in range(2):
        top5 = np.sort(heat[k].ravel())[-5:]
        np.testing.assert_array_equal(np.sort(value[view == k]), top5)
    np.testing.assert_array_equal(heat[view, rc[:, 0], rc[:, 1]], value)
    all_view, _, _ = candidates(heat, THRESHOLD)
    assert len(all_view) == int((heat > THRESHOLD).sum())


def test_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError):
        find_peaks(np.zeros((32, 32), np.float32), THRESHOLD, 5.0)


@pytest.mark.gpu
@cuda_gpu
@pytest.mark.parametrize("cap", [5, 1 << 15], ids=["capped", "uncapped"])
def test_candidates_and_peaks_of_device_heatmaps_equal_host_ones(cap: int) -> None:
    import cupy

    rng = np.random.default_rng(2)
    blobs = _spine_blobs(rng, n_views=4, n_per_view=6, spacing_px=15.0)
    heat = _render_blobs((4, 140, 80), blobs, 3.0) + rng.normal(0, 2.0, (4, 140, 80)).astype(np.float32)
    host = candidates(heat, THRESHOLD, max_candidates=cap)
    device = candidates(cupy.asarray(heat), THRESHOLD, max_candidates=cap)
    for h, d in zip(host, device):
        assert isinstance(d, cupy.ndarray)
        np.testing.assert_array_equal(d.get(), h)
    a, b = find_peaks(heat, THRESHOLD, 6.0), find_peaks(cupy.asarray(heat), THRESHOLD, 6.0)
    np.testing.assert_array_equal(b.view, a.view)
    np.testing.assert_allclose(b.rc, a.rc, rtol=0, atol=1e-9)
