"""The spine: levels placed along a curved centre line, vertebrae (bodies, arches, C1-C2), discs, sacrum, implants.

Lengths are in mm, angles in degrees, positions in world LPS mm. A vertebra's local frame has x to
the patient's left, y posterior and z along the spine tangent (superior).

Sizes come from the table at anchor levels of the canonical index C1..L5 = 0..23 in
`vertedge.vertebra_sizes` (what they are and where they come from), interpolated in between and
scaled by the seed's stature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..vertebra_sizes import ANCHORS, ANGLES, TABLE
from .params import PhantomParams
from .raster import Scene
from .shapes import BodyShape, bump, frame, rot_x
from .tissue import ARCH_EXTRA, LATERAL_MASS_EXTRA, SLENDER_EXTRA, BoneHU

C1_ABOVE_C2 = 21.0  # mm along the spine from the C2 body centre up to C1's dens region (scaled by stature)
BODY_EXPONENT, BODY_WAIST = 2.3, 0.07  # a rounded, slightly waisted body (concave sides)
DENS_REGION = (5.5, 5.5, 7.0)  # half width, depth, height (mm) of C1's "body": the dens inside its ring
# Sacral segments S1-S5: half heights (mm, scaled by stature) and sizes relative to the last lumbar body.
SACRAL_HALF_HEIGHT = (14.0, 11.0, 9.0, 8.0, 7.0)
SACRAL_TAPER = (1.0, 0.8, 0.62, 0.48, 0.36)
SACRAL_WIDENING = 1.02  # S1 is a little wider than L5
SACRAL_FUSION = 1.0  # mm between fused segments (the remnant discs)
# Heights of the pedicles' and transverse processes' axes above the body's centre, in half heights.
PEDICLE_Z, TP_Z, CERVICAL_TP_Z = 0.45, 0.4, 0.1


@dataclass(frozen=True)
class VertebraDims:
    """A vertebra's sizes (mm) and process angles (deg) at one level."""

    a: float  # body half width
    b: float  # body half depth
    h: float  # body half height
    disc: float  # height of the disc below
    rx: float  # canal half width
    ry: float  # canal half depth
    pr: float  # pedicle radius
    sp_len: float  # spinous process length
    sp_ang: float  # spinous process downward angle, deg
    tp_len: float  # transverse process length
    tp_ang: float  # transverse process backward angle, deg

    @classmethod
    def at(cls, canon: float, stature: float) -> VertebraDims:
        """Interpolated at a fractional canonical level (C1..L5 = 0..23), lengths scaled by `stature`."""
        return cls(**{k: float(np.interp(canon, ANCHORS, v)) * (1.0 if k in ANGLES else stature) for k, v in TABLE.items()})


@dataclass(frozen=True, eq=False)
class Level:
    """One spinal level: label (0 for sacral segments), position along the spine and its frame."""

    label: int
    canon: float  # fractional canonical index on C1..L5 = 0..23 (sizes are interpolated on it)
    s: float  # arc length from C1 downward, mm
    center: np.ndarray  # world LPS mm of the body centre
    rot: np.ndarray  # frame rows
    dims: VertebraDims

    def world(self, q: np.ndarray | list[float]) -> np.ndarray:
        """Local vertebra coordinates (mm, ..., 3) -> world LPS mm."""
        return self.center + np.asarray(q, float) @ self.rot


@dataclass(frozen=True, eq=False)
class Spine:
    """The vertebrae (cranio-caudally) and the sacral segments S1-S5, with per-label lookups."""

    vertebrae: tuple[Level, ...]
    sacrum: tuple[Level, ...]
    last_thoracic: int  # VerSe label of the lowest thoracic vertebra (19, or 28 for T13)
    z: dict[int, float] = field(init=False)  # world z (mm) of each vertebra's body centre, by label
    y: dict[int, float] = field(init=False)  # world y (mm), by label
    depth: dict[int, float] = field(init=False)  # body half depth b (mm), by label

    def __post_init__(self) -> None:
        object.__setattr__(self, "z", {lv.label: float(lv.center[2]) for lv in self.vertebrae})
        object.__setattr__(self, "y", {lv.label: float(lv.center[1]) for lv in self.vertebrae})
        object.__setattr__(self, "depth", {lv.label: lv.dims.b for lv in self.vertebrae})


def labels_of(variant: str) -> list[tuple[int, float]]:
    """(VerSe label, canonical index) cranio-caudally for a spine variant ('normal', 'T13', 'L6')."""
    n_t = 13 if variant == "T13" else 12
    n_l = 6 if variant == "L6" else 5
    thoracic = [*range(8, 20), 28][:n_t]
    out = [(lab, float(lab - 1)) for lab in range(1, 8)]
    out += [(lab, 7.0 + m * 11.0 / (n_t - 1)) for m, lab in enumerate(thoracic)]
    out += [(20 + m, 19.0 + m * 4.0 / (n_l - 1)) for m in range(n_l)]
    return out


def build_spine(prm: PhantomParams) -> Spine:
    """Place vertebrae and sacral segments along the seed's curved spine (sagittal S, scoliosis, axial turn)."""
    st = prm.stature
    seq = labels_of(prm.variant)
    dims = [VertebraDims.at(c, st) for _, c in seq]
    s_pos = [0.0, C1_ABOVE_C2 * st]
    for m in range(2, len(seq)):
        s_pos.append(s_pos[-1] + dims[m - 1].h + dims[m - 1].disc + dims[m].h)
    last = dims[-1]
    sac_h = np.array(SACRAL_HALF_HEIGHT) * st
    s_sac = [s_pos[-1] + last.h + last.disc + sac_h[0]]
    for m in range(1, 5):
        s_sac.append(s_sac[-1] + sac_h[m - 1] + sac_h[m] + SACRAL_FUSION)
    idx = {lab: m for m, (lab, _) in enumerate(seq)}
    last_t = prm.last_thoracic
    # Sagittal tangent angle (deg, + = descending toward posterior) at anchor levels: lordosis
    # (cervical, lumbar) and kyphosis (thoracic) as a smooth S, then the sacrum tilting back.
    c, t, lo = prm.lordosis_c, prm.kyphosis, prm.lordosis_l
    anchors = [
        (s_pos[0] - 60.0, -c), (s_pos[idx[4]], 0.0), (s_pos[idx[7]], c * 0.8),
        (s_pos[idx[8]], t * 0.5), (s_pos[idx[14]], 0.0), (s_pos[idx[last_t]], -t * 0.45),
        (s_pos[idx[20]], -lo * 0.5), (s_pos[idx[20] + 2], 0.0), (s_pos[-1], lo * 0.6),
        (s_sac[0], prm.sacral_tilt), (s_sac[-1] + 40.0, prm.sacral_tilt + 25.0),
    ]
    # The centre line, integrated in 0.5 mm steps of arc length.
    sa, th = np.array([a for a, _ in anchors]), np.radians([b for _, b in anchors])
    s = np.arange(sa[0], sa[-1], 0.5)
    theta = np.interp(s, sa, th)
    y = np.concatenate([[0.0], np.cumsum(np.sin(theta[:-1]) * 0.5)])
    z = -np.concatenate([[0.0], np.cumsum(np.cos(theta[:-1]) * 0.5)])
    x = np.zeros_like(s)
    rot = np.zeros_like(s)
    for amp, s0, s1 in prm.scoliosis:  # lateral bells; vertebrae turn toward the convex side
        bell = bump(s, s0, s1)
        x += amp * bell
        rot += math.copysign(prm.scoliosis_rotation, amp) * bell * min(abs(amp) / 20.0, 1.0)
    pts = np.stack([x, y, z], 1) + np.array(prm.anchor_lps)
    tan = -np.gradient(pts, axis=0)

    def level(lab: int, canon: float, sv: float, d: VertebraDims) -> Level:
        m = int(np.clip(np.searchsorted(s, sv), 0, len(s) - 1))
        return Level(lab, canon, sv, pts[m].copy(), frame(tan[m], float(rot[m])), d)

    vert = tuple(level(lab, cn, sv, d) for (lab, cn), sv, d in zip(seq, s_pos, dims))
    sacrum = []
    for m, sv in enumerate(s_sac):
        d = replace(last, a=last.a * SACRAL_TAPER[m] * SACRAL_WIDENING, b=last.b * SACRAL_TAPER[m], h=sac_h[m])
        sacrum.append(level(0, 24.0 + m, sv, d))
    return Spine(vert, tuple(sacrum), last_t)


def body_shape(lv: Level) -> BodyShape:
    """The analytic body of a vertebra (C1: the dens region inside its anterior ring)."""
    d = lv.dims
    if lv.label == 1:
        return BodyShape(lv.center, lv.rot, *DENS_REGION, 2.0, 0.0)
    return BodyShape(lv.center, lv.rot, d.a, d.b, d.h, BODY_EXPONENT, BODY_WAIST)


def _arch(sc: Scene, lv: Level, bone: BoneHU) -> None:
    """Posterior arch: pedicles, articular pillars, laminae, spinous and transverse processes.

    Positions are fractions of the level's dims (local frame, mm), set by eye. The pedicles and the
    thoracic and lumbar transverse processes leave the upper half of the body, as in real
    vertebrae: a net that learned them at mid-height put real thoracic centroids high (RESULTS.md,
    "Why the chest CT's points sit high").
    """
    d = lv.dims
    b, h, rx, ry, pr = d.b, d.h, d.rx, d.ry, d.pr
    w = lv.world
    core, cort, t = bone.cancellous + ARCH_EXTRA, bone.cortical, 1.0
    yc = b + ry  # canal centre, posterior of the body
    xp = rx + 0.6 * pr  # pedicle / pillar line
    cerv, lumb = lv.canon < 7, lv.canon >= 19
    sp_base = np.array([0.0, b + 2 * ry + 0.7 * pr, -0.1 * h])
    for sx in (-1.0, 1.0):
        sc.capsule(w([sx * 0.75 * rx, 0.6 * b, PEDICLE_Z * h]), w([sx * xp, yc + 0.3 * ry, PEDICLE_Z * h]),
                   pr, pr, core, cort, t)
        ext = h + 0.45 * d.disc
        lean = 3.0 if cerv else 0.0  # cervical pillars slope backward going down
        sc.capsule(w([sx * xp, yc + 0.3 * ry - lean, ext]), w([sx * xp, yc + 0.3 * ry + lean, -ext]),
                   1.1 * pr, 1.1 * pr, core, cort, t)
        for zl in (0.35 * h, -0.45 * h):
            sc.capsule(w([sx * xp, yc + 0.3 * ry, zl]), w([0.0, sp_base[1], zl + sp_base[2]]),
                       0.6 * pr, 0.6 * pr, core, cort, t)
        ang = math.radians(d.tp_ang)
        tp0 = np.array([sx * xp, yc + (-0.6 if cerv else 0.2) * ry, (CERVICAL_TP_Z if cerv else TP_Z) * h])
        tp1 = tp0 + d.tp_len * np.array([sx * math.cos(ang), math.sin(ang), 0.05])
        sc.capsule(w(tp0), w(tp1), 0.8 * pr, (0.45 if not lumb else 0.5) * pr, core, cort, t)
    ang = math.radians(d.sp_ang)
    tip = sp_base + d.sp_len * np.array([0.0, math.cos(ang), -math.sin(ang)])
    if lumb:  # lumbar spinous processes are tall hatchet-shaped plates
        mid, half = (sp_base + tip) / 2, np.array([2.5, d.sp_len / 2, 0.55 * h])
        rot = rot_x(-d.sp_ang) @ lv.rot
        sc.box(w(mid), rot, half, core, cort, t, r=2.0)
    elif cerv and lv.label > 2:  # bifid cervical tips
        for sx in (-1.0, 1.0):
            sc.capsule(w(sp_base), w(tip + [sx * 3.0, 0, 0]), 0.7 * pr, 0.5 * pr, core, cort, t)
    else:
        sc.capsule(w(sp_base), w(tip), 0.8 * pr, 0.55 * pr, core, cort, t)


def _atlas(sc: Scene, lv: Level, bone: BoneHU) -> None:
    """C1: a ring with lateral masses and long transverse processes around the dens, scaled by stature."""
    canc, cort = bone.cancellous, bone.cortical
    st = lv.dims.a / 8.0
    ang = np.linspace(0, 2 * np.pi, 17)
    ring = np.stack([20 * st * np.sin(ang), 9 * st - 20 * st * np.cos(ang), np.zeros_like(ang)], 1)
    sc.chain(lv.world(ring), 3.5, 3.5, canc + ARCH_EXTRA, cort, 1.0)
    for sx in (-1.0, 1.0):
        sc.ellipsoid(lv.world([sx * 16 * st, 4 * st, 0]), lv.rot, (7 * st, 9 * st, 8 * st), canc + LATERAL_MASS_EXTRA, cort, 1.2)
        sc.capsule(lv.world([sx * 20 * st, 4 * st, 0]), lv.world([sx * 38 * st, 6 * st, 2]), 5.0, 3.0,
                   canc + ARCH_EXTRA, cort, 1.0)


def paint_spine(sc: Scene, prm: PhantomParams, spine: Spine) -> dict[int, BodyShape]:
    """Discs, vertebrae (bodies, arches, C1 ring, C2 dens) and the sacrum; returns the body shapes by label."""
    bone = prm.bone
    canc, cort = bone.cancellous, bone.cortical
    vert, sacrum = spine.vertebrae, spine.sacrum
    chain = vert[1:] + sacrum[:1]
    for up, lo in zip(chain[:-1], chain[1:]):  # a disc fills the gap between two bodies, slightly narrower
        mid = (up.center + lo.center) / 2
        tan = up.center - lo.center
        gap = np.linalg.norm(tan) - up.dims.h - lo.dims.h
        d = BodyShape(mid, frame(tan, 0.0), (up.dims.a + lo.dims.a) / 2 * 0.98,
                      (up.dims.b + lo.dims.b) / 2 * 0.98, float(gap / 2 + 1.0), BODY_EXPONENT, 0.0)
        sc.body(d, prm.disc_hu, prm.disc_hu + 40, 1.5)  # the annulus is denser than the nucleus
    bodies = {}
    for lv in vert:
        shape = body_shape(lv)
        bodies[lv.label] = shape
        if lv.label == 1:
            _atlas(sc, lv, bone)
            continue
        sc.body(shape, canc, cort, 1.0 if lv.canon < 7 else 1.3)  # cortex mm: thicker below the neck
        _arch(sc, lv, bone)
    c1, c2 = vert[0], vert[1]
    sc.capsule(c2.world([0, -1.0, 0.5 * c2.dims.h]), c1.world([0, 0, 6.0]), 5.5, 4.5, canc + SLENDER_EXTRA, cort, 1.0)
    _sacrum(sc, sacrum, bone)
    return bodies


def _sacrum(sc: Scene, sacrum: tuple[Level, ...], bone: BoneHU) -> None:
    """Fused sacral segments, the alae reaching the sacroiliac joints, and the median crest."""
    canc, cort = bone.cancellous, bone.cortical
    for m, lv in enumerate(sacrum):
        d = lv.dims
        sc.body(BodyShape(lv.center, lv.rot, d.a, d.b, d.h + 0.8, BODY_EXPONENT, 0.0), canc, cort, 1.0)
        wing = d.a * (2.1 - 0.25 * m)
        if m < 3:
            sc.box(lv.world([0, 0.7 * d.b, 0]), lv.rot, (wing, 0.9 * d.b, d.h * 0.9), canc, cort, 1.2, r=4.0)
        sc.capsule(lv.world([0, d.b + 8, 0]), lv.world([0, d.b + 16, -d.h]), 3.0, 2.5, canc + SLENDER_EXTRA, cort, 1.0)


def paint_implants(sc: Scene, prm: PhantomParams, spine: Spine) -> None:
    """Pedicle screws (6.4 mm thread, 12 mm head) through the instrumented levels and 6 mm rods joining their heads."""
    levels = [lv for lv in spine.vertebrae if lv.label in prm.metal_levels]
    hu = prm.metal_hu
    heads: dict[float, list[np.ndarray]] = {-1.0: [], 1.0: []}
    for lv in levels:
        d = lv.dims
        for sx in (-1.0, 1.0):
            entry = lv.world([sx * (d.rx + d.pr + 4.0), d.b + d.ry + 14.0, 0.1 * d.h])
            tip = lv.world([sx * 0.25 * d.a, -0.45 * d.b, 0.1 * d.h])
            sc.capsule(entry, tip, 3.2, 2.5, hu)
            sc.ellipsoid(entry, lv.rot, (6.0, 6.0, 6.0), hu)
            heads[sx].append(entry)
    for pts in heads.values():
        if len(pts) > 1:
            sc.chain(np.array(pts), 3.0, 3.0, hu)
