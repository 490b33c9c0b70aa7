"""The pelvis and hips: iliac wings, acetabula, femoral heads and shafts, pubic and ischial rami.

Sizes (mm, scaled by the square root of habitus) and offsets from the sacrum were set by eye
against adult pelvic CT, not measured.
"""

from __future__ import annotations

import math

import numpy as np

from .params import PhantomParams
from .raster import Scene
from .spine import Spine
from .tissue import FEMUR_CORTEX_EXTRA, MARROW, THIN_BONE_EXTRA, BoneHU

ILIAC_AXES = (70.0, 58.0, 72.0)  # mm: semi-axes of the ellipsoid the iliac wing is tiled on
CREST_TOP_PHI = -23.0  # degrees about S-I (posterior negative): behind this the crest falls ...
CREST_FALL = 0.85  # ... this many degrees of elevation per degree toward the posterior superior spine
TUBEROSITY_EXTRA = 6.0  # mm of half thickness added to the wing behind its middle (the iliac tuberosity)


def _iliac_wing(sc: Scene, centre: np.ndarray, axes: np.ndarray, sx: float, bone: BoneHU) -> None:
    """An iliac wing: a curved bony plate tiled on the lateral part of an ellipsoid (LPS mm)."""
    up = np.array([0.0, 0.0, 1.0])
    elevations = np.linspace(-20.0, 42.0, 4)  # degrees: acetabulum to crest
    for phi_deg in np.linspace(-70.0, 70.0, 7):
        # the crest falls behind its middle toward the posterior superior spine (S2), so it passes
        # L5's transverse processes with a gap (the iliolumbar ligament's), as on real CT
        top = elevations[-1] - CREST_FALL * max(0.0, CREST_TOP_PHI - phi_deg)
        phi = math.radians(phi_deg)
        for theta in np.radians(elevations[elevations <= top + 1e-9]):
            unit = np.array([sx * math.cos(theta) * math.cos(phi), -math.cos(theta) * math.sin(phi), math.sin(theta)])
            normal = unit / axes
            normal /= np.linalg.norm(normal)
            ez = up - normal @ up * normal
            ez /= np.linalg.norm(ez)
            rot = np.array([np.cross(normal, ez), normal, ez])
            # the wing thickens toward the acetabulum, and behind the sacroiliac joint (the tuberosity)
            thick = 3.0 + 3.0 * (theta < 0) + TUBEROSITY_EXTRA * (phi_deg < CREST_TOP_PHI)
            sc.box(centre + axes * unit, rot, (15.0, thick, 14.0), bone.cancellous, bone.cortical, 1.2, r=2.0)


def paint_pelvis(sc: Scene, prm: PhantomParams, spine: Spine) -> None:
    """Iliac wings (curved plates) from the sacroiliac joints, acetabula, femora, pubic and ischial rami."""
    bone = prm.bone
    canc, cort = bone.cancellous, bone.cortical
    x0 = prm.anchor_lps[0]
    s1, s3 = spine.sacrum[0], spine.sacrum[2]
    hab = prm.habitus**0.5
    for sx in (-1.0, 1.0):
        si = s1.world([sx * s1.dims.a * 2.0, 0.6 * s1.dims.b, -5.0])  # the sacroiliac joint
        _iliac_wing(sc, np.array([x0 + sx * 22.0 * hab, si[1] - 30.0 * hab, s1.center[2] - 30.0]),
                    np.array(ILIAC_AXES) * hab, sx, bone)
        hip = np.array([si[0] + sx * 55.0 * hab, si[1] - 55.0 * hab, s3.center[2] - 55.0])
        sc.ellipsoid(hip, np.eye(3), (30.0, 30.0, 30.0), canc, cort, 2.0)  # acetabulum
        sc.capsule(si + [0, 0, -20], hip, 14.0, 18.0, canc, cort, 1.5)
        sc.ellipsoid(hip + [sx * 3, 0, 0], np.eye(3), (23.0, 23.0, 23.0), canc + THIN_BONE_EXTRA, cort, 1.5)  # femoral head
        neck = hip + [sx * 40.0, 8.0, -30.0]
        sc.capsule(hip, neck, 15.0, 16.0, canc, cort, 1.5)
        sc.capsule(neck, neck + [sx * 25.0, 5.0, -300.0], 15.0, 13.0, MARROW, cort + FEMUR_CORTEX_EXTRA, 5.0)
        pub = np.array([x0 + sx * 12.0, hip[1] - 45.0, hip[2] - 10.0])  # the symphysis
        sc.capsule(hip, pub, 9.0, 8.0, canc, cort, 1.5)
        sc.capsule(hip + [0, 15, -30], pub + [0, 5, -30], 9.0, 8.0, canc, cort, 1.5)
        sc.capsule(hip, hip + [0, 15, -35], 12.0, 10.0, canc, cort, 1.5)  # ischium
