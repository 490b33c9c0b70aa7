"""The sacrum: the bone at the caudal end of the chain that is not a vertebra, and what lies above it.

On real CT the localization net marks the first sacral segment (S1) as one more vertebra below
L5 (the real lumbar scan of `../shared/data/real` in 14 of its 18 robustness variations; no
phantom so far). The decode then has to absorb it as a duplicate of L5, and where it does not,
S1 takes the name L5 and the real L5 becomes "L4", or an "L6" appears. A reader tells S1 at a
glance: its alae run on into the iliac bones, where L5's transverse processes end in soft tissue
short of the iliac crests.

The probe, per point at the chain's caudal end: the maximum-HU projection of a thin axial slab
(`slab_gaps` local gaps along the spine), and in it the bone (> `bone_hu`; cancellous sacral
bone is 150-250 HU) grown from the body (within `core_mm`) through a lateral band (`band_deg`
from the lateral direction, posterior positive): S1's reaches `reach_mm` lateral on both sides, or
on one side where the other side's band leaves the scan, and fills at least `fill` of the band
beyond `fill_from_mm` (the alae and iliac wings are plates; a rib, which also crosses the band,
fills 0.02-0.13 of it on the real chest CT and the phantoms, S1 0.4-0.6 on the real lumbar CT).
A point there that the net reads as L5 or L6, below a vertebra without ribs, starts the sacrum: it
and the points below it leave the chain, and the vertebra above it is the last lumbar one, L5
unless the spine has six or four lumbar vertebrae (a likelihood per class for the decode; where
the chain shows no rib, the scan's only count: `last_lumbar_classes`).

Points are world LPS mm in chain order (cranial -> caudal); the frames are `ribs.chain_frames`.
"""

from __future__ import annotations

import numpy as np

from .labels import LABELS
from .options import DEFAULT_OPTIONS, SacrumOptions
from .ribs import chain_frames, crosses, probe_grid, ribbed, side_bands, slab_mip
from .volume import Volume

_L5 = LABELS["L5"]
_L5_L6 = (_L5, LABELS["L6"])
_VARIANTS = (LABELS["L4"], LABELS["L6"])  # the last lumbar vertebra of four or six


def _bridges(volume: Volume, points_lps: np.ndarray, row: int, o: SacrumOptions) -> bool:
    """Does the bone at point `row` of the chain run on into the iliac wings: on both sides, or on
    one with the other side's band out of the scan? Probed in the slab across the chain's local
    axis and across its axis over two rows each way: the net's point on L5 may lie 5-10 mm to one
    side, which tilts the local slab by 20 degrees or more (an S-I crop of the real lumbar CT)."""
    return any(_bridges_across(volume, points_lps, row, o, frames) for frames in (1, 2))


def _bridges_across(volume: Volume, points_lps: np.ndarray, row: int, o: SacrumOptions, frames: int) -> bool:
    """`_bridges` in the slab across the axis of `chain_frames(points_lps, reach=frames)`."""
    reach = o.reach_mm + 2 * o.pixel_mm
    across, front_back, radius = probe_grid(reach, o.pixel_mm)
    axis, lateral, posterior, gap = (a[row] for a in chain_frames(points_lps, reach=frames))
    along = np.linspace(o.slab_gaps[0], o.slab_gaps[1], o.slab_samples) * gap
    mip, inside = slab_mip(volume, points_lps[row], (axis, lateral, posterior), along, (across, front_back))
    bone = mip > o.bone_hu
    reached, seen = [], []
    for band in side_bands(across, front_back, o.band_deg):  # patient right, left
        band &= radius <= reach
        grown_from_body = crosses((band | (radius <= o.core_mm)) & bone, radius, o.core_mm, o.reach_mm)
        reached.append(grown_from_body and bone[band & (radius >= o.fill_from_mm)].mean() >= o.fill)
        seen.append(inside[band].mean() >= o.seen_fraction)
    return any(reached) and all(r or not s for r, s in zip(reached, seen))


def sacral_start(
    volume: Volume,
    points_lps: np.ndarray,
    rib_sides: np.ndarray,
    reads: np.ndarray,
    options: SacrumOptions = DEFAULT_OPTIONS.sacrum,
) -> int:
    """Index of the first point (chain order) on the sacrum, `len(points_lps)` if none.

    Only the last `tail_rows` points are probed, and a point counts only where the identification
    net reads it as L5 or L6 (`reads`, (n,), each point's most voted class, VerSe labels: the net
    has no sacral class and reads S1 as the last lumbar vertebra, again below a real L5 or, in a
    crop that shows no more of the spine than the lower lumbar vertebrae, one level below the L4 it
    reads there; a vertebra it reads as L4 or higher is not S1), and where one of the two
    vertebrae above it is seen without ribs by the rib probe (`rib_sides`, (n, 2), 0 on both
    sides): not below thoracic vertebrae, whose ribs cross the band too; one, since an iliac crest
    may cross the rib probe's ring beside L5. An L5 fused with the iliac wings (a transitional
    vertebra, a few in a hundred spines) bridges as well and is taken for S1; no phantom's L5 and
    no real one here bridges.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    n = len(p)
    ribless = (np.asarray(rib_sides) == 0).all(axis=1)
    for i in range(max(2, n - options.tail_rows), n):
        if reads[i] in _L5_L6 and ribless[i - 2 : i].any() and _bridges(volume, p, i, options):
            return i
    return n


def sacrum_below(volume: Volume, points_lps: np.ndarray, options: SacrumOptions = DEFAULT_OPTIONS.sacrum) -> bool:
    """Does the sacrum lie one gap below the chain's last point (n, 3) mm, along the chain (n >= 2)?

    The probe at that place: S1 bridges to the iliac wings, where the pelvic soft tissue below a
    stray point or a lumbar vertebra the chain missed does not. Where the lumbosacral angle puts
    that place in front of S1 (the real lumbar CT tilted 15 degrees: soft tissue there, so the HU
    test of `anchors` fails), the probe's core and lateral band still take in S1's body and alae.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    beyond = 2 * p[-1] - p[-2]
    return _bridges(volume, np.vstack([p, beyond]), len(p), options)


def on_sacrum(volume: Volume, points_lps: np.ndarray, options: SacrumOptions = DEFAULT_OPTIONS.sacrum) -> bool:
    """Does the chain's last point (of n >= 2, mm) bridge to the iliac wings? Then it is S1, which
    the localization net found and `sacral_start` did not take (the identification net read it as
    L4 or higher, or no ribless vertebra lies above it), or an L5 fused with the wings; either way
    no count up from the sacrum may start there (an S-I crop of the real lumbar CT read S1 as L5
    and trusted four labels a level off, at 0.98)."""
    p = np.asarray(points_lps, dtype=np.float64)
    return _bridges(volume, p, len(p) - 1, options)


def last_lumbar_classes(rib_sides: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """(n, c) bool: the classes a count up from the sacrum leaves `n` points whose last one lies
    directly above it, given what the rib probe found beside each (`rib_sides`, (n, 2)).

    Where no point of the chain bears ribs (`ribs.ribbed`), the sacrum is the scan's only count:
    the last point is L5, as a reader names the vertebra above the sacrum on a scan that does not
    show the last rib (a spine with four or six lumbar vertebrae is then named a level off, and
    its labels keep the net's low confidence). On a crop of the lower lumbar spine the net reads
    the vertebrae a level high as a whole (the real lumbar CT's middle 60 %: L2-L5 read as L1-L4),
    and the decode, summing rows, lets their votes outweigh the sacrum's likelihood on one row
    (`last_lumbar_likelihood`). Where the chain shows ribs, the last rib is the other count
    (`ribs.junction_classes`), and the two together decide five lumbar vertebrae or six: every
    class stays here.
    """
    out = np.ones((len(rib_sides), len(classes)), dtype=bool)
    if len(out) and not ribbed(rib_sides).any():
        out[-1] = np.asarray(classes) == _L5
    return out


def last_lumbar_likelihood(n: int, classes: tuple[int, ...], options: SacrumOptions = DEFAULT_OPTIONS.sacrum) -> np.ndarray:
    """(n, c) likelihood per class of `n` points whose last one lies directly above the sacrum:
    1 for L5, `variant` for L4 and L6, `other` for every other class; 1 on the other rows."""
    out = np.ones((n, len(classes)))
    if n:
        c = np.asarray(classes)
        out[-1] = np.where(c == _L5, 1.0, np.where(np.isin(c, _VARIANTS), options.variant, options.other))
    return out
