"""Counting from the ends of the spine: which labels the scan itself supports.

The identification net names a level from the look of a vertebra and its neighbours. On a scan
that shows nothing to count from (a crop with neither end of the column in view) that look is
all there is, and on real scans it is often a level or more off at a confidence of 0.9. A reader
counts instead: down from C1 under the skull, or up from the last lumbar vertebra on the sacrum.
This module finds those ends in the scan and keeps a label's confidence only where a count from
an end reaches it unbroken; every other label is capped at `unsupported_confidence` and flagged
`needs_review`.

An end of the detected chain is a *terminus* when the views agree on it (found in at least
`PipelineOptions.seen_views` of them: a point fewer views found may be a stray blob or a second
detection, S1 found again below L5), the scan goes on beyond it (`room_gaps` local
gaps along the chain, so a further vertebra would have been in full view) and one gap beyond it
lies tissue (cranially: the skull base, not the air above a cropped scan) or bone (caudally: the
sacrum, not the pelvic soft tissue that follows a stray point), and the gap into it is regular.
The caudal end is a terminus also where the sacrum probe found the sacrum right below it
(`sacrum.sacrum_below`, or the point the localization net put on S1: `sacrum.sacral_start`):
the lumbosacral angle can put the place one gap beyond the chain in front of the sacrum. It is
never one where the last point itself bridges to the iliac wings (`sacrum.on_sacrum`): that is S1
kept in the chain, and a count from it is a level off.
The label decoded there must be the one anatomy puts there (C1; L5, L6, or L4 when a T13 is
decoded), else the count and the net disagree and nothing is trusted from that end. From a
consistent terminus trust walks inward over regular gaps (no missed or doubled vertebra), onto
a vertebra only with a regular gap on its far side too, never onto one the decode formed from
several detections (two vertebrae may lie there), stops
past the first vertebra whose own confidence is under `unsupported_confidence`, and never crosses
the thoracolumbar junction nor enters a T13: whether the level after T12 is T13 or L1, and the
one before L1 T12 or T13, depends on a variant no count can see (ribs decide it). For the same
reason a count up from the sacrum, which assumes five lumbar vertebrae unless the decode names an
L6 (the net's reading, or the last rib's count: `labelling.label`), stands only where it reaches
L1 and the rib probe sees the junction there: a rib beside the vertebra above L1 and none beside
L1 (`ReviewOptions.junction_seen`). Where the vertebra above L1 is out of the probe's sight, or
nothing lies above the count, five lumbar vertebrae cannot be told from six. A vertebra
at the edge of the field of view (within `edge_gaps` of a gap) is cut: its centroid and label
are never trusted.

The named thresholds are the fields of `options.ReviewOptions` (`PipelineOptions.review`). Points
are world LPS mm, in chain order (cranial -> caudal); labels are VerSe labels.
"""

from __future__ import annotations

import numpy as np

from .fusion import relative_gaps
from .labels import LABELS, region
from .options import DEFAULT_OPTIONS, ReviewOptions
from .ribs import UNSEEN
from .volume import Volume

AIR_HU = -1024.0

_C1, _L1, _L4, _L5, _L6, _T13 = (LABELS[n] for n in ("C1", "L1", "L4", "L5", "L6", "T13"))


def room_mm(volume: Volume, start_lps: np.ndarray, unit_lps: np.ndarray) -> float:
    """Distance mm from `start_lps` (3,) along the unit vector `unit_lps` (3,) to the edge of the scan.

    The scan is the box of its voxels, [-0.5, n - 0.5] in every index axis; 0 for a start outside it.
    """
    start = volume.world_to_index(start_lps)
    step = volume.world_to_index(start_lps + unit_lps) - start  # index change per mm
    hi = np.array(volume.shape_ijk) - 0.5
    if np.any(start < -0.5) or np.any(start > hi):
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        exits = np.where(step > 0, (hi - start) / step, np.where(step < 0, (-0.5 - start) / step, np.inf))
    return float(exits.min())


def gaps_to_edge(volume: Volume, point_lps: np.ndarray, step_lps: np.ndarray) -> float:
    """The room from the vertebra at `point_lps` (3,) to the scan's edge, in gaps: along `step_lps`
    (3,) mm, the step from its neighbour to it (the way out, and the gap's length). Under
    `ReviewOptions.edge_gaps` the vertebra is cut by the edge."""
    gap = float(np.linalg.norm(step_lps))
    return room_mm(volume, point_lps, step_lps / gap) / gap


def median_hu(volume: Volume, centre_lps: np.ndarray, radius_mm: float) -> float:
    """Median HU over a ball of `radius_mm` around `centre_lps` (3,) (nearest voxels; air outside the scan)."""
    offsets = np.stack(np.meshgrid(*[np.linspace(-1.0, 1.0, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offsets = offsets[np.linalg.norm(offsets, axis=1) <= 1.0] * radius_mm
    return float(np.median(volume.hu_nearest(centre_lps + offsets, AIR_HU)[0]))


def _regular_gaps(points_lps: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """(n - 1,) bool: gaps within `bounds` x their neighbours' (True where too few to tell)."""
    rel = relative_gaps(points_lps)
    return ~((rel < bounds[0]) | (rel > bounds[1]))  # NaN compares False: regular


def _end_label_fits(labels: np.ndarray, cranial: bool) -> bool:
    """Is the decoded label at a terminus the one anatomy puts there?"""
    if cranial:
        return int(labels[0]) == _C1
    last = int(labels[-1])
    return last in (_L5, _L6) or (last == _L4 and _T13 in labels)


def _crosses_junction(a: int, b: int) -> bool:
    """Does a count step from label `a` to label `b` cross the thoracolumbar junction or enter a T13?"""
    return int(b) == _T13 or {region(a), region(b)} == {"thoracic", "lumbar"}


def _count_from(
    end: int, inward: int, labels: np.ndarray, confidence: np.ndarray, regular: np.ndarray, least: float,
    merged: np.ndarray,
) -> list[int]:
    """Rows a count from the terminus row `end` reaches going `inward` (+1 caudally, -1 cranially).

    A vertebra is reached only with regular gaps on both its sides (one at the chain's end): next
    to an irregular gap it may be a detection doubled or misplaced, which the gap before it does
    not show (phantom 740 under 60 HU noise: C5 found twice, the second read "C6" at 0.55 with a
    gap of 0.87 before it and 2.9 after it).
    """
    count = [end]
    i = end
    n = len(labels)
    while (
        0 <= i + inward < n
        and regular[min(i, i + inward)]
        and (not 0 <= i + 2 * inward < n or regular[min(i + inward, i + 2 * inward)])
        and not merged[i + inward]
        and confidence[i] >= least
        and not _crosses_junction(labels[i], labels[i + inward])
    ):
        i += inward
        count.append(i)
    return count


def _junction_sure(
    count: list[int], labels: np.ndarray, confidence: np.ndarray, least: float, ribs: np.ndarray | None,
    seen: bool = True,
) -> bool:
    """May a count up from the sacrum stand? The last rib-bearing vertebra is what tells five
    lumbar vertebrae from six, which the count itself cannot see, and a count stopped below L1
    with more spine above cannot be checked against it.

    With `seen` (`ReviewOptions.junction_seen`), only where the rib probe sees the junction: a rib
    beside the vertebra above L1 and none beside L1. A count that reaches the top of the labelled
    chain, or L1 below a vertebra the probe cannot see, assumes five lumbar vertebrae, and an L6
    spine's L2-L6 read L1-L5 that way (fresh phantom 3507, L1 at the scan's edge: 0.73-0.99). Without
    `seen` (the rule up to stop 60), as below.

    The rib probe (`ribs.rib_sides`, (n, 2)) checks the junction where it sees a rib beside the
    vertebra above L1 and none beside L1, and refutes it where it sees a rib beside L1 or the
    vertebra above L1 in full with no rib (an L6 spine's L1, read as T12 by the net at 0.8-0.9).
    Where it cannot see the vertebra above L1 in full (it leaves the scan), the count stands on
    the net's confidence in L1 and that vertebra, as a reader counts a lumbar CT from the sacrum;
    where it sees neither side of it (a vertebra cut by the scan's edge), on L1's alone: the net's
    reading of a cut vertebra (0.3-0.5 on the real lumbar CT's T12) says nothing about the count.
    """
    top = count[-1]
    if top == 0:
        return not seen
    if int(labels[top]) != _L1:
        return False
    doubted = min(confidence[top], confidence[top - 1]) < least
    if ribs is None:
        return not (seen or doubted)
    above, beside = ribs[top - 1], ribs[top]
    if (beside == 1).any() or (above == 0).all():
        return False
    if (above == 1).any():
        return bool((beside == 0).any())
    if seen:
        return False
    if (above == UNSEEN).all():
        return bool(confidence[top] >= least)
    return not doubted


def supported(
    volume: Volume,
    points_lps: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    options: ReviewOptions = DEFAULT_OPTIONS.review,
    ribs: np.ndarray | None = None,
    sacrum_below: bool = False,
    last_on_sacrum: bool = False,
    merged: np.ndarray | None = None,
    seen: np.ndarray | None = None,
) -> np.ndarray:
    """(n,) bool: the labels a count from a terminus of the scan reaches (see the module docstring).

    `points_lps` (n, 3) world LPS mm in chain order, `labels` (n,) VerSe, `confidence` (n,) in [0, 1],
    `ribs` (n, 2) what `ribs.rib_sides` found beside each point (None: not probed), `sacrum_below`
    whether the sacrum lies right below the last point, `last_on_sacrum` whether the last point
    itself bridges to the iliac wings (`sacrum.on_sacrum`: no count starts from it), `merged` (n,)
    the vertebrae the decode formed from more than one detection (`labelling.one_per_label`: None,
    none): a count does not step onto one, as the number of vertebrae there is in doubt; `seen` (n,)
    the vertebrae found in at least `PipelineOptions.seen_views` of the views (None: all), the
    only ones a count starts from.
    """
    o = options
    p = np.asarray(points_lps, dtype=np.float64)
    n = len(p)
    reached = np.zeros(n, bool)
    if n < 2:
        return reached
    merged = np.zeros(n, bool) if merged is None else np.asarray(merged, bool)
    seen = np.ones(n, bool) if seen is None else np.asarray(seen, bool)
    regular = _regular_gaps(p, o.regular_gap)
    cut = np.zeros(n, bool)
    for end, inward in ((0, 1), (n - 1, -1)):
        out = p[end] - p[end + inward]
        gap = float(np.linalg.norm(out))
        room = gaps_to_edge(volume, p[end], out)
        out /= gap
        if room < o.edge_gaps:
            cut[end] = True
            continue
        cranial = end == 0
        if not seen[end] or (not cranial and last_on_sacrum):
            continue
        beyond = median_hu(volume, p[end] + gap * out, o.probe_radius_gaps * gap)
        ends_here = room >= o.room_gaps and beyond > (o.tissue_hu if cranial else o.bone_hu)
        if not ((ends_here or (sacrum_below and not cranial)) and regular[min(end, end + inward)]
                and _end_label_fits(labels, cranial)):
            continue
        count = _count_from(end, inward, labels, confidence, regular, o.unsupported_confidence, merged)
        if not cranial and not _junction_sure(count, labels, confidence, o.unsupported_confidence, ribs,
                                              o.junction_seen):
            continue
        reached[count] = True
    return reached & ~cut


def review(
    volume: Volume,
    points_lps: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    options: ReviewOptions = DEFAULT_OPTIONS.review,
    ribs: np.ndarray | None = None,
    sacrum_below: bool = False,
    last_on_sacrum: bool = False,
    merged: np.ndarray | None = None,
    seen: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Confidences (n,) and needs_review flags (n,) of labelled vertebrae (points in chain order;
    `ribs`, `sacrum_below`, `last_on_sacrum`, `merged` and `seen` as in `supported`).

    A label no count from a terminus reaches keeps at most `unsupported_confidence`; a label
    needs review when it is not reached or its confidence is under `unsupported_confidence`.
    """
    reached = supported(volume, points_lps, labels, confidence, options, ribs, sacrum_below, last_on_sacrum, merged,
                        seen)
    least = options.unsupported_confidence
    conf = np.where(reached, confidence, np.minimum(confidence, least))
    return conf, ~reached | (conf < least)
