"""The command line: run, eval and the device choice, each ending with a clear exit status."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from vertedge import cli
from vertedge.errors import VertedgeError
from vertedge.geometry import Protocol
from vertedge.volume import save_volume

from .conftest import air_volume, paint_ball
from .helpers import metadata, run_cli, write_pair


def _vertebrae_json(path, points: dict[int, list[float]]) -> None:
    path.write_text(json.dumps({"vertebrae": [{"label": k, "world_lps_mm": v} for k, v in points.items()]}))


def test_eval_folders_pairs_scans_and_prints_scores(tmp_path, monkeypatch, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt" / "caseA").mkdir(parents=True)
    truth = {20: [0, 0, 100], 21: [0, 0, 70], 22: [0, 0, 40]}
    _vertebrae_json(tmp_path / "gt" / "caseA" / "ground_truth.json", truth)
    _vertebrae_json(tmp_path / "gt" / "caseB_gt.json", truth)
    _vertebrae_json(tmp_path / "pred" / "caseA.vertebrae.json", truth)
    # caseB: L1 and L2 swapped -> 1 of 3 identified; distances 30, 30, 0
    _vertebrae_json(tmp_path / "pred" / "caseB.vertebrae.json", {20: truth[21], 21: truth[20], 22: truth[22]})
    code, out, err = run_cli(monkeypatch, capsys, "eval", str(tmp_path / "pred"), str(tmp_path / "gt"))
    assert code == 0 and "2 scan(s)" in err
    row = next(line for line in out.splitlines() if line.startswith("all"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[1] == "6"
    assert float(cells[2]) == pytest.approx(100 * 4 / 6, abs=0.01)
    assert float(cells[3]) == pytest.approx(60 / 6, abs=0.01)


def test_run_without_models_says_so(tmp_path, monkeypatch, capsys):
    volume = air_volume((20, 20, 20), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 8.0, 400)
    save_volume(volume, tmp_path / "scan.nii.gz")
    code, out, err = run_cli(monkeypatch, capsys, "run", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "o"), "--models", str(tmp_path / "none"))
    assert code == 2 and "no models installed" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_device_cuda_without_cuda_fails_clearly_and_auto_falls_back(tmp_path, monkeypatch, capsys):
    from vertedge.device import cuda_status

    if cuda_status()[0]:
        pytest.skip("this machine has a working CUDA path")

    protocol = Protocol(pixel_mm=4.0, n_views=4, step_mm=2.0)
    models = tmp_path / "models"
    models.mkdir()
    write_pair(models, metadata("localization", protocol), metadata("identification", protocol))
    volume = air_volume((30, 30, 30), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 8.0, 400)
    save_volume(volume, tmp_path / "scan.nii.gz")
    args = ["run", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "o"), "--models", str(models)]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "cuda")
    assert code == 2 and err.startswith("vertedge: error: --device cuda: CUDA is not usable here")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "cuda:1")
    assert code == 2 and err.startswith("vertedge: error: --device cuda:1: CUDA is not usable here")
    code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "auto", "-v")
    assert code == 0 and "running on CPU: CUDA is not usable here" in err
    doc = json.loads((tmp_path / "o" / "scan.vertebrae.json").read_text())
    assert doc["device"] == "cpu" and doc["vertebrae"] == []
    # a CPU install has no CUDA to miss: the fallback is not news unless asked for (-v)
    from vertedge.device import gpu_packages_installed

    if not gpu_packages_installed():
        code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "auto")
        assert code == 0 and "CUDA" not in err


def _tiny_models(folder):
    """A model pair that detects nothing, with a small protocol (4 views of 4 mm pixels)."""

    protocol = Protocol(pixel_mm=4.0, n_views=4, step_mm=2.0)
    folder.mkdir()
    write_pair(folder, metadata("localization", protocol), metadata("identification", protocol))
    return folder, protocol


def _scan(path):
    volume = air_volume((30, 30, 30), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 8.0, 400)
    save_volume(volume, path)
    return path


def test_device_values_are_parsed_and_checked():
    from vertedge.device import parse_device

    assert parse_device("cuda:1") == ("cuda", 1) and parse_device("cuda") == ("cuda", None)
    assert parse_device("auto") == ("auto", None) and parse_device("CPU") == ("cpu", None)
    for bad in ("cuda:x", "cuda:", "gpu", "cpu:1", "cuda:-1"):
        with pytest.raises(VertedgeError, match=f"--device {bad}: choose one of auto, cpu, cuda, cuda:N"):
            parse_device(bad)


def test_cuda_n_makes_gpu_n_current_for_cupy_and_onnx_runtime(monkeypatch, vertedge_log):
    """Without a GPU: a stand-in CuPy with two devices records which one is made current."""
    import types

    from vertedge import device
    from vertedge.onnx_models import providers_for

    current = [0]
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 2,
        getDevice=lambda: current[0],
        getDeviceProperties=lambda i: {"name": f"GPU model {i}".encode()},
    )

    class Device:
        def __init__(self, index):
            self.index = index

        def use(self):
            current[0] = self.index

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime, Device=Device)))
    monkeypatch.setattr(device, "cuda_status", lambda: (True, "GPU model 0"))
    assert device.choose_device("cuda:1") == "cuda"
    assert vertedge_log.records[-1].getMessage() == "CUDA on GPU model 1 (GPU 1)"
    assert device.current_gpu() == 1
    (name, options), _ = providers_for("cuda", device_id=device.current_gpu())
    assert name == "CUDAExecutionProvider" and options["device_id"] == "1"
    with pytest.raises(VertedgeError, match=r"--device cuda:2: no such GPU \(this machine has 2"):
        device.choose_device("cuda:2")


def test_help_version_and_debug(monkeypatch, capsys):
    from importlib.metadata import version

    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0 and "--debug" in out and "--version" in out
    code, out, _ = run_cli(monkeypatch, capsys, "run", "--help")
    assert code == 0 and "--fp16" in out and "<bool>" not in out
    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"vertedge {version('vertedge')}"
    # --debug anywhere on the line: the error comes with its traceback instead of one line
    monkeypatch.setattr("sys.argv", ["vertedge", "run", "missing.nii.gz", "--debug"])
    with pytest.raises(VertedgeError, match="missing.nii.gz: no such file"):
        cli.main()


def test_verbose_quiet_and_fp16_on_cpu(tmp_path, monkeypatch, capsys):
    models, _ = _tiny_models(tmp_path / "models")
    scans = [str(_scan(tmp_path / "a.nii.gz")), str(_scan(tmp_path / "b.nii.gz"))]
    args = ["run", *scans, "-o", str(tmp_path / "o"), "--models", str(models), "--device", "cpu"]
    _, _, plain = run_cli(monkeypatch, capsys, *args)
    _, _, verbose = run_cli(monkeypatch, capsys, *args, "-v")
    _, _, quiet = run_cli(monkeypatch, capsys, *args, "-q")
    assert "[1/2] a: ok" in plain and "test-localization" not in plain
    assert "[1/2] a: ok" in verbose and "models test-localization, test-identification" in verbose
    assert "30x30x30 voxels of 2x2x2 mm" in verbose
    assert "[1/2]" not in quiet and "summary in" not in quiet
    assert quiet.splitlines() == [line for line in plain.splitlines() if line.startswith("warning: ")]
    code, _, err = run_cli(monkeypatch, capsys, *args, "--fp16", "-q")
    assert code == 0 and "warning: --fp16 is ignored on the CPU" in err.splitlines()[0]


def test_starts_sets_the_runs_per_scan_and_is_recorded(tmp_path, monkeypatch, capsys):
    """`--starts N` reaches the labeller and is recorded in each result; 0 is refused before anything is written."""
    models, _ = _tiny_models(tmp_path / "models")
    scan = str(_scan(tmp_path / "a.nii.gz"))
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"o{n}"
        code, _, _ = run_cli(monkeypatch, capsys, "run", scan, "-o", str(out), "--models", str(models), "--device", "cpu",
                             "--starts", str(n), "-q")
        assert code == 0
        runs[n] = json.loads((out / "a.vertebrae.json").read_text())
    assert [runs[n]["options"]["view_starts"] for n in (1, 2)] == [1, 2]
    code, _, err = run_cli(monkeypatch, capsys, "run", scan, "-o", str(tmp_path / "o0"), "--models", str(models), "--starts", "0")
    assert code == 2 and "--starts" in err and not (tmp_path / "o0").exists()


def test_drr_renders_what_the_models_see_unless_asked_for_the_papers_protocol(tmp_path, monkeypatch, capsys):
    from vertedge.onnx_models import Models

    models, protocol = _tiny_models(tmp_path / "models")
    scan = str(_scan(tmp_path / "scan.nii.gz"))
    code, _, err = run_cli(monkeypatch, capsys, "drr", scan, "-o", str(tmp_path / "m"), "--models", str(models))
    assert code == 0, err
    assert json.loads((tmp_path / "m" / "views.json").read_text())["protocol"] == protocol.to_dict()
    assert len(list((tmp_path / "m").glob("view_*.png"))) == protocol.n_views
    code, _, err = run_cli(monkeypatch, capsys, "drr", scan, "-o", str(tmp_path / "p"), "--protocol", "paper", "-k", "2")
    assert code == 0, err
    assert json.loads((tmp_path / "p" / "views.json").read_text())["protocol"] == Protocol.paper().with_views(2).to_dict()
    code, _, err = run_cli(monkeypatch, capsys, "drr", scan, "-o", str(tmp_path / "s"), "-k", "2")
    shipped = Models(device="cpu").protocol.with_views(2)
    assert code == 0 and json.loads((tmp_path / "s" / "views.json").read_text())["protocol"] == shipped.to_dict()
    assert shipped != Protocol.paper().with_views(2)
    code, _, err = run_cli(monkeypatch, capsys, "drr", scan, "-o", str(tmp_path / "x"), "--protocol", "other")
    assert code == 2 and err == "vertedge: error: --protocol other: choose models or paper\n"


# --- eval -----------------------------------------------------------------------------------------


def _truth_json(path, points: dict[int, list[float]], cut: set[int] = frozenset()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"label": k, "world_lps_mm": v, "cut_by_field_of_view": k in cut} for k, v in points.items()]
    path.write_text(json.dumps({"vertebrae": entries}))


def _result_json(path, points: dict[int, list[float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [{"label": k, "world_lps_mm": v} for k, v in points.items()]
    path.write_text(json.dumps({"vertebrae": entries, "models": {"localization": "x"}, "timings_ms": {}}))


TRUTH = {20: [0, 0, 100], 21: [0, 0, 70], 22: [0, 0, 40]}


def test_eval_pairs_case_folders_with_run_outputs_per_scan_and_counts_extra_predictions(tmp_path, monkeypatch, capsys):
    _truth_json(tmp_path / "gt" / "c1" / "ground_truth.json", TRUTH)
    _truth_json(tmp_path / "gt" / "c2" / "ground_truth.json", TRUTH, cut={22})
    _truth_json(tmp_path / "gt" / "c3" / "ground_truth.json", TRUTH)
    # as `vertedge run gt/` names gt/c1/ct.nii.gz and gt/c2/ct.nii.gz
    _result_json(tmp_path / "pred" / "c1_ct.vertebrae.json", {**TRUTH, 19: [0, 0, 130], 23: [0, 0, 10]})
    _result_json(tmp_path / "pred" / "c2_ct.vertebrae.json", {20: TRUTH[21], 21: TRUTH[20], 22: [0, 0, 90]})
    _result_json(tmp_path / "pred" / "lone.vertebrae.json", TRUTH)
    code, out, err = run_cli(monkeypatch, capsys, "eval", str(tmp_path / "pred"), str(tmp_path / "gt"))
    assert code == 0, err
    assert "no prediction for (not scored): c3" in err and "no ground truth for (not scored): lone" in err
    rows = {c[0]: c[1:] for c in ([x.strip() for x in line.split("|")] for line in out.splitlines()) if len(c) == 6}
    assert rows["c1"] == ["3", "3", "100.00", "0.00", "T12, L4"]
    assert rows["c2"] == ["2", "0", "0.00", "30.00", "-"]  # L3 is cut: not scored, and not extra
    overall = next(line for line in out.splitlines() if line.startswith("all"))
    assert [c.strip() for c in overall.split("|")][1:] == ["5", "60.00", "12.00", "2"]
    assert "extra predictions (labels with no ground-truth vertebra): 2 in 1 of 2 scan(s)" in out


def test_eval_refuses_swapped_arguments(tmp_path, monkeypatch, capsys):
    _truth_json(tmp_path / "gt" / "c1" / "ground_truth.json", TRUTH)
    _result_json(tmp_path / "pred" / "c1_ct.vertebrae.json", TRUTH)
    pred_file, gt_file = tmp_path / "pred" / "c1_ct.vertebrae.json", tmp_path / "gt" / "c1" / "ground_truth.json"
    for args in ((gt_file, pred_file), (tmp_path / "gt", tmp_path / "pred")):
        code, out, err = run_cli(monkeypatch, capsys, "eval", *map(str, args))
        assert code == 2 and err.count("\n") == 1 and "swapped arguments?" in err and out == ""
    code, _, _ = run_cli(monkeypatch, capsys, "eval", str(pred_file), str(gt_file))
    assert code == 0


def test_eval_pairs_the_real_cases_with_the_names_a_batch_gives_them(tmp_path, monkeypatch, capsys):
    from vertedge.batch import expand_inputs, unique_names

    from .conftest import SHARED_DATA

    real = SHARED_DATA / "real"
    if not real.is_dir():
        pytest.skip(f"no real data at {real}")
    cases = sorted(p.parent.name for p in real.glob("*/ground_truth.json"))
    names = unique_names(expand_inputs([real]))
    assert len(names) == len(cases)
    for name, case in zip(names, cases):  # a perfect prediction under each name the batch gives
        truth = json.loads((real / case / "ground_truth.json").read_text())
        _result_json(tmp_path / f"{name}.vertebrae.json", {v["label"]: v["world_lps_mm"] for v in truth["vertebrae"]})
    code, out, err = run_cli(monkeypatch, capsys, "eval", str(tmp_path), str(real))
    assert code == 0 and "not scored" not in err
    rows = [line.split("|")[0].strip() for line in out.splitlines()[2 : 2 + len(cases)]]
    assert rows == cases
