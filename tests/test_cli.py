"""The command line: run, eval and the device choice, each ending with a clear exit status."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vertedge import cli
from vertedge.geometry import Protocol
from vertedge.volume import save_volume

from .conftest import air_volume, paint_ball


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
    from .test_models import metadata, write_pair

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
    code, _, err = run_cli(monkeypatch, capsys, *args, "--device", "auto")
    assert code == 0 and "running on CPU: CUDA is not usable here" in err
    doc = json.loads((tmp_path / "o" / "scan.vertebrae.json").read_text())
    assert doc["device"] == "cpu" and doc["vertebrae"] == []
