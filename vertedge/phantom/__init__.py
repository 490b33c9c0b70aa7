"""Synthetic spine CT ("phantom"): an HU-realistic torso with a full spine and its true body centroids.

Everything is built in world LPS mm (+x left, +y posterior, +z superior) from analytic primitives
(ellipsoids, vertebral-body cylinders, tapered capsules, rounded boxes) painted in order into an
LPS-aligned int16 grid (`raster`). The finished grid is then stored LPS, RAS or with permuted or
flipped axes via `Volume.reoriented`, which keeps the world content unchanged.

Ground truth: the centroid of each vertebra's analytic BODY shape (`BodyShape`, symmetric about its
centre so the centre is the centroid), as in VerSe; C1 has no body, its "body" is the dens region
inside the anterior ring, where VerSe places the C1 point.

Modules: `params` (what a seed chooses), `tissue` (HU), `shapes`, `spine`, `torso` (outline),
`thorax`, `abdomen`, `pelvis`, `head`, `raster` (the Numba painter), `scan` (field of view, grid,
orientation, ground truth), `build` (`make_phantom`), `files` (`save_phantom`).
"""

from __future__ import annotations

from .build import Phantom, make_phantom
from .files import save_phantom
from .params import ORIENTATIONS, PHANTOM_VERSION, REGIONS, PhantomParams
from .shapes import BodyShape
from .tissue import BoneHU

__all__ = [
    "ORIENTATIONS", "PHANTOM_VERSION", "REGIONS", "BodyShape", "BoneHU", "Phantom", "PhantomParams", "make_phantom",
    "save_phantom",
]
