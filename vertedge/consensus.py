"""One scan labelled from several view starts: the runs' consensus.

Where the K views stand round the patient decides part of what the nets see: the chest CT as stored,
its views started 0, 6, ..., 30 degrees round (one view step is 36), gets 92, 92, 100, 100, 92, 83 %
of its vertebrae right (benchmarks/RESULTS.md). A scan not seen before stands at no particular angle
to the views, so one start is a draw from that spread. The pipeline therefore labels the scan from
starts spread over one view step and keeps the run that agrees most with the others, vertebra by
vertebra; what the runs disagree on is flagged.

A vertebra of one run *agrees* with another run when that run's vertebra nearest to it carries the
same label and lies within half the distance to its own run's nearest other vertebra (a neighbour's
point is never the same vertebra). A vertebra's point is the geometric median of the agreeing runs'
points: one run's point some millimetres off (a heatmap peak on a rib head in its views) moves the
mean by a third of that and the median by much less. Points in world LPS mm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Run:
    """The labelled vertebrae of one run, in chain order: labels (n,), world LPS mm points (n, 3),
    confidences (n,) in [0, 1], needs-review flags (n,)."""

    labels: np.ndarray
    points_lps: np.ndarray
    confidence: np.ndarray
    needs_review: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Consensus:
    """The chosen run (`index` into the runs) and its vertebrae's consensus: points (n, 3) in world LPS
    mm, the geometric median of the runs that agree, the mean confidence over all runs (0 from a run
    that does not agree), the flags (n,), and how many runs agree with each (n,), the chosen one
    included."""

    index: int
    points_lps: np.ndarray
    confidence: np.ndarray
    needs_review: np.ndarray
    n_agree: np.ndarray


def geometric_median(points: np.ndarray, weights: np.ndarray, rounds: int = 50) -> np.ndarray:
    """(n, 3) the point of least summed distance to each column's points (runs, n, 3) where `weights`
    (runs, n) is 1, ignoring those where it is 0 (Weiszfeld's iteration from the mean; every column
    needs a weight). Two points: their midpoint."""
    x = (points * weights[..., None]).sum(axis=0) / weights.sum(axis=0)[:, None]
    for _ in range(rounds):
        # 1e-6 mm: a point on the current estimate keeps a finite, large weight
        w = weights / np.maximum(np.linalg.norm(points - x, axis=2), 1e-6)
        x = (points * w[..., None]).sum(axis=0) / w.sum(axis=0)[:, None]
    return x


def _reach_mm(points: np.ndarray, alone_mm: float) -> np.ndarray:
    """(n,) half the distance from each point to its run's nearest other point; `alone_mm` for a lone point."""
    if len(points) < 2:
        return np.full(len(points), alone_mm)
    d = np.linalg.norm(points[:, None] - points[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return 0.5 * d.min(axis=1)


def matches(a: Run, b: Run, alone_mm: float) -> np.ndarray:
    """(len(a),) index of the vertebra of `b` that agrees with each of `a`'s, or -1."""
    if not len(a) or not len(b):
        return np.full(len(a), -1)
    d = np.linalg.norm(a.points_lps[:, None] - b.points_lps[None], axis=2)
    nearest = d.argmin(axis=1)
    agree = (b.labels[nearest] == a.labels) & (d[np.arange(len(a)), nearest] <= _reach_mm(a.points_lps, alone_mm))
    return np.where(agree, nearest, -1)


def consensus(runs: Sequence[Run], alone_mm: float, most_if_review: float) -> Consensus:
    """The run with the most vertebrae agreeing with the other runs (ties: the earliest, the protocol's
    own start), its points the geometric median of the agreeing runs' and its confidences averaged
    over all runs.

    A vertebra some run does not agree with needs review (where the views start decides its label),
    as does one most runs flag; a flagged vertebra's confidence is at most `most_if_review`.
    """
    n = len(runs)
    match = [[matches(a, b, alone_mm) for b in runs] for a in runs]
    agreeing = [sum(int((m >= 0).sum()) for j, m in enumerate(row) if j != i) for i, row in enumerate(match)]
    best = int(np.argmax(agreeing))
    run = runs[best]
    found = np.stack([m >= 0 for m in match[best]])  # (runs, n); the chosen run agrees with itself
    at = [np.maximum(m, 0) for m in match[best]]

    def gathered(values: Callable[[Run], np.ndarray]) -> np.ndarray:
        """(runs, n, ...) each run's values at its vertebrae agreeing with the chosen run's; a run
        with no vertebrae agrees with none, and its zeros are masked out by `found`."""
        return np.stack([values(r)[i] if len(r) else np.zeros((len(run), *values(r).shape[1:]), values(r).dtype)
                         for r, i in zip(runs, at)])

    points = gathered(lambda r: r.points_lps)
    confidence = gathered(lambda r: r.confidence)
    n_agree = found.sum(axis=0)
    # a label all runs give is flagged as most of them flag it: which of several tied runs is
    # kept is arbitrary, and its own flags would make the result hang on that choice
    flagged = gathered(lambda r: r.needs_review) & found
    needs_review = (n_agree < n) | (2 * flagged.sum(axis=0) > n)
    mean_confidence = (confidence * found).sum(axis=0) / n
    return Consensus(
        index=best,
        points_lps=geometric_median(points, found.astype(float)),
        confidence=np.where(needs_review, np.minimum(mean_confidence, most_if_review), mean_confidence),
        needs_review=needs_review,
        n_agree=n_agree,
    )
