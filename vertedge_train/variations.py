"""Everyday variations of a CT scan: pose, size, field of view, slice thickness, noise and bone density.

The robustness benchmark (`benchmarks/robustness.py`) measures with these; they live beside the
training code so that a training augmentation can draw from exactly what the models are measured
on. Every function takes a `vertedge.volume.Volume` and returns a new one in the same
world frame (LPS mm): a structure keeps its world position unless the patient itself is turned
(`rotated`, whose truth moves by `turn_points`). Voxels a variation adds are air (`AIR_HU`).
No torch here.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import lazy_loader
import numpy as np

from vertedge.volume import Volume, from_sitk, to_sitk

if TYPE_CHECKING:
    import SimpleITK as sitk
else:
    sitk = lazy_loader.load("SimpleITK")  # at the first resampling: sized training runs without it (vertedge.volume)

AIR_HU = -1024.0
SOFT_TISSUE_HU = 40.0  # muscle
CUT_MARGIN_MM = 10.0  # a body centroid this close to an S-I face of the scan: the body is cut


def rotation(tilt_deg: float = 0.0, roll_deg: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    """(3, 3) world rotation: tilt about L-R (x), then roll about S-I (z), then yaw about A-P (y)."""

    def about(axis: int, deg: float) -> np.ndarray:
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        a, b = [i for i in range(3) if i != axis]
        m = np.eye(3)
        m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
        return m

    return about(1, yaw_deg) @ about(2, roll_deg) @ about(0, tilt_deg)


def turn_points(points_lps: np.ndarray, rot: np.ndarray, centre_lps: np.ndarray) -> np.ndarray:
    """World points (..., 3) LPS mm turned by `rot` about `centre_lps`: R (x - c) + c."""
    return (np.asarray(points_lps, float) - centre_lps) @ rot.T + centre_lps


def in_plane_axes(volume: Volume) -> list[int]:
    """The two index axes that are not the one closest to S-I."""
    a, _ = volume.si_axis()
    return [b for b in range(3) if b != a]


def air_grid(volume: Volume, lo_ijk: np.ndarray, hi_ijk: np.ndarray) -> Volume:
    """An all-air volume on the index box lo..hi ((i, j, k), inclusive) of `volume`'s grid."""
    lo, hi = np.asarray(lo_ijk, int), np.asarray(hi_ijk, int)
    hu = np.full(tuple((hi - lo + 1)[::-1]), AIR_HU, np.float32 if volume.hu.dtype.kind == "f" else volume.hu.dtype)
    return Volume(hu, volume.spacing.copy(), volume.index_to_world(lo.astype(float)), volume.direction.copy(),
                  dict(volume.meta))


def placed(volume: Volume, lo_ijk: np.ndarray, hi_ijk: np.ndarray) -> Volume:
    """The index box lo..hi ((i, j, k), inclusive) of `volume`'s grid; parts outside the scan are air."""
    lo, hi = np.asarray(lo_ijk, int), np.asarray(hi_ijk, int)
    out = air_grid(volume, lo, hi)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, np.array(volume.shape_ijk) - 1)
    if np.all(src_hi >= src_lo):
        src = tuple(slice(int(a), int(b) + 1) for a, b in zip(src_lo[::-1], src_hi[::-1]))
        dst = tuple(slice(int(a), int(b) + 1) for a, b in zip((src_lo - lo)[::-1], (src_hi - lo)[::-1]))
        out.hu[dst] = volume.hu[src]
    return out


def si_window(volume: Volume, lo_frac: float, hi_frac: float) -> Volume:
    """The slices in [lo_frac, hi_frac) of the scan's S-I extent, counted from its inferior end (>= 2 slices)."""
    a, up = volume.si_axis()
    n = volume.shape_ijk[a]
    if volume.direction[:, a] @ up < 0:  # index grows towards inferior
        lo_frac, hi_frac = 1.0 - hi_frac, 1.0 - lo_frac
    lo, hi = np.zeros(3, int), np.array(volume.shape_ijk) - 1
    lo[a] = int(np.clip(math.floor(lo_frac * n), 0, n - 2))
    hi[a] = int(np.clip(math.ceil(hi_frac * n) - 1, lo[a] + 1, n - 1))
    return placed(volume, lo, hi)


def in_plane_window(volume: Volume, centre_lps: np.ndarray, size_mm: float) -> Volume:
    """A square in-plane field of view `size_mm` wide about `centre_lps` (e.g. a targeted spine reconstruction)."""
    centre = volume.world_to_index(np.asarray(centre_lps, float))
    lo, hi = np.zeros(3, int), np.array(volume.shape_ijk) - 1
    for b in in_plane_axes(volume):
        half = size_mm / 2 / volume.spacing[b]
        lo[b] = int(np.clip(round(centre[b] - half), 0, hi[b] - 1))
        hi[b] = int(np.clip(round(centre[b] + half), lo[b] + 1, hi[b]))
    return placed(volume, lo, hi)


def pad_in_plane(volume: Volume, mm: float) -> Volume:
    """`mm` of air added on both sides of both in-plane axes (a wider reconstruction field)."""
    lo, hi = np.zeros(3, int), np.array(volume.shape_ijk) - 1
    for b in in_plane_axes(volume):
        extra = round(mm / volume.spacing[b])
        lo[b], hi[b] = -extra, hi[b] + extra
    return placed(volume, lo, hi)


def thick_slices(volume: Volume, mm: float) -> Volume:
    """Slices `mm` thick and `mm` apart along S-I, each the mean of the thin slices it covers.

    Unchanged when the slices are already at least that thick. The first new slice starts at the
    outer face of the first old one, so the scan keeps its S-I extent (less a remainder).
    """
    a, _ = volume.si_axis()
    s, n = float(volume.spacing[a]), volume.shape_ijk[a]
    w = mm / s  # new slice width, in old slices
    if w <= 1.0 or n < 2 * w:
        return volume
    m = int(n // w)
    centres = (w - 1) / 2 + np.arange(m) * w
    old = np.arange(n)
    # overlap of old slice [j - 0.5, j + 0.5] with new slice [u - w / 2, u + w / 2], in old slices
    weights = np.clip(np.minimum(old[None] + 0.5, centres[:, None] + w / 2)
                      - np.maximum(old[None] - 0.5, centres[:, None] - w / 2), 0.0, None)
    weights /= weights.sum(1, keepdims=True)
    axis = 2 - a  # hu is (k, j, i)
    stacked = np.tensordot(weights.astype(np.float32), np.moveaxis(volume.hu, axis, 0).astype(np.float32), axes=1)
    start = np.zeros(3)
    start[a] = centres[0]
    spacing = volume.spacing.copy()
    spacing[a] = mm
    return Volume(np.ascontiguousarray(np.moveaxis(stacked, 0, axis)), spacing, volume.index_to_world(start),
                  volume.direction.copy(), dict(volume.meta))


def rotated(volume: Volume, rot: np.ndarray, centre_lps: np.ndarray) -> Volume:
    """The patient turned by `rot` about `centre_lps`, resampled (linear) into the scan's own grid axes.

    As on a scanner: the grid stays axis-aligned and keeps its S-I range (a turned spine leaves it at
    its ends); in-plane it grows to hold the turned body. Truth points move by `turn_points`.
    """
    n = np.array(volume.shape_ijk)
    corners = np.array(np.meshgrid(*[[0, m - 1] for m in n], indexing="ij")).reshape(3, -1).T
    idx = volume.world_to_index(turn_points(volume.index_to_world(corners.astype(float)), rot, centre_lps))
    lo, hi = np.floor(idx.min(0)).astype(int), np.ceil(idx.max(0)).astype(int)
    a, _ = volume.si_axis()
    lo[a], hi[a] = 0, n[a] - 1
    reference = air_grid(volume, lo, hi)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(np.asarray(rot, float).T.ravel().tolist())  # output point -> input: R^-1 (x - c) + c
    transform.SetCenter([float(c) for c in centre_lps])
    source = to_sitk(replace(volume, hu=volume.hu.astype(np.float32, copy=False)))
    image = sitk.Resample(source, to_sitk(reference), transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)
    return replace(from_sitk(image), meta=dict(volume.meta))


def scaled(volume: Volume, factor: float, centre_lps: np.ndarray) -> Volume:
    """The anatomy `factor` times its size about `centre_lps` (a smaller or larger patient): voxel
    spacing x factor, the grid moved so that world point x lands on c + factor (x - c); the voxels
    are unchanged (no resampling). Points move by `turn_points(p, factor * np.eye(3), centre_lps)`."""
    c = np.asarray(centre_lps, float)
    return replace(volume, spacing=volume.spacing * factor, origin=c + factor * (volume.origin - c))


def scaled_patient(volume: Volume, points_lps: dict[int, np.ndarray], factor: float
                   ) -> tuple[Volume, dict[int, np.ndarray]]:
    """`scaled` about the mean of the patient's vertebra points (world LPS mm), with the points moved too."""
    centre = np.mean(list(points_lps.values()), axis=0)
    return (scaled(volume, factor, centre),
            {k: turn_points(p, factor * np.eye(3), centre) for k, p in points_lps.items()})


def with_noise(volume: Volume, sigma_hu: float, rng: np.random.Generator, grain_mm: float = 0.0) -> Volume:
    """Gaussian noise of `sigma_hu` added to every voxel (float32 HU): white, or with `grain_mm` > 0
    smoothed in-plane by a Gaussian of that sigma (mm) and scaled back to `sigma_hu`, as a soft
    reconstruction kernel leaves a low-dose scan's noise: grains that do not average out along a
    DRR's rays as white noise does."""
    noisy = rng.standard_normal(volume.hu.shape, dtype=np.float32)
    if grain_mm > 0:
        image = sitk.GetImageFromArray(noisy)
        image.SetSpacing(tuple(float(v) for v in volume.spacing))
        for axis in in_plane_axes(volume):
            image = sitk.RecursiveGaussian(image, grain_mm, False, sitk.RecursiveGaussianImageFilter.ZeroOrder, axis)
        noisy = sitk.GetArrayFromImage(image)
        noisy /= noisy.std()
    noisy *= np.float32(sigma_hu)
    noisy += volume.hu  # in place: one float32 volume, not three
    return replace(volume, hu=noisy)


def with_faint_bone(volume: Volume, factor: float, soft_hu: float = SOFT_TISSUE_HU) -> Volume:
    """Every voxel brighter than soft tissue (`soft_hu`) brought to `factor` of its contrast over it
    (float32 HU): an osteoporotic patient's bone, its cancellous core and cortex fainter (a healthy
    adult's lumbar bodies at ~200 HU read ~100 at 0.4), contrast-filled vessels and enhanced organs
    fainter with it; air, fat and muscle as they were."""
    hu = volume.hu.astype(np.float32)
    # in place: one float32 volume and one for the excess, no masked copies of a whole scan
    excess = hu - np.float32(soft_hu)
    np.maximum(excess, 0.0, out=excess)
    excess *= np.float32(1.0 - factor)
    hu -= excess
    return replace(volume, hu=hu)


def inside(volume: Volume, points_lps: np.ndarray, cut_margin_mm: float = CUT_MARGIN_MM) -> tuple[np.ndarray, np.ndarray]:
    """(kept (N,) bool, cut (N,) bool) for body centroids: inside the scan's box; cut when within
    `cut_margin_mm` of one of its S-I faces (the body reaches past the scan)."""
    ijk = volume.world_to_index(np.asarray(points_lps, float).reshape(-1, 3))
    n = np.array(volume.shape_ijk, float)
    kept = np.all((ijk >= -0.5) & (ijk <= n - 0.5), axis=1)
    a, _ = volume.si_axis()
    margin = np.minimum(ijk[:, a] + 0.5, n[a] - 0.5 - ijk[:, a]) * volume.spacing[a]
    return kept, kept & (margin < cut_margin_mm)
