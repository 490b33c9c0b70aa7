"""Mean of per-pixel maps in squares around points, for all views and points at once."""

from __future__ import annotations

import numpy as np


def box_means(maps: np.ndarray, rc: np.ndarray, half_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `maps` (K, C, H, W) in squares centred at `rc` (K, N, 2) (row, col) pixels.

    `half_px` (K, N) is the half side in pixels. Returns (K, N, C) means and a (K, N) bool mask of
    squares whose centre lies inside the image; squares are clipped to the image.
    """
    k_views, n_ch, h, w = maps.shape
    # summed-area table with a zero row/col in front: box sum = 4 look-ups
    sat = np.zeros((k_views, n_ch, h + 1, w + 1), np.float64)
    np.cumsum(np.cumsum(maps, axis=2, dtype=np.float64), axis=3, out=sat[:, :, 1:, 1:])
    r, c = rc[..., 0], rc[..., 1]
    valid = (r >= -0.5) & (r <= h - 0.5) & (c >= -0.5) & (c <= w - 0.5)
    r0 = np.clip(np.rint(r - half_px), 0, h).astype(np.intp)
    r1 = np.clip(np.rint(r + half_px) + 1, 0, h).astype(np.intp)
    c0 = np.clip(np.rint(c - half_px), 0, w).astype(np.intp)
    c1 = np.clip(np.rint(c + half_px) + 1, 0, w).astype(np.intp)
    kk = np.arange(k_views)[:, None]
    # (K, N, C) after moving the channel axis last
    s = np.moveaxis(sat, 1, -1)
    total = s[kk, r1, c1] - s[kk, r0, c1] - s[kk, r1, c0] + s[kk, r0, c0]
    area = np.maximum((r1 - r0) * (c1 - c0), 1)[..., None]
    return (total / area).astype(np.float32), valid & (r1 > r0) & (c1 > c0)
