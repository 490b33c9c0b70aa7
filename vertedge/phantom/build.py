"""`make_phantom`: the seed's parameters, spine and torso, every part painted in order, then the scan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..volume import Volume
from .abdomen import paint_abdomen, paint_vessels
from .head import paint_head
from .params import PhantomParams
from .pelvis import paint_pelvis
from .raster import Scene, rasterize
from .scan import draw_grid, draw_orientation, field_of_view, ground_truth
from .shapes import BodyShape
from .spine import build_spine, paint_implants, paint_spine
from .thorax import RibCage, paint_lungs_and_mediastinum, paint_shoulders_and_arms
from .torso import Torso, paint_paraspinal


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT with its ground truth (body centroids in world LPS mm)."""

    volume: Volume
    centroids: dict[int, np.ndarray]  # VerSe label -> world LPS mm, the vertebrae whose centroid is in the grid
    cut: dict[int, bool]  # label -> part of the body lies outside the field of view
    bodies: dict[int, BodyShape]  # label -> the analytic body the centroid belongs to
    params: dict[str, Any]  # the record: PhantomParams.to_dict() plus seed, grid and orientation

    @property
    def spec(self) -> PhantomParams:
        """The seed's parameters, typed (read back from `params`)."""
        return PhantomParams.from_dict(self.params)


def make_phantom(seed: int, region: str | None = None, *, shape: tuple[int, int, int] | None = None,
                 spacing: tuple[float, float, float] | None = None, orientation: str | None = None) -> Phantom:
    """Deterministic synthetic spine CT for `seed`.

    region None = chosen by the seed. `shape` (voxels) and `spacing` (mm) are along the patient's
    L-R, A-P, S-I axes (the stored (i, j, k) for LPS/RAS; permuted with the axes otherwise) and
    override the seed's choice; orientation 'LPS', 'RAS', 'permuted' or None (chosen by the seed).
    """
    # One generator, drawn from in this order: parameters, field of view, grid, bowel, orientation.
    rng = np.random.default_rng(seed)
    prm = PhantomParams.draw(rng, region, orientation)
    spine = build_spine(prm)
    torso = Torso.build(prm, spine)
    z_range = field_of_view(rng, prm, spine)
    grid = draw_grid(rng, prm, z_range, torso.at((z_range[0] + z_range[1]) / 2)[:2], shape, spacing)
    cage = RibCage.build(prm, spine, torso)

    # Painting order: later parts paint over earlier ones (the spine over the organs around it).
    sc = Scene()
    paint_paraspinal(sc, spine)
    paint_lungs_and_mediastinum(sc, prm, spine, cage)
    paint_abdomen(sc, rng, prm, spine)
    paint_vessels(sc, prm, spine)
    paint_shoulders_and_arms(sc, prm, spine, torso, cage)
    paint_head(sc, prm, spine)
    bodies = paint_spine(sc, prm, spine)
    cage.paint(sc, prm)
    paint_pelvis(sc, prm, spine)
    paint_implants(sc, prm, spine)

    hu = rasterize(sc, torso.profile(grid.slice_z), torso.y_table, grid, prm)
    canonical = Volume(hu, grid.spacing, grid.origin, np.eye(3), {"source": f"phantom seed {seed}"})
    perm, flips = draw_orientation(rng, prm.orientation)
    volume = canonical.reoriented(perm, flips)
    centroids, cut, kept = ground_truth(bodies, canonical)
    record = prm.to_dict() | {
        "seed": int(seed), "shape_lps": list(grid.shape), "spacing_lps": [float(s) for s in grid.spacing],
        "perm": list(perm), "flips": list(flips), "axcodes": list(volume.axcodes()),
    }
    return Phantom(volume, centroids, cut, kept, record)
