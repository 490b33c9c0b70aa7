"""A vertebra the nets missed just beyond either end of the labelled chain, or between two of its
vertebrae, read from the CT.

At the ends of a scan's spine the localization net is weakest: under the shoulders of the real
chest CT the heatmaps show no peak of C7's own in most views, and which view start finds it decides
whether it is labelled (benchmarks/RESULTS.md). The scan shows the body all the same. The column
goes on past the last point the nets found: one gap beyond it (the continuation of the last two
points, from the end's own body), where the scan holds that vertebra's whole body, its body is read
as `body.body_centres` reads one (the centre of mirror symmetry along the spine with a smooth
middle, then the cross-section in front of the canal). The end's own body is read the same way
first: `body_centres` moves a point by its neighbours' readings, at the end all on one side of it,
and on the chest CT on 3-5 mm slices the T1 that ends the chain stays 8-9 mm above its body, so
that the continuation from it overshoots C7 and the last gap looks 1.3-1.4 times the one before
(where the end's own body is not read, the end point stands). A vertebra is added there only where
all of this holds:

- the chain's last two gaps, the end's from its own body, are regular (within
  `BodyOptions.regular_ratio` of each other: a missed or stray level at the end would put the
  continuation between two vertebrae);
- a clear centre of symmetry lies within `search_gaps` of the continuation, and the body found
  there lies `1 +- beyond_gap_tolerance` gaps from the end's body (not that body again);
- the scan holds the body `beyond_inside_gaps` either side of its centre along the spine (a body
  the scan's edge cuts is not added: its centroid would not be the body's);
- its middle (`middle_gaps` either side) is bone: brighter than soft tissue by
  `min_bone_contrast_hu` (not a disc, nor the air beyond the neck).

Its label is the end's anatomical neighbour without the variants (C7 above T1, L1 below T12): the
nets never read it, so it is always flagged `needs_review`. Nothing is added above C3 (C1 has no
body, C2's dens breaks its symmetry) or below L5 (the sacrum follows).

The top vertebra the nets did find is read the same way, from the chain below it: where its
point lies more than `top_off_gaps` of a gap from the body one gap beyond the next vertebra's own
body, it moves onto that body. The chest CT's C7 under a spine-centred field of view (180 mm) sat
on C6, 17 mm from its centroid, in the run the consensus keeps (the runs' C7s 18 mm apart along
the spine); the body the chain continues to lies 4 mm from it. Only the top is read so: at the
bottom the lumbar CT's L5 lies on the sacrum, where its own body's reading is 8 mm off on average
(benchmarks/RESULTS.md, stop 47).

Inside the chain a missed vertebra leaves a gap along the spine twice the ones around it
(`double_gap`), and the decode, which cannot see it, names every vertebra on one side of it a
level off (phantom 3220's T5: T6-T13 named T5-T12). Between two decoded vertebrae at their bodies
with such a gap, the two gaps beside it regular, or one regular and the other short (a vertebra
seen twice or a stray point next to the gap: the chest CT on 5 mm slices, a 48 mm gap below a
14 mm pair; a long gap beside it would leave the points around it in doubt), the body is read
near their midpoint as above (half their distance the local gap; where the reading along the
spine is unclear the midpoint stands), and must lie `1 +- beyond_gap_tolerance` half-gaps from
both and have a bone middle inside the scan: brighter than soft tissue by `min_bone_contrast_hu`,
or by half the contrast of the dimmer of the two bodies beside it where that is less
(`between_beside_contrast`). An osteoporotic spine's cancellous bone is barely brighter than
muscle, in phantoms (fresh phantom 3512, its bodies' middles 50-56 HU: T7 missed between T6 and
T8, its own middle 56 HU, and T6 named T7) as in patients (the `tptbox_l3` crop's L3, 64 HU at
its centroid); a spine whose bodies are bright keeps the first floor. Before that, two decoded
vertebrae whose points the CT puts on one body (under `BodyOptions.same_body_gap` of the local
gap apart along the spine) are one vertebra seen twice, and the weaker leaves the chain
(`fusion.distinct_vertebrae`): the gap left may be a missed vertebra's (the chest CT's C7 found
twice above a T1 the nets missed). The pipeline then decodes the chain again, the identification
net's vote read at a body read from the CT like at any other point (`pipeline.Labeler`); found in
no view, it is flagged too.

Points are world LPS mm in chain order (cranial -> caudal).
"""

from __future__ import annotations

import numpy as np

from .body import NO_BODY, axial_profile, offset_at, section_centre
from .fusion import relative_to_neighbours
from .labelling import spine_gaps
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


def middle_hu(volume: Volume, centre: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray], gap_mm: float,
              options: BodyOptions = DEFAULT_OPTIONS.body) -> float:
    """Median HU of the middle (`middle_gaps` either side along the frame's axis) of the body centred at
    `centre` (3,) LPS, `gap_mm` the local gap; NaN where the scan cuts the body (`beyond_inside_gaps`
    either side of it)."""
    o = options
    along_gaps = np.linspace(-1, 1, 17) * o.beyond_inside_gaps
    whole = axial_profile(volume, centre, frame, along_gaps * gap_mm, o.radius_gaps * gap_mm)
    if not np.isfinite(whole).all():
        return float("nan")
    return float(np.median(whole[np.abs(along_gaps) <= o.middle_gaps]))


def body_near(volume: Volume, guess: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray], gap_mm: float,
              options: BodyOptions = DEFAULT_OPTIONS.body, keep_guess: bool = False,
              contrast_hu: float | None = None) -> np.ndarray | None:
    """World LPS mm (3,): the body whose centre lies near `guess` (3,) LPS, read as `body.body_centres`
    reads one (along the frame's axis, then across it; `frame` = (axis, lateral, posterior) unit
    vectors, `gap_mm` the local gap); None where the scan cuts the body (`middle_hu`), its middle is
    not bone (`contrast_hu`, by default `min_bone_contrast_hu`, over soft tissue: a disc, the air
    beyond the neck) or no clear centre of symmetry lies within `search_gaps` (then, with
    `keep_guess`, the guess's place along the spine is kept)."""
    o = options
    axis, lateral, posterior = frame
    offset = offset_at(volume, guess, frame, gap_mm, o)
    if not np.isfinite(offset):
        if not keep_guess:
            return None
        offset = 0.0
    centre = guess + offset * gap_mm * axis
    lat, post = section_centre(volume, centre, frame, gap_mm, o)
    centre = centre + lat * lateral + post * posterior
    least = o.min_bone_contrast_hu if contrast_hu is None else contrast_hu
    return centre if middle_hu(volume, centre, frame, gap_mm, o) - o.soft_tissue_hu >= least else None  # NaN: None


def body_beyond(volume: Volume, points_lps: np.ndarray, cranial: bool,
                options: BodyOptions = DEFAULT_OPTIONS.body) -> np.ndarray | None:
    """World LPS mm (3,): the body one gap beyond the top (`cranial`) or bottom end of the chain
    `points_lps` (n, 3), or None where the module docstring's conditions do not all hold."""
    o = options
    p = np.asarray(points_lps, dtype=np.float64)
    if len(p) < 3:
        return None
    end, before, second = (0, 1, 2) if cranial else (-1, -2, -3)
    axis, lateral, posterior, _ = chain_frames(p)
    frame = (axis[end], lateral[end], posterior[end])
    # the end's own body first: its neighbours' readings, all on one side, may leave it off it
    own = body_near(volume, p[end], frame, float(np.linalg.norm(p[end] - p[before])), o)
    last = p[end] if own is None else own
    gap = float(np.linalg.norm(last - p[before]))
    ratio = gap / float(np.linalg.norm(p[before] - p[second]))
    if not 1 / o.regular_ratio <= ratio <= o.regular_ratio:
        return None
    centre = body_near(volume, 2 * last - p[before], frame, gap, o)
    if centre is None or abs(np.linalg.norm(centre - last) / gap - 1) > o.beyond_gap_tolerance:
        return None
    return centre


def _between_contrast(volume: Volume, beside_lps: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray],
                      gap_mm: float, options: BodyOptions) -> float:
    """HU over soft tissue by which the middle of a body between the two bodies `beside_lps` (2, 3) LPS
    must be bone (`BodyOptions.between_beside_contrast`): at most `min_bone_contrast_hu`, less in a
    spine whose own bodies are barely brighter than muscle, never below soft tissue itself."""
    o = options
    if o.between_beside_contrast is None:
        return o.min_bone_contrast_hu
    middles = np.array([middle_hu(volume, q, frame, gap_mm, o) for q in beside_lps])
    if not np.isfinite(middles).any():  # both cut by the scan's edge: nothing to compare with
        return o.min_bone_contrast_hu
    own = o.between_beside_contrast * (float(np.nanmin(middles)) - o.soft_tissue_hu)
    return float(np.clip(own, 0.0, o.min_bone_contrast_hu))


def bodies_between(volume: Volume, points_lps: np.ndarray, options: BodyOptions = DEFAULT_OPTIONS.body,
                   read: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A body the nets missed between two points of the chain `points_lps` (n, 3) world LPS mm, at
    the bodies (`body.body_centres`): where a gap along the spine is `double_gap` times the gaps
    around it (`fusion.relative_to_neighbours`) and the two beside it are regular (within
    `regular_ratio` of the gaps around them), or one regular and the other short (under
    `1 / regular_ratio`; at the chain's end the one gap beside it regular), the body read near
    its middle (`body_near`, half the gap as the local gap) that lies
    `1 +- beyond_gap_tolerance` half-gaps from both points, its middle bone (`_between_contrast`),
    both points `read` (n,) bool (all by default; C1 has no body and C2's dens breaks the symmetry:
    no gap beside them is judged).
    Returns the gaps' indices (m,) (the body lies between points i and i + 1) and the bodies (m, 3)
    world LPS mm."""
    o = options
    p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    none = (np.zeros(0, int), np.zeros((0, 3)))
    if not (o.enabled and o.between) or len(p) < 4:
        return none
    rel = relative_to_neighbours(spine_gaps(p))
    lo, hi = o.double_gap
    regular = (rel >= 1 / o.regular_ratio) & (rel <= o.regular_ratio)
    short = rel < 1 / o.regular_ratio
    # the gaps on either side of each gap (none beyond the chain's ends)
    left, right = np.r_[False, regular[:-1]], np.r_[regular[1:], False]
    left_short, right_short = np.r_[False, short[:-1]], np.r_[short[1:], False]
    first, last = np.arange(len(rel)) == 0, np.arange(len(rel)) == len(rel) - 1
    beside = (left | first) & (right | last) | left_short & right | left & right_short
    if read is not None:
        beside &= read[:-1] & read[1:]
    axis, lateral, posterior, _ = chain_frames(p)
    found, bodies = [], []
    for i in np.flatnonzero((rel >= lo) & (rel <= hi) & beside):
        step = p[i + 1] - p[i]
        half = float(np.linalg.norm(step)) / 2
        along = step / (2 * half)
        side = lateral[i] - (lateral[i] @ along) * along
        side /= np.linalg.norm(side)
        back = posterior[i] - (posterior[i] @ along) * along - (posterior[i] @ side) * side
        back /= np.linalg.norm(back)
        frame = (along, side, back)
        # the midpoint of two bodies is the missed one's centre to a few mm where its own reading is unclear
        centre = body_near(volume, p[i] + step / 2, frame, half, o, keep_guess=True,
                           contrast_hu=_between_contrast(volume, p[i : i + 2], frame, half, o))
        if centre is None:
            continue
        if all(abs(np.linalg.norm(centre - q) / half - 1) <= o.beyond_gap_tolerance for q in (p[i], p[i + 1])):
            found.append(i)
            bodies.append(centre)
    return (np.array(found, int), np.array(bodies)) if found else none


def beyond_ends(volume: Volume, points_lps: np.ndarray, labels: np.ndarray,
                options: BodyOptions = DEFAULT_OPTIONS.body) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled chain (points (n, 3) world LPS mm, VerSe labels (n,), cranial -> caudal) with a
    vertebra added at either end where the CT shows one the nets missed (`body_beyond`): (points,
    labels, added (m,) bool), still in chain order. First the top vertebra's point, where it lies
    more than `top_off_gaps` of a gap from the body the chain below it continues to (`body_beyond`
    of the chain without it), moves onto that body (module docstring)."""
    p = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
    lab = np.asarray(labels, dtype=int)
    if not (options.enabled and options.beyond_ends) or len(p) < 3:
        return p, lab, np.zeros(len(p), bool)
    top, bottom = neighbour_label(lab[0], cranial=True), neighbour_label(lab[-1], cranial=False)
    if len(p) >= 4 and lab[0] not in NO_BODY:
        below_top = body_beyond(volume, p[1:], cranial=True, options=options)
        if below_top is not None and (np.linalg.norm(p[0] - below_top)
                                      > options.top_off_gaps * np.linalg.norm(below_top - p[1])):
            p = np.vstack([below_top, p[1:]])
    above = body_beyond(volume, p, cranial=True, options=options) if top is not None else None
    below = body_beyond(volume, p, cranial=False, options=options) if bottom is not None else None
    added = np.zeros(len(p), bool)
    if above is not None:
        p, lab, added = np.vstack([above, p]), np.r_[top, lab], np.r_[True, added]
    if below is not None:
        p, lab, added = np.vstack([p, below]), np.r_[lab, bottom], np.r_[added, True]
    return p, lab, added
