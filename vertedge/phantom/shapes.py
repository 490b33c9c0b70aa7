"""Analytic shapes and local frames shared by the parts of the phantom (world LPS mm, degrees)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


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


def rot_z(deg: float) -> np.ndarray:
    """Rotation rows (local axes in world) turned by `deg` about world +z (from +x toward +y)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    """Rotation rows turned by `deg` about world +x (from +y toward +z)."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def frame(tangent: np.ndarray, axial_deg: float) -> np.ndarray:
    """Rows (x, y, z) of a vertebra frame: z = spine tangent (superior), y posterior, turned axially."""
    ez = tangent / np.linalg.norm(tangent)
    ey = np.array([0.0, 1.0, 0.0]) - ez[1] * ez
    ey /= np.linalg.norm(ey)
    ex = np.cross(ey, ez)
    c, s = math.cos(math.radians(axial_deg)), math.sin(math.radians(axial_deg))
    return np.array([c * ex + s * ey, -s * ex + c * ey, ez])


def bump(s: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """Smooth bell 0 -> 1 -> 0 over [s0, s1] with zero slope at both ends."""
    u = np.clip((s - s0) / (s1 - s0), 0.0, 1.0)
    return 0.5 * (1.0 - np.cos(2.0 * np.pi * u))
