"""The labelling stage: peaks in the heatmaps, and labels for the fused points (paper Sec. 2.3-2.4).

`peaks_of` finds each view's 2D vertebra centroids; `label` votes every fused point's class
probabilities over the views (a square around its projection) and decodes the sequence with the
DP; `one_per_label` keeps one point per label. Settings come from `options.PipelineOptions`.
"""

from __future__ import annotations

import numpy as np

from .boxes import box_means, square_half_px
from .fusion import Fused, relative_gaps
from .geometry import Views, pixel_mm_at_depth, project
from .options import DEFAULT_OPTIONS, PipelineOptions
from .peaks import Peaks, find_peaks
from .ribs import likelihood
from .sequence import identify


def peaks_of(heatmaps: np.ndarray, views: Views, threshold: float, options: PipelineOptions = DEFAULT_OPTIONS) -> Peaks:
    """2D vertebra centroids in every view from localization heatmaps (K, H, W).

    Peaks closer than `options.min_peak_distance_mm` at the isocentre are one vertebra.
    """
    iso_depth = np.linalg.norm(views.sources - views.center_lps, axis=1)
    iso_px_mm = float(pixel_mm_at_depth(views, iso_depth).mean())
    return find_peaks(heatmaps, threshold=threshold, min_distance_px=options.min_peak_distance_mm / iso_px_mm)


def may_be_one_vertebra(fused: Fused, n_views: int, options: PipelineOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(n - 1,) bool: may fused rows i, i + 1 be one vertebra found twice (the DP's "same" step)?

    Not when both were found in at least a `options.solid_views` fraction of the `n_views` views
    (fusion never lets two points share a detection, and `fusion.distinct_vertebrae` has already
    merged points closer than half the local gap), nor when both were found in `seen_views` and
    lie a full vertebral gap apart (`full_gap` x the gaps around them). A point seen in fewer
    views may be a stray blob (dental metal above C1), which the DP must stay free to absorb.
    Without this the DP can read a real vertebra as a duplicate to keep the anatomical count of a
    normal spine, which shifts every label on one side of a T13 or L6 by one.
    """
    solid = fused.n_views >= options.solid_views * n_views
    seen = fused.n_views >= options.seen_views * n_views
    full = relative_gaps(fused.points_lps) >= options.full_gap  # NaN (False) on chains too short to tell
    return ~((solid[1:] & solid[:-1]) | (full & seen[1:] & seen[:-1]))


def label(
    fused: Fused,
    views: Views,
    prob: np.ndarray,
    classes: tuple[int, ...],
    options: PipelineOptions = DEFAULT_OPTIONS,
    rib_sides: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and confidences (n,) by per-view square means, sequence-weighted vote and DP decode.

    `rib_sides` (n, 2), what `ribs.rib_sides` found at each fused point, weighs in the decode.
    """
    rc, depth = project(views, fused.points_lps)
    half_px = square_half_px(pixel_mm_at_depth(views, depth), options.id_square_mm)
    p, valid = box_means(prob[:, 1:], rc, half_px)
    # each row's class distribution, background left out
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-9)
    evidence = None if rib_sides is None else likelihood(rib_sides, classes, options.ribs)
    return identify(p, classes, valid=valid, same_ok=may_be_one_vertebra(fused, views.n_views, options),
                    evidence=evidence)


def one_per_label(labels: np.ndarray, fused: Fused) -> np.ndarray:
    """Row indices (cranial -> caudal) keeping one row per label: the best-supported one.

    Consecutive rows share a label only through the DP's "same" step, which reads the second row
    as a duplicate detection of the same vertebra (Eq. 1): keep the row seen in the most views,
    then with the smaller residual.
    """
    order = np.lexsort((fused.residual_mm, -fused.n_views, labels))
    keep = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    return np.sort(keep)

