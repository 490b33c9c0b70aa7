"""The patient's size as the nets see it, and the views' scale that shows the spine at the size they
read best.

Both nets read a vertebra's level partly from its size in the views, and learned the spine from
phantoms drawn at statures 0.88-1.12 (`vertedge.vertebra_sizes` at stature 1). A patient 1.2 times
that size has every level read one off; rendered at detector pixels 1.2 times as large (the patient
shown at the size the nets learned) the same scan is read right (benchmarks/RESULTS.md, "The
patient's size"). The size is read from the scan's labelled vertebrae: the distance between the
body centres of two neighbouring levels (mm) against the phantom's at stature 1. A label one level
off changes that reference by a few per cent, so the size read does not hang on the labels being
right, where a size read from the nets' certainty did (stop 53). The labels read at the new scale
replace the first ones only where they describe the same spine (`rescaled_kept`).
"""

from __future__ import annotations

import numpy as np

from .options import SizeOptions
from .vertebra_sizes import at_level

# The labels whose distance to the next level the phantom draws from the table alone: C2 (2) to L5
# (24), VerSe label - 1 their canonical level (C1..L5 = 0..23). C1's dens region, T13 and L6 are
# placed apart.
_TABLED = (2, 24)


def level_gap_mm(upper: np.ndarray) -> np.ndarray:
    """(m,) mm: the phantom's distance at stature 1 between the body centres of levels `upper` (m,)
    VerSe labels C2-L4 and of the level below each (C3-L5)."""
    canon = np.asarray(upper, float) - 1.0
    return at_level("h", canon) + at_level("disc", canon) + at_level("h", canon + 1.0)


def apparent_size(labels: np.ndarray, points_lps: np.ndarray) -> tuple[float, int]:
    """The spine's size against the phantom's at stature 1 and the number of neighbour pairs it is
    read from: the median over labelled neighbours (`labels` (n,) VerSe, `points_lps` (n, 3) world
    LPS mm body centres) of their distance over `level_gap_mm`. NaN and 0 without such a pair."""
    labels = np.asarray(labels, int)
    tabled = np.flatnonzero((labels >= _TABLED[0]) & (labels <= _TABLED[1]))
    tabled = tabled[np.argsort(labels[tabled])]  # within C2-L5 the labels' order is the spine's
    labels, points = labels[tabled], np.asarray(points_lps, float)[tabled]
    pair = np.diff(labels) == 1
    if not pair.any():
        return float("nan"), 0
    gaps = np.linalg.norm(np.diff(points, axis=0), axis=1)[pair]
    return float(np.median(gaps / level_gap_mm(labels[:-1][pair]))), int(pair.sum())


def view_scale(size: float, n_pairs: int, options: SizeOptions) -> float:
    """The factor on the protocol's detector pixels at which the views show a spine of `size`
    (`apparent_size`) at the size the nets read best, `options.best`; 1 where the size is read from
    fewer than `options.min_pairs` neighbour pairs (`min_pairs_smaller` for a size below the best)
    or lies within `options.tolerance` (a ratio) of the best, and never beyond `options.scale_range`."""
    if not options.enabled or n_pairs < options.min_pairs or not np.isfinite(size):
        return 1.0
    ratio = size / options.best
    if 1.0 / options.tolerance <= ratio <= options.tolerance or (ratio < 1.0 and n_pairs < options.min_pairs_smaller):
        return 1.0
    return float(np.clip(ratio, *options.scale_range))


def rescaled_kept(first: tuple[float, int, int], again: tuple[float, int, int], options: SizeOptions) -> bool:
    """Whether the labels read from the views at the new scale replace the first ones: `first` and
    `again` are each (size (`apparent_size`), neighbour pairs it is read from, vertebrae labelled).
    Kept where the new labels read a size from at least `options.min_pairs` pairs within
    `options.tolerance` of the first: a crop whose labels were many levels off read a size its
    vertebrae do not have (a lumbar crop named C3-C6 reads 1.36), and at the new scale its chain is
    lost or read anew. With `options.as_complete`, also only where the new views find at least as
    many vertebrae as the first."""
    (size, _, n_first), (size_again, pairs_again, n_again) = first, again
    same_size = pairs_again >= options.min_pairs and max(size, size_again) <= options.tolerance * min(size, size_again)
    return same_size and (n_again >= n_first or not options.as_complete)
