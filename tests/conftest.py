"""Shared fixtures: small synthetic volumes with known content, a tiny model pair."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from vertedge.drr_cuda import cuda_available
from vertedge.geometry import Protocol
from vertedge.volume import Volume

from .helpers import metadata, write_pair

_CUDA_OK, _CUDA_WHY = cuda_available()
# CuPy on a CUDA device (the DRR kernels, device arrays); ONNX Runtime's CUDA provider is not needed
cuda_gpu = pytest.mark.skipif(not _CUDA_OK, reason=f"no CuPy on a CUDA device: {_CUDA_WHY}")

SHARED_DATA = Path(os.environ.get("VERTEDGE_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data"))


def rotation(axis: str, deg: float) -> np.ndarray:
    """3x3 right-handed rotation about world axis 'x', 'y' or 'z' by `deg` degrees."""
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    i, j = {"x": (1, 2), "y": (2, 0), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def air_volume(
    shape_ijk: tuple[int, int, int],
    spacing: tuple[float, float, float],
    direction: np.ndarray | None = None,
    center_lps: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Volume:
    """An all-air (-1000 HU) int16 volume whose grid centre sits at `center_lps`."""
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    spacing_arr = np.asarray(spacing, float)
    half = (np.asarray(shape_ijk) - 1) / 2.0 * spacing_arr
    origin = np.asarray(center_lps, float) - direction @ half
    hu = np.full(shape_ijk[::-1], -1000, np.int16)
    return Volume(hu=hu, spacing=spacing_arr, origin=origin, direction=direction)


def paint_ball(volume: Volume, center_lps: np.ndarray, radius_mm: float, hu: int) -> None:
    """Set voxels whose centre lies within `radius_mm` of `center_lps` to `hu` (in place)."""
    k, j, i = np.indices(volume.hu.shape)
    world = volume.index_to_world(np.stack([i, j, k], -1).reshape(-1, 3))
    inside = np.linalg.norm(world - center_lps, axis=1) <= radius_mm
    volume.hu.reshape(-1)[inside] = hu


def paint_segment(volume: Volume, world: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float, hu: int) -> None:
    """Set voxels within `radius` mm of the segment a-b (world LPS mm) to `hu` (in place); `world`
    (k, j, i, 3) is the world position of every voxel."""
    t = np.clip(((world - a) @ (b - a)) / ((b - a) @ (b - a)), 0.0, 1.0)
    near = np.linalg.norm(world - (a + t[..., None] * (b - a)), axis=-1) <= radius
    volume.hu[near] = hu


@pytest.fixture
def vertedge_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """caplog holding every record of the `vertedge` loggers, DEBUG included.

    A CLI command run in this process gives the `vertedge` logger its own console handler and
    stops its propagation (cli._setup_logging); both are undone here for the test.
    """
    logger = logging.getLogger("vertedge")
    monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.setattr(logger, "handlers", [])
    caplog.set_level(logging.DEBUG, logger="vertedge")
    return caplog


@pytest.fixture
def structured_volume() -> Volume:
    """A 60x50x40 anisotropic, rotated volume with balls and a box of different HU."""
    vol = air_volume((60, 50, 40), (1.5, 1.2, 2.5), rotation("z", 20) @ rotation("x", 8), (5, -10, 30))
    vol.hu[10:30, 15:35, 20:45] = 40
    paint_ball(vol, np.array([5.0, -10.0, 30.0]), 12.0, 900)
    paint_ball(vol, np.array([20.0, 0.0, 10.0]), 6.0, 1500)
    return vol


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A model pair that detects nothing: enough to drive the CLI through every stage."""
    folder = tmp_path_factory.mktemp("models")
    protocol = Protocol(pixel_mm=4.0, n_views=4, step_mm=2.0)
    write_pair(folder, metadata("localization", protocol), metadata("identification", protocol))
    return folder
