"""Training side with torch: a training step learns, the torch Sequence Loss, ONNX export parity and
metadata, checkpoints. Tiny nets and images: fast on a CPU. The numpy-only data side is in
test_train_data.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tests.helpers import TINY  # noqa: E402
from tests.helpers import TRAIN_PROTOCOL as PROTOCOL  # noqa: E402
from tests.helpers import spine_scan as _spine_scan  # noqa: E402
from tests.helpers import train_config as _cfg  # noqa: E402
from vertedge.geometry import Protocol  # noqa: E402
from vertedge.labels import LABELS  # noqa: E402
from vertedge_train.data import CLASSES, heatmap_target, render_scan  # noqa: E402
from vertedge_train.losses import SequenceLoss, heatmap_loss, id_loss, square_means  # noqa: E402
from vertedge_train.nets import SimSiam, UNet  # noqa: E402

# ----------------------------------------------------------------------------- training


def test_training_step_reduces_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pts = rng.uniform(6, 26, (2, 3, 2))
    x = np.zeros((2, 1, 32, 32), np.float32)
    y = np.zeros((2, 1, 32, 32), np.float32)
    for b in range(2):
        x[b, 0] = heatmap_target((32, 32), pts[b], 2.0, 1.0) + 0.05 * rng.standard_normal((32, 32))
        y[b, 0] = heatmap_target((32, 32), pts[b], 1.5, 1.0)
    net = UNet(1, **TINY)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    losses = []
    for _ in range(8):
        loss = heatmap_loss(net.forward_logits(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0]


def test_identification_step_reduces_loss():
    torch.manual_seed(0)
    target = np.zeros((2, 32, 32), np.int64)
    target[:, 4:12, 10:20], target[:, 14:22, 10:20] = 1 + 3, 1 + 4
    x = torch.from_numpy((target[:, None] > 0).astype(np.float32))
    boxes = [np.array([[4, 12, 10, 20], [14, 22, 10, 20]])] * 2
    net = UNet(1 + len(CLASSES), **TINY, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    seq = SequenceLoss(CLASSES)
    losses = []
    for _ in range(6):
        loss, parts = id_loss(net.forward_logits(x), torch.from_numpy(target), boxes, seq)
        assert {"ce", "seq", "loss"} <= set(parts)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert losses[-1] < losses[0]


def test_simsiam_loss_is_the_symmetric_negative_cosine_and_training_lowers_it():
    torch.manual_seed(0)
    net = SimSiam(**TINY, dim=16, pred_dim=8)
    x1 = torch.rand(4, 1, 32, 32)
    x2 = x1 + 0.05 * torch.rand_like(x1)
    with torch.no_grad():
        z1, z2 = net.embed(x1).numpy(), net.embed(x2).numpy()
        p1, p2 = net.predictor(torch.from_numpy(z1)).numpy(), net.predictor(torch.from_numpy(z2)).numpy()

    def cos(a, b):
        return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    want = -(cos(p1, z2).mean() + cos(p2, z1).mean()) / 2
    assert float(net.loss(x1, x2)) == pytest.approx(want, abs=1e-5)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(20):
        loss = net.loss(x1, x2)
        first = float(loss) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert net.encoder.stages[0][0].weight.grad is not None
    assert float(net.loss(x1, x2)) < first - 0.1


# ----------------------------------------------------------------------------- Sequence Loss


def test_sequence_loss_zero_for_perfect_and_grows_on_swap():
    seq = SequenceLoss(CLASSES)
    P = np.eye(len(CLASSES), dtype=np.float32)[5:12]
    assert float(seq(torch.from_numpy(P[None]))[0]) == pytest.approx(0.0, abs=1e-6)
    swapped = P.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    assert float(seq(torch.from_numpy(swapped[None]))[0]) > 0.05


def test_sequence_loss_variants_are_next_steps():
    seq = SequenceLoss(CLASSES)
    for names in (("T11", "T12", "T13", "L1"), ("T11", "T12", "L1", "L2"), ("L4", "L5", "L6")):
        P = np.zeros((len(names), len(CLASSES)), np.float32)
        for i, n in enumerate(names):
            P[i, CLASSES.index(LABELS[n])] = 1
        assert float(seq(torch.from_numpy(P[None]))[0]) == pytest.approx(0.0, abs=1e-6)


def test_sequence_loss_matches_numpy_and_is_differentiable():
    sequence = pytest.importorskip("vertedge.sequence")
    rng = np.random.default_rng(1)
    P = rng.random((6, 9, len(CLASSES)))
    valid = rng.random((6, 9)) > 0.25
    seq = SequenceLoss(CLASSES)
    Pt = torch.tensor(P, dtype=torch.float64, requires_grad=True)
    got = seq.to(torch.float64)(Pt, torch.from_numpy(valid))
    want = sequence.sequence_losses(P, CLASSES, valid=valid)
    np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-9)
    got.sum().backward()
    assert torch.isfinite(Pt.grad).all() and Pt.grad.abs().sum() > 0


def test_square_means_match_direct_means():
    rng = np.random.default_rng(2)
    prob = torch.softmax(torch.from_numpy(rng.standard_normal((2, 1 + 5, 20, 16)).astype(np.float32)), 1)
    boxes = [np.array([[2, 7, 3, 9], [10, 15, 0, 4]]), np.array([[0, 20, 0, 16]])]
    P, valid = square_means(prob, boxes, 5)
    assert valid.tolist() == [[True, True], [True, False]]
    np.testing.assert_allclose(P[0, 1].numpy(), prob[0, 1:, 10:15, 0:4].mean((1, 2)).numpy(), rtol=1e-5)
    np.testing.assert_allclose(P[1, 0].numpy(), prob[1, 1:].mean((1, 2)).numpy(), rtol=1e-5)


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize("task", ["loc", "id"])
def test_export_parity_metadata_and_dynamic_size(tmp_path, task):
    from vertedge_train.export import FILES, metadata, parity, to_onnx

    torch.manual_seed(0)
    net = UNet(1, **TINY) if task == "loc" else UNet(1 + len(CLASSES), **TINY, softmax=True, context=(1, 2))
    with torch.no_grad():  # non-trivial BatchNorm statistics and row context
        if net.context is not None:
            net.context.out.weight.normal_(0, 0.3)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    meta = metadata(task, _cfg(), net.state_dict(), "test")
    path = to_onnx(net, task, tmp_path / FILES[task], meta)
    assert parity(net, path, shape=(2, 1, 96, 64)) < 1e-3
    assert parity(net, path, shape=(1, 1, 32, 128)) < 1e-3

    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    keys = {"vertedge.task", "vertedge.protocol", "vertedge.classes", "vertedge.model_id",
            "vertedge.model_version", "vertedge.training"}
    assert keys <= set(props)
    assert props["vertedge.task"] == {"loc": "localization", "id": "identification"}[task]
    assert Protocol.from_dict(json.loads(props["vertedge.protocol"])) == PROTOCOL
    assert json.loads(props["vertedge.classes"]) == list(CLASSES)
    if task == "loc":
        hm = json.loads(props["vertedge.heatmap"])
        assert {"sigma_px", "amplitude", "threshold"} <= set(hm)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert model.graph.input[0].name == "image"
    assert all(d.dim_param for i, d in enumerate(dims) if i != 1)  # B, H, W symbolic
    out = model.graph.output[0].name
    assert out == {"loc": "heatmap", "id": "prob"}[task]
    if task == "id":
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (p,) = sess.run(None, {"image": np.random.default_rng(0).random((1, 1, 64, 64), np.float32)})
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)


def test_fp16_export_runs(tmp_path):
    from vertedge_train.export import metadata, parity, to_onnx

    net = UNet(1, **TINY)
    path = to_onnx(net, "loc", tmp_path / "l.fp16.onnx", metadata("loc", _cfg(), net.state_dict(), "t"), fp16=True)
    assert parity(net, path, shape=(1, 1, 64, 64)) < 5e-2


def test_shipped_models_carry_the_contract():
    folder = Path(__file__).parents[1] / "vertedge" / "models"
    files = [folder / "localization.onnx", folder / "identification.onnx"]
    if not all(f.exists() for f in files):
        pytest.skip("no shipped models")
    assert sum(f.stat().st_size for f in folder.glob("*.onnx")) <= 40e6
    protocols = set()
    for f in files:
        props = {p.key: p.value for p in onnx.load(str(f), load_external_data=False).metadata_props}
        assert {"vertedge.task", "vertedge.protocol", "vertedge.classes", "vertedge.model_id",
                "vertedge.model_version", "vertedge.training"} <= set(props)
        protocols.add(props["vertedge.protocol"])
    assert len(protocols) == 1


def test_run_task_checkpoints_resumes_and_exports(tmp_path, monkeypatch):
    from vertedge_train.loop import load_checkpoint, run_task, trained_model

    class _P:
        items = [render_scan(_spine_scan(), PROTOCOL)]  # noqa: RUF012

        def __len__(self):
            return 1

        def refresh(self):
            return 0

    cfg = _cfg()
    for task in ("loc", "id"):
        cfg = cfg.with_task(task, steps=2, lr=1e-3, checkpoint_every=1, log_every=1)
    for task in ("loc", "id"):
        run_task(task, cfg, tmp_path, log=lambda m: None, pool=_P(), steps=1)
        ck = load_checkpoint(tmp_path, task)
        assert ck["step"] == 1 and ck["done"]
        ck["done"] = False
        torch.save(ck, tmp_path / task / "last.pt")
        run_task(task, cfg, tmp_path, log=lambda m: None, pool=_P())
        ck = load_checkpoint(tmp_path, task)
        assert ck["step"] == 2 and ck["done"]
        lines = (tmp_path / task / "log.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == [1, 2]
        net, _ = trained_model(tmp_path, task)
        assert not net.training

    # The run exports through the command line; a parity mismatch exits non-zero and leaves no model.
    from vertedge_train import export
    from vertedge_train.cli import main

    out = tmp_path / "models"
    assert main(["export", str(tmp_path), str(out), "--no-fp16"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["identification.onnx", "localization.onnx"]
    bad = tmp_path / "bad"
    monkeypatch.setattr(export, "parity", lambda net, path, **kw: 1.0)
    assert main(["export", str(tmp_path), str(bad), "--no-fp16"]) == 1
    assert not any(bad.glob("*.onnx"))


# The packages a lent GPU's image lacks (vertedge_train/README.md, "On a lent GPU"), but for
# platformdirs, which travels as a 0.1 MB wheel.
NOT_ON_THE_GPU_IMAGE = ("SimpleITK", "nibabel", "pydicom", "highdicom", "pylibjpeg", "isal", "rapidgzip")


def test_training_runs_where_the_file_format_libraries_are_not_installed(tmp_path):
    """A small phantom's sized variants rendered, a step of each net and the export with its parity
    check, in a fresh interpreter that cannot find SimpleITK, nibabel or the DICOM packages: it
    imports none of them."""
    import subprocess
    import sys

    cfg = _cfg()
    for task in ("loc", "id"):
        cfg = cfg.with_task(task, steps=1, checkpoint_every=1)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    code = f"""
import importlib.abc, sys

class Hidden(importlib.abc.MetaPathFinder):
    def __init__(self, inner):
        self.inner = inner

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_ON_THE_GPU_IMAGE!r}:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]
import numpy as np
from vertedge.phantom import make_phantom
from vertedge_train.cli import main
from vertedge_train.config import TrainConfig
from vertedge_train.data import Scan, scan_variants
from vertedge_train.loop import run_task

cfg = TrainConfig.load({str(tmp_path / "config.json")!r})
ph = make_phantom(1000, "lumbar", shape=(64, 56, 80), spacing=(3.0, 3.0, 3.0))
scan = Scan("phantom", ph.volume, dict(ph.centroids), dict(ph.cut))

class Pool:
    items = scan_variants(scan, cfg.protocol, 3, np.random.default_rng(0), size_range=(0.75, 1.3))
    def __len__(self):
        return len(self.items)
    def refresh(self):
        return 0

for task in ("loc", "id"):
    run_task(task, cfg, {str(tmp_path)!r}, log=lambda m: None, pool=Pool())
assert main(["export", {str(tmp_path)!r}, {str(tmp_path / "models")!r}, "--no-fp16"]) == 0
print(sorted({{m.split(".")[0] for m in sys.modules}} & set({NOT_ON_THE_GPU_IMAGE!r})))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["identification.onnx", "localization.onnx"]
