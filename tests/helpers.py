"""Helpers the test modules share: tiny ONNX model pairs with vertedge metadata, the CLI run in-process,
a tiny training config and a stand-in spine scan for the train/ tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vertedge import cli
from vertedge.geometry import Protocol
from vertedge.labels import LABELS, SPINE_ORDER
from vertedge.onnx_models import IDENTIFICATION_FILE, LOCALIZATION_FILE


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `vertedge ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["vertedge", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_model(task: str, out_channels: int, bias: float, metadata: dict[str, str]) -> Any:
    """A 1x1 convolution with zero weights: a constant map per channel, with vertedge metadata."""
    from onnx import TensorProto, helper, numpy_helper  # the tests that call it skip without onnx

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "H", "W"])
    out_name = "heatmap" if task == "localization" else "prob"
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["B", out_channels, "H", "W"])
    w = numpy_helper.from_array(np.zeros((out_channels, 1, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.full(out_channels, bias, np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"])]
    nodes.append(helper.make_node("Softmax", ["conv"], [out_name], axis=1) if task == "identification" else helper.make_node("Identity", ["conv"], [out_name]))
    graph = helper.make_graph(nodes, task, [image], [out], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model


def metadata(task: str, protocol: Protocol) -> dict[str, str]:
    """A complete vertedge metadata set."""
    return {
        "vertedge.task": task,
        "vertedge.protocol": protocol.to_json(),
        "vertedge.classes": json.dumps(list(SPINE_ORDER)),
        "vertedge.heatmap": json.dumps({"sigma_px": 2.0, "amplitude": 10.0, "threshold": 3.0}),
        "vertedge.model_id": f"test-{task}",
        "vertedge.model_version": "0",
    }


def write_pair(folder: Path, loc_meta: dict[str, str], id_meta: dict[str, str]) -> None:
    """Save a tiny localization/identification pair into `folder`."""
    import onnx

    onnx.save(tiny_model("localization", 1, 0.0, loc_meta), folder / LOCALIZATION_FILE)
    onnx.save(tiny_model("identification", 1 + len(SPINE_ORDER), 0.0, id_meta), folder / IDENTIFICATION_FILE)


TINY = {"base": 4, "levels": 3}  # a U-Net small enough for the CPU tests
TRAIN_PROTOCOL = Protocol(n_views=4, pixel_mm=8.0, max_rows=128, max_cols=128, step_mm=4.0)


def train_config() -> dict:
    """A tiny training config for the train/ tests."""
    return {
        "name": "test", "version": "0.1.0", "seed": 0, "protocol": TRAIN_PROTOCOL.to_dict(),
        "net": TINY, "heatmap": {"sigma_px": 1.5, "amplitude": 1.0, "threshold": 0.3},
        "data": {"train_seeds": [1000, 1002], "variants_per_scan": 1, "crop_prob": 0.5},
        "augment": {"gamma": 1.2, "contrast": 0.1, "offset": 0.02, "noise": 0.01},
        "loc": {"batch": 2, "crop": [32, 32]}, "id": {"batch": 2, "crop": [32, 32]},
    }


def spine_scan() -> Any:
    """A stand-in CT (a `train.data.Scan`): soft-tissue slab with bright balls (the 'bodies') at known
    centroids along S-I."""
    from train.data import Scan

    from .conftest import air_volume, paint_ball

    vol = air_volume((40, 40, 72), (4.0, 4.0, 4.0))
    vol.hu[:, 8:32, 8:32] = 40
    labels = [LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3")]
    cents = {}
    for i, lab in enumerate(labels):
        c = np.array([0.0, 10.0, 90.0 - i * 45.0])
        paint_ball(vol, c, 10.0, 1000)
        cents[lab] = c
    return Scan("standin", vol, cents, {k: False for k in cents})
