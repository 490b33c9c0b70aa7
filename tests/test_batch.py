"""Unattended work: batches go on past bad scans; bad input is one line and leaves nothing behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vertedge.errors import VertedgeError
from vertedge.geometry import Protocol
from vertedge.volume import load_volume, save_volume, to_sitk

from .conftest import air_volume, paint_ball
from .test_cli import run_cli
from .test_models import metadata, write_pair
from .test_volume import _write_bad_inputs


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A model pair that detects nothing: enough to drive the CLI through every stage."""
    folder = tmp_path_factory.mktemp("models")
    protocol = Protocol(pixel_mm=4.0, n_views=4, step_mm=2.0)
    write_pair(folder, metadata("localization", protocol), metadata("identification", protocol))
    return folder


@pytest.fixture
def good_scan(tmp_path):
    volume = air_volume((30, 30, 30), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 12.0, 300)
    path = tmp_path / "good.nii.gz"
    save_volume(volume, path)
    return path


def _more_bad_inputs(tmp_path, good_volume):
    """Bad inputs beyond the loader's format checks: NaN, spacing, not HU, too large."""
    bad = {}
    image = sitk.Cast(to_sitk(good_volume), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(image)
    arr[3, 4, 5] = np.nan
    nan_image = sitk.GetImageFromArray(arr)
    nan_image.CopyInformation(image)
    sitk.WriteImage(nan_image, str(tmp_path / "nan.mha"))  # ITK's NIfTI reader turns NaN into 0
    bad["NaN"] = tmp_path / "nan.mha"
    wide = sitk.Image(image)
    wide.SetSpacing((2.0, 2.0, 35.0))
    sitk.WriteImage(wide, str(tmp_path / "spacing.nii.gz"))
    bad["absurd spacing"] = tmp_path / "spacing.nii.gz"
    mr = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 1500, (20, 20, 20)).astype(np.int16))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    bad["MR"] = tmp_path / "mr.nii.gz"
    return bad


def test_every_bad_input_to_run_is_one_line_and_leaves_nothing(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    bad = _write_bad_inputs(tmp_path, good_scan) | _more_bad_inputs(tmp_path, load_volume(good_scan))
    for kind, path in bad.items():
        out = tmp_path / f"out-{kind}"
        code, stdout, err = run_cli(monkeypatch, capsys, "run", str(path), "-o", str(out), "--models", str(tiny_models), "-q")
        assert code == 2, kind
        assert err.count("\n") == 1 and err.startswith(f"vertedge: error: {path}"), (kind, err)
        assert "Traceback" not in err and not out.exists(), kind


def test_volume_too_large_for_memory_is_refused_before_reading(good_scan, monkeypatch):
    monkeypatch.setattr("vertedge.volume._available_memory_bytes", lambda: 10_000)
    with pytest.raises(VertedgeError, match="needs about .* GiB to load"):
        load_volume(good_scan)


def test_no_spine_found_is_a_valid_empty_result_with_a_warning(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    code, stdout, err = run_cli(monkeypatch, capsys, "run", str(good_scan), "-o", str(tmp_path / "o"), "--models", str(tiny_models), "--json")
    assert code == 0
    assert json.loads(stdout)["vertebrae"] == []
    assert "no spine found" in err


@pytest.mark.slow
def test_batch_goes_on_past_bad_scans_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    from vertedge.metrics import read_points, score
    from vertedge.phantom import make_phantom, save_phantom

    folder = tmp_path / "batch"
    folder.mkdir()
    good = make_phantom(0, "lumbar")  # held out from training
    save_phantom(good, tmp_path / "truth" / "a_good.nii.gz")
    os.replace(tmp_path / "truth" / "a_good.nii.gz", folder / "a_good.nii.gz")
    (folder / "b_corrupt.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16) + 3, str(folder / "c_flat.nii.gz"))
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "run", str(folder), "-o", str(out))  # the shipped models
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["scans"]}
    assert status == {"a_good": "ok", "b_corrupt": "failed", "c_flat": "failed"}
    assert summary["counts"] == {"ok": 1, "failed": 2, "skipped": 0}
    assert (out / "a_good.vertebrae.json").exists() and (out / "a_good_ctd.json").exists()
    truth, cut = read_points(tmp_path / "truth" / "a_good_gt.json")
    found, _ = read_points(out / "a_good.vertebrae.json")
    assert score(found, truth, exclude=cut).id_rate["all"] == 100.0
    assert not any(p.name.startswith(("b_corrupt", "c_flat")) for p in out.iterdir())
    for name in status:
        assert name in stdout  # the summary table


def test_skip_existing_does_not_redo_finished_scans(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    other = tmp_path / "second.nii.gz"
    save_volume(load_volume(good_scan), other)
    out = tmp_path / "out"
    args = ["run", str(good_scan), str(other), "-o", str(out), "--models", str(tiny_models)]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    first = (out / "good.vertebrae.json").stat().st_mtime_ns
    (out / "second.vertebrae.json").unlink()
    assert run_cli(monkeypatch, capsys, *args, "--skip-existing")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["scans"]] == ["skipped", "ok"]
    assert (out / "good.vertebrae.json").stat().st_mtime_ns == first


SUFFIXES = st.sampled_from([".nii.gz", ".nii", ".mha", ".nrrd"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2000), suffix=SUFFIXES)
def test_fuzz_random_bytes_only_raise_the_tools_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        load_volume(path)
    except VertedgeError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    dtype=st.sampled_from([np.int16, np.uint8, np.int32, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
    spacing=st.floats(0.01, 30.0),
    suffix=SUFFIXES,
)
def test_fuzz_random_small_arrays_load_or_raise_the_tools_error(tmp_path, shape, dtype, seed, spacing, suffix):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 800, shape)
    if dtype in (np.float32, np.float64) and rng.random() < 0.3:
        values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf])
    array = values.astype(dtype) if np.issubdtype(dtype, np.floating) else np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing([spacing] * image.GetDimension())
    path = tmp_path / f"fuzz{suffix}"
    try:
        sitk.WriteImage(image, str(path))
    except RuntimeError:
        return  # a format that cannot hold this image: nothing to load
    try:
        volume = load_volume(path)
    except VertedgeError:
        return
    assert volume.hu.ndim == 3 and np.isfinite(volume.hu).all()
