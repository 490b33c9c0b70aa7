"""Cone-beam geometry: projection and back-projection agree with each other and with DESIGN.md."""

from __future__ import annotations

import numpy as np
import pytest

from vertedge.geometry import (
    Protocol,
    make_views,
    pixel_mm_at_depth,
    pixel_rays,
    project,
)

from .conftest import air_volume, rotation


def _point_line_distance(points: np.ndarray, origins: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance (mm) of points (N, 3) from lines (K, N, 3) given by origins and unit dirs."""
    w = points[None] - origins
    return np.linalg.norm(w - np.sum(w * dirs, -1, keepdims=True) * dirs, axis=-1)


@pytest.mark.parametrize("direction", [np.eye(3), rotation("z", 30) @ rotation("y", 10), np.diag([-1.0, -1.0, 1.0])])
def test_rays_from_projected_points_pass_through_them(direction):
    vol = air_volume((80, 70, 90), (1.0, 1.0, 2.0), direction, (10, -20, 100))
    views = make_views(vol, Protocol(n_views=7))
    rng = np.random.default_rng(0)
    points = vol.center_world + rng.uniform(-60, 60, (50, 3))
    rc, depth = project(views, points)
    assert rc.shape == (7, 50, 2) and depth.shape == (7, 50)
    origins, dirs = pixel_rays(views, rc)
    assert _point_line_distance(points, origins, dirs).max() < 0.1
    # the ray reaches the point at the projected depth along the central axis
    along = np.einsum("kni,ki->kn", points[None] - origins, views.axis_dir)
    np.testing.assert_allclose(along, depth, atol=1e-6)


def test_view_conventions_ap_first_ccw_from_head_rows_superior_to_inferior():
    vol = air_volume((64, 64, 64), (1.0, 1.0, 1.0))
    views = make_views(vol, Protocol(n_views=4))
    # view 0: source anterior (-y in LPS); view 1 (90 deg): source at the patient's left (+x)
    np.testing.assert_allclose(views.sources[0], [0, -500, 0], atol=1e-9)
    np.testing.assert_allclose(views.sources[1], [500, 0, 0], atol=1e-9)
    np.testing.assert_allclose(views.sources[2], [0, 500, 0], atol=1e-9)
    superior, inferior, left = np.array([[0, 0, 50.0], [0, 0, -50.0], [50.0, 0, 0]])
    rc, _ = project(views, np.stack([superior, inferior, left]))
    assert (rc[:, 0, 0] < rc[:, 1, 0]).all()  # superior is higher up (smaller row) in every view
    centre_col = (views.shape[1] - 1) / 2
    assert rc[0, 2, 1] > centre_col  # AP view: patient's left to the right, as a radiograph is read
    # magnification 2 at the isocentre: 50 mm -> 50 detector pixels of 2 mm
    assert rc[0, 2, 1] - centre_col == pytest.approx(50.0)
    assert pixel_mm_at_depth(views, 500.0) == pytest.approx(1.0)


def test_detector_fits_projection_of_volume_box():
    vol = air_volume((200, 150, 300), (1.0, 1.0, 1.5))
    protocol = Protocol(pixel_mm=4.0, size_multiple=16)
    views = make_views(vol, protocol)
    rows, cols = views.shape
    assert rows % 16 == 0 and cols % 16 == 0
    n = np.array(vol.shape_ijk)
    corners = vol.index_to_world(np.array(np.meshgrid(*[[0, 1]] * 3, indexing="ij")).reshape(3, -1).T * n - 0.5)
    rc, _ = project(views, corners)
    assert rc[..., 0].min() >= -0.5 and rc[..., 0].max() <= rows - 0.5
    assert rc[..., 1].min() >= -0.5 and rc[..., 1].max() <= cols - 0.5
    # and it is tight: one size step smaller would not hold it
    assert rc[..., 0].max() - rc[..., 0].min() > rows - 2 * 16 - 1


def test_rotation_axis_follows_si_axis_of_a_permuted_scan():
    vol = air_volume((64, 64, 64), (1.0, 1.0, 1.0))
    permuted = vol.reoriented((2, 0, 1), (True, False, True))
    a, u = permuted.si_axis()
    assert a == 0 and np.allclose(u, [0, 0, 1])
    v0, v1 = make_views(vol, Protocol()), make_views(permuted, Protocol())
    np.testing.assert_allclose(v0.sources, v1.sources, atol=1e-9)
    np.testing.assert_allclose(v0.det_origin, v1.det_origin, atol=1e-9)


def test_views_about_a_given_axis_see_that_axis_upright():
    """With `axis_lps`, a line along that axis through the centre projects onto the detector's
    middle column in every view (an upright spine), and the S-I axis is the default."""
    vol = air_volume((64, 64, 64), (1.0, 1.0, 1.0))
    protocol = Protocol(n_views=10)
    axis = rotation("x", 15) @ np.array([0.0, 0.0, 1.0])  # a patient tilted 15 degrees about L-R
    views = make_views(vol, protocol, axis_lps=2.0 * axis)  # any length: it is normalized
    rc, _ = project(views, vol.center_world + np.outer(np.linspace(-80, 80, 5), axis))
    np.testing.assert_allclose(rc[..., 1], (views.shape[1] - 1) / 2, atol=1e-6)
    assert (np.diff(rc[..., 0], axis=1) < 0).all()  # superior up in every view
    default, si = make_views(vol, protocol), make_views(vol, protocol, axis_lps=vol.si_axis()[1])
    np.testing.assert_allclose(default.sources, si.sources, atol=1e-9)
    np.testing.assert_allclose(default.row_dir, si.row_dir, atol=1e-12)


def test_protocol_round_trips_through_json():
    p = Protocol(n_views=6, pixel_mm=3.0)
    import json

    assert Protocol.from_dict(json.loads(p.to_json())) == p
    with pytest.raises(ValueError):
        Protocol.from_dict({**p.to_dict(), "bogus": 1})


def test_paper_protocol_is_the_paper_gpu_config_and_the_defaults_not_the_shipped_models():
    import json
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "vertedge_train" / "configs" / "paper_gpu.json"
    paper = Protocol.paper()
    assert paper == Protocol.from_dict(json.loads(config.read_text())["protocol"])
    assert paper.n_views == 10 and np.allclose(np.diff(paper.angles_deg), 36.0)  # the paper's K, every 360/K deg
    # the defaults are the paper's (configs without a protocol and the tests read them) ...
    assert Protocol() == paper
    # ... and the shipped models' protocol, from their metadata, is another
    from vertedge.onnx_models import Models

    assert Models(device="cpu").protocol != paper
