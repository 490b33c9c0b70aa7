"""Export trained U-Nets to the ONNX models the vertedge runtime loads (see `vertedge.onnx_models`).

Contract: input `image` (B, 1, H, W) float32 with dynamic B, H, W (H, W multiples of 32);
localization output `heatmap` (B, 1, H, W); identification output `prob` (B, 1 + C, H, W) with the
softmax in the graph (channel 0 background, 1 + j = class `classes[j]`). Opset 17. Metadata
(all strings): vertedge.task, vertedge.protocol (Protocol.to_json()), vertedge.classes,
vertedge.heatmap (localization), vertedge.model_id, vertedge.model_version, vertedge.training.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from vertedge.atomic import atomic_path

from .config import TaskConfig, TrainConfig

OPSET = 17
FILES = {"loc": "localization.onnx", "id": "identification.onnx"}
TASK_NAMES = {"loc": "localization", "id": "identification"}
OUTPUT_NAMES = {"loc": "heatmap", "id": "prob"}
PARITY_TOLERANCE = 1e-3  # max |torch - onnxruntime| of the float32 export on a random image in [0, 1)


class ParityError(RuntimeError):
    """The exported ONNX model does not reproduce the trained net."""


def weights_hash(state_dict: dict[str, Any]) -> str:
    """Short SHA-1 of the float weights (stable id of a trained model)."""
    h = hashlib.sha1()
    for k in sorted(state_dict):
        v = state_dict[k]
        if hasattr(v, "detach"):
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:8]


def metadata(task: str, cfg: TrainConfig, state_dict: dict[str, Any], training: str,
             threshold: float | None = None) -> dict[str, str]:
    """The vertedge metadata of one exported model (all values strings)."""
    from .data import CLASSES

    version = cfg.version or "0.1.0"
    short = "loc" if task == "loc" else "id"
    meta = {
        "vertedge.task": TASK_NAMES[task],
        "vertedge.protocol": cfg.protocol.to_json(),
        "vertedge.classes": json.dumps([int(c) for c in CLASSES]),
        "vertedge.model_id": f"vertedge-{short}-{version}-{weights_hash(state_dict)}",
        "vertedge.model_version": version,
        "vertedge.training": training,
    }
    if task == "loc":
        hm = cfg.heatmap
        meta["vertedge.heatmap"] = json.dumps({
            "sigma_px": hm.sigma_px,
            "amplitude": hm.amplitude,
            "threshold": (hm.threshold if threshold is None else threshold) * hm.amplitude,
        })
    return meta


def _init_note(t: TaskConfig) -> str:
    """How a task's net was initialised (SimSiam encoder, or an earlier checkpoint)."""
    init = t.init
    if init.endswith(".pt"):
        try:
            import torch

            src = torch.load(init, map_location="cpu", weights_only=False)
            if "source" in src:  # an ONNX model brought back by from_onnx
                return f"fine-tuned from the ONNX model {src['source']}; "
            st = TrainConfig.from_dict(src["config"]).task(src["task"])
            ctx = list(st.context_dilations) or "none"
            return (f"fine-tuned from a {src['step']}-iteration {src['task']} checkpoint (crops {list(st.crop)}, "
                    f"batch {st.batch}, row context {ctx}) itself initialised from SimSiam; ")
        except Exception:  # noqa: BLE001 - a note only
            return f"fine-tuned from {init}; "
    return "encoder from SimSiam pretraining; " if init == "pretrain" else ""


def training_line(ck: dict[str, Any]) -> str:
    """One line describing what a checkpoint was trained on."""
    cfg = TrainConfig.from_dict(ck["config"])
    d, a, t = cfg.data, cfg.augment, cfg.task(ck["task"])
    lo, hi = d.train_seeds
    verse = f", VerSe roots {list(d.verse_roots)}" if d.verse_roots else ""
    if d.real_cases:
        verse += f", real cases {', '.join(d.real_cases)} ({d.real_fraction} of each batch)"
    n = ck.get("n_samples")
    per = d.variants_per_scan
    seeds = (f"phantom seeds {lo}-{min(hi, lo + -(-n // per)) - 1}" if isinstance(n, int) and n
             else f"phantom seeds {lo}-{hi - 1}")
    return (f"{seeds} ({n if n is not None else '?'} cached scan variants: whole scan + "
            f"random start angle and S-I field-of-view crops p={d.crop_prob}){verse}; "
            f"augmentation gamma x/÷{a.gamma}, contrast ±{a.contrast}, offset ±{a.offset}, "
            f"noise sigma <= {a.noise}, blur p={a.blur_prob}; "
            f"{_init_note(t)}{ck['step']} iterations, batch {t.batch} crops "
            f"{list(t.crop)}; {ck['elapsed'] / 60:.0f} min on {ck.get('device', 'cpu').upper()}; config {cfg.name}")


def to_onnx(net, task: str, path: str | os.PathLike[str], meta: dict[str, str], fp16: bool = False) -> Path:
    """Write the net as ONNX (opset 17, dynamic B/H/W) with metadata; optionally fp16 weights (I/O stay float32)."""
    import onnx
    import torch

    net = net.eval()
    x = torch.zeros(1, 1, 64, 64)
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            net, (x,), buf,  # type: ignore[arg-type]  # a file object works; the stub says path only
            input_names=["image"], output_names=[OUTPUT_NAMES[task]], opset_version=OPSET,
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          OUTPUT_NAMES[task]: {0: "batch", 2: "height", 3: "width"}},
            dynamo=False, do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    if fp16:
        model = _to_fp16(model)
    del model.metadata_props[:]
    for k, v in meta.items():
        p = model.metadata_props.add()
        p.key, p.value = k, str(v)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return Path(path)


def _to_fp16(model):
    """fp16 weights and compute, float32 input/output (Cast nodes at the edges).

    The graph is Conv/Relu/MaxPool/Resize/Concat (+ Softmax): every float initializer becomes fp16;
    Constant nodes are only Resize scales, which ONNX requires in float32, and stay.
    """
    from onnx import TensorProto, helper, numpy_helper

    g = model.graph
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    in_name, out_name = g.input[0].name, g.output[0].name
    for node in g.node:
        if node.op_type == "Constant":
            continue
        node.input[:] = [in_name + "_f16" if i == in_name else i for i in node.input]
        node.output[:] = [out_name + "_f16" if o == out_name else o for o in node.output]
    g.node.insert(0, helper.make_node("Cast", [in_name], [in_name + "_f16"], to=TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", [out_name + "_f16"], [out_name], to=TensorProto.FLOAT))
    del g.value_info[:]
    return model


def parity(net, path: str | os.PathLike[str], shape=(2, 1, 96, 64), seed: int = 0) -> float:
    """Max |torch - onnxruntime| on a random input."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    with torch.no_grad():
        ref = net.eval()(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": x})
    return float(np.abs(out.astype(np.float32) - ref).max())


def export_run(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], fp16: bool = True,
               budget_mb: float = 40.0, log=print, threshold: float | None = None) -> dict[str, Path]:
    """Export both trained nets of a run directory into `out_dir`; fp16 variants if the budget allows.

    `threshold` (fraction of the heatmap amplitude) overrides the training config's peak threshold.
    """
    from .loop import trained_model

    written: dict[str, Path] = {}
    nets = {}
    for task in ("loc", "id"):
        net, ck = trained_model(run_dir, task)
        nets[task] = net
        meta = metadata(task, TrainConfig.from_dict(ck["config"]), net.state_dict(), training_line(ck), threshold)
        p = to_onnx(net, task, Path(out_dir) / FILES[task], meta)
        err = parity(net, p)
        log(f"[export] {p} ({p.stat().st_size / 1e6:.2f} MB) {meta['vertedge.model_id']}: "
            f"max |torch - onnxruntime| = {err:.2e} {'OK' if err < PARITY_TOLERANCE else 'MISMATCH'}")
        if not err < PARITY_TOLERANCE:
            # A model that computes something else than the trained net must not be left to ship.
            p.unlink()
            raise ParityError(f"{p.name}: ONNX Runtime differs from torch by {err:.2e} (tolerance {PARITY_TOLERANCE:g}); not written")
        written[task] = p
    total = sum(p.stat().st_size for p in written.values()) / 1e6
    if fp16 and 2 * total <= budget_mb:
        for task, net in nets.items():
            ck = _ck(run_dir, task)
            ck_meta = metadata(task, TrainConfig.from_dict(ck["config"]), net.state_dict(), training_line(ck), threshold)
            ck_meta["vertedge.precision"] = "fp16"
            p = to_onnx(net, task, Path(out_dir) / FILES[task].replace(".onnx", ".fp16.onnx"), ck_meta, fp16=True)
            err = parity(net, p)
            log(f"[export] {p} ({p.stat().st_size / 1e6:.2f} MB) fp16: max |torch - onnxruntime| = {err:.2e}")
            written[task + "_fp16"] = p
    return written


def _ck(run_dir, task):
    from .loop import load_checkpoint

    return load_checkpoint(run_dir, task)

