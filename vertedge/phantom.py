"""Synthetic spine CT ("phantom"): an HU-realistic torso with a full spine and its true body centroids.

Everything is built in world LPS mm (+x left, +y posterior, +z superior) from analytic primitives
(ellipsoids, vertebral-body cylinders, tapered capsules, rounded boxes) painted in order into an
LPS-aligned int16 grid by Numba kernels that only visit each primitive's bounding box. Edges are
blended over about one voxel (partial volume). The finished grid is then stored LPS, RAS or with
permuted/flipped axes via `Volume.reoriented`, which keeps the world content unchanged.

Ground truth: the centroid of each vertebra's analytic BODY shape (`BodyShape`, symmetric about its
centre so the centre is the centroid), as in VerSe; C1 has no body, its "body" is the dens region
inside the anterior ring, where VerSe places the C1 point.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numba import njit, prange

from .atomic import write_json
from .errors import VertedgeError
from .labels import NAMES
from .verse import write_verse_ctd
from .volume import Volume, save_volume

# Bumped whenever make_phantom(seed) changes its output; training caches are keyed by it, so DRRs
# rendered from an older phantom are never mixed into training. 2: realistic bone density.
PHANTOM_VERSION = 2
REGIONS = ("full", "cervical", "thoracic", "lumbar", "cervicothoracic", "thoracolumbar")
ORIENTATIONS = ("LPS", "RAS", "permuted")

# HU of tissues (bone values scale with the seed's bone density).
AIR, FAT, SOFT, MUSCLE, LUNG, DISC, BLOOD = -1000.0, -100.0, 40.0, 50.0, -850.0, 90.0, 45.0

# Primitive kinds and the row layout of the primitive table (float64, one row per primitive):
# 0 kind, 1 core HU, 2 shell HU, 3 shell thickness mm, 4:7 centre (capsule: end 0),
# 7:16 rotation rows = local axes in world, 16:21 shape parameters (capsule: end 1, r0, r1).
ELLIPSOID, BODY, CAPSULE, BOX = 0, 1, 2, 3
NCOL = 21

# Vertebra dimensions (mm) at anchor levels of the canonical C1..L5 index (0..23):
# half width a, half depth b, half height h, disc below, canal half width/depth, pedicle radius,
# spinous length, spinous downward angle (deg), transverse process length, TP backward angle (deg).
_ANCHORS = np.array([1, 2, 6, 7, 12, 18, 19, 21, 23], float)
_DIMS = {
    "a": [8.0, 8.0, 11.0, 13.0, 15.0, 20.0, 21.0, 23.0, 25.0],
    "b": [7.5, 7.0, 8.0, 8.5, 13.0, 15.0, 15.0, 16.0, 17.0],
    "h": [9.0, 6.5, 7.0, 8.0, 10.0, 12.0, 12.5, 13.5, 13.5],
    "disc": [3.5, 4.0, 4.5, 4.5, 5.5, 7.5, 9.0, 10.0, 11.0],
    "rx": [12.0, 12.5, 12.0, 10.0, 8.5, 10.0, 11.0, 11.5, 12.5],
    "ry": [8.0, 7.5, 7.0, 8.0, 8.0, 8.5, 9.0, 9.0, 9.0],
    "pr": [3.5, 3.0, 3.5, 4.0, 4.0, 5.0, 5.5, 6.5, 7.5],
    "sp_len": [24.0, 14.0, 30.0, 35.0, 40.0, 32.0, 30.0, 30.0, 24.0],
    "sp_ang": [20.0, 25.0, 20.0, 35.0, 60.0, 30.0, 10.0, 10.0, 15.0],
    "tp_len": [12.0, 12.0, 18.0, 25.0, 22.0, 12.0, 22.0, 28.0, 22.0],
    "tp_ang": [-20.0, -25.0, -10.0, 30.0, 35.0, 30.0, 10.0, 5.0, 10.0],
}


# ----------------------------------------------------------------------------- Numba kernels


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


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True, eq=False)
class BodyShape:
    """Analytic vertebral body: superelliptic cylinder with a waist, symmetric about `center` (LPS mm)."""

    center: np.ndarray  # (3,) world LPS mm; also the centroid (the shape is point-symmetric)
    rot: np.ndarray  # (3, 3) rows = local x (left), y (posterior), z (superior, spine tangent) in world
    a: float  # half width, mm
    b: float  # half depth, mm
    h: float  # half height, mm
    exponent: float  # superellipse exponent of the cross-section
    waist: float  # relative narrowing at mid-height (0 = straight cylinder)

    def contains(self, points_lps: np.ndarray) -> np.ndarray:
        """(N, 3) world LPS mm -> (N,) bool: inside the body."""
        q = (np.asarray(points_lps, float).reshape(-1, 3) - self.center) @ self.rot.T
        az = np.abs(q[:, 2])
        zc = np.minimum(az / self.h, 1.0)
        wf = 1.0 - self.waist * (1.0 - zc**2)
        rho = np.abs(q[:, 0] / (self.a * wf)) ** self.exponent + np.abs(
            q[:, 1] / (self.b * wf)
        ) ** self.exponent
        return (rho <= 1.0) & (az <= self.h)

    def extremes(self) -> np.ndarray:
        """(8, 3) world LPS mm: the rim points at the ends of the local axes, top and bottom."""
        loc = np.array(
            [[sx * self.a, 0, sz * self.h] for sx in (-1, 1) for sz in (-1, 1)]
            + [[0, sy * self.b, sz * self.h] for sy in (-1, 1) for sz in (-1, 1)],
            float,
        )
        return self.center + loc @ self.rot


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic CT with its ground truth (body centroids in world LPS mm)."""

    volume: Volume
    centroids: dict[int, np.ndarray]
    cut: dict[int, bool]
    bodies: dict[int, BodyShape]
    params: dict


class _Scene:
    """An ordered list of primitives (world LPS mm, HU) to paint; later ones paint over earlier ones."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.half: list[np.ndarray] = []  # world AABB half-extent about the row's centre

    def _add(self, kind: int, core: float, shell: float, t: float, c, rot, s) -> None:
        """Append one primitive row."""
        row = np.zeros(NCOL)
        row[:4] = kind, core, shell, t
        row[4:7] = c
        row[7:16] = np.asarray(rot, float).ravel()
        row[16 : 16 + len(s)] = s
        self.rows.append(row)

    def ellipsoid(self, c, rot, axes, core: float, shell: float = 0.0, t: float = 0.0) -> None:
        """Ellipsoid with semi-axes `axes` (mm) along the rows of `rot`."""
        self._add(ELLIPSOID, core, shell, t, c, rot, axes)

    def body(self, shape: BodyShape, core: float, shell: float = 0.0, t: float = 0.0) -> None:
        """A vertebral-body cylinder (or a disc) of `shape`."""
        self._add(BODY, core, shell, t, shape.center, shape.rot,
                  (shape.a, shape.b, shape.h, shape.exponent, shape.waist))

    def box(self, c, rot, half, core: float, shell: float = 0.0, t: float = 0.0, r: float = 1.0) -> None:
        """Box with half sizes `half` (mm) along the rows of `rot`, edges rounded by `r` mm."""
        self._add(BOX, core, shell, t, c, rot, (*half, r))

    def capsule(self, p0, p1, r0: float, r1: float, core: float, shell: float = 0.0, t: float = 0.0) -> None:
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


def _index_boxes(rows: np.ndarray, origin: np.ndarray, spacing: np.ndarray, shape_kji, pad: float) -> np.ndarray:
    """(N, 6) int64 [k0, k1, j0, j1, i0, i1) voxel ranges of each primitive in the LPS-aligned grid."""
    lo, hi = _aabb(rows, pad)
    n = np.array(shape_kji[::-1])
    i0 = np.clip(np.floor((lo - origin) / spacing), 0, n).astype(np.int64)
    i1 = np.clip(np.ceil((hi - origin) / spacing) + 1, 0, n).astype(np.int64)
    return np.stack([i0[:, 2], i1[:, 2], i0[:, 1], i1[:, 1], i0[:, 0], i1[:, 0]], axis=1)


# ----------------------------------------------------------------------------- geometry helpers


def _rot_z(deg: float) -> np.ndarray:
    """Rotation rows (local axes in world) turned by `deg` about world +z (from +x toward +y)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_x(deg: float) -> np.ndarray:
    """Rotation rows turned by `deg` about world +x (from +y toward +z)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def _frame(tangent: np.ndarray, axial_deg: float) -> np.ndarray:
    """Rows (x, y, z) of a vertebra frame: z = spine tangent (superior), y posterior, turned axially."""
    ez = tangent / np.linalg.norm(tangent)
    ey = np.array([0.0, 1.0, 0.0]) - ez[1] * ez
    ey /= np.linalg.norm(ey)
    ex = np.cross(ey, ez)
    c, s = math.cos(math.radians(axial_deg)), math.sin(math.radians(axial_deg))
    return np.array([c * ex + s * ey, -s * ex + c * ey, ez])


@dataclass(frozen=True)
class _Level:
    """One spinal level: label (0 for sacral segments), position along the spine and its frame."""

    label: int
    canon: float  # fractional canonical index on C1..L5 = 0..23 (sizes are interpolated on it)
    s: float  # arc length from C1 downward, mm
    center: np.ndarray  # world LPS mm of the body centre
    rot: np.ndarray  # frame rows
    dims: dict[str, float]

    def world(self, q) -> np.ndarray:
        """Local vertebra coordinates (mm, ..., 3) -> world LPS mm."""
        return self.center + np.asarray(q, float) @ self.rot


def _labels(variant: str) -> list[tuple[int, float]]:
    """(label, canonical index) cranio-caudally for a spine variant ('normal', 'T13', 'L6')."""
    n_t = 13 if variant == "T13" else 12
    n_l = 6 if variant == "L6" else 5
    thoracic = [*range(8, 20), 28][:n_t]
    out = [(lab, float(lab - 1)) for lab in range(1, 8)]
    out += [(lab, 7.0 + m * 11.0 / (n_t - 1)) for m, lab in enumerate(thoracic)]
    out += [(20 + m, 19.0 + m * 4.0 / (n_l - 1)) for m in range(n_l)]
    return out


def _dims(canon: float, stature: float) -> dict[str, float]:
    """Vertebra dimensions (mm, deg) at a canonical level, lengths scaled by stature."""
    out = {k: float(np.interp(canon, _ANCHORS, v)) for k, v in _DIMS.items()}
    for k in ("a", "b", "h", "disc", "rx", "ry", "pr", "sp_len", "tp_len"):
        out[k] *= stature
    return out


def _bump(s: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """Smooth bell 0 -> 1 -> 0 over [s0, s1] with zero slope at both ends."""
    u = np.clip((s - s0) / (s1 - s0), 0.0, 1.0)
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * u))


def _build_spine(rng: np.random.Generator, prm: dict) -> tuple[list[_Level], list[_Level], dict]:
    """Place vertebrae and sacral segments along a curved spine; returns (vertebrae, sacrum, curve)."""
    st = prm["stature"]
    seq = _labels(prm["variant"])
    dims = [_dims(c, st) for _, c in seq]
    s_pos = [0.0, 21.0 * st]  # C1 (dens region) sits ~21 mm above the C2 body centre
    for m in range(2, len(seq)):
        s_pos.append(s_pos[-1] + dims[m - 1]["h"] + dims[m - 1]["disc"] + dims[m]["h"])
    last = dims[-1]
    sac_h = np.array([14.0, 11.0, 9.0, 8.0, 7.0]) * st
    s_sac = [s_pos[-1] + last["h"] + last["disc"] + sac_h[0]]
    for m in range(1, 5):
        s_sac.append(s_sac[-1] + sac_h[m - 1] + sac_h[m] + 1.0)
    idx = {lab: m for m, (lab, _) in enumerate(seq)}
    last_t = 28 if prm["variant"] == "T13" else 19
    # Sagittal tangent angle (deg, + = descending toward posterior) at anchor levels: lordosis
    # (cervical, lumbar) and kyphosis (thoracic) as a smooth S, then the sacrum tilting back.
    c, t, lo = prm["lordosis_c"], prm["kyphosis"], prm["lordosis_l"]
    anchors = [
        (s_pos[0] - 60.0, -c), (s_pos[idx[4]], 0.0), (s_pos[idx[7]], c * 0.8),
        (s_pos[idx[8]], t * 0.5), (s_pos[idx[14]], 0.0), (s_pos[idx[last_t]], -t * 0.45),
        (s_pos[idx[20]], -lo * 0.5), (s_pos[idx[20] + 2], 0.0), (s_pos[-1], lo * 0.6),
        (s_sac[0], prm["sacral_tilt"]), (s_sac[-1] + 40.0, prm["sacral_tilt"] + 25.0),
    ]
    sa, th = np.array([a for a, _ in anchors]), np.radians([b for _, b in anchors])
    s = np.arange(sa[0], sa[-1], 0.5)
    theta = np.interp(s, sa, th)
    y = np.concatenate([[0.0], np.cumsum(np.sin(theta[:-1]) * 0.5)])
    z = -np.concatenate([[0.0], np.cumsum(np.cos(theta[:-1]) * 0.5)])
    x = np.zeros_like(s)
    rot = np.zeros_like(s)
    for amp, s0, s1 in prm["scoliosis"]:
        bell = _bump(s, s0, s1)
        x += amp * bell
        rot += math.copysign(prm["scoliosis_rotation"], amp) * bell * min(abs(amp) / 20.0, 1.0)
    pts = np.stack([x, y, z], 1) + np.array(prm["anchor_lps"])
    tan = -np.gradient(pts, axis=0)

    def level(lab: int, canon: float, sv: float, d: dict) -> _Level:
        m = int(np.clip(np.searchsorted(s, sv), 0, len(s) - 1))
        return _Level(lab, canon, sv, pts[m].copy(), _frame(tan[m], float(rot[m])), d)

    vert = [level(lab, cn, sv, d) for (lab, cn), sv, d in zip(seq, s_pos, dims)]
    sac_scale = [1.0, 0.8, 0.62, 0.48, 0.36]
    sacrum = []
    for m, sv in enumerate(s_sac):
        d = dict(last, a=last["a"] * sac_scale[m] * 1.02, b=last["b"] * sac_scale[m], h=sac_h[m])
        sacrum.append(level(0, 24.0 + m, sv, d))
    return vert, sacrum, {"s": s, "pts": pts}


# ----------------------------------------------------------------------------- the spine


def _bone(prm: dict) -> tuple[float, float]:
    """(cancellous, cortical) HU for this seed's bone density.

    Cancellous 55-285 HU, cortical shell 270-715 HU (density 0.15-1.5): osteoporotic to young
    adult bone as clinical CT shows it (a thin cortex partial-volumed over a voxel or two), so that
    phantom spines stand out in the DRRs as the real cases in ../shared/data do
    (benchmarks/realism.py).
    """
    f = prm["bone_density"]
    return 30.0 + 170.0 * f, 220.0 + 330.0 * f


def _body_shape(lv: _Level) -> BodyShape:
    """The analytic body of a vertebra (C1: the dens region inside its anterior ring)."""
    d = lv.dims
    if lv.label == 1:
        return BodyShape(lv.center, lv.rot, 5.5, 5.5, 7.0, 2.0, 0.0)
    return BodyShape(lv.center, lv.rot, d["a"], d["b"], d["h"], 2.3, 0.07)


def _arch(sc: _Scene, lv: _Level, canc: float, cort: float) -> None:
    """Posterior arch: pedicles, articular pillars, laminae, spinous and transverse processes."""
    d = lv.dims
    b, h, rx, ry, pr = d["b"], d["h"], d["rx"], d["ry"], d["pr"]
    w = lv.world
    core, t = canc + 80.0, 1.0
    yc = b + ry  # canal centre, posterior of the body
    xp = rx + 0.6 * pr  # pedicle / pillar line
    cerv, lumb = lv.canon < 7, lv.canon >= 19
    sp_base = np.array([0.0, b + 2 * ry + 0.7 * pr, -0.1 * h])
    for sx in (-1.0, 1.0):
        sc.capsule(w([sx * 0.75 * rx, 0.6 * b, 0.15 * h]), w([sx * xp, yc + 0.3 * ry, 0.15 * h]),
                   pr, pr, core, cort, t)
        ext = h + 0.45 * d["disc"]
        lean = 3.0 if cerv else 0.0  # cervical pillars slope backward going down
        sc.capsule(w([sx * xp, yc + 0.3 * ry - lean, ext]), w([sx * xp, yc + 0.3 * ry + lean, -ext]),
                   1.1 * pr, 1.1 * pr, core, cort, t)
        for zl in (0.35 * h, -0.45 * h):
            sc.capsule(w([sx * xp, yc + 0.3 * ry, zl]), w([0.0, sp_base[1], zl + sp_base[2]]),
                       0.6 * pr, 0.6 * pr, core, cort, t)
        ang = math.radians(d["tp_ang"])
        tp0 = np.array([sx * xp, yc + (-0.6 if cerv else 0.2) * ry, 0.1 * h])
        tp1 = tp0 + d["tp_len"] * np.array([sx * math.cos(ang), math.sin(ang), 0.05])
        sc.capsule(w(tp0), w(tp1), 0.8 * pr, (0.45 if not lumb else 0.5) * pr, core, cort, t)
    ang = math.radians(d["sp_ang"])
    tip = sp_base + d["sp_len"] * np.array([0.0, math.cos(ang), -math.sin(ang)])
    if lumb:  # lumbar spinous processes are tall hatchet-shaped plates
        mid, half = (sp_base + tip) / 2, np.array([2.5, d["sp_len"] / 2, 0.55 * h])
        rot = _rot_x(-d["sp_ang"]) @ lv.rot
        sc.box(w(mid) , rot, half, core, cort, t, r=2.0)
    elif cerv and lv.label > 2:  # bifid cervical tips
        for sx in (-1.0, 1.0):
            sc.capsule(w(sp_base), w(tip + [sx * 3.0, 0, 0]), 0.7 * pr, 0.5 * pr, core, cort, t)
    else:
        sc.capsule(w(sp_base), w(tip), 0.8 * pr, 0.55 * pr, core, cort, t)


def _atlas(sc: _Scene, lv: _Level, canc: float, cort: float) -> None:
    """C1: a ring with lateral masses and long transverse processes around the dens."""
    st = lv.dims["a"] / 8.0
    ang = np.linspace(0, 2 * np.pi, 17)
    ring = np.stack([20 * st * np.sin(ang), 9 * st - 20 * st * np.cos(ang), np.zeros_like(ang)], 1)
    sc.chain(lv.world(ring), 3.5, 3.5, canc + 80, cort, 1.0)
    for sx in (-1.0, 1.0):
        sc.ellipsoid(lv.world([sx * 16 * st, 4 * st, 0]), lv.rot, (7 * st, 9 * st, 8 * st), canc + 50, cort, 1.2)
        sc.capsule(lv.world([sx * 20 * st, 4 * st, 0]), lv.world([sx * 38 * st, 6 * st, 2]), 5.0, 3.0,
                   canc + 80, cort, 1.0)


def _add_spine(sc: _Scene, prm: dict, vert: list[_Level], sacrum: list[_Level]) -> dict[int, BodyShape]:
    """Discs, vertebrae (bodies, arches, C1 ring, C2 dens) and the sacrum; returns the body shapes."""
    canc, cort = _bone(prm)
    chain = vert[1:] + sacrum[:1]
    for up, lo in zip(chain[:-1], chain[1:]):
        mid = (up.center + lo.center) / 2
        tan = up.center - lo.center
        gap = np.linalg.norm(tan) - up.dims["h"] - lo.dims["h"]
        d = BodyShape(mid, _frame(tan, 0.0), (up.dims["a"] + lo.dims["a"]) / 2 * 0.98,
                      (up.dims["b"] + lo.dims["b"]) / 2 * 0.98, float(gap / 2 + 1.0), 2.3, 0.0)
        sc.body(d, prm["disc_hu"], prm["disc_hu"] + 40, 1.5)
    bodies = {}
    for lv in vert:
        shape = _body_shape(lv)
        bodies[lv.label] = shape
        if lv.label == 1:
            _atlas(sc, lv, canc, cort)
            continue
        sc.body(shape, canc, cort, 1.0 if lv.canon < 7 else 1.3)
        _arch(sc, lv, canc, cort)
    c1, c2 = vert[0], vert[1]
    sc.capsule(c2.world([0, -1.0, 0.5 * c2.dims["h"]]), c1.world([0, 0, 6.0]), 5.5, 4.5, canc + 60, cort, 1.0)
    _add_sacrum(sc, sacrum, canc, cort)
    return bodies


def _add_sacrum(sc: _Scene, sacrum: list[_Level], canc: float, cort: float) -> None:
    """Fused sacral segments, the alae reaching the sacroiliac joints, and the median crest."""
    for m, lv in enumerate(sacrum):
        sc.body(BodyShape(lv.center, lv.rot, lv.dims["a"], lv.dims["b"], lv.dims["h"] + 0.8, 2.3, 0.0),
                canc, cort, 1.0)
        wing = lv.dims["a"] * (2.1 - 0.25 * m)
        if m < 3:
            sc.box(lv.world([0, 0.7 * lv.dims["b"], 0]), lv.rot,
                   (wing, 0.9 * lv.dims["b"], lv.dims["h"] * 0.9), canc, cort, 1.2, r=4.0)
        sc.capsule(lv.world([0, lv.dims["b"] + 8, 0]), lv.world([0, lv.dims["b"] + 16, -lv.dims["h"]]),
                   3.0, 2.5, canc + 60, cort, 1.0)


# ----------------------------------------------------------------------------- body outline


def _torso_profile(prm: dict, vert: list[_Level], sacrum: list[_Level], zs: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-slice torso ellipse (nk, 6) (cx, cy, half width, half depth, exponent, fat; mm LPS) at world z
    `zs`, and the y (LPS mm) of the table top the patient lies on."""
    z_of = {lv.label: lv.center[2] for lv in vert}
    y_of = {lv.label: lv.center[1] for lv in vert}
    last_t = 28 if prm["variant"] == "T13" else 19
    hab, obese = prm["habitus"], prm["obesity"]
    shoulder = 1.0 if prm["arms"] == "down" else 0.82
    # (label or None for the pelvis, half width, front, back) with front/back = skin distance from
    # the body centre (mm): neck, shoulders, chest, abdomen, pelvis.
    rows = [
        (1, 55, 45, 70, 2.0), (4, 55, 50, 70, 2.0), (7, 75, 55, 75, 2.0), (8, 150 * shoulder, 85, 80, 2.2),
        (10, 175 * shoulder, 115, 75, 2.4), (13, 155, 140, 75, 2.4), (17, 150, 150, 80, 2.4),
        (last_t, 145, 145 * obese, 85, 2.4), (22, 150, 150 * obese, 95, 2.5), (24, 165, 145 * obese, 100, 2.6),
    ]
    zz = np.array([z_of[lab] for lab, *_ in rows] + [sacrum[2].center[2] - 30.0, sacrum[-1].center[2] - 60.0])
    yy = np.array([y_of[lab] for lab, *_ in rows] + [sacrum[0].center[1]] * 2)
    vals = np.array([r[1:] for r in rows] + [(175, 140 * obese, 115, 2.6), (180, 130 * obese, 105, 2.6)], float)
    vals[:, :3] *= hab
    order = np.argsort(zz)
    zz, yy, vals = zz[order], yy[order], vals[order]
    hw, front, back, e = (np.interp(zs, zz, vals[:, c]) for c in range(4))
    ys = np.interp(zs, zz, yy)
    # Supine: below the neck the back lies flat on the table (kyphosis does not lift it off).
    chest = (zz <= z_of[9]) & (zz >= z_of[17])  # the upper back carries the weight: it touches the table
    y_table = float(np.max((yy + vals[:, 2])[chest])) - 5.0
    lying = np.interp(zs, [z_of[8], z_of[7]], [1.0, 0.0])
    back = back + lying * np.clip(y_table + 6.0 - ys - back, 0.0, 20.0)  # lordosis arches off a little
    fat = prm["fat_mm"] * np.interp(zs, [z_of[8], z_of[4]], [1.0, 0.4])
    cx = np.full_like(zs, prm["anchor_lps"][0])
    prof = np.stack([cx, ys + (back - front) / 2, hw, (back + front) / 2, e, fat], 1)
    return prof, y_table


# ----------------------------------------------------------------------------- organs and other bones


def _ribs(sc: _Scene, prm: dict, vert: list[_Level], prof_at) -> dict[int, tuple]:
    """Ribs (bone then costal cartilage) on every thoracic vertebra, and the sternum; returns rib-cage info."""
    canc, cort = _bone(prm)
    thor = [lv for lv in vert if 8 <= lv.label <= 19 or lv.label == 28]
    n = len(thor)
    cage = {}
    for m, lv in enumerate(thor):
        cx, cy, hw, hd, _, fat = prof_at(lv.center[2])
        frac = m / (n - 1)
        width = (hw - 0.6 * fat - 12.0) * float(np.interp(frac, [0, 0.1, 0.25, 0.6, 1], [0.5, 0.72, 0.9, 1.0, 0.92]))
        width = min(width, 165.0 * prm["habitus"])
        y_back = lv.center[1] + lv.dims["b"] + 1.2 * lv.dims["ry"]
        y_front = cy - hd + fat + 14.0
        dx, ar, br = 0.28 * width, 0.72 * width, (y_back - y_front) / 2
        yc = (y_back + y_front) / 2
        cage[lv.label] = (dx, ar, br, yc)
        rank = m + 1
        end = math.pi - 0.15 if rank <= 7 else (2.5 if rank <= n - 2 else 1.6 - 0.3 * (rank - n + 1))
        bone_end = min(end, 2.3)
        xs = lv.dims["rx"] + 0.6 * lv.dims["pr"] + 0.5 * lv.dims["tp_len"]
        psi0 = math.asin(float(np.clip((xs - dx) / ar, -0.9, 0.9)))
        drop = 40.0 + 25.0 * frac
        rot = lv.rot[0, :2]
        for sx in (-1.0, 1.0):
            psi = np.linspace(psi0, end, 16)
            loc = np.stack([sx * (dx + ar * np.sin(psi)), yc + br * np.cos(psi) - lv.center[1],
                            -drop * ((psi - psi0) / math.pi) ** 1.5], 1)
            # axial rotation of the vertebra turns its ribs (the rib hump of scoliosis)
            turn = np.array([[rot[0], rot[1], 0], [-rot[1], rot[0], 0], [0, 0, 1.0]])
            pts = lv.center + loc @ turn
            head = lv.world([sx * 0.8 * lv.dims["a"], 0.7 * lv.dims["b"], 0.3 * lv.dims["h"]])
            sc.capsule(head, pts[0], 4.0, 4.5, canc + 60, cort, 1.0)
            k = int(np.searchsorted(psi, bone_end))
            sc.chain(pts[: k + 1], 5.0, 4.5, canc + 40, cort, 1.0)
            if k < len(pts) - 1:
                sc.chain(pts[k:], 4.5, 4.5, prm["cartilage_hu"])
    if n and 9 in cage:
        top, bot = vert[[lv.label for lv in vert].index(9)], thor[min(8, n - 1)]
        y_s = lambda lv: cage[lv.label][3] - cage[lv.label][2] - 2.0  # noqa: E731 - inner of the front
        p0 = np.array([prm["anchor_lps"][0], y_s(top), top.center[2] - 10.0])
        p1 = np.array([prm["anchor_lps"][0], y_s(bot) + 5.0, bot.center[2] - 45.0])
        sc.box((p0 + p1) / 2, _frame(p0 - p1, 0.0), (15.0, 5.0, np.linalg.norm(p1 - p0) / 2), canc, cort, 1.0, r=2.0)
        sc.box(p0 + [0, 0, 18.0], np.eye(3), (26.0, 6.0, 16.0), canc, cort, 1.0, r=3.0)
    return cage


def _lungs_and_mediastinum(sc: _Scene, prm: dict, z_of, y_of, b_of, cage: dict, x0: float, last_t: int) -> None:
    """Lungs inside the rib cage, the diaphragm domes, mediastinum, heart, trachea and bronchi."""
    if 14 not in cage:
        return
    dx, ar, br, yc = cage[14]
    z_top, z_bot = z_of[8] + 30.0, z_of[last_t] - 10.0
    zc, hz = (z_top + z_bot) / 2, (z_top - z_bot) / 2
    for sx in (-1.0, 1.0):
        sc.ellipsoid([x0 + sx * (dx + 0.38 * ar), yc + 0.05 * br, zc], np.eye(3),
                     (0.66 * ar, 0.92 * br, hz), LUNG + prm["lung_offset"])
    dome = z_of[17] - 0.2 * hz
    for sx, lift in ((-1.0, 12.0), (1.0, 0.0)):  # right dome (-x) sits higher: the liver
        sc.ellipsoid([x0 + sx * 0.5 * ar, yc - 0.1 * br, dome + lift - 1.1 * hz], np.eye(3),
                     (0.95 * ar, 1.15 * br, 1.1 * hz), SOFT)
    sc.box([x0, yc - 0.45 * br, z_of[13]], np.eye(3), (24.0, 0.45 * br, 0.45 * hz), SOFT - 10, r=8.0)
    blood = prm["blood_hu"]
    heart = np.array([x0 + 22.0, yc - 0.42 * br, z_of[15] + 5.0])
    rot = _rot_z(-35.0)
    sc.ellipsoid(heart, rot, (62.0, 50.0, 56.0), FAT)
    sc.ellipsoid(heart, rot, (57.0, 45.0, 52.0), SOFT)
    sc.ellipsoid(heart + [-4, 3, 4], rot, (44.0, 33.0, 40.0), blood)
    # trachea from the larynx to the carina, then the main bronchi
    air = [np.array([x0, y_of[lab] - b_of[lab] - gap, z_of[lab]]) for lab, gap in ((3, 20.0), (5, 24.0), (7, 20.0), (9, 18.0))]
    carina = np.array([x0, y_of[12] - b_of[12] - 18.0, z_of[12]])
    sc.chain(np.array([*air, carina]), 8.0, 8.0, AIR)
    for sx in (-1.0, 1.0):
        sc.capsule(carina, carina + [sx * 45.0, 10.0, -30.0], 6.5, 4.5, AIR)


def _vessels(sc: _Scene, prm: dict, z_of, y_of, b_of, x0: float, labels: set[int]) -> None:
    """Aorta (arch, descending, abdominal, iliac) and inferior vena cava, contrast-filled or not."""
    blood = prm["blood_hu"]
    desc = [lab for lab in (11, 12, 14, 16, 18, 19, 28, 20, 21, 22, 23) if lab in labels]
    pts = [np.array([x0 + 4.0, y_of[14] - b_of[14] - 75.0, z_of[14]]),
           np.array([x0 + 2.0, y_of[10] - b_of[10] - 45.0, z_of[10]]),
           np.array([x0 + 15.0, y_of[10] - b_of[10] - 15.0, z_of[9] + 5.0])]
    pts += [np.array([x0 + 18.0 - 10.0 * (lab >= 20), y_of[lab] - b_of[lab] - 14.0, z_of[lab]]) for lab in desc]
    sc.chain(np.array(pts), 14.0, 9.5, blood)
    bif = pts[-1]
    for sx in (-1.0, 1.0):
        sc.capsule(bif, bif + [sx * 55.0, -15.0, -90.0], 6.0, 5.0, blood)
    if 20 in labels and 16 in labels:
        ivc = [np.array([x0 - 22.0, y_of[lab] - b_of[lab] - 18.0, z_of[lab]]) for lab in (16, 18, 20, 22, 23)]
        sc.chain(np.array(ivc), 12.0, 11.0, prm["venous_hu"])


def _abdomen(sc: _Scene, rng: np.random.Generator, prm: dict, z_of, y_of, b_of, x0: float, last_t: int) -> None:
    """Liver, spleen, stomach, kidneys (with renal fat), psoas, bowel loops with gas, bladder."""
    zt, yt = z_of[last_t], y_of[last_t]
    organ = prm["organ_hu"]
    sc.ellipsoid([x0 - 65.0, yt - 55.0, zt + 40.0], _rot_z(10), (95.0, 80.0, 85.0), organ + 15)
    sc.ellipsoid([x0 + 95.0, yt - 5.0, zt + 35.0], _rot_z(-30), (30.0, 50.0, 55.0), organ + 5)
    sc.ellipsoid([x0 + 55.0, yt - 80.0, zt + 35.0], np.eye(3), (50.0, 40.0, 55.0), SOFT - 10)
    sc.ellipsoid([x0 + 55.0, yt - 100.0, zt + 60.0], np.eye(3), (30.0, 18.0, 20.0), AIR)
    zk, yk = z_of[21], y_of[21]
    for sx, dz in ((-1.0, -15.0), (1.0, 0.0)):
        c = [x0 + sx * 62.0, yk + 5.0, zk + dz]
        sc.ellipsoid(c, _rot_z(sx * 25), (38.0, 36.0, 68.0), FAT)
        sc.ellipsoid(c, _rot_z(sx * 25), (27.0, 24.0, 55.0), prm["kidney_hu"], SOFT, 0.0)
    lumbar = [lab for lab in (last_t, 20, 21, 22, 23, 24) if lab in z_of]
    for sx in (-1.0, 1.0):
        pts = np.array([[x0 + sx * (20.0 + 6.0 * m), y_of[lab] - 2.0, z_of[lab]] for m, lab in enumerate(lumbar)])
        sc.chain(pts, 9.0, 24.0, MUSCLE)
    z_top, z_bot = z_of[21] + 20.0, z_of[24] - 90.0
    front, half_w = 150.0 * prm["obesity"] * prm["habitus"], 150.0 * prm["habitus"]
    sc.ellipsoid([x0, y_of[22] - 0.55 * front, (z_top + z_bot) / 2], np.eye(3),
                 (0.7 * half_w, 0.4 * front, (z_top - z_bot) / 2 + 20.0), prm["visceral_hu"])
    for _ in range(prm["bowel_loops"]):
        c = [x0 + rng.uniform(-0.55, 0.55) * half_w, y_of[22] - rng.uniform(0.35, 0.75) * front, rng.uniform(z_bot, z_top)]
        d = rng.normal(size=3) * [30, 0.1 * front, 30]
        sc.capsule(c, c + d, 14.0, 14.0, SOFT - 15, SOFT + 10, 2.0)
        if rng.random() < 0.6:
            sc.ellipsoid(c, _rot_z(rng.uniform(0, 180)), rng.uniform(5, 18, 3), AIR)
    sc.ellipsoid([x0, y_of[24] - 110.0, z_of[24] - 130.0], np.eye(3), (45.0, 35.0, 35.0), 10.0)


def _paraspinal(sc: _Scene, vert: list[_Level]) -> None:
    """Erector spinae muscles along the back, behind the transverse processes."""
    for sx in (-1.0, 1.0):
        pts = np.array([lv.world([sx * (lv.dims["rx"] + 14.0), lv.dims["b"] + 2 * lv.dims["ry"] + 16.0, 0])
                        for lv in vert[2:]])
        sc.chain(pts, 14.0, 30.0, MUSCLE)


def _iliac_wing(sc: _Scene, centre: np.ndarray, axes: np.ndarray, sx: float, canc: float, cort: float) -> None:
    """An iliac wing: a curved bony plate tiled on the lateral part of an ellipsoid (LPS mm)."""
    up = np.array([0.0, 0.0, 1.0])
    for phi in np.radians(np.linspace(-70, 70, 7)):
        for theta in np.radians(np.linspace(-20, 42, 4)):
            unit = np.array([sx * math.cos(theta) * math.cos(phi), -math.cos(theta) * math.sin(phi), math.sin(theta)])
            normal = unit / axes
            normal /= np.linalg.norm(normal)
            ez = up - normal @ up * normal
            ez /= np.linalg.norm(ez)
            rot = np.array([np.cross(normal, ez), normal, ez])
            thick = 3.0 + 3.0 * (theta < 0)  # the wing thickens toward the acetabulum
            sc.box(centre + axes * unit, rot, (15.0, thick, 14.0), canc, cort, 1.2, r=2.0)


def _pelvis(sc: _Scene, prm: dict, sacrum: list[_Level], x0: float) -> None:
    """Iliac wings (curved plates), acetabula, femoral heads and shafts, pubic and ischial rami."""
    canc, cort = _bone(prm)
    s1, s3 = sacrum[0], sacrum[2]
    hab = prm["habitus"] ** 0.5
    for sx in (-1.0, 1.0):
        si = s1.world([sx * s1.dims["a"] * 2.0, 0.6 * s1.dims["b"], -5.0])
        _iliac_wing(sc, np.array([x0 + sx * 22.0 * hab, si[1] - 30.0 * hab, s1.center[2] - 30.0]),
                    np.array([70.0, 58.0, 72.0]) * hab, sx, canc, cort)
        hip = np.array([si[0] + sx * 55.0 * hab, si[1] - 55.0 * hab, s3.center[2] - 55.0])
        sc.ellipsoid(hip, np.eye(3), (30.0, 30.0, 30.0), canc, cort, 2.0)
        sc.capsule(si + [0, 0, -20], hip, 14.0, 18.0, canc, cort, 1.5)
        sc.ellipsoid(hip + [sx * 3, 0, 0], np.eye(3), (23.0, 23.0, 23.0), canc + 40, cort, 1.5)
        neck = hip + [sx * 40.0, 8.0, -30.0]
        sc.capsule(hip, neck, 15.0, 16.0, canc, cort, 1.5)
        sc.capsule(neck, neck + [sx * 25.0, 5.0, -300.0], 15.0, 13.0, 20.0, cort + 300, 5.0)
        pub = np.array([x0 + sx * 12.0, hip[1] - 45.0, hip[2] - 10.0])
        sc.capsule(hip, pub, 9.0, 8.0, canc, cort, 1.5)
        sc.capsule(hip + [0, 15, -30], pub + [0, 5, -30], 9.0, 8.0, canc, cort, 1.5)
        sc.capsule(hip, hip + [0, 15, -35], 12.0, 10.0, canc, cort, 1.5)


def _shoulders_and_arms(sc: _Scene, prm: dict, z_of, y_of, prof_at, x0: float, cage: dict) -> None:
    """Clavicles, scapulae, humeri and the arms' soft tissue, arms at the sides or raised."""
    canc, cort = _bone(prm)
    if 10 not in cage:
        return
    _, cy, hw, hd, _, _ = prof_at(z_of[10])
    dx, ar, br, yc = cage[12]
    for sx in (-1.0, 1.0):
        shoulder = np.array([x0 + sx * (hw - 35.0), yc - 0.2 * br, z_of[8] + 5.0])
        if prm["arms"] == "up":
            shoulder[0] = x0 + sx * (hw - 15.0)
            elbow = shoulder + [sx * -25.0, -20.0, 280.0]
            hand = elbow + [sx * -40.0, -30.0, 240.0]
        else:
            z_el = z_of[20]
            elbow = np.array([x0 + sx * (prof_at(z_el)[2] + 35.0), yc, z_el])
            hand = np.array([x0 + sx * (prof_at(z_el - 260.0)[2] * 0.85 + 30.0), yc - 35.0, z_el - 260.0])
        sc.chain(np.array([shoulder, elbow, hand]), 48.0, 32.0, MUSCLE, FAT, prm["fat_mm"] * 0.5)
        sc.ellipsoid(shoulder, np.eye(3), (24.0, 24.0, 24.0), canc + 40, cort, 1.5)
        sc.capsule(shoulder, elbow, 12.0, 10.0, 20.0, cort + 250, 4.0)
        for off in (-8.0, 8.0):
            sc.capsule(elbow + [0, off, 0], hand + [0, off, 0], 7.0, 6.0, 20.0, cort + 250, 3.0)
        notch = np.array([x0 + sx * 22.0, yc - br + 5.0, z_of[8] - 5.0])
        acromion = shoulder + [sx * -10.0, 10.0, 22.0]
        mid = (notch + acromion) / 2 + [0, -15.0, 5.0]
        sc.chain(np.array([notch, mid, acromion]), 6.5, 6.0, canc + 60, cort, 1.5)
        blade = np.array([x0 + sx * 0.55 * (dx + ar), yc + br + 12.0, z_of[11]])
        sc.box(blade, _rot_z(sx * -30.0), (40.0, 3.0, 65.0), canc, cort, 1.2, r=2.0)
        sc.capsule(blade + [0, 0, 45.0], acromion, 6.0, 7.0, canc + 40, cort, 1.2)


def _head(sc: _Scene, prm: dict, vert: list[_Level], x0: float) -> None:
    """Skull (shell around brain), skull base, face soft tissue, mandible with teeth, pharynx."""
    canc, cort = _bone(prm)
    c1, c2, c3 = vert[0], vert[1], vert[2]
    hs = prm["head_scale"]
    ax, ay, az = 72.0 * hs, 92.0 * hs, 78.0 * hs
    centre = np.array([x0, c1.center[1] - 18.0, c1.center[2] + 18.0 + az])
    sc.ellipsoid(centre + [0, -55, -65], np.eye(3), (58.0, 50.0, 80.0), SOFT, FAT, 4.0)
    sc.ellipsoid(centre, np.eye(3), (ax + 6, ay + 6, az + 6), SOFT, FAT, 3.0)
    sc.ellipsoid(centre, np.eye(3), (ax, ay, az), 35.0, cort + 200.0, 6.0)
    sc.ellipsoid(centre + [0, 10.0, -az + 22.0], np.eye(3), (55.0, 40.0, 12.0), canc + 300, cort + 200, 3.0)
    y_jaw = c2.center[1] - 32.0
    ang = np.radians(np.linspace(-95, 95, 13))
    arch = np.stack([x0 + 46.0 * np.sin(ang), y_jaw - 62.0 * np.cos(ang) + 10, np.full_like(ang, c3.center[2] + 5)], 1)
    sc.chain(arch, 6.5, 6.5, canc + 100, cort + 200, 2.0)
    teeth = prm["metal_hu"] if prm["dental_metal"] else 2200.0
    for z in (c3.center[2] + 20.0, c1.center[2] - 5.0):
        sc.chain(arch[2:-2] * [1, 1, 0] + [0, 2.0, z] - [0.12, 0, 0] * (arch[2:-2] - [x0, 0, 0]), 4.0, 4.0, teeth)
    for end in (arch[0], arch[-1]):
        sc.capsule(end, [end[0], c1.center[1] - 8.0, c1.center[2] + 22.0], 6.0, 5.0, canc + 100, cort + 200, 2.0)
    pharynx = np.array([[x0, c1.center[1] - 24.0, c1.center[2] + 25.0], [x0, c2.center[1] - 20.0, c2.center[2]],
                        [x0, c3.center[1] - 18.0, c3.center[2] - 10.0]])
    sc.chain(pharynx, 9.0, 7.0, AIR)


def _metal(sc: _Scene, prm: dict, vert: list[_Level]) -> None:
    """Pedicle screws through the instrumented levels and rods joining their heads."""
    levels = [lv for lv in vert if lv.label in prm["metal_levels"]]
    hu = prm["metal_hu"]
    heads: dict[float, list[np.ndarray]] = {-1.0: [], 1.0: []}
    for lv in levels:
        d = lv.dims
        for sx in (-1.0, 1.0):
            entry = lv.world([sx * (d["rx"] + d["pr"] + 4.0), d["b"] + d["ry"] + 14.0, 0.1 * d["h"]])
            tip = lv.world([sx * 0.25 * d["a"], -0.45 * d["b"], 0.1 * d["h"]])
            sc.capsule(entry, tip, 3.2, 2.5, hu)
            sc.ellipsoid(entry, lv.rot, (6.0, 6.0, 6.0), hu)
            heads[sx].append(entry)
    for pts in heads.values():
        if len(pts) > 1:
            sc.chain(np.array(pts), 3.0, 3.0, hu)


# ----------------------------------------------------------------------------- parameters and grid


def _choose_params(rng: np.random.Generator, region: str | None, orientation: str | None) -> dict:
    """What the seed chooses: anatomy, variant, curvature, intensities, implants, orientation."""
    if region is None:
        region = str(rng.choice(REGIONS, p=[0.3, 0.15, 0.15, 0.2, 0.1, 0.1]))
    if region not in REGIONS:
        raise VertedgeError(f"unknown phantom region {region!r}; expected one of {', '.join(REGIONS)}")
    if orientation is None:
        orientation = str(rng.choice(ORIENTATIONS, p=[0.4, 0.35, 0.25]))
    if orientation not in ORIENTATIONS:
        raise VertedgeError(f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATIONS)}")
    variant = str(rng.choice(["normal", "T13", "L6"], p=[0.8, 0.1, 0.1]))
    scol: list[tuple[float, float, float]] = []
    if rng.random() < 0.3:
        amp = float(rng.uniform(8, 30) * rng.choice([-1, 1]))
        s0 = float(rng.uniform(120, 260))
        scol.append((amp, s0, s0 + float(rng.uniform(180, 300))))
        if rng.random() < 0.5:
            s1 = scol[0][2] - 60.0
            scol.append((-amp * float(rng.uniform(0.4, 0.8)), s1, s1 + float(rng.uniform(150, 220))))
    contrast = str(rng.choice(["none", "arterial", "venous"], p=[0.4, 0.3, 0.3]))
    metal = rng.random() < 0.15
    first = int(rng.integers(16, 22))
    return {
        "region": region, "variant": variant, "orientation": orientation,
        "stature": float(rng.uniform(0.88, 1.12)), "habitus": float(rng.uniform(0.85, 1.2)),
        "obesity": float(rng.uniform(0.9, 1.35)), "fat_mm": float(rng.uniform(5, 35)),
        "head_scale": float(rng.uniform(0.92, 1.08)),
        "bone_density": float(rng.uniform(0.15, 1.5)), "disc_hu": float(rng.uniform(70, 110)),
        "cartilage_hu": float(rng.uniform(100, 250)), "lung_offset": float(rng.uniform(-40, 40)),
        "lordosis_c": float(rng.uniform(5, 25)), "kyphosis": float(rng.uniform(20, 45)),
        "lordosis_l": float(rng.uniform(25, 50)), "sacral_tilt": float(rng.uniform(35, 55)),
        "scoliosis": scol, "scoliosis_rotation": float(rng.uniform(5, 20)),
        "contrast": contrast,
        "blood_hu": {"none": 45.0, "arterial": float(rng.uniform(250, 400)), "venous": float(rng.uniform(140, 200))}[contrast],
        "venous_hu": {"none": 40.0, "arterial": 60.0, "venous": float(rng.uniform(130, 180))}[contrast],
        "organ_hu": {"none": 45.0, "arterial": 70.0, "venous": 100.0}[contrast],
        "kidney_hu": {"none": 30.0, "arterial": 180.0, "venous": 160.0}[contrast],
        "arms": str(rng.choice(["down", "up"])), "bowel_loops": int(rng.integers(15, 35)),
        "visceral_hu": float(rng.uniform(-90, -30)),
        "metal": bool(metal), "metal_levels": list(range(first, first + int(rng.integers(2, 5)))) if metal else [],
        "metal_hu": float(rng.choice([3071.0, 4000.0, 8000.0])), "dental_metal": bool(rng.random() < 0.2),
        "noise_sigma": float(rng.uniform(8, 30)), "cupping_hu": float(rng.uniform(0, 40)) if rng.random() < 0.5 else 0.0,
        "fov_pad_hu": float(rng.choice([-1024.0, -2048.0, -3024.0], p=[0.6, 0.2, 0.2])),
        "anchor_lps": [float(rng.uniform(-30, 30)), float(rng.uniform(-80, 80)), float(rng.uniform(-200, 1200))],
        "noise_seed": int(rng.integers(0, 2**62)),
    }


def _si_extent(rng: np.random.Generator, prm: dict, z_of: dict[int, float], z_s1: float) -> tuple[float, float]:
    """(bottom, top) world z mm of the field of view the region asks for (ends may cut vertebrae)."""
    last_t = 28 if prm["variant"] == "T13" else 19
    u = rng.uniform
    reg = prm["region"]
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


def _grid(rng: np.random.Generator, prm: dict, z_rng: tuple[float, float], centre_xy: np.ndarray,
          shape, spacing) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """(origin LPS mm, spacing mm, shape (ni, nj, nk)) of the LPS-aligned grid; overrides win."""
    length = z_rng[1] - z_rng[0]
    fov = float(rng.uniform(230, 330) if prm["region"] == "cervical" else rng.uniform(320, 460))
    if shape is not None and spacing is not None:
        n, sp = np.array(shape, int), np.array(spacing, float)
    elif shape is not None:
        n = np.array(shape, int)
        sp = np.array([fov / n[0], fov / n[1], length / n[2]])
    else:
        options = [s for s in (0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0) if length / s <= 800]
        sk = float(rng.choice(options)) if spacing is None else float(spacing[2])
        sij = fov / 512 if spacing is None else float(spacing[0])
        sp = np.array([sij, sij if spacing is None else float(spacing[1]), sk])
        n = np.array([round(fov / sp[0]), round(fov / sp[1]), max(2, round(length / sp[2]))], int)
    ext = (n - 1) * sp
    shift = rng.uniform(-25, 25, 2)
    origin = np.array([centre_xy[0] + shift[0] - ext[0] / 2, centre_xy[1] + shift[1] - ext[1] / 2,
                       (z_rng[0] + z_rng[1]) / 2 - ext[2] / 2])
    return origin, sp, (int(n[0]), int(n[1]), int(n[2]))


def _orientation(rng: np.random.Generator, name: str) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(perm, flips) for `Volume.reoriented` from the LPS grid to the stored orientation."""
    if name == "LPS":
        return (0, 1, 2), (False, False, False)
    if name == "RAS":
        return (0, 1, 2), (True, True, False)
    perms = [(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    perm = perms[int(rng.integers(len(perms)))]
    return perm, tuple(bool(f) for f in rng.random(3) < 0.5)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- assembly


def _jsonable(obj: Any) -> Any:
    """Convert tuples and NumPy scalars/arrays to plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def make_phantom(seed: int, region: str | None = None, *, shape: tuple[int, int, int] | None = None,
                 spacing: tuple[float, float, float] | None = None, orientation: str | None = None) -> Phantom:
    """Deterministic synthetic spine CT for `seed`.

    region None = chosen by the seed. `shape` (voxels) and `spacing` (mm) are along the patient's
    L-R, A-P, S-I axes (the stored (i, j, k) for LPS/RAS; permuted with the axes otherwise) and
    override the seed's choice; orientation 'LPS', 'RAS', 'permuted' or None (chosen by the seed).
    """
    rng = np.random.default_rng(seed)
    prm = _choose_params(rng, region, orientation)
    vert, sacrum, _ = _build_spine(rng, prm)
    z_of = {lv.label: float(lv.center[2]) for lv in vert}
    y_of = {lv.label: float(lv.center[1]) for lv in vert}
    b_of = {lv.label: lv.dims["b"] for lv in vert}
    x0 = prm["anchor_lps"][0]
    last_t = 28 if prm["variant"] == "T13" else 19

    z_rng = _si_extent(rng, prm, z_of, float(sacrum[0].center[2]))
    zmid = (z_rng[0] + z_rng[1]) / 2
    prof_mid = _torso_profile(prm, vert, sacrum, np.array([zmid]))[0][0]
    origin, sp, n = _grid(rng, prm, z_rng, prof_mid[:2], shape, spacing)
    zs = origin[2] + sp[2] * np.arange(n[2])
    prof, y_table = _torso_profile(prm, vert, sacrum, zs)

    def prof_at(z: float) -> np.ndarray:
        return _torso_profile(prm, vert, sacrum, np.array([z]))[0][0]

    sc = _Scene()
    _paraspinal(sc, vert)
    cage = _ribs_cage_only(prm, vert, prof_at)
    _lungs_and_mediastinum(sc, prm, z_of, y_of, b_of, cage, x0, last_t)
    _abdomen(sc, rng, prm, z_of, y_of, b_of, x0, last_t)
    _vessels(sc, prm, z_of, y_of, b_of, x0, set(z_of))
    _shoulders_and_arms(sc, prm, z_of, y_of, prof_at, x0, cage)
    _head(sc, prm, vert, x0)
    bodies = _add_spine(sc, prm, vert, sacrum)
    _ribs(sc, prm, vert, prof_at)
    _pelvis(sc, prm, sacrum, x0)
    _metal(sc, prm, vert)

    hu = _rasterize(sc, prof, y_table, prm, origin, sp, n)
    canonical = Volume(hu, sp, origin, np.eye(3), {"source": f"phantom seed {seed}"})
    perm, flips = _orientation(rng, prm["orientation"])
    volume = canonical.reoriented(perm, flips)
    centroids, cut, kept = _ground_truth(bodies, canonical)
    prm.update(seed=int(seed), shape_lps=list(n), spacing_lps=[float(s) for s in sp], perm=list(perm),
               flips=list(flips), axcodes=list(volume.axcodes()))
    return Phantom(volume, centroids, cut, kept, _jsonable(prm))


def _ribs_cage_only(prm: dict, vert: list[_Level], prof_at) -> dict:
    """The rib-cage ellipses (dx, ar, br, yc) per thoracic label, without painting (for lungs and arms)."""
    return _ribs(_Scene(), prm, vert, prof_at)


def _rasterize(sc: _Scene, prof: np.ndarray, y_table: float, prm: dict, origin: np.ndarray, sp: np.ndarray, n) -> np.ndarray:
    """Paint torso, table and all primitives into an int16 (nk, nj, ni) LPS grid, then noise and FOV."""
    hu = np.empty((n[2], n[1], n[0]), np.int16)
    edge = float(np.mean(sp))
    # curved carbon-fibre plate (dense skins, foam core), rising 25 mm at 200 mm off the midline
    table = np.array([y_table, 25.0 / 200.0**2, 14.0, 2.0, 230.0, 250.0, -850.0])
    _paint_torso(hu, prof, table, origin, sp, edge)
    rows = sc.table()
    boxes = _index_boxes(rows, origin, sp, hu.shape, pad=edge + 0.5)
    ptr, ids = _slice_lists(boxes, hu.shape[0])
    _paint(hu, rows, boxes, _reach(rows, edge + 0.5), ptr, ids, origin, sp, edge)
    fov_c = (np.array(n[:2]) - 1) / 2.0
    fov_r = float(min(n[0] * sp[0], n[1] * sp[1]) / 2)
    _finish(hu, prm["noise_seed"], prm["noise_sigma"], prm["cupping_hu"], fov_c, fov_r, prm["fov_pad_hu"], sp)
    return hu


def _ground_truth(bodies: dict[int, BodyShape], grid: Volume) -> tuple[dict, dict, dict]:
    """Centroids, cut flags and shapes of the vertebrae whose body centroid lies inside the grid."""
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


# ----------------------------------------------------------------------------- files


_SUFFIXES = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", re.IGNORECASE)


def _stem(path: Path) -> str:
    """The file name without its image extension."""
    return _SUFFIXES.sub("", path.name)


def save_phantom(phantom: Phantom, path: str | os.PathLike[str]) -> list[Path]:
    """Write the volume (format by extension), `<stem>_ctd.json` (VerSe) and `<stem>_gt.json`; atomic."""
    p = Path(path)
    if not _SUFFIXES.search(p.name):
        raise VertedgeError(f"{p}: unknown image extension (use .nii.gz, .nii, .nrrd, .mha or .mhd)")
    ctd = p.with_name(_stem(p) + "_ctd.json")
    gt = p.with_name(_stem(p) + "_gt.json")
    save_volume(phantom.volume, p)
    write_verse_ctd(ctd, phantom.centroids, phantom.volume)
    order = sorted(phantom.centroids, key=lambda lab: phantom.centroids[lab][2], reverse=True)
    write_json(gt, {
        "vertebrae": [
            {"label": int(lab), "name": NAMES[lab],
             "world_lps_mm": [round(float(v), 3) for v in phantom.centroids[lab]],
             "cut_by_field_of_view": bool(phantom.cut[lab])}
            for lab in order
        ],
        "phantom": phantom.params,
    })
    return [p, ctd, gt]
