"""2D vertebra centroids from localization heatmaps: density-peak clustering (Rodriguez & Laio 2014).

Frames and units: heatmaps are `(K, rows, cols)`, one per view; a position is `(row, col)` in
detector pixels, integer values at pixel centres (as in `geometry`); distances are in pixels.

The heatmap value is the density `rho` (the network regresses a Gaussian per vertebra, so its value
already is a smoothed density). For every candidate pixel above the threshold, `delta` is the
distance to the nearest candidate of higher density in the same view. A candidate with no denser
candidate within `min_distance_px` (delta > min_distance_px) is a cluster centre; every other
candidate joins the cluster of its nearest denser neighbour. A cluster's centroid is the mean of
its pixels weighted by `value - threshold`, which falls to zero at the cluster's edge, so which
edge pixels pass the threshold does not pull the sub-pixel centroid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from .xp import array_module, to_host

DEFAULT_MAX_CANDIDATES = 1 << 15  # per view: ~30 vertebrae x ~1000 pixels above threshold


@dataclass(frozen=True, eq=False)
class Peaks:
    """2D detections of all views, flat, sorted by view then row."""

    view: np.ndarray  # (M,) int64 view index
    rc: np.ndarray  # (M, 2) float64 (row, col) detector pixels, sub-pixel
    score: np.ndarray  # (M,) float64 heatmap value at the cluster's centre pixel

    def __len__(self) -> int:
        """Number of detections M."""
        return len(self.view)

    def in_view(self, k: int) -> np.ndarray:
        """(M_k, 2) float64 (row, col) pixels of the detections in view k."""
        return self.rc[self.view == k]


def candidates(
    heatmaps: np.ndarray, threshold: float, max_candidates: int = DEFAULT_MAX_CANDIDATES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels of heatmaps (K, rows, cols) above `threshold`: view (M,) int64, rc (M, 2) int64, value (M,) float32.

    At most `max_candidates` per view, the highest ones, so that one view's bright haze cannot
    starve the others; the output is in C order of (view, row, col). NumPy or CuPy in, the same
    out: on a GPU only the candidates, not the heatmaps, need to reach the host.
    """
    xp = array_module(heatmaps)
    h = xp.asarray(heatmaps, dtype=xp.float32)
    if h.ndim != 3:
        raise ValueError(f"heatmaps must be (K, rows, cols), got shape {h.shape}")
    view, row, col = xp.nonzero(h > threshold)
    value = h[view, row, col]
    if value.size > max_candidates:  # only then can one view hold more than its share
        order = xp.lexsort(xp.stack([-value, view.astype(xp.float32)]))  # by view, then value descending
        in_order = view[order]
        rank_in_view = xp.arange(in_order.size) - xp.searchsorted(in_order, in_order, side="left")
        keep = xp.sort(order[rank_in_view < max_candidates])
        view, row, col, value = view[keep], row[keep], col[keep], value[keep]
    return view.astype(xp.int64), xp.stack([row, col], axis=1).astype(xp.int64), value


@numba.njit(cache=True)
def _nearest_denser(view, rows, cols, n_rows, n_cols, radius):
    """Index of the nearest earlier (denser) candidate of the same view within `radius` px, -1 if none.

    Candidates are sorted by view, then density descending, so "denser" means "earlier". A rank
    image of one view at a time turns the search into a scan of a (2r+1)^2 window per candidate.
    """
    m = len(view)
    parent = np.full(m, -1, np.int64)
    rank = np.full((n_rows, n_cols), -1, np.int64)
    reach = int(radius)
    r2 = radius * radius
    start = 0
    while start < m:
        end = start
        while end < m and view[end] == view[start]:
            end += 1
        for i in range(start, end):
            rank[rows[i], cols[i]] = i
        for i in range(start, end):
            best_d2 = r2
            best = -1
            for rr in range(max(rows[i] - reach, 0), min(rows[i] + reach + 1, n_rows)):
                dr = rr - rows[i]
                for cc in range(max(cols[i] - reach, 0), min(cols[i] + reach + 1, n_cols)):
                    j = rank[rr, cc]
                    if j < 0 or j >= i:
                        continue
                    dc = cc - cols[i]
                    d2 = dr * dr + dc * dc
                    if d2 < best_d2 or (d2 == best_d2 and (best < 0 or j < best)):
                        best_d2 = d2
                        best = j
            parent[i] = best
        for i in range(start, end):
            rank[rows[i], cols[i]] = -1
        start = end
    return parent


def _cluster_roots(parent: np.ndarray) -> np.ndarray:
    """(M,) index of each candidate's cluster centre, following `parent` links (-1 at centres)."""
    root = np.where(parent < 0, np.arange(len(parent)), parent)
    while True:  # pointer jumping: depth halves every pass
        nxt = root[root]
        if np.array_equal(nxt, root):
            return root
        root = nxt


def find_peaks(
    heatmaps: np.ndarray,
    threshold: float,
    min_distance_px: float,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Peaks:
    """Density-peak centroids of heatmaps (K, rows, cols) float, host or device; centres lie > `min_distance_px` px from denser pixels."""
    threshold = float(np.float32(threshold))  # the value compared in float32, so weights stay > 0
    view, rc, value = (to_host(a) for a in candidates(heatmaps, threshold, max_candidates))
    if len(view) == 0:
        return Peaks(np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros(0))
    order = np.lexsort((-value, view))  # stable: ties keep pixel order, so ranks are strict
    view, rc, value = view[order], rc[order], value[order]
    parent = _nearest_denser(view, rc[:, 0], rc[:, 1], heatmaps.shape[1], heatmaps.shape[2], float(min_distance_px))
    centre, label = np.unique(_cluster_roots(parent), return_inverse=True)
    weight = value.astype(np.float64) - threshold
    mass = np.bincount(label, weight)
    rc_mean = np.stack([np.bincount(label, weight * rc[:, a]) for a in (0, 1)], axis=1) / mass[:, None]
    out_order = np.lexsort((rc_mean[:, 0], view[centre]))
    return Peaks(
        view=view[centre][out_order],
        rc=rc_mean[out_order],
        score=value[centre][out_order].astype(np.float64),
    )
