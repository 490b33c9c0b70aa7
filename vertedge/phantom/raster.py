"""The rasterizer: analytic primitives (world LPS mm, HU) painted into an LPS-aligned int16 grid.

A `Scene` is an ordered table of primitives (ellipsoids, vertebral-body cylinders, tapered capsules,
rounded boxes); later ones paint over earlier ones. Numba kernels visit only each primitive's
bounding box, row by row, and blend its edge over about one voxel (partial volume). The torso
outline and the patient table are filled first, slice by slice from a per-slice profile; scanner
noise, cupping and the circular reconstruction field of view come last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit, prange

from .shapes import BodyShape
from .tissue import AIR, FAT, SOFT, TABLE_CORE, TABLE_SKIN

if TYPE_CHECKING:
    from .params import PhantomParams

Vec = np.ndarray | Sequence[float]  # a point, half sizes or semi-axes (mm), or rotation rows

# Primitive kinds and the row layout of the primitive table (float64, one row per primitive):
# 0 kind, 1 core HU, 2 shell HU, 3 shell thickness mm, 4:7 centre (capsule: end 0),
# 7:16 rotation rows = local axes in world, 16:21 shape parameters (capsule: end 1, r0, r1).
ELLIPSOID, BODY, CAPSULE, BOX = 0, 1, 2, 3
NCOL = 21

# The patient table: a carbon-fibre plate 14 mm thick (2 mm dense skins around a foam core), 460 mm
# wide, curved to rise 25 mm at 200 mm off the midline: sized like a CT couch top, by eye.
TABLE_THICKNESS, TABLE_SKIN_MM, TABLE_HALF_WIDTH = 14.0, 2.0, 230.0
TABLE_CURVATURE = 25.0 / 200.0**2  # 1/mm: y rises by curvature * x**2


@dataclass(frozen=True, eq=False)
class Grid:
    """The LPS-aligned voxel grid the phantom is painted in (identity direction)."""

    origin: np.ndarray  # (3,) world LPS mm of voxel (0, 0, 0)
    spacing: np.ndarray  # (3,) mm along (i, j, k) = (L, P, S)
    shape: tuple[int, int, int]  # (ni, nj, nk) voxels

    @property
    def slice_z(self) -> np.ndarray:
        """(nk,) world z (mm) of each slice."""
        return self.origin[2] + self.spacing[2] * np.arange(self.shape[2])


class Scene:
    """An ordered list of primitives (world LPS mm, HU) to paint; later ones paint over earlier ones."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []

    def _add(self, kind: int, core: float, shell: float, t: float, c: Vec, rot: np.ndarray, s: Vec) -> None:
        """Append one primitive row."""
        row = np.zeros(NCOL)
        row[:4] = kind, core, shell, t
        row[4:7] = c
        row[7:16] = np.asarray(rot, float).ravel()
        row[16 : 16 + len(s)] = s
        self.rows.append(row)

    def ellipsoid(self, c: Vec, rot: np.ndarray, axes: Vec, core: float, shell: float = 0.0, t: float = 0.0) -> None:
        """Ellipsoid centred at `c` (world LPS mm) with semi-axes `axes` (mm) along the rows of `rot`; `shell`
        HU over the outer `t` mm, `core` HU inside (as for every primitive)."""
        self._add(ELLIPSOID, core, shell, t, c, rot, axes)

    def body(self, shape: BodyShape, core: float, shell: float = 0.0, t: float = 0.0) -> None:
        """A vertebral-body cylinder (or a disc) of `shape`."""
        self._add(BODY, core, shell, t, shape.center, shape.rot,
                  (shape.a, shape.b, shape.h, shape.exponent, shape.waist))

    def box(self, c: Vec, rot: np.ndarray, half: Vec, core: float, shell: float = 0.0, t: float = 0.0, r: float = 1.0) -> None:
        """Box with half sizes `half` (mm) along the rows of `rot`, edges rounded by `r` mm."""
        self._add(BOX, core, shell, t, c, rot, (*half, r))

    def capsule(self, p0: Vec, p1: Vec, r0: float, r1: float, core: float, shell: float = 0.0, t: float = 0.0) -> None:
        """Tapered capsule from p0 (radius r0) to p1 (radius r1), world LPS mm."""
        row_s = (*np.asarray(p1, float), r0, r1)
        self._add(CAPSULE, core, shell, t, p0, np.eye(3), row_s)

    def chain(self, pts: np.ndarray, r0: float, r1: float, core: float, shell: float = 0.0, t: float = 0.0) -> None:
        """Capsules along a polyline (N, 3), radius tapering from r0 to r1."""
        radii = np.linspace(r0, r1, len(pts))
        for m in range(len(pts) - 1):
            self.capsule(pts[m], pts[m + 1], radii[m], radii[m + 1], core, shell, t)

    def table(self) -> np.ndarray:
        """(N, NCOL) primitive table."""
        return np.array(self.rows, float).reshape(-1, NCOL)


def _aabb(rows: np.ndarray, pad: float) -> tuple[np.ndarray, np.ndarray]:
    """World AABB (lo, hi) (N, 3) of each primitive row, grown by `pad` mm."""
    kind = rows[:, 0].astype(int)
    c = rows[:, 4:7]
    rot = rows[:, 7:16].reshape(-1, 3, 3)
    half = np.abs(rot.transpose(0, 2, 1)) @ np.abs(rows[:, 16:19])[:, :, None]
    half = half[:, :, 0] + np.where(kind == BOX, rows[:, 19], 0.0)[:, None]
    lo, hi = c - half, c + half
    cap = kind == CAPSULE
    r = np.maximum(rows[cap, 19], rows[cap, 20])[:, None]
    lo[cap] = np.minimum(c[cap], rows[cap, 16:19]) - r
    hi[cap] = np.maximum(c[cap], rows[cap, 16:19]) + r
    return lo - pad, hi + pad


def _index_boxes(rows: np.ndarray, origin: np.ndarray, spacing: np.ndarray, shape_kji: tuple[int, ...], pad: float) -> np.ndarray:
    """(N, 6) int64 [k0, k1, j0, j1, i0, i1) voxel ranges of each primitive in the LPS-aligned grid."""
    lo, hi = _aabb(rows, pad)
    n = np.array(shape_kji[::-1])
    i0 = np.clip(np.floor((lo - origin) / spacing), 0, n).astype(np.int64)
    i1 = np.clip(np.ceil((hi - origin) / spacing) + 1, 0, n).astype(np.int64)
    return np.stack([i0[:, 2], i1[:, 2], i0[:, 1], i1[:, 1], i0[:, 0], i1[:, 0]], axis=1)


@njit(cache=True, fastmath=True)
def _sdf(p: np.ndarray, x: float, y: float, z: float) -> float:
    """Approximate signed distance (mm, negative inside) from world LPS point to primitive row `p`."""
    kind = int(p[0])
    if kind == CAPSULE:
        vx, vy, vz = p[16] - p[4], p[17] - p[5], p[18] - p[6]
        wx, wy, wz = x - p[4], y - p[5], z - p[6]
        vv = vx * vx + vy * vy + vz * vz
        t = (wx * vx + wy * vy + wz * vz) / vv if vv > 0 else 0.0
        t = min(max(t, 0.0), 1.0)
        dx, dy, dz = wx - t * vx, wy - t * vy, wz - t * vz
        return math.sqrt(dx * dx + dy * dy + dz * dz) - (p[19] + t * (p[20] - p[19]))
    rx, ry, rz = x - p[4], y - p[5], z - p[6]
    qx = p[7] * rx + p[8] * ry + p[9] * rz
    qy = p[10] * rx + p[11] * ry + p[12] * rz
    qz = p[13] * rx + p[14] * ry + p[15] * rz
    if kind == ELLIPSOID:
        rho = math.sqrt((qx / p[16]) ** 2 + (qy / p[17]) ** 2 + (qz / p[18]) ** 2)
        if rho == 0.0:
            return -min(p[16], min(p[17], p[18]))
        return math.sqrt(qx * qx + qy * qy + qz * qz) * (1.0 - 1.0 / rho)
    if kind == BODY:
        a, b, h, e, waist = p[16], p[17], p[18], p[19], p[20]
        zc = min(abs(qz) / h, 1.0)
        wf = 1.0 - waist * (1.0 - zc * zc)
        rho = (abs(qx / (a * wf)) ** e + abs(qy / (b * wf)) ** e) ** (1.0 / e)
        n = math.sqrt(qx * qx + qy * qy)
        dr = n * (1.0 - 1.0 / rho) if rho > 0.0 else -min(a, b) * wf
        dz = abs(qz) - h
        if dr > 0.0 and dz > 0.0:
            return math.sqrt(dr * dr + dz * dz)
        return max(dr, dz)
    # BOX: rounded box with half sizes p[16:19] and rounding radius p[19]
    ex, ey, ez = abs(qx) - p[16], abs(qy) - p[17], abs(qz) - p[18]
    out = math.sqrt(max(ex, 0.0) ** 2 + max(ey, 0.0) ** 2 + max(ez, 0.0) ** 2)
    return out + min(max(ex, max(ey, ez)), 0.0) - p[19]


@njit(cache=True, fastmath=True)
def _row_span(p: np.ndarray, reach: float, y: float, z: float) -> tuple[float, float]:
    """Conservative world x range (mm) where primitive `p` can touch the grid row (y, z); empty if lo > hi."""
    if int(p[0]) != CAPSULE:  # bounding sphere of radius `reach` about the centre
        rem = reach * reach - (y - p[5]) ** 2 - (z - p[6]) ** 2
        if rem < 0.0:
            return 1.0, -1.0
        h = math.sqrt(rem)
        return p[4] - h, p[4] + h
    # capsule: parameters t where the axis comes within `reach` of the row, in the y-z plane
    vy, vz, wy, wz = p[17] - p[5], p[18] - p[6], p[5] - y, p[6] - z
    qa, qb, qc = vy * vy + vz * vz, 2.0 * (vy * wy + vz * wz), wy * wy + wz * wz - reach * reach
    t0, t1 = 0.0, 1.0
    if qa > 1e-12:
        disc = qb * qb - 4.0 * qa * qc
        if disc < 0.0:
            return 1.0, -1.0
        s = math.sqrt(disc)
        t0, t1 = max((-qb - s) / (2.0 * qa), 0.0), min((-qb + s) / (2.0 * qa), 1.0)
        if t0 > t1:
            return 1.0, -1.0
    elif qc > 0.0:
        return 1.0, -1.0
    x0, x1 = p[4] + t0 * (p[16] - p[4]), p[4] + t1 * (p[16] - p[4])
    return min(x0, x1) - reach, max(x0, x1) + reach


@njit(parallel=True, cache=True, fastmath=True)
def _paint(hu, prims, boxes, reach, slice_ptr, slice_prims, origin, spacing, edge):  # pragma: no cover
    """Paint primitives into hu[k, j, i] (LPS-aligned grid), blending edges over `edge` mm.

    One parallel loop over slices (a parallel launch per primitive costs milliseconds); slice k
    paints primitives slice_prims[slice_ptr[k]:slice_ptr[k + 1]], in painting order, each only over
    the part of each row that its bounding sphere (capsule: swept sphere) can reach.
    """
    for k in prange(hu.shape[0]):
        z = origin[2] + k * spacing[2]
        for m in range(slice_ptr[k], slice_ptr[k + 1]):
            n = slice_prims[m]
            p = prims[n]
            for j in range(boxes[n, 2], boxes[n, 3]):
                y = origin[1] + j * spacing[1]
                xlo, xhi = _row_span(p, reach[n], y, z)
                if xlo > xhi:
                    continue
                i0 = max(boxes[n, 4], int(math.floor((xlo - origin[0]) / spacing[0])))
                i1 = min(boxes[n, 5], int(math.ceil((xhi - origin[0]) / spacing[0])) + 1)
                for i in range(i0, i1):
                    d = _sdf(p, origin[0] + i * spacing[0], y, z)
                    alpha = 0.5 - d / edge
                    if alpha <= 0.0:
                        continue
                    value = p[2] if (p[3] > 0.0 and d > -p[3]) else p[1]
                    alpha = min(alpha, 1.0)
                    old = float(hu[k, j, i])
                    hu[k, j, i] = np.int16(round(old + alpha * (value - old)))


def _reach(rows: np.ndarray, pad: float) -> np.ndarray:
    """(N,) radius (mm) of each primitive's bounding sphere (capsule: of its swept sphere), grown by `pad`."""
    kind = rows[:, 0].astype(int)
    sphere = np.linalg.norm(rows[:, 16:19], axis=1) + np.where(kind == BOX, rows[:, 19], 0.0)
    return np.where(kind == CAPSULE, np.maximum(rows[:, 19], rows[:, 20]), sphere) + pad


def _slice_lists(boxes: np.ndarray, nk: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists (ptr (nk+1,), primitive ids) of the primitives touching each slice, in painting order."""
    counts = np.maximum(boxes[:, 1] - boxes[:, 0], 0)
    ids = np.repeat(np.arange(len(boxes)), counts)
    ks = np.concatenate([np.arange(b0, b1) for b0, b1 in boxes[:, :2] if b1 > b0] or [np.zeros(0, int)])
    order = np.lexsort((ids, ks))  # by slice, then painting order
    ptr = np.zeros(nk + 1, np.int64)
    np.cumsum(np.bincount(ks, minlength=nk), out=ptr[1:])
    return ptr, ids[order].astype(np.int64)


@njit(cache=True, fastmath=True)
def _half_chord(dy: float, ax: float, ay: float, e: float) -> float:
    """Half length (mm) of the row `dy` mm off-centre inside a superellipse; -1 if the row misses it."""
    if ax <= 0.0 or ay <= 0.0 or abs(dy) >= ay:
        return -1.0
    return ax * (1.0 - abs(dy / ay) ** e) ** (1.0 / e)


@njit(parallel=True, cache=True, fastmath=True)
def _paint_torso(hu, prof, table, origin, spacing, edge):  # pragma: no cover - compiled
    """Fill air, the table and the torso (fat layer around soft tissue) slice by slice from `prof`."""
    nk, nj, ni = hu.shape
    y_top, curv, thick, skin, half_w, hu_skin, hu_core = table
    for k in prange(nk):
        cx, cy, ax, ay, e, fat = prof[k, 0], prof[k, 1], prof[k, 2], prof[k, 3], prof[k, 4], prof[k, 5]
        grow = edge * max(ax, ay) / min(ax, ay) + 1.0  # margins that contain the blended band
        for j in range(nj):
            y = origin[1] + j * spacing[1]
            outer = _half_chord(y - cy, ax + grow, ay + grow, e)
            inner = _half_chord(y - cy, ax - fat - grow, ay - fat - grow, e)
            near_table = y >= y_top - curv * half_w * half_w - edge
            for i in range(ni):
                x = origin[0] + i * spacing[0]
                yt = y_top - curv * x * x
                if near_table and abs(x) <= half_w and y >= yt and y <= yt + thick:
                    inside = y - yt > skin and yt + thick - y > skin
                    hu[k, j, i] = np.int16(hu_core if inside else hu_skin)
                    continue
                dx = abs(x - cx)
                if dx >= outer:
                    hu[k, j, i] = np.int16(AIR)
                    continue
                if dx < inner and y < yt - edge:
                    hu[k, j, i] = np.int16(SOFT)
                    continue
                u, v = (x - cx) / ax, (y - cy) / ay
                rho = (abs(u) ** e + abs(v) ** e) ** (1.0 / e)
                r = math.sqrt((x - cx) ** 2 + (y - cy) ** 2)
                d = r * (1.0 - 1.0 / rho) if rho > 0.0 else -ax
                d = max(d, y - yt)  # the back is flattened where it rests on the table
                alpha = min(max(0.5 - d / edge, 0.0), 1.0)
                tissue = FAT if d > -fat else SOFT
                hu[k, j, i] = np.int16(round(AIR + alpha * (tissue - AIR)))


@njit(cache=True)
def _gauss(idx: int, seed: int) -> float:
    """Deterministic standard-normal-like value for voxel `idx` (splitmix64 hash, 4-uniform sum)."""
    z = np.uint64(idx) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    s = 0.0
    for m in range(4):
        s += float((z >> np.uint64(16 * m)) & np.uint64(0xFFFF)) / 65536.0
    return (s - 2.0) * 1.7320508  # variance of a sum of 4 U(0,1) is 1/3


@njit(parallel=True, cache=True, fastmath=True)
def _finish(hu, seed, sigma, cup, fov_c, fov_r, pad, spacing):  # pragma: no cover - compiled
    """Add noise and cupping inside the circular reconstruction FOV; fill outside it with `pad`."""
    nk, nj, ni = hu.shape
    r2max = fov_r * fov_r
    for k in prange(nk):
        for j in range(nj):
            dy = (j - fov_c[1]) * spacing[1]
            for i in range(ni):
                dx = (i - fov_c[0]) * spacing[0]
                r2 = dx * dx + dy * dy
                if r2 > r2max:
                    hu[k, j, i] = np.int16(pad)
                    continue
                v = float(hu[k, j, i])
                if v > -500.0:  # beam hardening darkens the centre of dense material
                    v -= cup * (1.0 - r2 / r2max)
                v += sigma * _gauss((k * nj + j) * ni + i, seed)
                hu[k, j, i] = np.int16(min(max(round(v), -1024.0), 32767.0))


def rasterize(scene: Scene, profile: np.ndarray, y_table: float, grid: Grid, params: PhantomParams) -> np.ndarray:
    """Paint air, table, torso (`profile`: per-slice ellipses, torso.py) and the scene into an int16 (nk, nj, ni)
    LPS grid, then add the seed's noise and cupping and pad outside the reconstruction circle."""
    n, sp, origin = grid.shape, grid.spacing, grid.origin
    hu = np.empty((n[2], n[1], n[0]), np.int16)
    edge = float(np.mean(sp))
    table = np.array([y_table, TABLE_CURVATURE, TABLE_THICKNESS, TABLE_SKIN_MM, TABLE_HALF_WIDTH, TABLE_SKIN, TABLE_CORE])
    _paint_torso(hu, profile, table, origin, sp, edge)
    rows = scene.table()
    boxes = _index_boxes(rows, origin, sp, hu.shape, pad=edge + 0.5)
    ptr, ids = _slice_lists(boxes, hu.shape[0])
    _paint(hu, rows, boxes, _reach(rows, edge + 0.5), ptr, ids, origin, sp, edge)
    fov_c = (np.array(n[:2]) - 1) / 2.0
    fov_r = float(min(n[0] * sp[0], n[1] * sp[1]) / 2)
    _finish(hu, params.noise_seed, params.noise_sigma, params.cupping_hu, fov_c, fov_r, params.fov_pad_hu, sp)
    return hu
