"""Ribs: which vertebrae of the chain bear them, read from the scan (T1-T12 do; C7 and L1 do not).

A reader tells a thoracic vertebra from a cervical or lumbar one by its ribs, and names the levels
around the cervicothoracic and thoracolumbar junctions from the first and the last rib. The
identification net reads levels from their look, and at the ends of a real chest CT it reads
them a level off (C7 as T1); the ribs are evidence it does not use. This module probes each
fused point for a rib on either side, and turns what it finds into a likelihood per class that
the decode multiplies into the voted probabilities (`sequence.identify`), into the classes a
vertebra with ribs on both sides may have (`rib_bearing_classes`), and into the thoracolumbar
junction (`junction_classes`).

The probe, per point and side: the maximum-HU projection of the vertebra's axial slab (from
`slab_gaps[0]` to `slab_gaps[1]` local gaps along the spine's local axis, or the whole chain's
where that slab leaves the scan, `rib_sides`; a rib leaves its vertebra at the pedicles and
crosses 45 mm lateral 0.1-0.5 gap above the body's centroid, below the rib of the vertebra
above), sampled on a grid of `pixel_mm` in the plane across the spine; a rib is a bone
component (> `bone_hu`) that crosses the ring from `inner_mm` to `outer_mm` around the point
within a posterolateral wedge (`wedge_deg` from the lateral direction, posterior positive; wide
enough for a patient rolled 30 degrees). Transverse processes end inside the ring (C7's at ~38
mm, the lumbar ones at <= 50), the scapula and the iliac crest start outside its inner edge, the
clavicle lies in front of the wedge: only a rib crosses it. On the real scans of
`../shared/data/real` it finds both ribs at T1-T11 of the chest CT, and none at C7 or L1-L5, as
stored and under noise, thick slices, tilt and roll (benchmarks/RESULTS.md); the lumbar CT's T12
lies at the scan's top edge, where it finds the ribs under noise or roll but, as stored, one side
leaves the scan and the other shows none.

Points are world LPS mm in chain order (cranial -> caudal); the lateral direction is the scan's
patient L-R axis made perpendicular to the frame's spine axis.
"""

from __future__ import annotations

import numpy as np

from .labels import LABELS, region
from .options import DEFAULT_OPTIONS, RibOptions
from .volume import Volume

UNSEEN = -1  # a side whose ring leaves the scan and shows no rib

_IRRELEVANT = frozenset(LABELS[n] for n in ("L5", "L6"))  # the iliac crests reach the ring beside them


def chain_frames(points_lps: np.ndarray, reach: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Local frames of points (n, 3) mm in chain order, n >= 2: (axis, lateral, posterior) unit
    vectors (n, 3) each, and the local gap mm (n,).

    The axis points cranially along the chain, from the point `reach` rows below to the one `reach`
    rows above (fewer at the ends; 1: central differences; more: less swayed by one point off the
    line); the lateral vector is the scan's +x (patient left) made perpendicular to it; posterior
    completes the frame with a positive LPS y component.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    rows = np.arange(len(p))
    above, below = np.maximum(rows - reach, 0), np.minimum(rows + reach, len(p) - 1)
    up = p[above] - p[below]
    span = np.linalg.norm(up, axis=1)
    axis = up / span[:, None]
    gap = span / (below - above)
    lateral = np.array([1.0, 0.0, 0.0]) - axis[:, :1] * axis
    lateral /= np.linalg.norm(lateral, axis=1, keepdims=True)
    posterior = np.cross(axis, lateral)
    posterior *= np.where(posterior[:, 1:2] < 0, -1.0, 1.0)
    return axis, lateral, posterior, gap


def probe_grid(reach_mm: float, pixel_mm: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square grid across the spine, `pixel_mm` apart out to `reach_mm` from the point: (H, W)
    across (lateral) and front-back (posterior) offsets mm, and their radius mm."""
    across, front_back = np.meshgrid(np.arange(-reach_mm, reach_mm + 1e-9, pixel_mm),
                                      np.arange(-reach_mm, reach_mm + 1e-9, pixel_mm))
    return across, front_back, np.hypot(across, front_back)


def side_bands(across: np.ndarray, front_back: np.ndarray, deg: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """(patient right, left) (H, W) masks of a probe grid: each side's pixels within `deg` degrees
    of its lateral direction (posterior positive)."""
    bands = []
    for sign in (-1.0, 1.0):
        angle = np.degrees(np.arctan2(front_back, sign * across))
        bands.append((sign * across > 0) & (angle >= deg[0]) & (angle <= deg[1]))
    return tuple(bands)


def slab_world(centre: np.ndarray, frame: tuple[np.ndarray, ...], along_mm: np.ndarray, across: np.ndarray,
               front_back: np.ndarray) -> np.ndarray:
    """(m, ..., 3) world LPS mm of planes at `along_mm` (m,) from `centre` (3,) along the frame's
    axis, each at the in-plane offsets `across` and `front_back` mm (...) along its lateral and
    posterior vectors; `frame` = (axis, lateral, posterior) unit vectors (3,) LPS."""
    axis, lateral, posterior = frame[:3]
    return (centre + along_mm.reshape(-1, *[1] * across.ndim, 1) * axis + across[..., None] * lateral
            + front_back[..., None] * posterior)


def slab_mip(volume: Volume, centre: np.ndarray, frame: tuple[np.ndarray, ...], along_mm: np.ndarray,
             grid: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The maximum-HU projection of a slab across the spine: planes at `along_mm` (m,) from `centre`
    (3,) along the frame's axis, each sampled at `grid` (across, front-back mm, (H, W) each) in its
    (lateral, posterior) plane; `frame` = (axis, lateral, posterior) unit vectors (3,) LPS.

    Returns (H, W) maximum HU (-inf where every sample lies outside the scan) and (H, W) the
    fraction of the slab's samples inside the scan.
    """
    hu, inside = volume.hu_nearest(slab_world(centre, frame, along_mm, *grid), -np.inf)
    return hu.max(axis=0), inside.mean(axis=0)


def grown(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(H, W) bool: the 4-connected components of `mask` (H, W) that hold a pixel of `seeds` (H, W)."""
    region = mask & seeds
    while True:
        step = region.copy()
        step[1:] |= region[:-1]
        step[:-1] |= region[1:]
        step[:, 1:] |= region[:, :-1]
        step[:, :-1] |= region[:, 1:]
        step &= mask
        if (step == region).all():
            return region
        region = step


def crosses(bone: np.ndarray, radius: np.ndarray, inner: float, outer: float) -> bool:
    """Does one component of `bone` (H, W) reach from radius <= inner to radius >= outer?"""
    return bool((grown(bone, radius <= inner) & (radius >= outer)).any())


def rib_sides(volume: Volume, points_lps: np.ndarray, options: RibOptions = DEFAULT_OPTIONS.ribs,
              rows: np.ndarray | None = None) -> np.ndarray:
    """(n, 2) int per point (chain order) and side (patient right, left): 1 a rib, 0 none, `UNSEEN`
    where no rib crosses and less than `seen_fraction` of the wedge's slab lies inside the scan.
    All `UNSEEN` for fewer than two points; only the points `rows` (indices) are probed where given
    (the others `UNSEEN`), in the frames of the whole chain.

    Each point is probed across its local axis (`chain_frames`) and, with `whole_chain`, a side
    that slab leaves `UNSEEN` across the whole chain's axis (from its first point to its last; the
    slab still spans the local gap). At the ends of a chain the local axis follows the spine's
    curve (C7 lies 11 mm in front of T1 on the chest CT, a 33-degree lean), which tilts the
    probe's posterior wedge 25-35 mm along the body, out of a scan whose edge lies 20 mm beyond
    the vertebra; across the whole chain's axis the slab stays in view. Only there: elsewhere the
    local plane is the one the ribs lie in, and the whole chain's, tilted against it where the
    spine curves, cuts the iliac crest beside a lower lumbar vertebra as a rib (a rolled,
    tilted phantom's L4).
    """
    o = options
    p = np.asarray(points_lps, dtype=np.float64)
    out = np.full((len(p), 2), UNSEEN, dtype=np.int64)
    if len(p) < 2:
        return out
    reach = o.outer_mm + 2 * o.pixel_mm
    across, front_back, radius = probe_grid(reach, o.pixel_mm)
    ring = (radius >= o.inner_mm - 2 * o.pixel_mm) & (radius <= reach)
    # patient right, left: the same for every point, in its own frame
    wedges = [ring & band for band in side_bands(across, front_back, o.wedge_deg)]
    local = chain_frames(p)
    frames = [local[:3], chain_frames(p, reach=len(p))[:3]] if o.whole_chain else [local[:3]]
    for n in range(len(p)) if rows is None else rows:
        centre = p[n]
        along = np.linspace(o.slab_gaps[0], o.slab_gaps[1], o.slab_samples) * float(local[3][n])
        for frame in frames:
            unseen = np.flatnonzero(out[n] == UNSEEN)
            if not len(unseen):
                break
            mip, inside = slab_mip(volume, centre, tuple(f[n] for f in frame), along, (across, front_back))
            for side in unseen:
                if crosses(wedges[side] & (mip > o.bone_hu), radius, o.inner_mm, o.outer_mm):
                    out[n, side] = 1
                elif inside[wedges[side]].mean() >= o.seen_fraction:
                    out[n, side] = 0
    return out


def likelihood(sides: np.ndarray, classes: tuple[int, ...], options: RibOptions = DEFAULT_OPTIONS.ribs) -> np.ndarray:
    """(n, c) likelihood of what the probe saw at each point (`rib_sides`, (n, 2)) for each class,
    relative to the likelier finding: the product over the two sides.

    A side without a rib weighs `none_if_ribs` against a thoracic class (T13 too), a side with one
    `ribs_if_none` against a cervical or lumbar class; an unseen side weighs nothing. L5 and L6
    are left out (the iliac crests may cross the ring beside them).
    """
    sides = np.asarray(sides)
    thoracic = np.array([region(c) == "thoracic" for c in classes])
    ribs = (sides == 1).sum(axis=1)[:, None]
    none = (sides == 0).sum(axis=1)[:, None]
    return np.where(thoracic, options.none_if_ribs**none, np.where(ribless(classes), options.ribs_if_none**ribs, 1.0))


def ribless(classes: tuple[int, ...]) -> np.ndarray:
    """(c,) bool: the classes a rib found beside a vertebra speaks against: cervical and lumbar,
    but for L5 and L6 (the iliac crests may cross the probe's ring beside them)."""
    return np.array([region(c) != "thoracic" and c not in _IRRELEVANT for c in classes])


def ribbed(sides: np.ndarray) -> np.ndarray:
    """(n,) bool: the points whose rib probe (`rib_sides`, (n, 2)) found a rib and saw no side
    without one (a lower lumbar vertebra's iliac crest crosses the ring on one side at most)."""
    sides = np.asarray(sides)
    return (sides == 1).any(axis=1) & ~(sides == 0).any(axis=1)


def junction_classes(sides: np.ndarray, reads: np.ndarray, classes: tuple[int, ...],
                     options: RibOptions = DEFAULT_OPTIONS.ribs, sacrum_below: bool = False,
                     seen: np.ndarray | None = None) -> np.ndarray:
    """(n, c) bool: the classes the thoracolumbar junction leaves each point (`rib_sides`, (n, 2),
    chain order cranial -> caudal), given the identification net's reading of each (`reads`, (n,),
    the most voted class, VerSe labels); with `sacrum_below` (the chain's last point lies right above
    the sacrum) only where the points from L1 to the last that most views found (`seen`, (n,) bool,
    `labelling.well_seen`; None: all) number one of `options.lumbar_counts`: a point few views
    found may be S1 found again below the last lumbar vertebra, or a second detection.

    The junction is the chain's last point with a rib found and no side seen without one, where
    the `junction_ribless` points below it are seen without a rib on both sides and the net reads
    the first of them within one level of L1 (T12, T13, L1 or L2): that vertebra is T12 (T13 where
    there is one) and the one below it L1. Elsewhere every class stays. The last such point, not
    any: a transverse process of C7 or a clavicle read as a rib at the top of a chest CT is followed
    by ribless rows too, and then by the thorax. Three rows, and the net's reading, because the
    lower ribs slope down: at a chest CT's caudal edge they leave the scan beside their own
    vertebra, and the real chest CT's T11 and T12 read ribless there, with stray points beside
    them; the net reads those rows as T10-T12, two or more levels from L1, and a junction so far
    from the net's count is more likely the probe's miss than the net's.
    """
    sides = np.asarray(sides)
    out = np.ones((len(sides), len(classes)), dtype=bool)
    with_ribs = np.flatnonzero(ribbed(sides))
    if not len(with_ribs):
        return out
    last = with_ribs[-1]
    below = sides[last + 1 : last + 1 + options.junction_ribless]
    near_l1 = [LABELS[n] for n in ("T12", "T13", "L1", "L2")]
    seen = np.ones(len(sides), bool) if seen is None else np.asarray(seen, bool)
    counted = not sacrum_below or int(seen[last + 1:].sum()) in options.lumbar_counts
    if len(below) == options.junction_ribless and (below == 0).all() and reads[last + 1] in near_l1 and counted:
        names = np.asarray(classes)
        out[last] = np.isin(names, [LABELS["T12"], LABELS["T13"]])
        out[last + 1] = names == LABELS["L1"]
    return out


def rib_bearing_classes(sides: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """(n, c) bool: the classes ribs found on both sides of a point (`rib_sides`, (n, 2)) leave it:
    thoracic ones (T13 too), and L5 and L6, beside which the iliac crests may cross the ring; every
    class at the other points.

    A vertebra that bears ribs is thoracic, whatever it looks like: the identification net's own
    reading cannot name it cervical or lumbar. One side found is not enough (C7's transverse
    process, a clavicle at the edge of the wedge). Probed at the truth points, ribs on both sides
    came at none of 42 cervical and 84 L1-L4 points of the two countable real cases under the
    robustness benchmark's 21 variations, nor at any of 113 and 80 of fresh phantoms 3200-3229, and
    at 3 of their 20 L5/L6 points (against 206 of 273 and 183 of 201 thoracic ones; stop 54,
    benchmarks/RESULTS.md). The likelihood (`likelihood`) weighs the same finding, but the DP sums
    rows, so a chain the net reads levels off outweighs a few rows' ribs: the angiography crop
    round T12 was named C3-C7 over vertebrae with ribs on both sides.
    """
    both = (np.asarray(sides) == 1).all(axis=1)
    return ~(both[:, None] & ribless(classes)[None, :])
