"""The abdomen: aorta and inferior vena cava, liver, spleen, stomach, kidneys, psoas, bowel, bladder.

Organ sizes and positions (mm, relative to the vertebrae) were set by eye against adult abdominal
CT, not measured; enhancement follows the seed's contrast phase (`PhantomParams`).
"""

from __future__ import annotations

import numpy as np

from .params import PhantomParams
from .raster import Scene
from .shapes import rot_z
from .spine import Spine
from .tissue import AIR, BOWEL_CONTENT, BOWEL_WALL, FAT, MUSCLE, SOFT, STOMACH, URINE

BOWEL_RADIUS = 14.0  # mm: small-bowel loops (about 25-30 mm across)
GAS_P = 0.6  # share of bowel loops with a gas pocket


def paint_vessels(sc: Scene, prm: PhantomParams, spine: Spine) -> None:
    """Aorta (arch, descending, abdominal, iliac) and inferior vena cava, contrast-filled or not."""
    z_of, y_of, b_of, x0 = spine.z, spine.y, spine.depth, prm.anchor_lps[0]
    blood = prm.blood_hu
    desc = [lab for lab in (11, 12, 14, 16, 18, 19, 28, 20, 21, 22, 23) if lab in z_of]  # 28: T13 variant only
    pts = [np.array([x0 + 4.0, y_of[14] - b_of[14] - 75.0, z_of[14]]),
           np.array([x0 + 2.0, y_of[10] - b_of[10] - 45.0, z_of[10]]),
           np.array([x0 + 15.0, y_of[10] - b_of[10] - 15.0, z_of[9] + 5.0])]
    pts += [np.array([x0 + 18.0 - 10.0 * (lab >= 20), y_of[lab] - b_of[lab] - 14.0, z_of[lab]]) for lab in desc]
    sc.chain(np.array(pts), 14.0, 9.5, blood)
    bif = pts[-1]  # the bifurcation at L4
    for sx in (-1.0, 1.0):
        sc.capsule(bif, bif + [sx * 55.0, -15.0, -90.0], 6.0, 5.0, blood)
    ivc = [np.array([x0 - 22.0, y_of[lab] - b_of[lab] - 18.0, z_of[lab]]) for lab in (16, 18, 20, 22, 23)]
    sc.chain(np.array(ivc), 12.0, 11.0, prm.venous_hu)


def paint_abdomen(sc: Scene, rng: np.random.Generator, prm: PhantomParams, spine: Spine) -> None:
    """Liver, spleen, stomach, kidneys (with renal fat), psoas, bowel loops with gas, bladder.

    Draws the bowel loops from `rng` (their count is the seed's).
    """
    z_of, y_of, x0, last_t = spine.z, spine.y, prm.anchor_lps[0], spine.last_thoracic
    zt, yt = z_of[last_t] + prm.shifts["diaphragm"], y_of[last_t]  # the organs under the diaphragm move with it
    organ = prm.organ_hu
    sc.ellipsoid([x0 - 65.0, yt - 55.0, zt + 40.0], rot_z(10), (95.0, 80.0, 85.0), organ + 15)  # liver
    sc.ellipsoid([x0 + 95.0, yt - 5.0, zt + 35.0], rot_z(-30), (30.0, 50.0, 55.0), organ + 5)  # spleen
    sc.ellipsoid([x0 + 55.0, yt - 80.0, zt + 35.0], np.eye(3), (50.0, 40.0, 55.0), STOMACH)
    sc.ellipsoid([x0 + 55.0, yt - 100.0, zt + 60.0], np.eye(3), (30.0, 18.0, 20.0), AIR)  # gastric air
    zk, yk = z_of[21] + prm.shifts["diaphragm"], y_of[21]
    for sx, dz in ((-1.0, -15.0), (1.0, 0.0)):  # the right kidney (-x) sits lower, under the liver
        c = [x0 + sx * 62.0, yk + 5.0, zk + dz]
        sc.ellipsoid(c, rot_z(sx * 25), (38.0, 36.0, 68.0), FAT)
        sc.ellipsoid(c, rot_z(sx * 25), (27.0, 24.0, 55.0), prm.kidney_hu, SOFT, 0.0)
    lumbar = (last_t, 20, 21, 22, 23, 24)
    for sx in (-1.0, 1.0):  # psoas, widening downward
        pts = np.array([[x0 + sx * (20.0 + 6.0 * m), y_of[lab] - 2.0, z_of[lab]] for m, lab in enumerate(lumbar)])
        sc.chain(pts, 9.0, 24.0, MUSCLE)
    z_top, z_bot = z_of[21] + 20.0, z_of[24] - 90.0
    front, half_w = 150.0 * prm.obesity * prm.habitus, 150.0 * prm.habitus
    sc.ellipsoid([x0, y_of[22] - 0.55 * front, (z_top + z_bot) / 2], np.eye(3),
                 (0.7 * half_w, 0.4 * front, (z_top - z_bot) / 2 + 20.0), prm.visceral_hu)
    for _ in range(prm.bowel_loops):
        c = [x0 + rng.uniform(-0.55, 0.55) * half_w, y_of[22] - rng.uniform(0.35, 0.75) * front, rng.uniform(z_bot, z_top)]
        d = rng.normal(size=3) * [30, 0.1 * front, 30]
        sc.capsule(c, c + d, BOWEL_RADIUS, BOWEL_RADIUS, BOWEL_CONTENT, BOWEL_WALL, 2.0)
        if rng.random() < GAS_P:
            sc.ellipsoid(c, rot_z(rng.uniform(0, 180)), rng.uniform(5, 18, 3), AIR)
    sc.ellipsoid([x0, y_of[24] - 110.0, z_of[24] - 130.0], np.eye(3), (45.0, 35.0, 35.0), URINE)  # bladder
