"""The body outline: a per-slice superellipse of skin around a layer of fat, lying supine on the table.

The outline is interpolated between anchor levels (neck, shoulders, chest, abdomen, pelvis) whose
half widths and skin distances were chosen by eye against axial CT of adults, not measured; the
seed scales them (habitus, obesity). Also the paraspinal muscles, which follow the spine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .params import PhantomParams
from .raster import Scene
from .spine import Spine
from .tissue import MUSCLE

ARMS_UP_SHOULDER = 0.82  # shoulder width left when the arms are raised (the shoulders roll in)
TABLE_GAP = 5.0  # mm the table top sits above the skin of the upper back (the back flattens onto it)


@dataclass(frozen=True, eq=False)
class Torso:
    """The outline's anchor table, sorted by z, and the table top (world LPS mm)."""

    z: np.ndarray  # (n,) world z of the anchors
    y: np.ndarray  # (n,) world y of the spine at the anchors
    outline: np.ndarray  # (n, 4) half width, skin in front of and behind the spine, superellipse exponent
    y_table: float  # world y of the table top the patient lies on
    z_lying: tuple[float, float]  # (T1, C7) z: below T1 the back lies on the table, above C7 it is free
    z_fat: tuple[float, float]  # (T1, C4) z: the fat layer thins from full at T1 to 40 % at C4
    fat_mm: float
    x0: float  # world x of the midline

    @classmethod
    def build(cls, prm: PhantomParams, spine: Spine) -> Torso:
        """The seed's outline along its spine."""
        z_of, y_of, sacrum = spine.z, spine.y, spine.sacrum
        hab, obese = prm.habitus, prm.obesity
        shoulder = 1.0 if prm.arms == "down" else ARMS_UP_SHOULDER
        # (label, half width, front, back, exponent), front/back = skin distance from the body
        # centre (mm): neck, shoulders, chest, abdomen; the pelvis follows from the sacrum.
        rows = [
            (1, 55, 45, 70, 2.0), (4, 55, 50, 70, 2.0), (7, 75, 55, 75, 2.0), (8, 150 * shoulder, 85, 80, 2.2),
            (10, 175 * shoulder, 115, 75, 2.4), (13, 155, 140, 75, 2.4), (17, 150, 150, 80, 2.4),
            (spine.last_thoracic, 145, 145 * obese, 85, 2.4), (22, 150, 150 * obese, 95, 2.5), (24, 165, 145 * obese, 100, 2.6),
        ]
        zz = np.array([z_of[lab] for lab, *_ in rows] + [sacrum[2].center[2] - 30.0, sacrum[-1].center[2] - 60.0])
        yy = np.array([y_of[lab] for lab, *_ in rows] + [sacrum[0].center[1]] * 2)
        vals = np.array([r[1:] for r in rows] + [(175, 140 * obese, 115, 2.6), (180, 130 * obese, 105, 2.6)], float)
        vals[:, :3] *= hab
        order = np.argsort(zz)
        zz, yy, vals = zz[order], yy[order], vals[order]
        # Supine: the upper back carries the weight, so the table touches the skin behind T2-T10.
        chest = (zz <= z_of[9]) & (zz >= z_of[17])
        y_table = float(np.max((yy + vals[:, 2])[chest])) - TABLE_GAP
        return cls(zz, yy, vals, y_table, (z_of[8], z_of[7]), (z_of[8], z_of[4]), prm.fat_mm, prm.anchor_lps[0])

    def profile(self, zs: np.ndarray) -> np.ndarray:
        """(nk, 6) per-slice outline at world z `zs` (mm): centre x, centre y, half width, half depth,
        superellipse exponent, fat thickness (mm, LPS)."""
        hw, front, back, e = (np.interp(zs, self.z, self.outline[:, c]) for c in range(4))
        ys = np.interp(zs, self.z, self.y)
        # Below the neck the back lies flat on the table: kyphosis does not lift it off, lordosis
        # arches off a little.
        lying = np.interp(zs, list(self.z_lying), [1.0, 0.0])
        back = back + lying * np.clip(self.y_table + 6.0 - ys - back, 0.0, 20.0)
        fat = self.fat_mm * np.interp(zs, list(self.z_fat), [1.0, 0.4])
        cx = np.full_like(zs, self.x0)
        return np.stack([cx, ys + (back - front) / 2, hw, (back + front) / 2, e, fat], 1)

    def at(self, z: float) -> np.ndarray:
        """(6,) the outline of the slice at world z (mm); see `profile`."""
        return self.profile(np.array([z]))[0]


def paint_paraspinal(sc: Scene, spine: Spine) -> None:
    """Erector spinae muscles along the back, behind the transverse processes, thickening downward."""
    for sx in (-1.0, 1.0):
        pts = np.array([lv.world([sx * (lv.dims.rx + 14.0), lv.dims.b + 2 * lv.dims.ry + 16.0, 0]) for lv in spine.vertebrae[2:]])
        sc.chain(pts, 14.0, 30.0, MUSCLE)
