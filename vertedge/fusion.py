"""Multi-view fusion: 2D detections in K views -> 3D vertebra centroids (paper Eq. 4-5).

Frames and units: detections are `(row, col)` detector pixels of their view (`peaks.Peaks`); rays,
points, distances and gates are in world LPS millimetres (`geometry`); +z is superior.

Matching is per vertebra, not per view, so that no view is trusted alone (the gates named below
are the fields of `options.FusionOptions`):
1. every pair of detections from two views whose directions differ by at least
   `min_pair_angle_deg` (folded to [0, 90]: views 180 degrees apart see along the same line) and
   whose rays pass within `max_residual_mm` of each other (the epipolar constraint) is
   triangulated into a 3D hypothesis;
2. each hypothesis takes, in every view, the detection whose ray passes nearest to it if that is
   within `max_residual_mm`, and is re-solved by least squares on those rays (a few rounds, so
   outlier rays drop out);
3. greedily, the hypothesis seen in the most views (then with the lowest residual) becomes a
   vertebra; its detections are used up, hypotheses within `min_separation_mm` of it are dropped,
   and the rest are re-fitted without the used detections; this stops when no hypothesis is seen
   in `min_views` views.
A vertebra missed in some views keeps the others; a spurious blob in one view cannot reach
`min_views` on its own; one detection never serves two vertebrae. The chosen points are then
ordered along the spine, stray points off it are dropped (`on_spine`), and of two chain neighbours
closer than half the local gap, a vertebra found twice, the better-seen one stays
(`distinct_vertebrae`), and a weakly seen point that splits one regular gap in two leaves
(`split_detections`).

Steps 1-3 are Numba kernels (`cache=True`: compiled on first use, then loaded from the cache,
`numba_cache`): as NumPy array code most of their time went to the overhead of the calls, a dozen
small-array calls per refinement round, three rounds per chosen vertebra.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from .geometry import Views, pixel_rays
from .options import DEFAULT_OPTIONS, FusionOptions
from .peaks import Peaks

_MAX_GAP_FACTOR = 2.5  # consecutive vertebrae: one missed detection doubles a gap; more is a break
_MIN_PIECE = 3  # points: fewer, cut off from the rest by a break, are stray detections
_GAP_WINDOW = 3  # gaps on each side that set the local gap (vertebra height changes slowly)
_REFINE_ROUNDS = 3  # select rays, re-solve: converges in 2 rounds on test data, one spare
_RELATIVE_SINGULAR = 1e-12  # rays closer to parallel than ~1e-6 rad do not fix a point


@dataclass(frozen=True, eq=False)
class Fused:
    """3D vertebra centroids fused from K views, ordered cranial -> caudal."""

    points_lps: np.ndarray  # (n, 3) float64 world LPS mm
    residual_mm: np.ndarray  # (n,) float64 RMS perpendicular distance of the used rays to the point
    n_views: np.ndarray  # (n,) int64 number of views whose ray was used
    support: np.ndarray  # (n, K) int64 index into Peaks of the detection used per view, -1 if none

    def __len__(self) -> int:
        """Number of fused vertebrae n."""
        return len(self.points_lps)

    def head(self, n: int) -> Fused:
        """The first `n` points (the cranial part of the chain)."""
        return self.rows(slice(0, n))

    def rows(self, index: np.ndarray | slice) -> Fused:
        """The points at the rows `index` ((m,) or a slice), in that order."""
        return Fused(self.points_lps[index], self.residual_mm[index], self.n_views[index], self.support[index])

    def inserted(self, before: np.ndarray, points_lps: np.ndarray) -> Fused:
        """The chain with `points_lps` (m, 3) mm inserted before the rows `before` (m,), found in no
        view (n_views 0, residual 0, no detection)."""
        return Fused(np.insert(self.points_lps, before, points_lps, axis=0), np.insert(self.residual_mm, before, 0.0),
                     np.insert(self.n_views, before, 0), np.insert(self.support, before, -1, axis=0))


@numba.njit(cache=True)
def _add_ray(s: np.ndarray, q: np.ndarray, a: np.ndarray, n: np.ndarray, w: float) -> None:
    """Add one ray's terms of Eq. 5 in place: w (I - n n^T) to S (3, 3) and w (I - n n^T) a to q (3,); origin a, unit dir n (3,) mm."""
    na = n[0] * a[0] + n[1] * a[1] + n[2] * a[2]
    for i in range(3):
        q[i] += w * (a[i] - na * n[i])
        for j in range(3):
            s[i, j] += w * ((1.0 if i == j else 0.0) - n[i] * n[j])


@numba.njit(cache=True)
def _solve_point(s: np.ndarray, q: np.ndarray) -> np.ndarray:
    """The point p (3,) mm with S p = q (S (3, 3), q (3,) from `_add_ray`); NaN if the rays do not fix it.

    Solved by the adjugate (Cramer's rule), exact enough for S's condition numbers here (< ~100).
    det / (trace / 3)^3 is the eigenvalues' product over their mean cubed: ~0 when the rays are
    parallel (or fewer than two).
    """
    c00 = s[1, 1] * s[2, 2] - s[1, 2] * s[2, 1]
    c01 = s[1, 2] * s[2, 0] - s[1, 0] * s[2, 2]
    c02 = s[1, 0] * s[2, 1] - s[1, 1] * s[2, 0]
    det = s[0, 0] * c00 + s[0, 1] * c01 + s[0, 2] * c02
    scale = (s[0, 0] + s[1, 1] + s[2, 2]) / 3.0
    p = np.full(3, np.nan)
    if not det > _RELATIVE_SINGULAR * scale**3:
        return p
    c10 = s[0, 2] * s[2, 1] - s[0, 1] * s[2, 2]
    c11 = s[0, 0] * s[2, 2] - s[0, 2] * s[2, 0]
    c12 = s[0, 1] * s[2, 0] - s[0, 0] * s[2, 1]
    c20 = s[0, 1] * s[1, 2] - s[0, 2] * s[1, 1]
    c21 = s[0, 2] * s[1, 0] - s[0, 0] * s[1, 2]
    c22 = s[0, 0] * s[1, 1] - s[0, 1] * s[1, 0]
    # the inverse is the transposed cofactor matrix over det
    p[0] = (c00 * q[0] + c10 * q[1] + c20 * q[2]) / det
    p[1] = (c01 * q[0] + c11 * q[1] + c21 * q[2]) / det
    p[2] = (c02 * q[0] + c12 * q[1] + c22 * q[2]) / det
    return p


@numba.njit(cache=True)
def _intersect_batch(origins: np.ndarray, dirs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares points (B, 3) mm of B ray sets: origins, unit dirs (B, R, 3), weights (B, R)."""
    points = np.empty((origins.shape[0], 3))
    for b in range(origins.shape[0]):
        s, q = np.zeros((3, 3)), np.zeros(3)
        for r in range(origins.shape[1]):
            _add_ray(s, q, origins[b, r], dirs[b, r], weights[b, r])
        points[b] = _solve_point(s, q)
    return points


def intersect_rays(
    origins: np.ndarray, dirs: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Least-squares point (..., 3) mm of rays origins, unit dirs (..., R, 3), weights (..., R); NaN if undetermined.

    Eq. 5: S p = q with S = sum w (I - n n^T), q = sum w (I - n n^T) a, solved for every ray set of
    `...`; the fusion's refinement fits its points with the same kernels.
    """
    a, n = np.broadcast_arrays(np.asarray(origins, dtype=np.float64), np.asarray(dirs, dtype=np.float64))
    w = np.ones(a.shape[:-1]) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), a.shape[:-1])
    batch, rays = a.shape[:-2], a.shape[-2]
    size = math.prod(batch)
    # fresh C-ordered writable copies: one compiled specialization serves every caller
    points = _intersect_batch(
        np.array(a.reshape(size, rays, 3), order="C"),
        np.array(n.reshape(size, rays, 3), order="C"),
        np.array(w.reshape(size, rays), order="C"),
    )
    return points.reshape(batch + (3,))


@numba.njit(cache=True)
def _ray_distance(p: np.ndarray, a: np.ndarray, n: np.ndarray) -> float:
    """Perpendicular distance mm of point p (3,) to the ray with origin a and unit dir n (3,)."""
    v0, v1, v2 = p[0] - a[0], p[1] - a[1], p[2] - a[2]
    along = v0 * n[0] + v1 * n[1] + v2 * n[2]
    e0, e1, e2 = v0 - along * n[0], v1 - along * n[1], v2 - along * n[2]
    return np.sqrt(e0 * e0 + e1 * e1 + e2 * e2)


def detection_rays(peaks: Peaks, views: Views) -> tuple[np.ndarray, np.ndarray]:
    """Source->pixel rays of every detection: origins (M, 3) and unit directions (M, 3), world LPS mm."""
    origins, dirs = pixel_rays(views.take(peaks.view), peaks.rc[:, None, :])
    return origins[:, 0], dirs[:, 0]


@numba.njit(cache=True)
def _pair_hypotheses(
    view: np.ndarray, origins: np.ndarray, dirs: np.ndarray, separated: np.ndarray, max_residual_mm: float
) -> np.ndarray:
    """(P, 3) world LPS mm triangulations of detection pairs (i < j, in that order) from views far enough apart whose rays nearly meet.

    `separated` (K, K) bool: which views may pair. A pair's point is the midpoint of its rays'
    common perpendicular, whose length is the rays' gap: the two-ray case of Eq. 5 in closed form.
    """
    m = len(view)
    points = np.empty((m * (m - 1) // 2, 3))
    count = 0
    for i in range(m):
        a1, n1 = origins[i], dirs[i]
        for j in range(i + 1, m):
            if not separated[view[i], view[j]]:
                continue
            a2, n2 = origins[j], dirs[j]
            w0, w1, w2 = a1[0] - a2[0], a1[1] - a2[1], a1[2] - a2[2]
            b = n1[0] * n2[0] + n1[1] * n2[1] + n1[2] * n2[2]
            d = n1[0] * w0 + n1[1] * w1 + n1[2] * w2
            e = n2[0] * w0 + n2[1] * w1 + n2[2] * w2
            denom = 1.0 - b * b
            # denom = sin^2 of the angle between the rays: the same ~1e-12 cut as `_solve_point`
            if not denom > _RELATIVE_SINGULAR:
                continue
            t1 = (b * e - d) / denom
            t2 = (e - b * d) / denom
            gap2 = 0.0
            for c in range(3):
                p1, p2 = a1[c] + t1 * n1[c], a2[c] + t2 * n2[c]
                gap2 += (p1 - p2) ** 2
                points[count, c] = 0.5 * (p1 + p2)  # written in any case, counted only within the gate
            if np.sqrt(gap2) <= max_residual_mm:
                count += 1
    return points[:count].copy()


def _slots_by_view(view: np.ndarray, n_views: int) -> np.ndarray:
    """(K, D) int64 detection indices per view, padded with -1 (D = most detections in a view)."""
    counts = np.bincount(view, minlength=n_views)
    order = np.argsort(view, kind="stable")
    pos = np.arange(len(view)) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = np.full((n_views, max(int(counts.max(initial=0)), 1)), -1, np.int64)
    slots[view[order], pos] = order
    return slots


@numba.njit(cache=True)
def _first_of_each(support: np.ndarray) -> np.ndarray:
    """Row index of the first occurrence of each distinct row of support (H, K), rows in ascending lexicographic order.

    What `np.unique(support, axis=0, return_index=True)[1]` gives: stable sorts by the last column
    first, then each earlier one, order the rows lexicographically with equal rows in input order.
    """
    order = np.arange(len(support))
    for k in range(support.shape[1] - 1, -1, -1):
        order = order[np.argsort(support[order, k], kind="mergesort")]
    first = np.ones(len(order), np.bool_)
    for i in range(1, len(order)):
        first[i] = False
        for k in range(support.shape[1]):
            if support[order[i], k] != support[order[i - 1], k]:
                first[i] = True
                break
    return order[first]


@numba.njit(cache=True)
def _refine(
    points: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    slots: np.ndarray,
    available: np.ndarray,
    max_residual_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-fit hypotheses (H, 3) mm to each view's nearest available ray within the gate -> points (H', 3), support (H', K).

    A re-fitted point is a function of its rays alone, so hypotheses that pick the same rays
    coincide from then on: one of each is kept (H' <= H), which is what makes refinement cheap
    (hundreds of pair hypotheses collapse to a few per vertebra after the first round). A
    hypothesis left with fewer than two rays cannot be re-fitted, move, or be chosen: it is
    dropped. The kept ones are in ascending lexicographic order of their supports, the order
    that breaks exact ties in `_select`.
    """
    n_views = slots.shape[0]
    support = np.full((len(points), n_views), -1, np.int64)  # typed before the rounds, which replace it
    for _ in range(_REFINE_ROUNDS):
        support = np.full((len(points), n_views), -1, np.int64)
        fitted = np.empty((len(points), 3))
        fits = np.zeros(len(points), np.bool_)
        for h in range(len(points)):
            s, q = np.zeros((3, 3)), np.zeros(3)
            for k in range(n_views):
                nearest, nearest_mm = -1, np.inf
                for m in slots[k]:  # first of equals wins, as np.argmin
                    if m >= 0 and available[m]:
                        dist = _ray_distance(points[h], origins[m], dirs[m])
                        if dist < nearest_mm:
                            nearest, nearest_mm = m, dist
                if nearest_mm <= max_residual_mm:
                    support[h, k] = nearest
                    _add_ray(s, q, origins[nearest], dirs[nearest], 1.0)
            fitted[h] = _solve_point(s, q)
            fits[h] = np.isfinite(fitted[h]).all()
        kept = np.flatnonzero(fits)
        kept = kept[_first_of_each(support[kept])]
        points, support = fitted[kept], support[kept]
    return points, support


@numba.njit(cache=True)
def _fit_quality(
    points: np.ndarray, support: np.ndarray, origins: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Views used (H,) int64 and RMS ray distance (H,) mm of hypotheses (H, 3) with support (H, K)."""
    n_used = np.zeros(len(points), np.int64)
    rms = np.zeros(len(points))
    for h in range(len(points)):
        sum_sq = 0.0
        for m in support[h]:
            if m >= 0:
                n_used[h] += 1
                sum_sq += _ray_distance(points[h], origins[m], dirs[m]) ** 2
        rms[h] = np.sqrt(sum_sq / max(n_used[h], 1))
    return n_used, rms


@numba.njit(cache=True)
def _select(
    points: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    slots: np.ndarray,
    min_views: int,
    max_residual_mm: float,
    min_separation_mm: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy choice of vertebrae among hypotheses (H, 3) mm, in order of choice: points (n, 3) mm, support (n, K), RMS (n,) mm, views (n,)."""
    available = np.ones(len(origins), np.bool_)
    points, support = _refine(points, origins, dirs, slots, available, max_residual_mm)
    most = len(origins) // 2  # every hypothesis rests on >= 2 rays, and a chosen one uses them up
    chosen, chosen_support = np.empty((most, 3)), np.empty((most, slots.shape[0]), np.int64)
    chosen_rms, chosen_views = np.empty(most), np.empty(most, np.int64)
    n = 0
    while len(points):
        n_used, rms = _fit_quality(points, support, origins, dirs)
        best = 0  # most views, then lowest RMS, then first
        for h in range(1, len(points)):
            if n_used[h] > n_used[best] or (n_used[h] == n_used[best] and rms[h] < rms[best]):
                best = h
        if n_used[best] < min_views:
            break
        chosen[n], chosen_support[n], chosen_rms[n], chosen_views[n] = points[best], support[best], rms[best], n_used[best]
        taken = support[best].copy()
        for m in taken:
            if m >= 0:
                available[m] = False
        # Hypotheses near the chosen one go. Of the rest, only those that used a detection just
        # taken can change: a view's detection can only sit in that view's column of the support.
        far, touched = np.zeros(len(points), np.bool_), np.zeros(len(points), np.bool_)
        for h in range(len(points)):
            gap2 = 0.0
            for c in range(3):
                gap2 += (points[h, c] - points[best, c]) ** 2
            far[h] = np.sqrt(gap2) > min_separation_mm
            for k in range(len(taken)):
                if taken[k] >= 0 and support[h, k] == taken[k]:
                    touched[h] = True
        kept, redo = np.flatnonzero(far & ~touched), np.flatnonzero(far & touched)
        refit, refit_support = _refine(points[redo], origins, dirs, slots, available, max_residual_mm)
        points = np.concatenate((points[kept], refit))
        support = np.concatenate((support[kept], refit_support))
        n += 1
    return chosen[:n].copy(), chosen_support[:n].copy(), chosen_rms[:n].copy(), chosen_views[:n].copy()


def _empty_fused(n_views: int) -> Fused:
    """No vertebra, for K views."""
    return Fused(np.zeros((0, 3)), np.zeros(0), np.zeros(0, np.int64), np.zeros((0, n_views), np.int64))


def fuse(peaks: Peaks, views: Views, options: FusionOptions = DEFAULT_OPTIONS.fusion) -> Fused:
    """3D centroids (world LPS mm, cranial -> caudal) of vertebrae detected in >= `options.min_views` views.

    Stray detections (a bright object beside the spine) are dropped (`on_spine`): points farther
    than `options.max_off_spine_mm` from the line through their chain neighbours, and short runs
    of points cut off from the rest of the chain by a gap much wider than the typical one. A
    vertebra found twice (a detection split in some views leaves a second, weaker point beside
    it) keeps its better-seen point (`distinct_vertebrae`).
    """
    o = options
    k = views.n_views
    if len(peaks) == 0:
        return _empty_fused(k)
    origins, dirs = (np.ascontiguousarray(x) for x in detection_rays(peaks, views))
    view = np.asarray(peaks.view, dtype=np.int64)
    angle = np.abs(views.angles_deg[:, None] - views.angles_deg[None]) % 180.0
    separated = np.minimum(angle, 180.0 - angle) >= o.min_pair_angle_deg
    points = _pair_hypotheses(view, origins, dirs, separated, float(o.max_residual_mm))
    slots = _slots_by_view(view, k)
    pts, sup, res, nv = _select(
        points, origins, dirs, slots, int(o.min_views), float(o.max_residual_mm), float(o.min_separation_mm)
    )
    if not len(pts):
        return _empty_fused(k)
    order = order_along_spine(pts)
    order = order[on_spine(pts[order], o.max_off_spine_mm)]
    order = order[distinct_vertebrae(pts[order], nv[order], res[order], o.max_duplicate_gap)]
    if o.split_regular is not None:
        order = order[split_detections(pts[order], nv[order], o.split_regular, o.split_part, o.split_views)]
    return Fused(pts[order], res[order], nv[order], sup[order])


def off_spine_mm(points_lps: np.ndarray) -> np.ndarray:
    """(n,) distance mm of each point (n, 3), in chain order, from the line through its chain neighbours.

    An inner point is measured against the line through the points before and after it, an end
    point against the line through the next two; with fewer than 3 points every distance is 0.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    n = len(p)
    if n < 3:
        return np.zeros(n)
    a = np.concatenate([p[1:2], p[:-2], p[-2:-1]])
    b = np.concatenate([p[2:3], p[2:], p[-3:-2]])
    u = (b - a) / np.maximum(np.linalg.norm(b - a, axis=1, keepdims=True), 1e-9)
    v = p - a
    return np.linalg.norm(v - np.einsum("ni,ni->n", v, u)[:, None] * u, axis=1)


def on_spine(points_lps: np.ndarray, max_off_mm: float) -> np.ndarray:
    """(n,) bool: False for stray points among points (n, 3) in chain order.

    First the chain is cut where a gap exceeds `_MAX_GAP_FACTOR` times the median gap, and pieces
    of fewer than `_MIN_PIECE` points go (unless nothing else is left). Then points off the line
    through their neighbours by more than `max_off_mm` go, the worst first, measuring the rest
    again each time, so that a stray point does not make its true neighbours look off the line.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    keep = np.ones(len(p), bool)
    if len(p) >= 3:
        gaps = chain_gaps(p)
        piece = np.r_[0, np.cumsum(gaps > _MAX_GAP_FACTOR * np.median(gaps))]
        size = np.bincount(piece)[piece]
        if (size >= _MIN_PIECE).any():
            keep = size >= _MIN_PIECE
    while keep.sum() >= 3:
        idx = np.flatnonzero(keep)
        off = off_spine_mm(p[idx])
        worst = int(np.argmax(off))
        if off[worst] <= max_off_mm:
            break
        keep[idx[worst]] = False
    return keep


def _tree_path_lengths(dist: np.ndarray) -> np.ndarray:
    """(n, n) path lengths along the minimum spanning tree of points with pairwise distances (n, n)."""
    n = len(dist)
    tree = np.full((n, n), np.inf)
    np.fill_diagonal(tree, 0.0)
    in_tree = np.zeros(n, bool)
    in_tree[0] = True
    best, link = dist[0].copy(), np.zeros(n, np.int64)
    for _ in range(n - 1):  # Prim
        x = int(np.argmin(np.where(in_tree, np.inf, best)))
        tree[x, link[x]] = tree[link[x], x] = dist[x, link[x]]
        in_tree[x] = True
        closer = dist[x] < best
        best, link = np.where(closer, dist[x], best), np.where(closer, x, link)
    for m in range(n):  # Floyd-Warshall: on a tree this sums the edges of the unique path
        tree = np.minimum(tree, tree[:, m : m + 1] + tree[m : m + 1, :])
    return tree


def _arc_position(points: np.ndarray, path: np.ndarray) -> np.ndarray:
    """(n,) arc length mm along the polyline path (m, 3) of the nearest point to each of points (n, 3)."""
    a, b = path[:-1], path[1:]
    seg = b - a
    length = np.linalg.norm(seg, axis=1)
    t = np.einsum("nsi,si->ns", points[:, None] - a, seg) / np.maximum(length**2, 1e-12)
    t = np.clip(t, 0.0, 1.0)
    gap = np.linalg.norm(points[:, None] - (a + t[..., None] * seg), axis=2)
    s = np.argmin(gap, axis=1)
    start = np.concatenate([[0.0], np.cumsum(length)])[:-1]
    return start[s] + t[np.arange(len(points)), s] * length[s]


def order_along_spine(points_lps: np.ndarray) -> np.ndarray:
    """Order (n,) int64 of points (n, 3) world LPS mm cranial -> caudal along the chain they form.

    The chain is the longest path of the points' minimum spanning tree (nearest neighbours link
    vertebrae, whatever the curvature or tilt); every point is placed by its projection on that
    path, and the path's more superior (+z) end comes first.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    if len(p) < 3:
        return np.argsort(-p[:, 2], kind="stable")
    tree = _tree_path_lengths(np.linalg.norm(p[:, None] - p[None], axis=2))
    u = int(np.argmax(tree[0]))
    v = int(np.argmax(tree[u]))
    on_path = np.isclose(tree[u] + tree[v], tree[u, v])
    path = np.flatnonzero(on_path)[np.argsort(tree[u, on_path])]
    position = _arc_position(p, p[path])
    if p[u, 2] < p[v, 2]:
        position = -position
    return np.argsort(position, kind="stable")


def chain_gaps(points_lps: np.ndarray) -> np.ndarray:
    """(n - 1,) mm: the straight-line distance between consecutive points (n, 3) mm of the chain."""
    return np.linalg.norm(np.diff(np.asarray(points_lps, dtype=np.float64), axis=0), axis=1)


def relative_gaps(points_lps: np.ndarray) -> np.ndarray:
    """(n - 1,) each chain gap of points (n, 3) mm over the median of up to `_GAP_WINDOW` gaps on each side.

    The gap itself is left out of its median; NaN for chains under 4 points, where a local gap
    would rest on fewer than two other gaps.
    """
    return relative_to_neighbours(chain_gaps(points_lps))


def relative_to_neighbours(gaps: np.ndarray) -> np.ndarray:
    """(m,) each of m chain gaps (mm) over the median of up to `_GAP_WINDOW` gaps on each side, itself
    left out; NaN for m < 3."""
    gaps = np.asarray(gaps, dtype=np.float64)
    if len(gaps) < 3:
        return np.full(len(gaps), np.nan)
    return gaps / _local_gap(gaps, np.arange(len(gaps)), np.r_[-_GAP_WINDOW:0, 1 : _GAP_WINDOW + 1])


def _local_gap(gaps: np.ndarray, rows: np.ndarray, offsets: np.ndarray, least: int = 1) -> np.ndarray:
    """(len(rows),) mm: the median of the chain gaps (m,) mm at `rows` + each of `offsets` that lie
    in the chain; NaN where fewer than `least` do."""
    at = np.asarray(rows)[:, None] + offsets
    inside = (at >= 0) & (at < len(gaps))
    around = np.where(inside, gaps[np.clip(at, 0, len(gaps) - 1)], np.nan)
    enough = inside.sum(axis=1) >= least
    # rows without enough gaps are filled before the median, so that an empty row does not warn
    return np.where(enough, np.nanmedian(np.where(enough[:, None], around, 0.0), axis=1), np.nan)


def distinct_vertebrae(
    points_lps: np.ndarray, n_views: np.ndarray, residual_mm: np.ndarray, max_gap: float,
    gaps: Callable[[np.ndarray], np.ndarray] = chain_gaps,
) -> np.ndarray:
    """(n,) bool: False for the weaker of chain neighbours closer than `max_gap` x the local gap.

    Points (n, 3) mm are in chain order; consecutive vertebral bodies are a body height plus a
    disc apart, which changes slowly along the spine, so two points at under half the gaps around
    them are one vertebra. The pair closest relative to its surroundings goes first, losing the
    point seen in fewer views (then the one with the larger residual); gaps are measured again
    after each removal. Chains under 4 points stay whole (a local gap needs two other gaps).
    `gaps` measures the chain's gaps (n - 1,) mm from its points (`chain_gaps` by default).
    """
    p = np.asarray(points_lps, dtype=np.float64)
    keep = np.ones(len(p), bool)
    while keep.sum() >= 4:
        idx = np.flatnonzero(keep)
        ratio = relative_to_neighbours(gaps(p[idx]))
        k = int(np.argmin(ratio))
        if ratio[k] >= max_gap:
            break
        a, b = idx[k], idx[k + 1]
        weaker = a if (n_views[a], -residual_mm[a]) < (n_views[b], -residual_mm[b]) else b
        keep[weaker] = False
    return keep


def split_detections(points_lps: np.ndarray, n_views: np.ndarray, regular: float, part: float,
                     views: float) -> np.ndarray:
    """(n,) bool: False for a point that splits one regular gap of the chain in two.

    Points (n, 3) mm in chain order, `n_views` (n,) the views each was found in. A point whose
    two chain neighbours lie one regular gap apart (their distance within a factor `regular` of
    the local gap), each of its own two gaps under `part` of it, and that was found in at most
    `views` times the views of either neighbour, is a detection between two vertebrae (a disc, a
    rib head, one vertebra's heatmap split): the robustness benchmark's points seen in 3 of 10
    views halfway between neighbours seen in 6-10 (benchmarks/RESULTS.md). Two split gaps beside
    each other read short against each other, so the local gap is the median of up to
    `_GAP_WINDOW` gaps on each side not touching the point; the most regular such point goes
    first and the gaps are measured again. Chains under 4 points stay whole.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    nv = np.asarray(n_views, dtype=np.float64)
    keep = np.ones(len(p), bool)
    while keep.sum() >= 4:
        idx = np.flatnonzero(keep)
        gaps = chain_gaps(p[idx])
        # the local gap of interior point i (1..m-1): gaps i-1-W..i+W, leaving out i-1 and i, the
        # two it touches; a point without two such gaps is not judged (NaN compares False below)
        local = _local_gap(gaps, np.arange(1, len(gaps)), np.r_[-_GAP_WINDOW - 1 : -1, 1 : _GAP_WINDOW + 1], least=2)
        merged = np.linalg.norm(p[idx[2:]] - p[idx[:-2]], axis=1) / local
        longer = np.maximum(gaps[:-1], gaps[1:]) / local
        weak = nv[idx[1:-1]] <= views * np.minimum(nv[idx[:-2]], nv[idx[2:]])
        split = (merged >= 1.0 / regular) & (merged <= regular) & (longer < part) & weak
        if not split.any():
            break
        k = int(np.argmin(np.where(split, np.abs(np.log(merged)), np.inf)))
        keep[idx[k + 1]] = False
    return keep
