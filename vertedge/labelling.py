"""The labelling stage: peaks in the heatmaps, and labels for the fused points (paper Sec. 2.3-2.4).

`peaks_of` finds each view's 2D vertebra centroids; `view_votes` reads every fused point's class
probabilities in every view (a square around its projection); `label` votes them over the views
and decodes the sequence with the DP; `one_per_label` keeps one point per label. Settings come
from `options.PipelineOptions`.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from .boxes import box_means, square_half_px
from .fusion import Fused, relative_to_neighbours
from .geometry import Views, pixel_mm_at_depth, project
from .labels import LABELS, region
from .options import DEFAULT_OPTIONS, PipelineOptions
from .peaks import Peaks, find_peaks
from .ribs import chain_frames, junction_classes, likelihood, rib_bearing_classes
from .sacrum import last_lumbar_classes, last_lumbar_likelihood
from .sequence import identify, vote

_T13 = LABELS["T13"]


def peaks_of(heatmaps: np.ndarray, views: Views, threshold: float, options: PipelineOptions = DEFAULT_OPTIONS) -> Peaks:
    """2D vertebra centroids in every view from localization heatmaps (K, H, W).

    Peaks closer than `options.min_peak_distance_mm` at the isocentre are one vertebra.
    """
    iso_depth = np.linalg.norm(views.sources - views.center_lps, axis=1)
    iso_px_mm = float(pixel_mm_at_depth(views, iso_depth).mean())
    return find_peaks(heatmaps, threshold=threshold, min_distance_px=options.min_peak_distance_mm / iso_px_mm)


def well_seen(fused: Fused, n_views: int, options: PipelineOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(n,) bool: fused points found in at least `options.seen_views` of the `n_views` views (fewer,
    and a point may be a stray blob or a second detection of a vertebra)."""
    return fused.n_views >= options.seen_views * n_views


def solidly_seen(fused: Fused, n_views: int, options: PipelineOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(n,) bool: fused points found in at least `options.solid_views` of the `n_views` views, each
    surely a vertebra of its own (two such points are never one vertebra found twice)."""
    return fused.n_views >= options.solid_views * n_views


def spine_gaps(points_lps: np.ndarray) -> np.ndarray:
    """(n - 1,) mm: each chain gap of points (n >= 2, 3) mm along the spine (the mean of the two
    points' `ribs.chain_frames` axes, two rows each way so that one point off the line does not
    turn it), not across it."""
    p = np.asarray(points_lps, dtype=np.float64)
    axis = chain_frames(p, reach=2)[0]
    mid = axis[1:] + axis[:-1]
    mid /= np.linalg.norm(mid, axis=1, keepdims=True)
    return np.abs((np.diff(p, axis=0) * mid).sum(axis=1))


def may_be_one_vertebra(fused: Fused, n_views: int, options: PipelineOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(n - 1,) bool: may fused rows i, i + 1 be one vertebra found twice (the DP's "same" step)?

    Not when both were found in at least a `options.solid_views` fraction of the `n_views` views
    (fusion never lets two points share a detection, and `fusion.distinct_vertebrae` has already
    merged points closer than half the local gap), nor when both were found in `seen_views` and
    lie a full vertebral gap apart (`full_gap` x the gaps around them), nor, however few views
    found them, when they are a step of the spine's rhythm: their gap and the gaps on either side
    regular (`review.regular_gap`), and neither side's gap together with theirs as short as one
    regular step (what a second detection inside a step leaves: phantom 502's T1 found twice, two
    gaps of 0.65 and 0.63 where one belongs). On real chests most points are found in 3-6 of 10
    views, and the DP joined a weak T10 to T9 there, and T2 to T3 at the top of the chest, where
    the upper thoracic vertebrae are shorter than the ones below them and a step is 0.8 of the
    gaps the chain's end is measured against. Gaps are measured along the spine (`spine_gaps`): a
    point the views fused beside a vertebra, not below it, lies a gap away in 3D but none along
    the spine (phantom 749's pairs). A point off the rhythm (dental metal above C1, an end of the
    chain) stays free to be absorbed. Without this the DP can read a real vertebra as a duplicate
    to keep the anatomical count of a normal spine, which shifts every label on one side of a T13
    or L6 by one.
    """
    if len(fused) < 2:
        return np.zeros(0, dtype=bool)
    solid = solidly_seen(fused, n_views, options)
    seen = well_seen(fused, n_views, options)
    along = relative_to_neighbours(spine_gaps(fused.points_lps))  # NaN (False below) on chains too short to tell
    lo, hi = options.review.regular_gap
    regular = (along >= lo) & (along <= hi)
    in_rhythm = np.zeros(len(along), dtype=bool)
    in_rhythm[1:-1] = regular[:-2] & regular[2:]
    # a point inside one step splits it into two gaps that together make one regular step
    one_step = along[:-1] + along[1:] <= hi
    split = np.zeros(len(along), dtype=bool)
    split[:-1] |= one_step
    split[1:] |= one_step
    full = along >= options.full_gap
    step = regular & in_rhythm & ~split
    return ~((solid[1:] & solid[:-1]) | (full & seen[1:] & seen[:-1]) | step)


def may_skip_one(fused: Fused, options: PipelineOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(n - 1,) bool: may a vertebra the views missed lie between fused rows i, i + 1 (the DP's
    "skip one" step)?

    Only where their gap along the spine (`spine_gaps`) is longer than a regular one
    (`review.regular_gap`, against the gaps around it): a missed vertebra leaves twice the gap, and
    a column has no vertebra missing. Across a regular gap a skip only follows a net that reads the
    rows below a level off: on the real lumbar CT cropped to its upper half (one view start) the
    ribs named its top T12 and the decode skipped L1 to keep the net's L2-L5 on L1-L4, an order no
    spine has; without the skip it reads L1-L5, still a level off and flagged, but a spine. Chains
    too short to tell (under 3 gaps) may skip anywhere.
    """
    if len(fused) < 2:
        return np.zeros(0, dtype=bool)
    along = relative_to_neighbours(spine_gaps(fused.points_lps))
    return ~(along <= options.review.regular_gap[1])


def may_be_one_across(fused: Fused, n_views: int, options: PipelineOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """(n - 2,) bool: may fused rows i and i + 2 be one vertebra, joined through the row between by
    two "same" steps?

    Not when both were found in at least a `options.solid_views` fraction of the views, as for
    neighbours (`may_be_one_vertebra`): a weak row between two solid ones (a vertebra found twice,
    the second point half a gap below it) may join either, not both. Joining both merged phantom
    3204's T2 and T3 into one and left its T13 unnamed.
    """
    solid = solidly_seen(fused, n_views, options)
    return ~(solid[:-2] & solid[2:])


def view_votes(fused: Fused, views: Views, prob: np.ndarray, options: PipelineOptions = DEFAULT_OPTIONS
               ) -> tuple[np.ndarray, np.ndarray]:
    """Every view's class distribution at every fused point: the mean of the identification net's
    probabilities (K, 1 + c, H, W) over a square around the point's projection, background left out
    and renormalised; (K, n, c), and (K, n) bool where the square lies in the view."""
    rc, depth = project(views, fused.points_lps)
    half_px = square_half_px(pixel_mm_at_depth(views, depth), options.id_square_mm)
    p, valid = box_means(prob[:, 1:], rc, half_px)
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-9)
    return p, valid


def net_reads(per_view: tuple[np.ndarray, np.ndarray], classes: tuple[int, ...]) -> np.ndarray:
    """(n,) VerSe labels: the class the views' vote (`view_votes`, Eq. 6) gives most at each fused
    point, before any evidence from the CT or the decode."""
    return np.asarray(classes)[vote(per_view[0], classes, valid=per_view[1])[0].argmax(axis=1)]


def label(
    fused: Fused,
    per_view: tuple[np.ndarray, np.ndarray],
    n_views: int,
    classes: tuple[int, ...],
    options: PipelineOptions = DEFAULT_OPTIONS,
    rib_sides: np.ndarray | None = None,
    above_sacrum: bool = False,
    sacrum_seen: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and confidences (n,) by sequence-weighted vote of `per_view` (`view_votes`) over
    the `n_views` views and DP decode.

    `rib_sides` (n, 2), what `ribs.rib_sides` found at each fused point, weighs in the decode, and
    so does `above_sacrum`: the last point lies directly above the sacrum (`sacrum.sacral_start`);
    where no point bears ribs, the sacrum is the only count and names that point L5
    (`sacrum.last_lumbar_classes`, `SacrumOptions.count`).
    The last rib is a count too, and the decode names the thoracolumbar junction by it
    (`ribs.junction_classes`, `RibOptions.junction`: where the net reads the vertebra below it
    within a level of L1, `net_reads`): on real crops the net reads the vertebrae
    below it a level off as a whole (the lumbar CT's upper half: L1-L5 on T12-L4), and the DP,
    summing rows, lets their votes outweigh any one row's ribs. With the sacrum in view too
    (`sacrum_seen`: above or below the chain) the two counts meet: the ribless vertebrae between
    the last rib and the sacrum are the lumbar ones, as a reader counts them where C1 is not in
    view, where the net reads an L6 spine as a normal one a level high (fresh phantom 754); only
    where they number five or six (`RibOptions.lumbar_counts`): three or four ribless rows there
    are a vertebra the nets missed, or a rib the probe read beside L1. A spine with a variant is
    what neither count can tell from a T12 without ribs: the junction chooses labels, not
    confidences, so labels it sets against the net keep the net's low confidences and are
    flagged, and no count from an end crosses it (`anchors`).
    A point with ribs found on both sides is named no cervical class and no lumbar one above L5
    (`ribs.rib_bearing_classes`, `RibOptions.bearing`), with whichever count applies.
    A T13 is named only where the decode names a cervical vertebra too, as only a count from
    above can tell it from T12 (`PipelineOptions.t13_from_above`; else the chain is decoded again
    without it).
    The decode joins two rows as one vertebra only where `may_be_one_vertebra` and
    `may_be_one_across` allow it, and skips a label between them only where `may_skip_one` does.
    """
    p, valid = per_view
    evidence = np.ones((len(fused), len(classes)))
    if above_sacrum:
        evidence *= last_lumbar_likelihood(len(fused), classes, options.sacrum)
    allowed = None  # the counts from outside the views (the sacrum's, the last rib's) and the ribs' own rule
    if rib_sides is not None:
        evidence *= likelihood(rib_sides, classes, options.ribs)
        if above_sacrum and options.sacrum.count:
            allowed = last_lumbar_classes(rib_sides, classes)
        if options.ribs.junction:
            junction = junction_classes(rib_sides, net_reads(per_view, classes), classes, options.ribs,
                                        sacrum_below=sacrum_seen or above_sacrum,
                                        seen=well_seen(fused, n_views, options))
            allowed = junction if allowed is None else allowed & junction
        if options.ribs.bearing:
            bearing = rib_bearing_classes(rib_sides, classes)
            allowed = bearing if allowed is None else allowed & bearing
    decode = partial(identify, p, classes, valid=valid, same_ok=may_be_one_vertebra(fused, n_views, options),
                     evidence=evidence, floor=options.label_floor,
                     same_twice_ok=may_be_one_across(fused, n_views, options), skip_ok=may_skip_one(fused, options))
    labels, confidence = decode(allowed=allowed)
    if options.t13_from_above and _T13 in labels and not any(region(c) == "cervical" for c in labels):
        # a thirteenth rib-bearing vertebra is counted from above: without the cervical spine in the
        # chain nothing tells it from T12, and the net reads a thoracic crop a level low as a whole
        # (fresh phantom 3322: T1-T12 named T2-T13)
        no_t13 = np.asarray(classes) != _T13
        labels, confidence = decode(allowed=no_t13 & (np.ones(evidence.shape, bool) if allowed is None else allowed))
    return labels, confidence


def one_per_label(labels: np.ndarray, fused: Fused) -> np.ndarray:
    """Row indices (cranial -> caudal) keeping one row per label: the best-supported one.

    Consecutive rows share a label only through the DP's "same" step, which reads the second row
    as a duplicate detection of the same vertebra (Eq. 1): keep the row seen in the most views,
    then with the smaller residual.
    """
    order = np.lexsort((fused.residual_mm, -fused.n_views, labels))
    keep = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    return np.sort(keep)

