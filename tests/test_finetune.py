"""Fine-tuning from ONNX models (vertedge_train.from_onnx, vertedge_train.finetune): an exported net
comes back as the same function, and `vertedge-train finetune` runs end to end on tiny nets and
small scans, never touching the held-out case."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.helpers import train_config  # noqa: E402
from vertedge.phantom import PHANTOM_VERSION, make_phantom, save_phantom  # noqa: E402
from vertedge_train.cli import main  # noqa: E402
from vertedge_train.config import TrainConfig  # noqa: E402
from vertedge_train.data import cache_folder, source_tag  # noqa: E402
from vertedge_train.export import FILES, metadata, to_onnx  # noqa: E402
from vertedge_train.from_onnx import import_onnx  # noqa: E402
from vertedge_train.loop import build_net  # noqa: E402


def _config() -> TrainConfig:
    return train_config().with_task("id", context_dilations=(1, 2))


def _export_pair(folder: Path, cfg: TrainConfig) -> dict:
    """Two small nets with non-trivial BatchNorm statistics and row context, exported as ONNX."""
    torch.manual_seed(0)
    nets = {}
    for task in ("loc", "id"):
        net = build_net(task, cfg)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.1, 0.1)
            if getattr(net, "context", None) is not None:
                net.context.out.weight.normal_(0, 0.3)
        to_onnx(net, task, folder / FILES[task], metadata(task, cfg, net.state_dict(), "test"))
        nets[task] = net.eval()
    return nets


def test_an_exported_net_comes_back_as_the_same_function(tmp_path):
    cfg = _config()
    nets = _export_pair(tmp_path, cfg)
    x = torch.from_numpy(np.random.default_rng(1).random((1, 1, 64, 32), dtype=np.float32))
    for task, net in nets.items():
        imported = import_onnx(tmp_path / FILES[task])
        assert imported.task == task
        assert (imported.design.base, imported.design.levels) == (4, 3)
        with torch.no_grad():
            np.testing.assert_allclose(imported.net.eval()(x).numpy(), net(x).numpy(), atol=1e-4)
    assert import_onnx(tmp_path / FILES["id"]).context == (1, 2)
    to_onnx(nets["loc"], "loc", tmp_path / "half.onnx", metadata("loc", cfg, nets["loc"].state_dict(), "t"), fp16=True)
    with pytest.raises(ValueError, match="fp16"):
        import_onnx(tmp_path / "half.onnx")


def _case(root: Path, name: str, seed: int) -> None:
    """A small lumbar phantom in the real-case layout (ct.nii.gz + ground_truth.json)."""
    ph = make_phantom(seed, "lumbar", shape=(48, 40, 56), spacing=(4.0, 4.0, 4.0))
    folder = root / name
    folder.mkdir(parents=True)
    save_phantom(ph, folder / "ct.nii.gz")
    (folder / "ct_gt.json").rename(folder / "ground_truth.json")


def test_finetune_end_to_end_keeps_the_held_out_case_out(tmp_path, capsys):
    cfg = _config()
    source = tmp_path / "source"
    _export_pair(source, cfg)
    data = tmp_path / "data"
    _case(data, "case_a", 1005)
    _case(data, "case_b", 1006)
    template = {k: v for k, v in cfg.to_dict().items() if k not in ("protocol", "net", "heatmap")}
    template["data"].update(train_seeds=[1000, 1000], real_variants=2, real_fraction=0.5, render_workers=1,
                            min_items=1, cache=str(tmp_path / "cache"))
    for task in ("loc", "id"):
        template[task].update(steps=2, lr=1e-3, freeze_bn=True, checkpoint_every=1, log_every=1)
    template["validation_seeds"] = []
    template["version"] = None  # the source models' version + "+finetune"
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps(template))
    out = tmp_path / "out"

    args = ["finetune", "--models", str(source), "--data", str(data), "--out", str(out), "--config", str(config)]
    assert main([*args, "--val", "case_b"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["training_cases"] == ["case_a"] and card["validation_cases"] == ["case_b"]
    assert set(card["fine-tuned"]["validation"]) == {"case_b"}
    assert "case_b" in (out / "MODEL_CARD.md").read_text()
    # the held-out case was never rendered for training
    cache = cache_folder(str(tmp_path / "cache"), cfg.protocol)
    tags = {p.name.rsplit("_v", 1)[0] for p in cache.glob("*.npz")}
    assert tags == {source_tag(f"case:{(data / 'case_a').resolve()}", everyday=True)}
    # new weights, the BatchNorms kept as the import set them (identity), the version says fine-tuned
    for task in ("loc", "id"):
        ck = torch.load(out / task / "last.pt", weights_only=False)
        assert ck["step"] == 2 and ck["done"]
        init = torch.load(out / task / "init.pt", weights_only=False)["model"]
        changed = [k for k in init if k.endswith("weight") and not torch.equal(init[k], ck["model"][k])]
        assert changed
        for k, v in ck["model"].items():
            if k.endswith("running_var"):
                torch.testing.assert_close(v, init[k])
        meta = import_onnx(out / FILES[task]).metadata
        assert meta["vertedge.model_version"] == "0.1.0+finetune"

    shutil.rmtree(out)
    assert main([*args, "--val", "nosuch"]) == 2
    assert "nosuch: no such case" in capsys.readouterr().err
    assert not (out / "localization.onnx").exists()


def test_finetune_without_data_trains_on_phantoms_only(tmp_path):
    """After a phantom change: no real cases, the config's phantoms only; a task given 0 steps
    keeps its source net's weights."""
    cfg = _config()
    source = tmp_path / "source"
    _export_pair(source, cfg)
    template = {k: v for k, v in cfg.to_dict().items() if k not in ("protocol", "net", "heatmap")}
    template["data"].update(train_seeds=[1000, 1001], real_fraction=0.5, render_workers=1, min_items=1,
                            cache=str(tmp_path / "cache"))
    for task, steps in (("loc", 2), ("id", 0)):
        template[task].update(steps=steps, lr=1e-3, freeze_bn=True, checkpoint_every=1, log_every=1)
    template["validation_seeds"] = []
    config = tmp_path / "finetune.json"
    config.write_text(json.dumps(template))
    out = tmp_path / "out"

    assert main(["finetune", "--models", str(source), "--out", str(out), "--config", str(config)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["training_cases"] == [] and card["validation_cases"] == []
    assert card["real_fraction"] is None and card["phantom_version"] == PHANTOM_VERSION
    assert card["steps"] == {"loc": 2, "id": 0}
    assert "Phantoms only (seeds 1000-1000" in (out / "MODEL_CARD.md").read_text()
    cache = cache_folder(str(tmp_path / "cache"), cfg.protocol)
    assert {p.name.rsplit("_v", 1)[0] for p in cache.glob("*.npz")} == {source_tag("phantom:1000")}
    weights = {task: import_onnx(out / FILES[task]).net.state_dict() for task in ("loc", "id")}
    sources = {task: import_onnx(source / FILES[task]).net.state_dict() for task in ("loc", "id")}
    assert any(not torch.equal(v, sources["loc"][k]) for k, v in weights["loc"].items() if k.endswith("weight"))
    for k, v in weights["id"].items():
        torch.testing.assert_close(v, sources["id"][k])


@pytest.mark.parametrize("flag", [["--val", "case_a"], ["--real-fraction", "0.5"]])
def test_finetune_without_data_refuses_what_needs_real_scans(tmp_path, capsys, flag):
    out = tmp_path / "out"
    assert main(["finetune", "--out", str(out), *flag]) == 2
    assert "need real scans (--data)" in capsys.readouterr().err
    assert not out.exists()

