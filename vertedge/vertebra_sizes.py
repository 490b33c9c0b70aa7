"""Vertebra sizes per spinal level at stature 1: the table the phantom draws its spines from, and so
the size at which the nets learned the spine (`patient_size`).

Sizes are given at anchor levels of the canonical index C1..L5 = 0..23 and interpolated in between.
Body sizes and discs are of the order of published adult means (e.g. Panjabi et al.'s cervical,
thoracic and lumbar morphometry, Spine 1991-1992), rounded and not fitted to them; the posterior
elements (canal, pedicles, processes) were shaped by eye so that DRRs of the phantom look like DRRs
of real CT. Lengths in mm, angles in degrees.
"""

from __future__ import annotations

import numpy as np

# Canonical levels of the anchor columns: C2, C3, C7, T1, T6, T12, L1, L3, L5.
ANCHORS = np.array([1, 2, 6, 7, 12, 18, 19, 21, 23], float)
TABLE = {
    "a": [8.0, 8.0, 11.0, 13.0, 15.0, 20.0, 21.0, 23.0, 25.0],  # body half width
    "b": [7.5, 7.0, 8.0, 8.5, 13.0, 15.0, 15.0, 16.0, 17.0],  # body half depth
    "h": [9.0, 6.5, 7.0, 8.0, 10.0, 12.0, 12.5, 13.5, 13.5],  # body half height
    "disc": [3.5, 4.0, 4.5, 4.5, 5.5, 7.5, 9.0, 10.0, 11.0],  # height of the disc below
    "rx": [12.0, 12.5, 12.0, 10.0, 8.5, 10.0, 11.0, 11.5, 12.5],  # canal half width
    "ry": [8.0, 7.5, 7.0, 8.0, 8.0, 8.5, 9.0, 9.0, 9.0],  # canal half depth
    "pr": [3.5, 3.0, 3.5, 4.0, 4.0, 5.0, 5.5, 6.5, 7.5],  # pedicle radius
    "sp_len": [24.0, 14.0, 30.0, 35.0, 40.0, 32.0, 30.0, 30.0, 24.0],  # spinous process length
    "sp_ang": [20.0, 25.0, 20.0, 35.0, 60.0, 30.0, 10.0, 10.0, 15.0],  # its downward angle, deg
    "tp_len": [12.0, 12.0, 18.0, 25.0, 22.0, 12.0, 22.0, 28.0, 22.0],  # transverse process length
    "tp_ang": [-20.0, -25.0, -10.0, 30.0, 35.0, 30.0, 10.0, 5.0, 10.0],  # its backward angle, deg
}
ANGLES = ("sp_ang", "tp_ang")  # not scaled by stature


def at_level(key: str, canon: float | np.ndarray) -> np.ndarray:
    """`TABLE[key]` at fractional canonical levels `canon` (C1..L5 = 0..23), stature 1."""
    return np.asarray(np.interp(canon, ANCHORS, TABLE[key]))
