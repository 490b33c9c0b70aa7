"""A shipped ONNX model back into a trainable `nets.UNet`, so that fine-tuning starts from it.

The exported graph has every BatchNorm folded into the convolution before it (torch's ONNX export
in eval mode), so the torch net gets the folded weights and identity BatchNorms (weight 1, bias 0,
mean 0, variance 1 - eps). Fine-tuning then keeps those BatchNorms frozen (`freeze_bn` in the
task config): batch statistics of a few real scans would otherwise replace the ones the net was
trained with. The architecture is read from the graph (base channels, levels, the row-context
dilations); the convolutions are matched in execution order and every shape is checked, and the
result must reproduce ONNX Runtime's output, else a `ValueError` says why.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import NetConfig
from .nets import UNet

TOLERANCE = 1e-3  # max |torch - onnxruntime| on a random image, as for export


@dataclass(frozen=True)
class Imported:
    """A net rebuilt from an ONNX model, with what the model's metadata says about it."""

    net: UNet
    task: str  # 'loc' or 'id'
    metadata: dict[str, str]
    design: NetConfig  # encoder base channels, levels, kind
    context: tuple[int, ...]  # row-context dilations (identification), () without


def _conv_nodes(model: Any) -> list[tuple[Any, dict[str, Any]]]:
    """(node, attributes) of every Conv node in graph order."""
    import onnx

    return [(n, {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute})
            for n in model.graph.node if n.op_type == "Conv"]


def _torch_convs(net: UNet, shape: tuple[int, int, int, int] = (1, 1, 64, 64)) -> list[torch.nn.Conv2d]:
    """The net's Conv2d modules in the order a forward pass runs them (the export's graph order)."""
    order: list[torch.nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net.eval()(torch.zeros(shape))
    for h in hooks:
        h.remove()
    return order


def import_onnx(path: str | os.PathLike[str]) -> Imported:
    """The UNet of a vertedge ONNX model (fp32 file), reproducing its output within `TOLERANCE`."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    task = {"localization": "loc", "identification": "id"}.get(meta.get("vertedge.task", ""))
    if task is None:
        raise ValueError(f"{path}: not a vertedge model (metadata vertedge.task = {meta.get('vertedge.task')!r})")
    weights = {i.name: np.array(numpy_helper.to_array(i)) for i in model.graph.initializer}
    if any(w.dtype != np.float32 for w in weights.values()):
        raise ValueError(f"{path}: fp16 weights; import the float32 model")
    convs = _conv_nodes(model)
    n_pool = sum(n.op_type == "MaxPool" for n in model.graph.node)
    context = tuple(int(a["dilations"][0]) for n, a in convs if n.input[1].startswith("context.convs."))
    design = NetConfig(base=int(weights[convs[0][0].input[1]].shape[0]), levels=n_pool + 1, kind="unet")
    classes = json.loads(meta.get("vertedge.classes", "[]"))
    out_ch = 1 if task == "loc" else 1 + len(classes)
    net = UNet(out_ch, design.base, design.levels, softmax=task == "id", context=context)
    modules = _torch_convs(net)
    if len(modules) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions in the graph, {len(modules)} in the rebuilt net")
    with torch.no_grad():
        for module, (node, _attrs) in zip(modules, convs):
            w = weights[node.input[1]]
            if tuple(module.weight.shape) != w.shape:
                raise ValueError(f"{path}: convolution {node.name} has shape {w.shape}, the net {tuple(module.weight.shape)}")
            module.weight.copy_(torch.from_numpy(w))
            b = weights[node.input[2]] if len(node.input) > 2 else np.zeros(w.shape[0], np.float32)
            if module.bias is None:  # the conv before a folded BatchNorm: its bias goes into the BatchNorm
                _bn_after(net, module).bias.copy_(torch.from_numpy(b))
            else:
                module.bias.copy_(torch.from_numpy(b))
    x = np.random.default_rng(0).random((2, 1, 96, 64), dtype=np.float32)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})
    err = float(np.abs(got - ref).max())
    if not err < TOLERANCE:
        raise ValueError(f"{path}: the rebuilt net differs from ONNX Runtime by {err:.2e}")
    return Imported(net, task, meta, design, context)


def _bn_after(net: UNet, conv: torch.nn.Conv2d) -> torch.nn.BatchNorm2d:
    """The BatchNorm right after `conv` in its block, set to an identity that adds the folded bias."""
    for block in net.modules():
        if isinstance(block, torch.nn.Sequential):
            layers = list(block)
            for a, b in zip(layers, layers[1:]):
                if a is conv and isinstance(b, torch.nn.BatchNorm2d):
                    assert b.running_mean is not None and b.running_var is not None  # track_running_stats
                    b.weight.fill_(1.0)
                    b.running_mean.zero_()
                    b.running_var.fill_(1.0 - b.eps)  # (x - 0) / sqrt(var + eps) = x
                    return b
    raise ValueError("a bias-free convolution without a BatchNorm after it")


def write_init(imported: Imported, path: Path) -> Path:
    """The imported weights as a checkpoint that a task config's `init` loads."""
    from vertedge.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"model": imported.net.state_dict(), "step": 0, "source": imported.metadata.get("vertedge.model_id")}, tmp)
    return path
