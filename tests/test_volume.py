"""Loading: every SimpleITK format and DICOM series into one Volume; bad input refused clearly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from vertedge.errors import VertedgeError
from vertedge.volume import load_volume, save_volume, to_sitk

from .conftest import rotation
from .helpers import write_bad_inputs, write_dicom_series, write_nifti


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_save_load_round_trip_keeps_values_and_world_frame(structured_volume, tmp_path, suffix):
    path = tmp_path / f"scan{suffix}"
    save_volume(structured_volume, path)
    back = load_volume(path)
    np.testing.assert_array_equal(back.hu, structured_volume.hu)
    np.testing.assert_allclose(back.affine, structured_volume.affine, atol=1e-4)
    assert back.hu.dtype == np.int16
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


def test_int32_ct_is_stored_as_int16_and_float_kept_float(structured_volume, tmp_path):
    image = sitk.Cast(to_sitk(structured_volume), sitk.sitkInt32)
    sitk.WriteImage(image, str(tmp_path / "a.nii.gz"))
    assert load_volume(tmp_path / "a.nii.gz").hu.dtype == np.int16
    sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32) * 0.5, str(tmp_path / "b.nii.gz"))
    assert load_volume(tmp_path / "b.nii.gz").hu.dtype == np.float32


def test_world_points_agree_with_simpleitk(structured_volume):
    image = to_sitk(structured_volume)
    ijk = np.array([[3.5, 7.25, 11.0], [0, 0, 0], [59, 49, 39]])
    expected = [image.TransformContinuousIndexToPhysicalPoint(tuple(p)) for p in ijk]
    np.testing.assert_allclose(structured_volume.index_to_world(ijk), expected, atol=1e-9)
    np.testing.assert_allclose(structured_volume.world_to_index(expected), ijk, atol=1e-9)


def test_reoriented_keeps_world_content(structured_volume):
    other = structured_volume.reoriented((1, 2, 0), (True, False, True))
    ijk = np.array([[10, 20, 30], [59, 0, 39]])
    world = structured_volume.index_to_world(ijk)
    back = np.rint(other.world_to_index(world)).astype(int)
    np.testing.assert_array_equal(other.hu[back[:, 2], back[:, 1], back[:, 0]], structured_volume.hu[ijk[:, 2], ijk[:, 1], ijk[:, 0]])
    assert other.axcodes() != structured_volume.axcodes()


def test_axcodes_of_lps_and_ras():
    from .conftest import air_volume

    lps = air_volume((4, 5, 6), (1, 1, 1))
    assert lps.axcodes() == ("L", "P", "S")
    assert lps.reoriented((0, 1, 2), (True, True, False)).axcodes() == ("R", "A", "S")
    assert air_volume((4, 5, 6), (1, 1, 1), rotation("z", 10)).axcodes() == ("L", "P", "S")


STORED_TYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64]
# (scl_slope, scl_inter); None: not set. uint8 needs a slope > 1 to span -1024 to 1500 HU.
SCALINGS = {"none": None, "integer": (1.0, -1024.0), "fractional": (0.5, -1024.5)}
UINT8_SCALINGS = {"none": None, "integer": (10.0, -1024.0), "fractional": (9.5, -1000.5)}


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("scaling", list(SCALINGS))
@pytest.mark.parametrize("dtype", STORED_TYPES, ids=lambda t: np.dtype(t).name)
def test_nifti_of_any_stored_type_and_scaling_loads_in_hu(tmp_path, dtype, scaling, suffix):
    slope_inter = (UINT8_SCALINGS if dtype == np.uint8 else SCALINGS)[scaling]
    slope, inter = slope_inter or (1.0, 0.0)
    limits = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else np.finfo(np.float32)
    lo = max(np.ceil((-1024 - inter) / slope), limits.min)
    hi = min(np.floor((1500 - inter) / slope), limits.max)
    stored = np.random.default_rng(0).integers(lo, hi, (16, 14, 12), endpoint=True).astype(dtype)
    stored.flat[[0, -1]] = lo, hi
    if np.issubdtype(dtype, np.floating):
        stored += dtype(0.25)  # not only integers
    path = tmp_path / f"ct{suffix}"
    expected = write_nifti(path, stored, slope_inter)
    if expected.min() > -200:  # unsigned and unscaled: no negative HU, so not a CT in HU
        with pytest.raises(VertedgeError, match="not a CT in Hounsfield units"):
            load_volume(path)
        return
    volume = load_volume(path)
    np.testing.assert_allclose(volume.hu.transpose(2, 1, 0), expected, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(volume.spacing, [1.0, 1.2, 2.0], rtol=1e-6)
    if suffix == ".nii.gz":  # a truly truncated file is still refused
        data = path.read_bytes()
        (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) * 2 // 3])
        with pytest.raises(VertedgeError, match="truncated"):
            load_volume(tmp_path / "cut.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("scaling", [None, (1.0, -1024.0)])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda t: np.dtype(t).name)
def test_nifti_with_nan_or_infinity_is_refused(tmp_path, dtype, value, scaling, suffix):
    slope, inter = scaling or (1.0, 0.0)
    hu = np.full((10, 9, 8), -1000.0)
    hu[3:7, 3:6, 2:6] = 700
    stored = ((hu - inter) / slope).astype(dtype)
    stored[5, 4, 3] = value  # ITK reads it as 0 (before scaling)
    path = tmp_path / f"ct{suffix}"
    write_nifti(path, stored, scaling)
    with pytest.raises(VertedgeError, match="NaN or infinite"):
        load_volume(path)


@pytest.mark.parametrize("spacing", [0.001, 0.1, 100.0])
def test_implausible_spacing_is_refused_in_plain_numbers(structured_volume, tmp_path, spacing):
    volume = replace(structured_volume, spacing=np.array([spacing, spacing, 2.0]))
    save_volume(volume, tmp_path / "ct.nii.gz")
    with pytest.raises(VertedgeError, match="implausible voxel spacing") as e:
        load_volume(tmp_path / "ct.nii.gz")
    assert f"{spacing:g} x {spacing:g} x 2 mm" in str(e.value) and "np." not in str(e.value)


def test_finest_clinical_spacing_is_accepted(structured_volume, tmp_path):
    volume = replace(structured_volume, spacing=np.array([0.2, 0.25, 0.5]))
    save_volume(volume, tmp_path / "ct.nii.gz")
    np.testing.assert_allclose(load_volume(tmp_path / "ct.nii.gz").spacing, [0.2, 0.25, 0.5], rtol=1e-6)


def test_dicom_series_folder_loads_in_the_world_frame(structured_volume, tmp_path):
    back = load_volume(write_dicom_series(structured_volume, tmp_path))
    assert back.hu.shape == structured_volume.hu.shape
    np.testing.assert_array_equal(back.hu, structured_volume.hu)
    np.testing.assert_allclose(back.affine, structured_volume.affine, atol=1e-3)


def test_dicom_series_with_a_missing_slice_is_refused_in_one_line(structured_volume, tmp_path, capfd):
    folder = write_dicom_series(structured_volume, tmp_path / "series", skip=[20])
    with pytest.raises(VertedgeError, match=r"uneven slice spacing.*gaps of 2\.5 to 5 mm") as e:
        load_volume(folder)
    assert "\n" not in str(e.value)
    assert capfd.readouterr().err == ""  # ITK's multi-line warning is kept off stderr


@pytest.fixture
def bad_inputs(structured_volume, tmp_path):
    good = tmp_path / "good.nii.gz"
    save_volume(structured_volume, good)
    return write_bad_inputs(tmp_path, good)


def test_every_bad_input_raises_the_tools_error_naming_the_file(bad_inputs):
    for kind, path in bad_inputs.items():
        with pytest.raises(VertedgeError) as e:
            load_volume(path)
        message = str(e.value)
        assert str(path) in message and "\n" not in message, kind


@pytest.mark.parametrize(
    "kind",
    [
        "missing", "not an image", "corrupt gzip", "truncated", "2D", "4D", "empty", "constant", "no DICOM series",
        "spacing 0.1 mm", "NaN in NIfTI", "DICOM slice missing",
    ],
)
def test_cli_bad_input_one_line_no_traceback_no_output(bad_inputs, tmp_path, kind, capsys, monkeypatch):
    from vertedge import cli

    out = tmp_path / f"out-{kind}"
    monkeypatch.setattr("sys.argv", ["vertedge", "drr", str(bad_inputs[kind]), "-o", str(out)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vertedge: error: ") and "Traceback" not in err
    assert not out.exists()


def test_console_script_reports_bad_input_on_one_line(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "vertedge", "drr", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"vertedge: error: {tmp_path / 'missing.nii.gz'}: no such file or folder"]
