"""Mean of per-pixel maps in squares around points, for all views and points at once."""

from __future__ import annotations

import numpy as np

from .xp import array_module, to_host


def square_half_px(px_mm: np.ndarray, square_mm: float) -> np.ndarray:
    """Half side in pixels of a `square_mm` square where one pixel covers `px_mm` mm (at the point's depth)."""
    return 0.5 * square_mm / np.asarray(px_mm, float)


def box_means(maps, rc: np.ndarray, half_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `maps` (K, C, H, W) in squares centred at `rc` (K, N, 2) (row, col) pixels.

    `half_px` (K, N) is each square's half side in pixels; a square covers the pixels whose centres
    lie within it, clipped to the image. Returns (K, N, C) float32 means and a (K, N) bool mask of
    squares whose centre lies inside the image. `maps` may live on a GPU (CuPy): only the pixels
    of the squares are read, and only (K, N, C) comes back to the host.
    """
    xp = array_module(maps)
    k_views, n_ch, h, w = maps.shape
    n = rc.shape[1]
    if n == 0:
        return np.zeros((k_views, 0, n_ch), np.float32), np.zeros((k_views, 0), bool)
    reach = int(np.ceil(half_px.max())) + 1
    offsets = np.arange(-reach, reach + 1)
    centre = np.rint(rc).astype(np.intp)  # (K, N, 2)
    rows = centre[..., 0, None] + offsets  # (K, N, S)
    cols = centre[..., 1, None] + offsets
    # a pixel belongs to a square when its centre is within half_px of the point
    in_r = (np.abs(rows - rc[..., 0, None]) <= half_px[..., None]) & (rows >= 0) & (rows < h)
    in_c = (np.abs(cols - rc[..., 1, None]) <= half_px[..., None]) & (cols >= 0) & (cols < w)
    weight = in_r[..., :, None] & in_c[..., None, :]  # (K, N, S, S)
    kk = np.arange(k_views)[:, None, None, None]
    rr = np.clip(rows, 0, h - 1)[..., :, None]
    cc = np.clip(cols, 0, w - 1)[..., None, :]
    patches = maps.transpose(0, 2, 3, 1)[xp.asarray(kk), xp.asarray(rr), xp.asarray(cc)]  # (K, N, S, S, C)
    sums = (patches * xp.asarray(weight, dtype=patches.dtype)[..., None]).sum(axis=(2, 3))
    count = weight.sum(axis=(2, 3))
    means = to_host(sums) / np.maximum(count, 1)[..., None]
    valid = (rc[..., 0] >= -0.5) & (rc[..., 0] <= h - 0.5) & (rc[..., 1] >= -0.5) & (rc[..., 1] <= w - 0.5)
    return means.astype(np.float32), valid & (count > 0)
