"""The head: skull (a shell around the brain), skull base, face, mandible with teeth, pharynx.

Sizes (mm, scaled by the seed's head scale) and offsets from C1-C3 were set by eye against adult
head-and-neck CT, not measured.
"""

from __future__ import annotations

import numpy as np

from .params import PhantomParams
from .raster import Scene
from .spine import Spine
from .tissue import AIR, BRAIN, FAT, JAW_EXTRA, SKULL_BASE_EXTRA, SKULL_CORTEX_EXTRA, SOFT, TOOTH

SKULL_SEMI_AXES = (72.0, 92.0, 78.0)  # mm, inner table: left-right, front-back, up-down


def paint_head(sc: Scene, prm: PhantomParams, spine: Spine) -> None:
    """Skull, skull base, face soft tissue, mandible with two rows of teeth (metal fillings or not), pharynx."""
    canc, cort = prm.bone.cancellous, prm.bone.cortical
    x0 = prm.anchor_lps[0]
    c1, c2, c3 = spine.vertebrae[:3]
    hs = prm.head_scale
    ax, ay, az = (v * hs for v in SKULL_SEMI_AXES)
    centre = np.array([x0, c1.center[1] - 18.0, c1.center[2] + 18.0 + az])
    sc.ellipsoid(centre + [0, -55, -65], np.eye(3), (58.0, 50.0, 80.0), SOFT, FAT, 4.0)  # face
    sc.ellipsoid(centre, np.eye(3), (ax + 6, ay + 6, az + 6), SOFT, FAT, 3.0)  # scalp
    sc.ellipsoid(centre, np.eye(3), (ax, ay, az), BRAIN, cort + SKULL_CORTEX_EXTRA, 6.0)
    sc.ellipsoid(centre + [0, 10.0, -az + 22.0], np.eye(3), (55.0, 40.0, 12.0), canc + SKULL_BASE_EXTRA, cort + SKULL_CORTEX_EXTRA, 3.0)
    y_jaw = c2.center[1] - 32.0
    ang = np.radians(np.linspace(-95, 95, 13))
    arch = np.stack([x0 + 46.0 * np.sin(ang), y_jaw - 62.0 * np.cos(ang) + 10, np.full_like(ang, c3.center[2] + 5)], 1)
    jaw, jaw_cortex = canc + JAW_EXTRA, cort + SKULL_CORTEX_EXTRA
    sc.chain(arch, 6.5, 6.5, jaw, jaw_cortex, 2.0)
    teeth = prm.metal_hu if prm.dental_metal else TOOTH
    for z in (c3.center[2] + 20.0, c1.center[2] - 5.0):  # lower and upper rows, a little inside the jaw
        sc.chain(arch[2:-2] * [1, 1, 0] + [0, 2.0, z] - [0.12, 0, 0] * (arch[2:-2] - [x0, 0, 0]), 4.0, 4.0, teeth)
    for end in (arch[0], arch[-1]):  # the rami up to the skull base
        sc.capsule(end, [end[0], c1.center[1] - 8.0, c1.center[2] + 22.0], 6.0, 5.0, jaw, jaw_cortex, 2.0)
    pharynx = np.array([[x0, c1.center[1] - 24.0, c1.center[2] + 25.0], [x0, c2.center[1] - 20.0, c2.center[2]],
                        [x0, c3.center[1] - 18.0, c3.center[2] - 10.0]])
    sc.chain(pharynx, 9.0, 7.0, AIR)
