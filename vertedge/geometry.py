"""Cone-beam view geometry: K X-ray sources on a circle about the scan's S-I axis.

Frames and units:
- World: LPS millimetres (see `volume`).
- Detector: pixel coordinates `(row, col)`, float, integer values at pixel centres; `(0, 0)` is
  the top-left pixel. Rows run along S-I (row 0 superior), columns to the patient's left in the
  AP view: each view is seen from its source, as a radiograph is read.
- View k has its source at angle `start + k * 360 / K` degrees; view 0 at 0 degrees looks from
  anterior to posterior (AP); angles grow counter-clockwise seen from the head (90 deg: from the
  patient's left).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .tables import dataclass_from_table
from .volume import Volume


@dataclass(frozen=True)
class Protocol:
    """The DRR protocol: geometry and intensity transform that a model is trained and run with.

    The defaults are the paper's settings (`Protocol.paper()`), not the shipped models': those run
    with the protocol stored in their ONNX metadata (`vertedge.onnx_models.Models.protocol`: 5 mm
    pixels, at most 512 x 512, 2 mm steps). Code that means the paper's protocol says
    `Protocol.paper()`; `Protocol(...)` with a few fields is a protocol built for a purpose (tests).
    The defaults stay the paper's because a config without a protocol (vertedge_train), a
    model's metadata missing a field (`from_dict`) and the tests all read them.
    """

    n_views: int = 10
    start_angle_deg: float = 0.0
    source_iso_mm: float = 500.0  # source to rotation axis
    source_det_mm: float = 1000.0  # source to detector plane
    pixel_mm: float = 2.0  # detector pixel pitch, at the detector
    max_rows: int = 1024  # the detector is cropped to the scan's projection, at most this
    max_cols: int = 1024
    size_multiple: int = 32  # rows and cols are rounded up to a multiple of this (U-Net strides)
    step_mm: float = 1.0  # ray-marching step
    mu_water_per_mm: float = 0.02  # linear attenuation of water (see `drr` for the HU -> mu transform)
    bone_hu: float = 150.0  # HU above which bone attenuates extra at a radiograph's energy
    bone_gain: float = 6.0  # that extra, per 1000 HU above bone_hu, in units of water attenuation
    norm_percentile: float = 99.5  # network input = line integral / this percentile over all views

    @classmethod
    def paper(cls) -> Protocol:
        """The paper's protocol (Wu et al., MICCAI 2023), at full resolution: what
        vertedge_train/configs/paper_gpu.json trains with.

        The paper fixes K = 10 views, one every 360 / K degrees (Sec. 2.1; K = 10 chosen in Fig. 2),
        on scans resampled to 1 mm; it gives no detector or intensity settings, so those are this
        project's full-resolution choice: 2 mm detector pixels up to 1024 x 1024, 1 mm ray steps,
        the source 500 mm from the axis and 1000 mm from the detector.
        """
        return cls(
            n_views=10, start_angle_deg=0.0,  # the paper's
            # geometry: this project's
            source_iso_mm=500.0, source_det_mm=1000.0, pixel_mm=2.0, max_rows=1024, max_cols=1024, size_multiple=32,
            # sampling and intensity: this project's
            step_mm=1.0, mu_water_per_mm=0.02, bone_hu=150.0, bone_gain=6.0, norm_percentile=99.5,
        )

    @property
    def angles_deg(self) -> np.ndarray:
        """(K,) source angles in degrees."""
        return self.start_angle_deg + np.arange(self.n_views) * (360.0 / self.n_views)

    def with_views(self, n_views: int | None) -> Protocol:
        """This protocol with K views (unchanged when `n_views` is None)."""
        return self if n_views is None else replace(self, n_views=int(n_views))

    def to_dict(self) -> dict[str, Any]:
        """The protocol as a plain dict."""
        return asdict(self)

    def to_json(self) -> str:
        """The protocol as a JSON object string (for ONNX metadata)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Protocol:
        """Build from a dict; unknown keys and values of the wrong type are errors, so a stale model
        is not misread."""
        protocol: Protocol = dataclass_from_table(cls, d, "DRR protocol")
        return protocol


@dataclass(frozen=True, eq=False)
class Views:
    """The concrete geometry of K views of one scan (all arrays float64, world LPS mm)."""

    sources: np.ndarray  # (K, 3) source positions
    det_origin: np.ndarray  # (K, 3) centre of detector pixel (0, 0)
    row_dir: np.ndarray  # (K, 3) unit vector of increasing row (towards inferior)
    col_dir: np.ndarray  # (K, 3) unit vector of increasing column
    pixel_mm: float  # detector pitch at the detector
    shape: tuple[int, int]  # (rows, cols)
    angles_deg: np.ndarray  # (K,)
    source_det_mm: float
    center_lps: np.ndarray  # (3,) the rotation centre (isocentre)

    @property
    def n_views(self) -> int:
        """Number of views K."""
        return len(self.sources)

    @property
    def axis_dir(self) -> np.ndarray:
        """(K, 3) unit central-ray direction (source -> detector)."""
        return np.cross(self.col_dir, self.row_dir)

    def take(self, index: np.ndarray | list[int]) -> Views:
        """The views at `index` (repeats allowed), e.g. one view per detection."""
        return replace(
            self,
            sources=self.sources[index],
            det_origin=self.det_origin[index],
            row_dir=self.row_dir[index],
            col_dir=self.col_dir[index],
            angles_deg=self.angles_deg[index],
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready geometry (world LPS mm, detector pixels) of every view."""
        return {
            "frame": "world LPS mm; pixel (row, col), (0, 0) = centre of the top-left pixel",
            "shape_rows_cols": list(self.shape),
            "pixel_mm": self.pixel_mm,
            "source_det_mm": self.source_det_mm,
            "angles_deg": self.angles_deg.tolist(),
            "center_lps": self.center_lps.tolist(),
            "sources": self.sources.tolist(),
            "det_origin": self.det_origin.tolist(),
            "row_dir": self.row_dir.tolist(),
            "col_dir": self.col_dir.tolist(),
        }


def _rotation_about(axis: np.ndarray, angles_rad: np.ndarray) -> np.ndarray:
    """(K, 3, 3) right-handed rotations by `angles_rad` about unit `axis` (Rodrigues)."""
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    s, c = np.sin(angles_rad)[:, None, None], np.cos(angles_rad)[:, None, None]
    return np.eye(3) + s * kx + (1 - c) * (kx @ kx)


def _round_up(n: float, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= n (at least `multiple`)."""
    return max(multiple, int(np.ceil(n / multiple)) * multiple)


def make_views(
    volume: Volume,
    protocol: Protocol,
    shape: tuple[int, int] | None = None,
    center_lps: np.ndarray | None = None,
    axis_lps: np.ndarray | None = None,
) -> Views:
    """Views about the volume's S-I axis through its centre; detector fitted to the projection.

    `shape` (rows, cols) fixes the detector size; by default it is the smallest size (a multiple of
    `protocol.size_multiple`, at most `max_rows` x `max_cols`) that holds the whole volume's box in
    every view, centred on the central ray. `center_lps` (mm) and `axis_lps` (a unit vector
    pointing superior) move the rotation axis, e.g. onto the spine's own axis.
    """
    axis = volume.si_axis()[1] if axis_lps is None else np.asarray(axis_lps, float) / np.linalg.norm(axis_lps)
    center = volume.center_world if center_lps is None else np.asarray(center_lps, float)
    posterior = np.array([0.0, 1.0, 0.0])
    d0 = posterior - (posterior @ axis) * axis
    d0 /= np.linalg.norm(d0)
    angles = protocol.angles_deg
    rot = _rotation_about(axis, np.deg2rad(angles))
    d = rot @ d0  # (K, 3) central-ray directions
    sources = center - protocol.source_iso_mm * d
    row_dir = np.broadcast_to(-axis, d.shape).copy()
    col_dir = np.cross(d, axis)
    det_center = sources + protocol.source_det_mm * d
    if shape is None:
        shape = _fitted_shape(volume, sources, d, row_dir, col_dir, protocol)
    rows, cols = shape
    det_origin = (
        det_center
        - ((cols - 1) / 2.0) * protocol.pixel_mm * col_dir
        - ((rows - 1) / 2.0) * protocol.pixel_mm * row_dir
    )
    return Views(
        sources=sources,
        det_origin=det_origin,
        row_dir=row_dir,
        col_dir=col_dir,
        pixel_mm=protocol.pixel_mm,
        shape=(int(rows), int(cols)),
        angles_deg=np.asarray(angles, float),
        source_det_mm=protocol.source_det_mm,
        center_lps=center,
    )


def _box_corners_lps(volume: Volume) -> np.ndarray:
    """(8, 3) world LPS mm corners of the volume's box (outer voxel faces)."""
    n = np.array(volume.shape_ijk, float)
    bits = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T
    return volume.index_to_world(bits * n - 0.5)


def _fitted_shape(
    volume: Volume,
    sources: np.ndarray,
    d: np.ndarray,
    row_dir: np.ndarray,
    col_dir: np.ndarray,
    protocol: Protocol,
) -> tuple[int, int]:
    """Detector (rows, cols) that hold the projected volume box in every view, centred."""
    rel = _box_corners_lps(volume)[None] - sources[:, None]  # (K, 8, 3)
    depth = np.einsum("kni,ki->kn", rel, d)
    scale = protocol.source_det_mm / (np.maximum(depth, 1e-6) * protocol.pixel_mm)
    half_rows = np.abs(np.einsum("kni,ki->kn", rel, row_dir) * scale).max()
    half_cols = np.abs(np.einsum("kni,ki->kn", rel, col_dir) * scale).max()
    m = protocol.size_multiple
    rows = min(_round_up(2 * half_rows + 1, m), protocol.max_rows)
    cols = min(_round_up(2 * half_cols + 1, m), protocol.max_cols)
    return rows, cols


def projection_matrices(views: Views) -> np.ndarray:
    """(K, 3, 4) matrices P with P @ (x, y, z, 1) = w * (row, col, 1); w = depth along the central ray in mm."""
    d = views.axis_dir
    s, o = views.sources, views.det_origin
    sdd, pix = views.source_det_mm, views.pixel_mm
    off_r = np.einsum("ki,ki->k", s - o, views.row_dir)
    off_c = np.einsum("ki,ki->k", s - o, views.col_dir)
    a_r = (sdd * views.row_dir + off_r[:, None] * d) / pix
    a_c = (sdd * views.col_dir + off_c[:, None] * d) / pix
    m = np.stack([a_r, a_c, d], axis=1)  # (K, 3, 3)
    t = -np.einsum("kij,kj->ki", m, s)
    return np.concatenate([m, t[:, :, None]], axis=2)


def project(views: Views, points_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) LPS mm -> pixels (K, N, 2) (row, col) and depths (K, N) mm from the source."""
    p = projection_matrices(views)
    h = np.einsum("kij,nj->kni", p[:, :, :3], np.asarray(points_lps, float)) + p[:, None, :, 3]
    depth = h[..., 2]
    return h[..., :2] / depth[..., None], depth


def pixel_to_detector(views: Views, rc: np.ndarray) -> np.ndarray:
    """Pixels (K, N, 2) (row, col) -> world LPS mm (K, N, 3) points on each view's detector plane."""
    rc = np.asarray(rc, float)
    return (
        views.det_origin[:, None]
        + rc[..., :1] * views.pixel_mm * views.row_dir[:, None]
        + rc[..., 1:] * views.pixel_mm * views.col_dir[:, None]
    )


def pixel_rays(views: Views, rc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixels (K, N, 2) (row, col): origins (K, N, 3) at the sources and unit directions (K, N, 3)."""
    target = pixel_to_detector(views, rc)
    origins = np.broadcast_to(views.sources[:, None], target.shape)
    dirs = target - origins
    return origins, dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)


def pixel_mm_at_depth(views: Views, depth_mm: np.ndarray) -> np.ndarray:
    """Size in mm that one detector pixel covers at `depth_mm` from the source (magnification)."""
    return views.pixel_mm * np.asarray(depth_mm, float) / views.source_det_mm
