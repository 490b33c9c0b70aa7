"""A vertebra the nets missed just beyond either end of the labelled chain, read from the CT.

At the ends of a scan's spine the localization net is weakest: under the shoulders of the real
chest CT the heatmaps show no peak of C7's own in most views, and which view start finds it decides
whether it is labelled (benchmarks/RESULTS.md). The scan shows the body all the same. The column
goes on past the last point the nets found: one gap beyond it (the continuation of the last two
points), where the scan holds that vertebra's whole body, its body is read as `body.body_centres`
reads one (the centre of mirror symmetry along the spine with a smooth middle, then the
cross-section in front of the canal). A vertebra is added there only where all of this holds:

- the chain's last two gaps are regular (within `BodyOptions.regular_ratio` of each other: a
  missed or stray level at the end would put the continuation between two vertebrae);
- a clear centre of symmetry lies within `search_gaps` of the continuation, and the body found
  there lies `1 +- beyond_gap_tolerance` gaps from the end point (not the end's own body again);
- the scan holds the body `beyond_inside_gaps` either side of its centre along the spine (a body
  the scan's edge cuts is not added: its centroid would not be the body's);
- its middle (`middle_gaps` either side) is bone: brighter than soft tissue by
  `min_bone_contrast_hu` (not a disc, nor the air beyond the neck).

Its label is the end's anatomical neighbour without the variants (C7 above T1, L1 below T12): the
nets never read it, so it is always flagged `needs_review`. Nothing is added above C3 (C1 has no
body, C2's dens breaks its symmetry) or below L5 (the sacrum follows). Points are world LPS mm in
chain order (cranial -> caudal).
"""

from __future__ import annotations

import numpy as np

from .body import NO_BODY, axial_profile, offset_at, section_centre
from .labels import OPTIONAL, SPINE_ORDER, successors
from .options import DEFAULT_OPTIONS, BodyOptions
from .ribs import chain_frames
from .volume import Volume


def neighbour_label(label: int, cranial: bool) -> int | None:
    """The anatomical neighbour of a VerSe `label` above (`cranial`) or below it in a spine without
    T13 or L6; None past C1 or L5 (or L6), and for C1/C2, whose bodies are not read."""
    if cranial:
        found = [a for a in SPINE_ORDER if a not in OPTIONAL and int(label) in successors(a)]
    else:
        found = [b for b in successors(label) if b not in OPTIONAL]
    return found[0] if found and found[0] not in NO_BODY else None


def body_beyond(volume: Volume, points_lps: np.ndarray, cranial: bool,
                options: BodyOptions = DEFAULT_OPTIONS.body) -> np.ndarray | None:
    """World LPS mm (3,): the body one gap beyond the top (`cranial`) or bottom end of the chain
    `points_lps` (n, 3), or None where the module docstring's conditions do not all hold."""
    o = options
    p = np.asarray(points_lps, dtype=np.float64)
    if len(p) < 3:
        return None
    end, before, second = (0, 1, 2) if cranial else (-1, -2, -3)
    gap = float(np.linalg.norm(p[end] - p[before]))
    ratio = gap / float(np.linalg.norm(p[before] - p[second]))
    if not 1 / o.regular_ratio <= ratio <= o.regular_ratio:
        return None
    axis, lateral, posterior, _ = chain_frames(p)
    frame = (axis[end], lateral[end], posterior[end])
    guess = 2 * p[end] - p[before]
    offset = offset_at(volume, guess, frame, gap, o)
    if not np.isfinite(offset):
        return None
    centre = guess + offset * gap * axis[end]
    lat, post = section_centre(volume, centre, frame, gap, o)
    centre = centre + lat * lateral[end] + post * posterior[end]
    if abs(np.linalg.norm(centre - p[end]) / gap - 1) > o.beyond_gap_tolerance:
        return None
    along_gaps = np.linspace(-1, 1, 17) * o.beyond_inside_gaps
    whole = axial_profile(volume, centre, frame, along_gaps * gap, o.radius_gaps * gap)
    if not np.isfinite(whole).all():
        return None
    middle = np.median(whole[np.abs(along_gaps) <= o.middle_gaps])
    return centre if middle - o.soft_tissue_hu >= o.min_bone_contrast_hu else None


def beyond_ends(volume: Volume, points_lps: np.ndarray, labels: np.ndarray,
                options: BodyOptions = DEFAULT_OPTIONS.body) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled chain (points (n, 3) world LPS mm, VerSe labels (n,), cranial -> caudal) with a
    vertebra added at either end where the CT shows one the nets missed (`body_beyond`): (points,
    labels, added (m,) bool), still in chain order."""
    p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    lab = np.asarray(labels, dtype=int)
    if not (options.enabled and options.beyond_ends) or len(p) < 3:
        return p, lab, np.zeros(len(p), bool)
    top, bottom = neighbour_label(lab[0], cranial=True), neighbour_label(lab[-1], cranial=False)
    above = body_beyond(volume, p, cranial=True, options=options) if top is not None else None
    below = body_beyond(volume, p, cranial=False, options=options) if bottom is not None else None
    added = np.zeros(len(p), bool)
    if above is not None:
        p, lab, added = np.vstack([above, p]), np.r_[top, lab], np.r_[True, added]
    if below is not None:
        p, lab, added = np.vstack([p, below]), np.r_[lab, bottom], np.r_[added, True]
    return p, lab, added
