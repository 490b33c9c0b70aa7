"""One scan labelled from several view starts: the runs' consensus.

Where the K views stand round the patient decides part of what the nets see: the chest CT as stored,
its views started 0, 6, ..., 30 degrees round (one view step is 36), gets 92, 92, 100, 100, 92, 83 %
of its vertebrae right (benchmarks/RESULTS.md). A scan not seen before stands at no particular angle
to the views, so one start is a draw from that spread. The pipeline therefore labels the scan from
starts spread over one view step and keeps the run that agrees most with the others, vertebra by
vertebra (of runs that agree alike, the one most confident in the vertebrae the others agree
with: the real lumbar CT's lower half, one point per start and none agreeing, 0 -> 100 %); what
the runs disagree on is flagged.

A vertebra of one run *agrees* with another run when that run's vertebra nearest to it carries the
same label and lies within half the distance to its own run's nearest other vertebra (a neighbour's
point is never the same vertebra). A vertebra's point is the geometric median of the agreeing runs'
points: one run's point some millimetres off (a heatmap peak on a rib head in its views) moves the
mean by a third of that and the median by much less. Points in world LPS mm.

Where the kept run's chain stops short of another run's, that run's vertebrae beyond the kept
chain's end join it (`beyond_kept`): the runs differ in how far along the spine their views found
peaks (the chest CT tilted 15 degrees: one start finds T11 in four views, the other two end at
T10), and no run disputes a vertebra the others did not reach. Only as the kept chain's
continuation: the other run agrees with the kept end vertebra, names the next one a successor of
its label other than a T13 or an L6 (a variant one run alone reads is the least supported
reading: the lumbar CT's lower half, one start's point on the sacrum named L6), the gap to it
is regular (within a factor of the kept chain's last gap), and that run stands by it: its
confidence is at least what a flagged label may claim (the robustness benchmark's real cases at
two phases: of ten vertebrae one run found beyond the kept chain, the three right ones held
0.21-0.50 in that run, the seven wrong ones 0.06-0.33; the 0.50 is the chest CT's T11 tilted
15 degrees, the others cut by the scan's edge), and the scan shows it whole (the pipeline: not
within `ReviewOptions.edge_gaps` of a gap of the scan's edge, as `anchors` cuts an end vertebra;
a lumbar phantom's start put a "T12" 8 mm above the scan's top slice). Found by one run of
several, it is flagged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .labels import OPTIONAL, successors


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
    """The chosen run (`index` into the runs) and its vertebrae's consensus: labels (n,), points (n, 3)
    in world LPS mm, the geometric median of the runs that agree, the mean confidence over all runs
    (0 from a run that does not agree), the flags (n,), how many runs agree with each (n,), the
    chosen one included, and where each comes from (n, 2): (run, row), the chosen run's own rows
    and those another run found beyond its ends (`beyond_kept`)."""

    index: int
    labels: np.ndarray
    source: np.ndarray
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


def pooled_sides(points: Sequence[np.ndarray], sides: Sequence[np.ndarray], alone_mm: float) -> list[np.ndarray]:
    """Each run's rib probe findings (`ribs.rib_sides`, (n, 2): 1 a rib, 0 none, -1 unseen) at its
    points (n, 3) world LPS mm, a side it could not see filled with a rib where another run found
    one at the same vertebra (its nearest point, within half the distance to the run's own nearest
    other point).

    The probe reads a slab round each run's point, and a point a few millimetres nearer a scan's
    edge leaves that slab out of the scan: the lumbar CT's upper half, its top vertebra (T12) cut
    by the edge, seen with both ribs from one view start and with neither side seen from the other
    two, whose chains the junction then cannot count from. One vertebra has one pair of ribs. Only
    a rib found is lent: on the real scans the probe seldom finds a rib where none is (one side of
    16 judged at C1-C7, one of 138 at L1-L4; benchmarks/RESULTS.md, stop 49), but a point some
    millimetres off its body, towards the disc, shows none where its vertebra has one (the lumbar
    CT 1.2 times its size, T12 read from a point 13 mm off: lent, it turned T12's one rib into a
    T12 read as L1).
    """
    out = []
    for i, (p, s) in enumerate(zip(points, sides)):
        lent = np.zeros((len(p), 2), bool)
        for j, (q, t) in enumerate(zip(points, sides)):
            if j == i:
                continue
            at = _nearest_within(p, q, alone_mm)
            if (at >= 0).any():
                lent |= (at >= 0)[:, None] & (np.asarray(t)[at] == 1)
        out.append(np.where((np.asarray(s) == -1) & lent, 1, s))
    return out


def _nearest_within(a: np.ndarray, b: np.ndarray, alone_mm: float) -> np.ndarray:
    """(len(a),) index of the point of `b` (m, 3) nearest each point of `a` (n, 3), or -1 where it lies
    further than half the distance to `a`'s own nearest other point (`alone_mm` for a lone point)."""
    if not len(a) or not len(b):
        return np.full(len(a), -1)
    d = np.linalg.norm(a[:, None] - b[None], axis=2)
    nearest = d.argmin(axis=1)
    return np.where(d[np.arange(len(a)), nearest] <= _reach_mm(a, alone_mm), nearest, -1)


def matches(a: Run, b: Run, alone_mm: float) -> np.ndarray:
    """(len(a),) index of the vertebra of `b` that agrees with each of `a`'s, or -1."""
    near = _nearest_within(a.points_lps, b.points_lps, alone_mm)
    if not (near >= 0).any():
        return near
    return np.where((near >= 0) & (b.labels[near] == a.labels), near, -1)


def beyond_kept(runs: Sequence[Run], best: int, alone_mm: float, regular_ratio: float, least_confidence: float,
                cranial: bool, whole: Callable[[np.ndarray, np.ndarray], bool] | None = None) -> tuple[int, np.ndarray]:
    """The vertebrae another run found beyond the top (`cranial`) or bottom end of run `best`'s chain:
    (run, rows in chain order), or (-1, empty) where none continues it (module docstring). Of several
    runs, the one reaching furthest (ties: the earliest). With `whole` (a point (3,) and the step to
    it from the vertebra before, (3,) mm), only where it holds: where the scan shows that vertebra whole."""
    kept = runs[best]
    found, rows = -1, np.zeros(0, int)
    if len(kept) < 2:
        return found, rows
    end, before = (0, 1) if cranial else (-1, -2)
    last_gap = float(np.linalg.norm(kept.points_lps[end] - kept.points_lps[before]))
    step = -1 if cranial else 1
    for j, run in enumerate(runs):
        at = int(matches(kept, run, alone_mm)[end]) if j != best else -1
        if at < 0:
            continue
        extra: list[int] = []
        prev, label, gap = kept.points_lps[end], int(kept.labels[end]), last_gap
        for row in range(at + step, -1 if cranial else len(run), step):
            next_label = int(run.labels[row])
            follows = (label in successors(next_label) if cranial else next_label in successors(label)) and (
                next_label not in OPTIONAL)
            d = float(np.linalg.norm(run.points_lps[row] - prev))
            if not (follows and 1 / regular_ratio <= d / gap <= regular_ratio and run.confidence[row] >= least_confidence
                    and (whole is None or whole(run.points_lps[row], run.points_lps[row] - prev))):
                break
            extra.append(row)
            prev, label, gap = run.points_lps[row], next_label, d
        if len(extra) > len(rows):
            found, rows = j, np.array(extra[::-1] if cranial else extra, int)
    return found, rows


def _shared_confidence(confidence: np.ndarray, others: np.ndarray) -> float:
    """The mean of a run's `confidence` (n,) over its vertebrae another run agrees with (`others`:
    (other runs, n) bool), or over all of them where none does; -1 without vertebrae. A vertebra no
    other run found counts neither for its run nor against it: the weak end vertebra one run alone
    reaches (C7 on the chest CT) would lower its run's mean."""
    if not len(confidence):
        return -1.0
    shared = others.any(axis=0)
    return float(confidence[shared].mean() if shared.any() else confidence.mean())


def consensus(runs: Sequence[Run], alone_mm: float, most_if_review: float,
              regular_ratio: float | None = None, whole: Callable[[np.ndarray, np.ndarray], bool] | None = None,
              tie_by_confidence: bool = True) -> Consensus:
    """The run with the most vertebrae agreeing with the other runs (ties: with `tie_by_confidence`,
    the one most confident in the vertebrae another run agrees with, `_shared_confidence`; then the
    earliest, the protocol's own start), its points the geometric median of the agreeing runs' and
    its confidences averaged over all runs; with `regular_ratio`, continued at either end by another
    run's vertebrae beyond it (`beyond_kept`, where `whole` holds).

    A vertebra some run does not agree with needs review (where the views start decides its label),
    as does one most runs flag; a flagged vertebra's confidence is at most `most_if_review`.
    """
    n = len(runs)
    match = [[matches(a, b, alone_mm) for b in runs] for a in runs]
    agree = [np.stack([m >= 0 for m in row]) for row in match]  # per run (runs, its n): itself included
    others = [np.delete(a, i, axis=0) for i, a in enumerate(agree)]
    agreeing = [int(o.sum()) for o in others]
    # a tie is no vote for the protocol's own start, which stands at no particular angle to the
    # patient either: of the runs that agree most, the one most confident in what they share
    sure = [_shared_confidence(r.confidence, o) if tie_by_confidence else -1.0 for r, o in zip(runs, others)]
    best = int(np.lexsort((-np.asarray(sure), -np.asarray(agreeing)))[0])  # stable: then the earliest
    run = runs[best]
    found = agree[best]  # (runs, n); the chosen run agrees with itself
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
    labels, source = run.labels, np.stack([np.full(len(run), best), np.arange(len(run))], axis=1)
    points = geometric_median(points, found.astype(float))
    if regular_ratio is not None and n > 1:
        # found by one run of several: flagged, its confidence that run's over all runs
        ends = [beyond_kept(runs, best, alone_mm, regular_ratio, most_if_review, c, whole) for c in (True, False)]
        (top, above), (bottom, below) = [(runs[j] if j >= 0 else run, rows) for j, rows in ends]
        labels = np.r_[top.labels[above], labels, bottom.labels[below]]
        source = np.concatenate([np.stack([np.full(len(above), ends[0][0]), above], axis=1), source,
                                 np.stack([np.full(len(below), ends[1][0]), below], axis=1)])
        points = np.concatenate([top.points_lps[above], points, bottom.points_lps[below]])
        mean_confidence = np.r_[top.confidence[above] / n, mean_confidence, bottom.confidence[below] / n]
        needs_review = np.r_[np.ones(len(above), bool), needs_review, np.ones(len(below), bool)]
        n_agree = np.r_[np.ones(len(above), int), n_agree, np.ones(len(below), int)]
    return Consensus(
        index=best,
        labels=labels,
        source=source,
        points_lps=points,
        confidence=np.where(needs_review, np.minimum(mean_confidence, most_if_review), mean_confidence),
        needs_review=needs_review,
        n_agree=n_agree,
    )
