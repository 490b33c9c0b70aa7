"""The thorax: rib cage and sternum, lungs, diaphragm, mediastinum, heart and airways, shoulders and arms.

The rib cage is computed once (`RibCage.build`) and used three times: the lungs fill it, the
shoulders hang from it, and its ribs are painted after the spine. Proportions (hoop widths, rib
ends, organ sizes and offsets in mm) were set by eye against adult chest CT, not measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .params import PhantomParams
from .raster import Scene
from .shapes import frame, rot_z
from .spine import Spine
from .tissue import AIR, ARM_CORTEX_EXTRA, FAT, LUNG, MARROW, MEDIASTINUM, MUSCLE, RIB_CORTEX_EXTRA, SLENDER_EXTRA, SOFT, THIN_BONE_EXTRA
from .torso import Torso

RIB_POINTS = 16  # samples along each rib
BONY_END = 2.3  # rad along the hoop where a rib's bone gives way to costal cartilage
# Fraction of the full hoop width at relative height 0 (T1) ... 1 (T12): the cage is narrow at the top.
HOOP_WIDTH = ((0.0, 0.1, 0.25, 0.6, 1.0), (0.5, 0.72, 0.9, 1.0, 0.92))
MAX_HOOP_HALF_WIDTH = 165.0  # mm, times habitus
# Where a rib meets its vertebra, above the body's centre: the head of ribs 2-9 in the disc above
# (mm above the body's top), of ribs 1 and 10-12 on the body's upper part, and the tubercle on the
# transverse process (both in half heights).
HEAD_ABOVE_BODY, OWN_FACET_Z, TUBERCLE_Z = 2.5, 0.6, 0.45


@dataclass(frozen=True)
class Hoop:
    """The rib hoop of one thoracic level in its axial plane: two ellipses' geometry (mm, world LPS)."""

    offset: float  # lateral offset of each half's centre from the midline
    half_width: float  # semi-axis of each half, left-right
    half_depth: float  # semi-axis, anterior-posterior
    y_centre: float  # world y of the hoop's centre


@dataclass(frozen=True, eq=False)
class Rib:
    """One rib (world LPS mm): head capsule start, bony polyline, and the costal cartilage polyline (may be empty)."""

    head: np.ndarray  # (3,)
    bone: np.ndarray  # (n, 3)
    cartilage: np.ndarray  # (m, 3); m = 0 where the rib ends in bone (the floating ribs)


@dataclass(frozen=True, eq=False)
class RibCage:
    """Hoops by thoracic label, the ribs in painting order, and the sternum's ends (jugular notch, xiphoid)."""

    hoops: dict[int, Hoop]
    ribs: tuple[Rib, ...]
    sternum: tuple[np.ndarray, np.ndarray]

    @classmethod
    def build(cls, prm: PhantomParams, spine: Spine, torso: Torso) -> RibCage:
        """A rib on each side of every thoracic vertebra, sized to the torso outline at its level."""
        thor = [lv for lv in spine.vertebrae if 8 <= lv.label <= 19 or lv.label == 28]
        n = len(thor)
        hoops: dict[int, Hoop] = {}
        ribs: list[Rib] = []
        for m, lv in enumerate(thor):
            _, cy, hw, hd, _, fat = torso.at(lv.center[2])
            frac = m / (n - 1)
            width = (hw - 0.6 * fat - 12.0) * float(np.interp(frac, *HOOP_WIDTH))
            width = min(width, MAX_HOOP_HALF_WIDTH * prm.habitus)
            y_back = lv.center[1] + lv.dims.b + 1.2 * lv.dims.ry
            y_front = cy - hd + fat + 14.0
            dx, ar, br = 0.28 * width, 0.72 * width, (y_back - y_front) / 2
            yc = (y_back + y_front) / 2
            hoops[lv.label] = Hoop(dx, ar, br, yc)
            # ribs 1-7 reach the sternum, the next ones the costal margin, the last two float
            rank = m + 1
            end = math.pi - 0.15 if rank <= 7 else (2.5 if rank <= n - 2 else 1.6 - 0.3 * (rank - n + 1))
            bone_end = min(end, BONY_END)
            xs = lv.dims.rx + 0.6 * lv.dims.pr + 0.5 * lv.dims.tp_len  # the tubercle, on the transverse process
            psi0 = math.asin(float(np.clip((xs - dx) / ar, -0.9, 0.9)))
            drop = 40.0 + 25.0 * frac  # ribs slope down toward the front, more so below
            rot = lv.rot[0, :2]
            # axial rotation of the vertebra turns its ribs (the rib hump of scoliosis)
            turn = np.array([[rot[0], rot[1], 0], [-rot[1], rot[0], 0], [0, 0, 1.0]])
            for sx in (-1.0, 1.0):
                psi = np.linspace(psi0, end, RIB_POINTS)
                loc = np.stack([sx * (dx + ar * np.sin(psi)), yc + br * np.cos(psi) - lv.center[1],
                                TUBERCLE_Z * lv.dims.h - drop * ((psi - psi0) / math.pi) ** 1.5], 1)
                pts = lv.center + loc @ turn
                # ribs 2-9 articulate across the disc above (demi-facets), 1 and 10-12 with their own body's top
                head_z = lv.dims.h + HEAD_ABOVE_BODY if 2 <= rank <= 9 else OWN_FACET_Z * lv.dims.h
                head = lv.world([sx * 0.8 * lv.dims.a, 0.7 * lv.dims.b, head_z])
                k = int(np.searchsorted(psi, bone_end))
                ribs.append(Rib(head, pts[: k + 1], pts[k:] if k < len(pts) - 1 else pts[:0]))
        # The sternum runs from the jugular notch (at T2) to the xiphoid (at T9), inside the front of the cage.
        top, bot = thor[1], thor[8]

        def inner_front(label: int) -> float:
            return hoops[label].y_centre - hoops[label].half_depth - 2.0

        x0 = prm.anchor_lps[0]
        p0 = np.array([x0, inner_front(top.label), top.center[2] - 10.0])
        p1 = np.array([x0, inner_front(bot.label) + 5.0, bot.center[2] - 45.0])
        return cls(hoops, tuple(ribs), (p0, p1))

    def paint(self, sc: Scene, prm: PhantomParams) -> None:
        """Ribs (bone, then costal cartilage) and the sternum (body and manubrium)."""
        canc, cort = prm.bone.cancellous, prm.bone.cortical
        rib_cort = cort + RIB_CORTEX_EXTRA
        for rib in self.ribs:
            sc.capsule(rib.head, rib.bone[0], 4.0, 4.5, canc + SLENDER_EXTRA, rib_cort, 1.0)
            sc.chain(rib.bone, 5.0, 4.5, canc + THIN_BONE_EXTRA, rib_cort, 1.0)
            if len(rib.cartilage):
                sc.chain(rib.cartilage, 4.5, 4.5, prm.cartilage_hu)
        p0, p1 = self.sternum
        sc.box((p0 + p1) / 2, frame(p0 - p1, 0.0), (15.0, 5.0, float(np.linalg.norm(p1 - p0) / 2)), canc, cort, 1.0, r=2.0)
        sc.box(p0 + [0, 0, 18.0], np.eye(3), (26.0, 6.0, 16.0), canc, cort, 1.0, r=3.0)


def paint_lungs_and_mediastinum(sc: Scene, prm: PhantomParams, spine: Spine, cage: RibCage) -> None:
    """Lungs inside the rib cage, the diaphragm domes, mediastinum, heart, trachea and bronchi."""
    z_of, y_of, b_of, x0 = spine.z, spine.y, spine.depth, prm.anchor_lps[0]
    hoop = cage.hoops[14]  # T7, mid-chest
    dx, ar, br, yc = hoop.offset, hoop.half_width, hoop.half_depth, hoop.y_centre
    shift = prm.shifts
    z_top, z_bot = z_of[8] + 30.0 + shift["apex"], z_of[spine.last_thoracic] - 10.0 + shift["diaphragm"]
    zc, hz = (z_top + z_bot) / 2, (z_top - z_bot) / 2
    for sx in (-1.0, 1.0):
        sc.ellipsoid([x0 + sx * (dx + 0.38 * ar), yc + 0.05 * br, zc], np.eye(3),
                     (0.66 * ar, 0.92 * br, hz), LUNG + prm.lung_offset)
    dome = z_of[17] + shift["diaphragm"] - 0.2 * hz
    for sx, lift in ((-1.0, 12.0), (1.0, 0.0)):  # right dome (-x) sits higher: the liver
        sc.ellipsoid([x0 + sx * 0.5 * ar, yc - 0.1 * br, dome + lift - 1.1 * hz], np.eye(3),
                     (0.95 * ar, 1.15 * br, 1.1 * hz), SOFT)
    up = np.array([0.0, 0.0, shift["mediastinum"]])
    sc.box(np.array([x0, yc - 0.45 * br, z_of[13]]) + up, np.eye(3), (24.0, 0.45 * br, 0.45 * hz), MEDIASTINUM, r=8.0)
    blood = prm.blood_hu
    heart = np.array([x0 + 22.0, yc - 0.42 * br, z_of[15] + 5.0]) + up
    rot = rot_z(-35.0)  # the heart's long axis points left, forward and down
    sc.ellipsoid(heart, rot, (62.0, 50.0, 56.0), FAT)  # epicardial fat
    sc.ellipsoid(heart, rot, (57.0, 45.0, 52.0), SOFT)  # myocardium
    sc.ellipsoid(heart + [-4, 3, 4], rot, (44.0, 33.0, 40.0), blood)  # chambers
    # trachea from the larynx to the carina, then the main bronchi
    air = [np.array([x0, y_of[lab] - b_of[lab] - gap, z_of[lab]]) + up for lab, gap in ((3, 20.0), (5, 24.0), (7, 20.0), (9, 18.0))]
    carina = np.array([x0, y_of[12] - b_of[12] - 18.0, z_of[12]]) + up
    sc.chain(np.array([*air, carina]), 8.0, 8.0, AIR)
    for sx in (-1.0, 1.0):
        sc.capsule(carina, carina + [sx * 45.0, 10.0, -30.0], 6.5, 4.5, AIR)


def paint_shoulders_and_arms(sc: Scene, prm: PhantomParams, spine: Spine, torso: Torso, cage: RibCage) -> None:
    """Clavicles, scapulae, humeri and the arms' soft tissue, arms at the sides or raised."""
    canc, cort = prm.bone.cancellous, prm.bone.cortical
    x0, up = prm.anchor_lps[0], prm.shifts["shoulders"]
    z_of = {lab: z + up for lab, z in spine.z.items()}  # the shoulder girdle and arms at the seed's own height
    hw = torso.at(z_of[10])[2]  # half width of the chest at T3
    hoop = cage.hoops[12]
    dx, ar, br, yc = hoop.offset, hoop.half_width, hoop.half_depth, hoop.y_centre
    for sx in (-1.0, 1.0):
        shoulder = np.array([x0 + sx * (hw - 35.0), yc - 0.2 * br, z_of[8] + 5.0])
        if prm.arms == "up":
            shoulder[0] = x0 + sx * (hw - 15.0)
            elbow = shoulder + [sx * -25.0, -20.0, 280.0]
            hand = elbow + [sx * -40.0, -30.0, 240.0]
        else:
            z_el = z_of[20]  # elbows at L1
            elbow = np.array([x0 + sx * (torso.at(z_el)[2] + 35.0), yc, z_el])
            hand = np.array([x0 + sx * (torso.at(z_el - 260.0)[2] * 0.85 + 30.0), yc - 35.0, z_el - 260.0])
        sc.chain(np.array([shoulder, elbow, hand]), 48.0, 32.0, MUSCLE, FAT, prm.fat_mm * 0.5)
        sc.ellipsoid(shoulder, np.eye(3), (24.0, 24.0, 24.0), canc + THIN_BONE_EXTRA, cort, 1.5)
        sc.capsule(shoulder, elbow, 12.0, 10.0, MARROW, cort + ARM_CORTEX_EXTRA, 4.0)
        for off in (-8.0, 8.0):  # radius and ulna
            sc.capsule(elbow + [0, off, 0], hand + [0, off, 0], 7.0, 6.0, MARROW, cort + ARM_CORTEX_EXTRA, 3.0)
        notch = np.array([x0 + sx * 22.0, yc - br + 5.0, z_of[8] - 5.0])
        acromion = shoulder + [sx * -10.0, 10.0, 22.0]
        mid = (notch + acromion) / 2 + [0, -15.0, 5.0]
        sc.chain(np.array([notch, mid, acromion]), 6.5, 6.0, canc + SLENDER_EXTRA, cort, 1.5)
        blade = np.array([x0 + sx * 0.55 * (dx + ar), yc + br + 12.0, z_of[11]])
        sc.box(blade, rot_z(sx * -30.0), (40.0, 3.0, 65.0), canc, cort, 1.2, r=2.0)
        sc.capsule(blade + [0, 0, 45.0], acromion, 6.0, 7.0, canc + THIN_BONE_EXTRA, cort, 1.2)
