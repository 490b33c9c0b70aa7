"""The scan: the field of view a region asks for, the voxel grid, the stored orientation, the ground truth.

Draws from the seed's generator: `field_of_view`, then `draw_grid`; `draw_orientation` after the
phantom is painted (the order is fixed, see params.py).
"""

from __future__ import annotations

import numpy as np

from ..volume import Volume
from .params import PhantomParams
from .raster import Grid
from .shapes import BodyShape
from .spine import Spine

SLICE_SPACINGS = (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)  # mm: clinical reconstructions, thin to thick
MAX_SLICES = 800
MATRIX = 512  # in-plane voxels, as nearly every CT scanner reconstructs
FOV_MM = {"cervical": (230.0, 330.0), "other": (320.0, 460.0)}  # display field of view, neck vs trunk
GRID_SHIFT_MM = 25.0  # the patient is rarely centred in the field of view
PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def field_of_view(rng: np.random.Generator, prm: PhantomParams, spine: Spine) -> tuple[float, float]:
    """(bottom, top) world z mm of the field of view the region asks for (ends may cut vertebrae)."""
    z_of, z_s1, last_t = spine.z, float(spine.sacrum[0].center[2]), spine.last_thoracic
    u = rng.uniform
    reg = prm.region
    if reg == "cervical":
        return z_of[7] - u(-5, 45), z_of[1] + u(15, 70)
    if reg == "thoracic":
        return z_of[last_t] - u(-10, 40), z_of[8] + u(-10, 40)
    if reg == "lumbar":
        return z_s1 - u(20, 110), z_of[last_t] + u(-10, 40)
    if reg == "cervicothoracic":
        return z_of[int(rng.integers(11, 16))] - u(0, 20), z_of[int(rng.integers(2, 5))] + u(0, 20)
    if reg == "thoracolumbar":
        bottom = z_of[int(rng.integers(22, 25))] if rng.random() < 0.7 else z_s1 - u(0, 60)
        return bottom, z_of[int(rng.integers(12, 17))] + u(0, 20)
    return z_s1 - u(0, 100), z_of[1] + u(15, 70)


def draw_grid(rng: np.random.Generator, prm: PhantomParams, z_range: tuple[float, float], centre_xy: np.ndarray,
              shape: tuple[int, int, int] | None, spacing: tuple[float, float, float] | None) -> Grid:
    """The LPS-aligned grid over `z_range` (mm), centred near `centre_xy` (world LPS mm); `shape` (ni, nj, nk)
    and `spacing` (mm) override the seed's choice."""
    length = z_range[1] - z_range[0]
    fov = float(rng.uniform(*FOV_MM["cervical" if prm.region == "cervical" else "other"]))
    if shape is not None and spacing is not None:
        n, sp = np.array(shape, int), np.array(spacing, float)
    elif shape is not None:
        n = np.array(shape, int)
        sp = np.array([fov / n[0], fov / n[1], length / n[2]])
    else:
        options = [s for s in SLICE_SPACINGS if length / s <= MAX_SLICES]
        sk = float(rng.choice(options)) if spacing is None else float(spacing[2])
        sij = fov / MATRIX if spacing is None else float(spacing[0])
        sp = np.array([sij, sij if spacing is None else float(spacing[1]), sk])
        n = np.array([round(fov / sp[0]), round(fov / sp[1]), max(2, round(length / sp[2]))], int)
    ext = (n - 1) * sp
    shift = rng.uniform(-GRID_SHIFT_MM, GRID_SHIFT_MM, 2)
    origin = np.array([centre_xy[0] + shift[0] - ext[0] / 2, centre_xy[1] + shift[1] - ext[1] / 2,
                       (z_range[0] + z_range[1]) / 2 - ext[2] / 2])
    return Grid(origin, sp, (int(n[0]), int(n[1]), int(n[2])))


def draw_orientation(rng: np.random.Generator, name: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(perm, flips) for `Volume.reoriented` from the LPS grid to the stored orientation `name`."""
    if name == "LPS":
        return (0, 1, 2), (False, False, False)
    if name == "RAS":
        return (0, 1, 2), (True, True, False)
    perm = PERMUTATIONS[int(rng.integers(len(PERMUTATIONS)))]
    flips = rng.random(3) < 0.5
    return perm, (bool(flips[0]), bool(flips[1]), bool(flips[2]))


def ground_truth(bodies: dict[int, BodyShape], grid: Volume) -> tuple[dict[int, np.ndarray], dict[int, bool], dict[int, BodyShape]]:
    """Centroids (world LPS mm), cut flags and shapes of the vertebrae whose body centroid lies inside `grid`;
    cut = part of the body lies outside it."""
    n = np.array(grid.shape_ijk)
    centroids, cut, kept = {}, {}, {}
    for label, shape in bodies.items():
        ijk = grid.world_to_index(shape.center)
        if np.any(ijk < -0.5) or np.any(ijk > n - 0.5):
            continue
        ext = grid.world_to_index(shape.extremes())
        centroids[label] = shape.center.copy()
        cut[label] = bool(np.any(ext < -0.5) or np.any(ext > n - 0.5))
        kept[label] = shape
    return centroids, cut, kept
