"""The shipped default models, end to end on a held-out phantom (seeds < 1000 are never trained on)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from vertedge.cli import EXAMPLE_REGION as REGION  # noqa: E402  (the example scan of `vertedge demo`)
from vertedge.cli import EXAMPLE_SEED as SEED  # noqa: E402
from vertedge.metrics import score  # noqa: E402
from vertedge.onnx_models import Models  # noqa: E402
from vertedge.phantom import make_phantom  # noqa: E402
from vertedge.pipeline import Labeler  # noqa: E402


@pytest.fixture(scope="module")
def labeled():
    """The example phantom and the shipped models' result."""
    ph = make_phantom(SEED, REGION)
    labeler = Labeler(device="cpu")
    return ph, labeler, labeler(ph.volume)


@pytest.mark.slow
def test_every_vertebra_found_and_labelled(labeled):
    ph, _, result = labeled
    whole = {k for k, cut in ph.cut.items() if not cut}
    s = score(result.centroids(), ph.centroids, exclude=set(ph.centroids) - whole)
    missed = [row["name"] for row in s.per_vertebra if not row["identified"]]
    assert s.n_gt["all"] == len(whole) and not missed, f"not identified: {missed}"


@pytest.mark.slow
def test_same_input_gives_identical_json(labeled):
    ph, labeler, first = labeled
    second = labeler(ph.volume)
    a, b = first.to_dict(), second.to_dict()
    a.pop("timings_ms"), b.pop("timings_ms")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert np.isfinite([v.world_lps_mm for v in first.vertebrae]).all()


@pytest.mark.slow
def test_reading_the_bodies_moves_points_and_keeps_every_label(labeled):
    """body.py runs after labelling: the same labels, confidences and flags, points closer to the truth."""
    import dataclasses

    from vertedge.options import DEFAULT_OPTIONS

    ph, _, result = labeled
    unread = Labeler(device="cpu", options=dataclasses.replace(
        DEFAULT_OPTIONS, body=dataclasses.replace(DEFAULT_OPTIONS.body, enabled=False)))(ph.volume)
    assert [(v.label, v.confidence, v.needs_review) for v in result.vertebrae] == [
        (v.label, v.confidence, v.needs_review) for v in unread.vertebrae]
    assert "body" in result.timings_ms and "body" not in unread.timings_ms
    whole = {k for k, cut in ph.cut.items() if not cut}
    errors = [score(r.centroids(), ph.centroids, exclude=set(ph.centroids) - whole).l_error_mm["all"]
              for r in (result, unread)]
    assert errors[0] < errors[1], errors


def _require_cuda_path() -> None:
    """Skip unless CuPy and ONNX Runtime's CUDA provider both work here."""
    from vertedge.device import cuda_status

    ok, why = cuda_status()
    if not ok:
        pytest.skip(f"no CUDA path: {why}")


@pytest.mark.gpu
# fp32 on CUDA runs TF32 convolutions (10-bit mantissa inputs): up to 5.1e-3 from the CPU on an H200
@pytest.mark.parametrize(("fp16", "atol"), [(False, 1e-2), (True, 3e-2)], ids=["fp32", "fp16"])
def test_io_bound_cuda_outputs_match_cpu(labeled, fp16: bool, atol: float):
    _require_cuda_path()
    import cupy

    ph, labeler, _ = labeled
    images = labeler(ph.volume, keep_images=True).images
    gpu, cpu = Models(device="cuda", fp16=fp16), labeler.models
    assert gpu.loc_info.path.name.endswith(".fp16.onnx") == fp16
    for run_gpu, run_cpu in ((gpu.localize, cpu.localize), (gpu.identify, cpu.identify)):
        got = run_gpu(cupy.asarray(images))
        assert isinstance(got, cupy.ndarray) and got.dtype == cupy.float32
        want = run_cpu(images)
        err = float(np.abs(got.get() - want).max())
        assert err <= atol * max(1.0, float(np.abs(want).max())), f"max |cuda - cpu| = {err}"


@pytest.mark.gpu
def test_cuda_and_cpu_give_the_same_vertebrae(labeled):
    _require_cuda_path()
    ph, _, cpu = labeled
    gpu = Labeler(device="cuda")(ph.volume)
    assert [v.label for v in gpu.vertebrae] == [v.label for v in cpu.vertebrae]
    distance = np.linalg.norm(np.array([v.world_lps_mm for v in gpu.vertebrae]) - np.array([v.world_lps_mm for v in cpu.vertebrae]), axis=1)
    assert distance.max() < 0.5


@pytest.mark.slow
def test_labels_are_trusted_where_counted_from_the_sacrum_and_not_on_a_crop(labeled):
    """The example (a thoracolumbar crop, neither end of the spine in view) has nothing to count
    from: every label needs review at <= 0.5. A lumbar scan down to the sacrum is counted from it."""
    _, labeler, crop = labeled
    assert crop.vertebrae and all(v.needs_review and v.confidence <= 0.5 for v in crop.vertebrae)
    lumbar = make_phantom(7, "lumbar")
    result = labeler(lumbar.volume)
    trusted = [v for v in result.vertebrae if not v.needs_review]
    assert [v.name for v in trusted] == ["L1", "L2", "L3", "L4", "L5"]
    for v in trusted:
        assert np.linalg.norm(np.array(v.world_lps_mm) - lumbar.centroids[v.label]) < 5.0


def test_the_options_and_version_a_scan_was_labelled_with_are_in_its_result(labeled):
    """Settings reach the stages (a vertebra needs more views than there are: none is found) and are
    recorded, with the installed package's version."""
    from dataclasses import replace
    from importlib.metadata import version

    from vertedge.options import DEFAULT_OPTIONS, FusionOptions

    ph, labeler, result = labeled
    assert result.to_dict()["options"] == DEFAULT_OPTIONS.to_dict()
    assert result.to_dict()["vertedge_version"] == version("vertedge")
    strict = replace(DEFAULT_OPTIONS, fusion=FusionOptions(min_views=labeler.protocol.n_views + 1))
    none = Labeler(device="cpu", options=strict)(ph.volume)
    assert none.vertebrae == () and none.to_dict()["options"]["fusion"]["min_views"] == labeler.protocol.n_views + 1
    json.dumps(none.to_dict())  # JSON-ready


@pytest.mark.slow
def test_a_tilted_lumbar_spine_is_rendered_again_about_its_own_axis():
    """A patient tilted 15 degrees about L-R: the first pass's vertebrae lean, so the views are
    rendered again about the spine's axis, and the labels and centroids are those of the upright
    scan. With `upright_min_deg` None the views stay about the scan's S-I axis."""
    from dataclasses import replace

    from vertedge.options import DEFAULT_OPTIONS
    from vertedge.pipeline import spine_axis
    from vertedge_train import variations

    ph = make_phantom(2, "lumbar")  # T12-L5, nothing cut
    centre = np.mean(list(ph.centroids.values()), axis=0)
    rot = variations.rotation(tilt_deg=15.0)
    tilted = variations.rotated(ph.volume, rot, centre)
    truth = {k: variations.turn_points(p, rot, centre) for k, p in ph.centroids.items()}
    result = Labeler(device="cpu")(tilted)
    points = np.array([v.world_lps_mm for v in result.vertebrae])
    view_axis = np.array(result.to_dict()["view_axis_lps"])  # recorded in every result
    assert np.degrees(np.arccos(view_axis @ [0.0, 0.0, 1.0])) > 5.0
    assert np.degrees(np.arccos(view_axis @ spine_axis(points))) < 3.0
    s = score(result.centroids(), truth)
    assert s.id_rate["all"] == 100.0 and s.l_error_mm["all"] < 3.0, s.per_vertebra
    fixed = Labeler(device="cpu", options=replace(DEFAULT_OPTIONS, upright_min_deg=None))(tilted)
    np.testing.assert_allclose(fixed.view_axis_lps, tilted.si_axis()[1], atol=1e-12)


@pytest.mark.slow
def test_a_patient_much_larger_than_the_phantoms_is_labelled_again_from_views_that_show_it_smaller():
    """The lumbar phantom 1.3 times its size (stature 0.93 -> 1.2): the size read from its labelled
    spine lies beyond `SizeOptions.tolerance`, so the scan is labelled again with the detector's
    pixels scaled by it (the most the range allows), recorded in the result; its labels stay right.
    At its own size the views are the protocol's."""
    from vertedge_train import variations

    ph = make_phantom(2, "lumbar")
    labeler = Labeler(device="cpu")
    larger, truth = variations.scaled_patient(ph.volume, ph.centroids, 1.3)
    result = labeler(larger)
    assert result.to_dict()["view_scale"] == labeler.options.size.scale_range[1]
    s = score(result.centroids(), truth)
    assert s.id_rate["all"] == 100.0 and s.l_error_mm["all"] < 3.0, s.per_vertebra
    assert labeler(ph.volume).view_scale == 1.0
