"""Digitally reconstructed radiographs: the intensity transform, the content box, and the CPU ray marcher.

Intensity transform (the protocol's `mu_water_per_mm`, `bone_hu`, `bone_gain`; `relative_mu`):
HU -> linear attenuation per mm
`mu = mu_water * (max(0, 1 + HU / 1000) + bone_gain * max(0, HU - bone_hu) / 1000)`: water-scaled
attenuation at the CT's effective energy, plus the extra attenuation bone has at a radiograph's lower
effective energy (photoelectric absorption grows with atomic number), which makes the spine stand out
as on a real radiograph. This module is the one definition of it and of its constants: the CUDA
kernel gets them as compile-time defines (`vertedge.drr_cuda.kernel_defines`).

The CPU renderer (Numba): HU is sampled trilinearly at the midpoints of equal steps (<= `step_mm`)
between the ray's entry into and exit from the volume's box (outer voxel faces; edge voxels extend
to the faces). A pixel's value is the line integral `L = sum(mu * step)`, dimensionless: the log of
I0/I, i.e. already a radiograph's log image (bone bright). `normalize` scales the K views of a scan
together into the network's input.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from .geometry import Protocol, Views
from .numba_cache import announce_compilation
from .volume import Volume
from .xp import array_module

# Every run labels through this module, so this says when any vertedge kernel compiles.
announce_compilation()

# The intensity transform lives here, in the file of the cached kernel that inlines it: Numba's disk
# cache checks only the source file of a cached function, so a transform kept in another module
# could change while stale compiled kernels went on being loaded.

# Attenuation relative to water per HU: HU = 1000 (mu / mu_water - 1), so water (0 HU) is 1 and
# air (-1000 HU) is 0.
PER_HU = 0.001

# Voxels at or below this are air, padding or air noise (mu <= 0.5 mu_water): the march skips the
# box they fill. Real content below it outside the body (foam pads, blankets) is negligible.
CONTENT_HU = -500.0


def relative_mu(hu: Any, bone_hu: float, bone_gain: float) -> Any:
    """Attenuation relative to water, mu / mu_water (dimensionless), of HU (a float or a NumPy array).

    `max(0, 1 + HU / 1000)` (0 for air and below) plus `bone_gain` water-attenuations per 1000 HU
    above `bone_hu`. Multiply by the protocol's `mu_water_per_mm` for mu per mm. The CPU kernel
    inlines this function (`_relative_mu`); kernels/drr.cu spells the same arithmetic in C.
    """
    return np.maximum(0.0, 1.0 + hu * PER_HU) + bone_gain * PER_HU * np.maximum(0.0, hu - bone_hu)


def mu_per_mm(hu: np.ndarray, protocol: Protocol, dtype: type[np.floating] = np.float64) -> np.ndarray:
    """Linear attenuation per mm of every voxel (same shape as `hu`) by the protocol's transform, computed in `dtype`."""
    rel = relative_mu(np.asarray(hu, dtype), float(protocol.bone_hu), float(protocol.bone_gain))
    return (float(protocol.mu_water_per_mm) * rel).astype(dtype, copy=False)


# The same function compiled for the ray marcher's inner loop (inlined into `_render`'s IR).
_relative_mu = numba.njit(inline="always", fastmath=True)(relative_mu)


@numba.njit(inline="always", fastmath=True)
def _sample(hu, x: float, y: float, z: float) -> float:
    """Trilinear HU at continuous index (x=i, y=j, z=k), clamped to the grid (edge voxels extend)."""
    nk, nj, ni = hu.shape
    x = min(max(x, 0.0), ni - 1.0)
    y = min(max(y, 0.0), nj - 1.0)
    z = min(max(z, 0.0), nk - 1.0)
    i0 = min(int(x), ni - 2) if ni > 1 else 0
    j0 = min(int(y), nj - 2) if nj > 1 else 0
    k0 = min(int(z), nk - 2) if nk > 1 else 0
    i1 = min(i0 + 1, ni - 1)
    j1 = min(j0 + 1, nj - 1)
    k1 = min(k0 + 1, nk - 1)
    fx, fy, fz = x - i0, y - j0, z - k0
    c00 = hu[k0, j0, i0] * (1 - fx) + hu[k0, j0, i1] * fx
    c01 = hu[k0, j1, i0] * (1 - fx) + hu[k0, j1, i1] * fx
    c10 = hu[k1, j0, i0] * (1 - fx) + hu[k1, j0, i1] * fx
    c11 = hu[k1, j1, i0] * (1 - fx) + hu[k1, j1, i1] * fx
    c0 = c00 * (1 - fy) + c01 * fy
    c1 = c10 * (1 - fy) + c11 * fy
    return c0 * (1 - fz) + c1 * fz


@numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)
def _render(
    hu, world_to_index, origin, sources, det_origin, row_step, col_step, step_mm, mu_water, bone_hu, bone_gain, out
):
    """Fill out[K, rows, cols] with line integrals of mu along source->pixel rays."""
    n_views, rows, cols = out.shape
    nk, nj, ni = hu.shape
    lo = -0.5
    hi_i, hi_j, hi_k = ni - 0.5, nj - 0.5, nk - 0.5
    for kr in numba.prange(n_views * rows):
        v = kr // rows
        r = kr % rows
        sx, sy, sz = sources[v, 0], sources[v, 1], sources[v, 2]
        # ray origin in continuous index space
        ox = sx - origin[0]
        oy = sy - origin[1]
        oz = sz - origin[2]
        oi = world_to_index[0, 0] * ox + world_to_index[0, 1] * oy + world_to_index[0, 2] * oz
        oj = world_to_index[1, 0] * ox + world_to_index[1, 1] * oy + world_to_index[1, 2] * oz
        ok = world_to_index[2, 0] * ox + world_to_index[2, 1] * oy + world_to_index[2, 2] * oz
        for c in range(cols):
            px = det_origin[v, 0] + r * row_step[v, 0] + c * col_step[v, 0] - sx
            py = det_origin[v, 1] + r * row_step[v, 1] + c * col_step[v, 1] - sy
            pz = det_origin[v, 2] + r * row_step[v, 2] + c * col_step[v, 2] - sz
            norm = np.sqrt(px * px + py * py + pz * pz)
            px /= norm
            py /= norm
            pz /= norm
            # index-space displacement per mm along the ray
            di = world_to_index[0, 0] * px + world_to_index[0, 1] * py + world_to_index[0, 2] * pz
            dj = world_to_index[1, 0] * px + world_to_index[1, 1] * py + world_to_index[1, 2] * pz
            dk = world_to_index[2, 0] * px + world_to_index[2, 1] * py + world_to_index[2, 2] * pz
            t0 = 0.0
            t1 = norm
            # slab test against the box, one axis at a time
            for o, dd, hi in ((oi, di, hi_i), (oj, dj, hi_j), (ok, dk, hi_k)):
                if abs(dd) < 1e-12:
                    if o < lo or o > hi:
                        t1 = -1.0
                else:
                    ta = (lo - o) / dd
                    tb = (hi - o) / dd
                    if ta > tb:
                        ta, tb = tb, ta
                    t0 = max(t0, ta)
                    t1 = min(t1, tb)
            if t1 <= t0:
                out[v, r, c] = 0.0
                continue
            n = int(np.ceil((t1 - t0) / step_mm))
            dt = (t1 - t0) / n
            acc = 0.0
            t = t0 + 0.5 * dt
            for _ in range(n):
                h = _sample(hu, oi + t * di, oj + t * dj, ok + t * dk)
                acc += _relative_mu(h, bone_hu, bone_gain)
                t += dt
            out[v, r, c] = acc * dt * mu_water


@numba.njit(parallel=True, cache=True, nogil=True)
def _slice_extents(hu, threshold):
    """Per k-slice: (any voxel > threshold, j_min, j_max, i_min, i_max)."""
    nk, nj, ni = hu.shape
    ext = np.empty((nk, 5), np.int64)
    for k in numba.prange(nk):
        found, j0, j1, i0, i1 = 0, nj, -1, ni, -1
        for j in range(nj):
            row_lo, row_hi = ni, -1
            for i in range(ni):
                if hu[k, j, i] > threshold:
                    row_lo = min(row_lo, i)
                    row_hi = i
            if row_hi >= 0:
                found = 1
                j0, j1 = min(j0, j), j
                i0, i1 = min(i0, row_lo), max(i1, row_hi)
        ext[k] = (found, j0, j1, i0, i1)
    return ext


def _reduced_bounds(hu: Any, threshold_hu: float) -> tuple[np.ndarray, np.ndarray] | None:
    """`content_bounds` by whole-array reductions of the array's own module (NumPy or CuPy)."""
    xp = array_module(hu)
    mask = hu > threshold_hu
    occupied = [mask.any(axis=axes) for axes in ((0, 1), (0, 2), (1, 2))]  # along i, j, k
    if not bool(occupied[2].any()):
        return None
    lo = np.array([int(xp.argmax(o)) for o in occupied])
    hi = np.array([o.size - 1 - int(xp.argmax(o[::-1])) for o in occupied])
    return lo, hi


def content_bounds(hu: Any, threshold_hu: float = CONTENT_HU) -> tuple[np.ndarray, np.ndarray] | None:
    """(lo, hi): inclusive (i, j, k) voxel indices of the smallest box holding every voxel above `threshold_hu`.

    None when no voxel is above it. `hu` is (nk, nj, ni) HU, a NumPy array (Numba, one pass over the
    voxels, parallel over slices, no mask) or a CuPy array (reductions on its device, so a volume on
    the GPU is not read back); both give the same box.
    """
    if array_module(hu) is not np:
        return _reduced_bounds(hu, threshold_hu)
    ext = _slice_extents(hu, threshold_hu)
    ks = np.flatnonzero(ext[:, 0])
    if ks.size == 0:
        return None
    e = ext[ks]
    lo = np.array([e[:, 3].min(), e[:, 1].min(), ks[0]])
    hi = np.array([e[:, 4].max(), e[:, 2].max(), ks[-1]])
    return lo, hi


def content_box(volume: Volume, threshold_hu: float = CONTENT_HU) -> Volume:
    """The smallest sub-volume (a view, no copy) holding every voxel above `threshold_hu`.

    Outside it the volume is air (or the scanner's padding), which adds nothing to a line
    integral, so rays that miss it end at once and the others march only through it.
    """
    bounds = content_bounds(volume.hu, threshold_hu)
    return volume if bounds is None else volume.subvolume(*bounds)


def render(volume: Volume, views: Views, protocol: Protocol) -> np.ndarray:
    """Line integrals of attenuation (K, rows, cols) float32, dimensionless, for every view."""
    volume = content_box(volume)
    out = np.empty((views.n_views, *views.shape), np.float32)
    _render(
        volume.hu,
        np.linalg.inv(volume.index_to_world_matrix),
        volume.origin,
        views.sources,
        views.det_origin,
        views.row_dir * views.pixel_mm,
        views.col_dir * views.pixel_mm,
        float(protocol.step_mm),
        float(protocol.mu_water_per_mm),
        float(protocol.bone_hu),
        float(protocol.bone_gain),
        out,
    )
    return out


def normalize(line_integrals: np.ndarray, protocol: Protocol) -> np.ndarray:
    """Network input (K, rows, cols) float32: line integrals over their `norm_percentile` across all views."""
    scale = np.percentile(line_integrals, protocol.norm_percentile)
    return (line_integrals / max(float(scale), 1e-6)).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A normalized view (rows, cols) as an 8-bit radiograph picture (bone bright)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
