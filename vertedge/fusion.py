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
(`distinct_vertebrae`).
"""

from __future__ import annotations

from dataclasses import dataclass

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


def intersect_rays(
    origins: np.ndarray, dirs: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """Least-squares point (..., 3) mm of rays origins, unit dirs (..., R, 3), weights (..., R); NaN if undetermined.

    Eq. 5: S p = q with S = sum w (I - n n^T), q = sum w (I - n n^T) a, solved batched over `...`.
    """
    a = np.asarray(origins, dtype=np.float64)
    n = np.asarray(dirs, dtype=np.float64)
    w = np.ones(a.shape[:-1]) if weights is None else np.asarray(weights, dtype=np.float64)
    s = w.sum(axis=-1)[..., None, None] * np.eye(3) - np.einsum("...r,...ri,...rj->...ij", w, n, n)
    na = np.einsum("...ri,...ri->...r", n, a)
    q = np.einsum("...r,...ri->...i", w, a) - np.einsum("...r,...r,...ri->...i", w, na, n)
    # det / (trace / 3)^3 is the eigenvalues' product over their mean cubed: ~0 when rays are parallel
    scale = np.trace(s, axis1=-2, axis2=-1) / 3.0
    ok = np.linalg.det(s) > _RELATIVE_SINGULAR * scale**3
    p = np.linalg.solve(np.where(ok[..., None, None], s, np.eye(3)), q[..., None])[..., 0]
    return np.where(ok[..., None], p, np.nan)


def ray_distance(points: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Perpendicular distance (...) mm of points (..., 3) to rays origins/unit dirs (..., 3), broadcast."""
    v = np.asarray(points) - origins
    perp = v - np.einsum("...i,...i->...", v, dirs)[..., None] * dirs
    return np.sqrt(np.einsum("...i,...i->...", perp, perp))


def detection_rays(peaks: Peaks, views: Views) -> tuple[np.ndarray, np.ndarray]:
    """Source->pixel rays of every detection: origins (M, 3) and unit directions (M, 3), world LPS mm."""
    origins, dirs = pixel_rays(views.take(peaks.view), peaks.rc[:, None, :])
    return origins[:, 0], dirs[:, 0]


def _closest_approach(
    a1: np.ndarray, n1: np.ndarray, a2: np.ndarray, n2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Midpoint (P, 3) mm of the common perpendicular of ray pairs (origins a, unit dirs n; (P, 3)) and its length (P,) mm.

    The two-ray case of `intersect_rays` in closed form; NaN for (nearly) parallel rays.
    """
    w = a1 - a2
    b = np.einsum("pi,pi->p", n1, n2)
    d = np.einsum("pi,pi->p", n1, w)
    e = np.einsum("pi,pi->p", n2, w)
    denom = 1.0 - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        # denom = sin^2 of the angle between the rays: the same ~1e-12 cut as intersect_rays
        denom = np.where(denom > _RELATIVE_SINGULAR, denom, np.nan)
        t1 = (b * e - d) / denom
        t2 = (e - b * d) / denom
    p1 = a1 + t1[:, None] * n1
    p2 = a2 + t2[:, None] * n2
    return 0.5 * (p1 + p2), np.linalg.norm(p1 - p2, axis=1)


def _pair_hypotheses(
    view: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    angles_deg: np.ndarray,
    min_angle_deg: float,
    max_residual_mm: float,
) -> np.ndarray:
    """(P, 3) world LPS mm triangulations of detection pairs from well-separated views whose rays nearly meet."""
    i, j = np.triu_indices(len(view), 1)
    diff = np.abs(angles_deg[view[i]] - angles_deg[view[j]]) % 180.0
    keep = np.minimum(diff, 180.0 - diff) >= min_angle_deg
    i, j = i[keep], j[keep]
    points, gap = _closest_approach(origins[i], dirs[i], origins[j], dirs[j])
    return points[np.isfinite(gap) & (gap <= max_residual_mm)]


def _all_ray_distances(points: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Perpendicular distance (H, M) mm of every point (H, 3) to every ray (origins, unit dirs (M, 3)).

    |p - a|^2 - ((p - a) . n)^2 expanded into matrix products: one (H, 3) x (3, M) product each
    instead of an (H, M, 3) temporary. In float64 the cancellation costs ~1e-10 mm^2 at ~1 m.
    """
    pa = points @ origins.T
    sq = np.einsum("hi,hi->h", points, points)[:, None] - 2.0 * pa + np.einsum("mi,mi->m", origins, origins)
    along = points @ dirs.T - np.einsum("mi,mi->m", origins, dirs)
    return np.sqrt(np.maximum(sq - along**2, 0.0))


def _slots_by_view(view: np.ndarray, n_views: int) -> np.ndarray:
    """(K, D) int64 detection indices per view, padded with -1 (D = most detections in a view)."""
    counts = np.bincount(view, minlength=n_views)
    order = np.argsort(view, kind="stable")
    pos = np.arange(len(view)) - np.repeat(np.cumsum(counts) - counts, counts)
    slots = np.full((n_views, max(int(counts.max(initial=0)), 1)), -1, np.int64)
    slots[view[order], pos] = order
    return slots


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
    hypothesis left with fewer than two rays cannot be re-fitted, move, or be chosen: it is dropped.
    """
    valid = (slots >= 0) & available[slots]
    support = np.full((len(points), len(slots)), -1, np.int64)
    for _ in range(_REFINE_ROUNDS):
        dist = np.where(valid, _all_ray_distances(points, origins, dirs)[:, slots], np.inf)  # (H, K, D)
        nearest = np.argmin(dist, axis=2)
        used = np.take_along_axis(dist, nearest[..., None], 2)[..., 0] <= max_residual_mm
        support = np.where(used, slots[np.arange(len(slots)), nearest], -1)
        fitted = intersect_rays(origins[support], dirs[support], used.astype(np.float64))
        ok = np.isfinite(fitted).all(axis=1)
        support, first = np.unique(support[ok], axis=0, return_index=True)
        points = fitted[ok][first]
    return points, support


def _fit_quality(
    points: np.ndarray, support: np.ndarray, origins: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Views used (H,) int64 and RMS ray distance (H,) mm of hypotheses (H, 3) with support (H, K)."""
    used = support >= 0
    dist = ray_distance(points[:, None], origins[support], dirs[support])
    n_used = used.sum(axis=1)
    rms = np.sqrt(np.where(used, dist**2, 0.0).sum(axis=1) / np.maximum(n_used, 1))
    return n_used, rms


def _select(
    points: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    slots: np.ndarray,
    min_views: int,
    max_residual_mm: float,
    min_separation_mm: float,
) -> list[tuple[np.ndarray, np.ndarray, float, int]]:
    """Greedy choice of vertebrae among hypotheses (H, 3) mm: (point (3,), support (K,), RMS mm, views) each."""
    available = np.ones(len(origins), bool)
    points, support = _refine(points, origins, dirs, slots, available, max_residual_mm)
    accepted = []
    while len(points):
        n_used, rms = _fit_quality(points, support, origins, dirs)
        best = np.lexsort((rms, -n_used))[0]
        if n_used[best] < min_views:
            break
        accepted.append((points[best], support[best], float(rms[best]), int(n_used[best])))
        taken = support[best][support[best] >= 0]
        available[taken] = False
        far = np.linalg.norm(points - points[best], axis=1) > min_separation_mm
        points, support = points[far], support[far]
        # only hypotheses that used a detection just taken can change
        touched = np.isin(support, taken).any(axis=1)
        refit, refit_support = _refine(points[touched], origins, dirs, slots, available, max_residual_mm)
        points = np.concatenate([points[~touched], refit])
        support = np.concatenate([support[~touched], refit_support])
    return accepted


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
    origins, dirs = detection_rays(peaks, views)
    points = _pair_hypotheses(
        peaks.view, origins, dirs, views.angles_deg, o.min_pair_angle_deg, o.max_residual_mm
    )
    slots = _slots_by_view(peaks.view, k)
    accepted = _select(points, origins, dirs, slots, o.min_views, o.max_residual_mm, o.min_separation_mm)
    if not accepted:
        return _empty_fused(k)
    pts, sup, res, nv = (np.array(x) for x in zip(*accepted))
    order = order_along_spine(pts)
    order = order[on_spine(pts[order], o.max_off_spine_mm)]
    order = order[distinct_vertebrae(pts[order], nv[order], res[order], o.max_duplicate_gap)]
    return Fused(pts[order], res[order], nv[order].astype(np.int64), sup[order].astype(np.int64))


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
        gaps = np.linalg.norm(np.diff(p, axis=0), axis=1)
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


def relative_gaps(points_lps: np.ndarray) -> np.ndarray:
    """(n - 1,) each chain gap of points (n, 3) mm over the median of up to `_GAP_WINDOW` gaps on each side.

    The gap itself is left out of its median; NaN for chains under 4 points, where a local gap
    would rest on fewer than two other gaps.
    """
    gaps = np.linalg.norm(np.diff(np.asarray(points_lps, dtype=np.float64), axis=0), axis=1)
    if len(gaps) < 3:
        return np.full(len(gaps), np.nan)
    offsets = np.r_[-_GAP_WINDOW:0, 1 : _GAP_WINDOW + 1]
    idx = np.arange(len(gaps))[:, None] + offsets
    around = np.where((idx >= 0) & (idx < len(gaps)), gaps[np.clip(idx, 0, len(gaps) - 1)], np.nan)
    return gaps / np.nanmedian(around, axis=1)


def distinct_vertebrae(
    points_lps: np.ndarray, n_views: np.ndarray, residual_mm: np.ndarray, max_gap: float
) -> np.ndarray:
    """(n,) bool: False for the weaker of chain neighbours closer than `max_gap` x the local gap.

    Points (n, 3) mm are in chain order; consecutive vertebral bodies are a body height plus a
    disc apart, which changes slowly along the spine, so two points at under half the gaps around
    them are one vertebra. The pair closest relative to its surroundings goes first, losing the
    point seen in fewer views (then the one with the larger residual); gaps are measured again
    after each removal. Chains under 4 points stay whole (a local gap needs two other gaps).
    """
    p = np.asarray(points_lps, dtype=np.float64)
    keep = np.ones(len(p), bool)
    while keep.sum() >= 4:
        idx = np.flatnonzero(keep)
        ratio = relative_gaps(p[idx])
        k = int(np.argmin(ratio))
        if ratio[k] >= max_gap:
            break
        a, b = idx[k], idx[k + 1]
        weaker = a if (n_views[a], -residual_mm[a]) < (n_views[b], -residual_mm[b]) else b
        keep[weaker] = False
    return keep
