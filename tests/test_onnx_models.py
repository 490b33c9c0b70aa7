"""Model loading: the DRR protocol comes from the models' metadata and a bad pair is refused."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from vertedge.errors import CudaProviderError, VertedgeError  # noqa: E402
from vertedge.geometry import Protocol  # noqa: E402
from vertedge.labels import SPINE_ORDER  # noqa: E402
from vertedge.onnx_models import LOCALIZATION_FILE, Models, _pick  # noqa: E402
from vertedge.options import DEFAULT_OPTIONS  # noqa: E402
from vertedge.pipeline import Labeler  # noqa: E402

from .conftest import air_volume, paint_ball  # noqa: E402
from .helpers import metadata, write_pair  # noqa: E402


def test_protocol_and_classes_come_from_metadata(tmp_path):
    protocol = Protocol(pixel_mm=4.0, n_views=6, step_mm=2.0)
    write_pair(tmp_path, metadata("localization", protocol), metadata("identification", protocol))
    models = Models(tmp_path)
    assert models.protocol == protocol
    assert models.classes == SPINE_ORDER
    heat = models.localize(np.zeros((6, 32, 64), np.float32))
    prob = models.identify(np.zeros((6, 32, 64), np.float32))
    assert heat.shape == (6, 32, 64) and prob.shape == (6, 1 + len(SPINE_ORDER), 32, 64)
    np.testing.assert_allclose(prob.sum(1), 1.0, rtol=1e-5)


def test_model_without_protocol_is_refused(tmp_path):
    loc = metadata("localization", Protocol())
    del loc["vertedge.protocol"]
    write_pair(tmp_path, loc, metadata("identification", Protocol()))
    with pytest.raises(VertedgeError, match="vertedge.protocol"):
        Models(tmp_path)


@pytest.mark.parametrize(
    "heatmap, says",
    [
        (None, "vertedge.heatmap lacks threshold"),  # no vertedge.heatmap at all
        ({"sigma_px": 2.0, "amplitude": 10.0}, "vertedge.heatmap lacks threshold"),
        ({"threshold": "high"}, "unreadable vertedge metadata"),
        ([3.0], "unreadable vertedge metadata"),
    ],
)
def test_localization_model_without_a_heatmap_threshold_is_refused_at_load(tmp_path, heatmap, says):
    loc = metadata("localization", Protocol())
    del loc["vertedge.heatmap"]
    if heatmap is not None:
        loc["vertedge.heatmap"] = json.dumps(heatmap)
    write_pair(tmp_path, loc, metadata("identification", Protocol()))
    with pytest.raises(VertedgeError, match=says) as refused:
        Models(tmp_path)
    assert str(tmp_path / LOCALIZATION_FILE) in str(refused.value) and "\n" not in str(refused.value)


def test_identification_model_needs_no_heatmap_metadata(tmp_path):
    ident = metadata("identification", Protocol())
    del ident["vertedge.heatmap"]  # the runtime reads it from the localization model only
    write_pair(tmp_path, metadata("localization", Protocol()), ident)
    assert Models(tmp_path).id_info.heatmap == {}


def test_pair_with_different_protocols_is_refused(tmp_path):
    write_pair(tmp_path, metadata("localization", Protocol()), metadata("identification", Protocol(pixel_mm=3.0)))
    with pytest.raises(VertedgeError, match="different DRR protocols"):
        Models(tmp_path)


def test_missing_models_say_so(tmp_path):
    with pytest.raises(VertedgeError, match="no models installed"):
        Models(tmp_path)


def test_scan_without_detections_is_a_valid_empty_result(tmp_path):
    protocol = Protocol(pixel_mm=4.0, n_views=4, step_mm=2.0)
    write_pair(tmp_path, metadata("localization", protocol), metadata("identification", protocol))
    volume = air_volume((40, 40, 40), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 10.0, 500)
    result = Labeler(tmp_path, device="cpu")(volume)
    assert result.vertebrae == ()
    assert set(result.timings_ms) >= {"drr", "localization_net", "peaks", "fusion"}
    assert result.models == {"localization": "test-localization", "identification": "test-identification"}


def test_fp16_variants_only_on_cuda_and_missing_ones_are_named(tmp_path):
    protocol = Protocol(pixel_mm=4.0, n_views=4)
    write_pair(tmp_path, metadata("localization", protocol), metadata("identification", protocol))
    # on the CPU the fp32 files run even when fp16 is asked for (no fp16 files are needed)
    assert Models(tmp_path, device="cpu", fp16=True).loc_info.path.name == LOCALIZATION_FILE
    with pytest.raises(VertedgeError, match=r"localization\.fp16\.onnx: no fp16 variant"):
        _pick(tmp_path, LOCALIZATION_FILE, fp16=True)


def test_cuda_provider_that_cannot_start_falls_back_on_auto_only(tmp_path, monkeypatch, vertedge_log):
    import vertedge.pipeline as pipeline
    from vertedge import device
    from vertedge.drr_backends import DRR_BACKENDS

    protocol = Protocol(pixel_mm=4.0, n_views=4)
    write_pair(tmp_path, metadata("localization", protocol), metadata("identification", protocol))

    def models_without_cuda(folder, device, fp16=False, options=DEFAULT_OPTIONS):
        if device == "cuda":  # what _session raises when ONNX Runtime lists CUDA but cannot start it
            raise CudaProviderError("ONNX Runtime could not start its CUDA provider")
        return Models(folder, device, fp16, options)

    monkeypatch.setattr(pipeline, "choose_device", lambda requested: "cuda")
    monkeypatch.setattr(pipeline, "Models", models_without_cuda)
    monkeypatch.setattr(device, "gpu_packages_installed", lambda: True)  # ONNX Runtime lists CUDA, after all
    labeler = Labeler(tmp_path, device="auto")
    assert labeler.device == "cpu" and labeler.drr_backend is DRR_BACKENDS["cpu"]
    fallback = vertedge_log.records[-1]
    assert fallback.levelno == logging.WARNING
    assert fallback.getMessage().startswith("running on CPU: ONNX Runtime could not start its CUDA provider")
    with pytest.raises(VertedgeError, match="--device cuda: ONNX Runtime could not start"):
        Labeler(tmp_path, device="cuda")


def test_cuda_sessions_get_the_options_cuda_provider_settings(tmp_path, monkeypatch):
    """The CUDA provider options come from PipelineOptions (no GPU needed: the session is faked)."""
    import types
    from dataclasses import replace

    import onnxruntime as ort

    from vertedge import onnx_models

    protocol = Protocol(pixel_mm=4.0, n_views=4)
    write_pair(tmp_path, metadata("localization", protocol), metadata("identification", protocol))
    seen = {}
    real = ort.InferenceSession

    def session_on_a_gpu(path, session_options, providers):
        seen["providers"] = providers
        cpu = real(path, session_options, providers=["CPUExecutionProvider"])
        return types.SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
                                     get_modelmeta=cpu.get_modelmeta)

    monkeypatch.setattr(ort, "InferenceSession", session_on_a_gpu)
    monkeypatch.setattr(onnx_models, "_preload_cuda_libraries", lambda: None)
    options = replace(DEFAULT_OPTIONS, cuda_fp32=(("cudnn_conv_algo_search", "DEFAULT"), ("use_tf32", "0")))
    onnx_models._session(tmp_path / LOCALIZATION_FILE, "cuda", device_id=1, options=options)
    cuda = {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0", "device_id": "1"}
    assert seen["providers"] == [("CUDAExecutionProvider", cuda), "CPUExecutionProvider"]


def test_views_in_chunks_give_the_same_outputs():
    """The CPU runs the views a few at a time (`cpu_views_per_run`) to keep memory low: the outputs
    are those of one call with every view."""
    from dataclasses import replace

    x = np.random.default_rng(0).random((5, 96, 64), dtype=np.float32)
    whole = Models(None, "cpu", options=replace(DEFAULT_OPTIONS, cpu_views_per_run=5))
    chunked = Models(None, "cpu", options=replace(DEFAULT_OPTIONS, cpu_views_per_run=2))
    np.testing.assert_allclose(chunked.localize(x), whole.localize(x), atol=1e-5)
    np.testing.assert_allclose(chunked.identify(x), whole.identify(x), atol=1e-5)
    assert chunked.identify(x).shape == (5, 1 + len(chunked.classes), 96, 64)
