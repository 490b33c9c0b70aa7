"""Loading: every SimpleITK format and DICOM series into one Volume; bad input refused clearly."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from vertedge.errors import VertedgeError
from vertedge.volume import load_volume, save_volume, to_sitk

from .conftest import rotation


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


def test_dicom_series_folder_loads_in_the_world_frame(structured_volume, tmp_path):
    image = to_sitk(structured_volume.reoriented((0, 1, 2), (False, False, False)))
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = "\\".join(str(v) for v in np.array(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")  # series instance UID
        s.SetMetaData("0020|0037", direction)
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(s)
    back = load_volume(tmp_path)
    assert back.hu.shape == structured_volume.hu.shape
    np.testing.assert_array_equal(back.hu, structured_volume.hu)
    np.testing.assert_allclose(back.affine, structured_volume.affine, atol=1e-3)


def _write_bad_inputs(tmp_path, good_path):
    """Create one file or folder per kind of bad input; returns {kind: path}."""
    bad = {}
    bad["missing"] = tmp_path / "nope.nii.gz"
    (tmp_path / "random.nii.gz").write_bytes(np.random.default_rng(0).bytes(4000))
    bad["not an image"] = tmp_path / "random.nii.gz"
    (tmp_path / "corrupt.nii.gz").write_bytes(gzip.compress(b"\x00" * 100)[:10] + b"garbage" * 50)
    bad["corrupt gzip"] = tmp_path / "corrupt.nii.gz"
    data = good_path.read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    bad["truncated"] = tmp_path / "truncated.nii.gz"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16) + 5, str(tmp_path / "flat.nii.gz"))
    bad["2D"] = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(tmp_path / "four.nii.gz"))
    bad["4D"] = tmp_path / "four.nii.gz"
    (tmp_path / "empty.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 10 10 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    bad["empty"] = tmp_path / "empty.mha"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "constant.nii.gz"))
    bad["constant"] = tmp_path / "constant.nii.gz"
    (tmp_path / "nodicom").mkdir()
    (tmp_path / "nodicom" / "notes.txt").write_text("no images here")
    bad["no DICOM series"] = tmp_path / "nodicom"
    return bad


@pytest.fixture
def bad_inputs(structured_volume, tmp_path):
    good = tmp_path / "good.nii.gz"
    save_volume(structured_volume, good)
    return _write_bad_inputs(tmp_path, good)


def test_every_bad_input_raises_the_tools_error_naming_the_file(bad_inputs):
    for kind, path in bad_inputs.items():
        with pytest.raises(VertedgeError) as e:
            load_volume(path)
        message = str(e.value)
        assert str(path) in message and "\n" not in message, kind


@pytest.mark.parametrize("kind", ["missing", "not an image", "corrupt gzip", "truncated", "2D", "4D", "empty", "constant", "no DICOM series"])
def test_cli_bad_input_one_line_no_traceback_no_output(bad_inputs, tmp_path, kind, capsys, monkeypatch):
    from vertedge import cli

    out = tmp_path / f"out-{kind}"
    monkeypatch.setattr("sys.argv", ["vertedge", "drr", str(bad_inputs[kind]), "-o", str(out)])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code != 0
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
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"vertedge: error: {tmp_path / 'missing.nii.gz'}: no such file or folder"]
