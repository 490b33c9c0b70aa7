"""The fast readers (rapidgzip or ISA-L NIfTI, memory-mapped .nii, pydicom series) give exactly SimpleITK's Volume."""

from __future__ import annotations

import mmap
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from vertedge import readers
from vertedge.volume import from_sitk, load_volume

from .conftest import SHARED_DATA, rotation
from .helpers import write_dicom_series

SHAPE_IJK = (14, 12, 10)


def _sitk_volume(path):
    """What load_volume gave before the fast readers: SimpleITK's image through from_sitk."""
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        return from_sitk(reader.Execute())
    return from_sitk(sitk.ReadImage(str(path)))


def _assert_same(volume, expected):
    assert volume.hu.dtype == expected.hu.dtype
    np.testing.assert_array_equal(volume.hu, expected.hu)
    for attr in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(volume, attr), getattr(expected, attr), rtol=0, atol=1e-6, err_msg=attr)
    assert volume.meta["pixel_type"] == expected.meta["pixel_type"]


def _ras_affine(axcodes, oblique=False):
    """A NIfTI (RAS mm) affine whose index axes point along `axcodes`, spacing 0.8/1.1/2.5 mm."""
    ornt = nib.orientations.axcodes2ornt(axcodes)
    linear = np.zeros((3, 3))
    for axis, (world, sign) in enumerate(ornt):
        linear[int(world), axis] = sign * (0.8, 1.1, 2.5)[axis]
    if oblique:
        linear = rotation("z", 17) @ rotation("x", -9) @ linear
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, (-40.5, 20.25, -95.0)
    return affine


def _ct(dtype, slope=1.0, inter=0.0):
    """Stored values whose HU (stored * slope + inter) span air to bone, in `dtype`."""
    rng = np.random.default_rng(1)
    hu = rng.integers(-1024, 1500, SHAPE_IJK)
    hu.flat[:2] = -1024, 1500
    stored = np.round((hu - inter) / slope)
    return stored.astype(dtype) + (np.float32(0.25) if np.dtype(dtype).kind == "f" else 0)


def _save(path, stored, affine, slope=None, inter=None, form="both"):
    image = nib.Nifti1Image(stored, None)
    image.header.set_data_dtype(stored.dtype)
    if form in ("qform", "both"):
        image.set_qform(affine, code=1)
    if form in ("sform", "both"):
        # "both" writes a different sform (shifted 7 mm): ITK's choice between them must be kept
        shifted = affine.copy()
        shifted[:3, 3] += 7.0 * (form == "both")
        image.set_sform(shifted, code=2)
    if form == "sform":
        image.set_qform(None, code=0)
    if slope is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR", "oblique"])
def test_nifti_orientations_read_as_simpleitk(tmp_path, suffix, orientation):
    axcodes = tuple("RAS" if orientation == "oblique" else orientation)
    path = _save(tmp_path / f"ct{suffix}", _ct(np.int16), _ras_affine(axcodes, orientation == "oblique"))
    _assert_same(load_volume(path), _sitk_volume(path))
    assert readers.nifti_voxels(path, sitk.sitkInt16) is not None  # the fast path, not the fallback


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("form", ["qform", "sform", "both"])
@pytest.mark.parametrize(
    ("dtype", "slope", "inter"),
    [(np.int16, None, None), (np.int16, 1.0, -1024.0), (np.int16, 0.5, -1024.5), (np.int16, 0.1, -1000.3), (np.uint8, 10.0, -1024.0),
     (np.int32, None, None), (np.float32, None, None), (np.float32, 2.0, -1000.0), (">i2", None, None)],
    ids=["int16", "int16-intercept", "int16-fractional", "int16-inexact", "uint8-scaled", "int32", "float32", "float32-scaled",
         "int16-big-endian"],
)
def test_nifti_datatypes_scalings_and_forms_read_as_simpleitk(tmp_path, suffix, form, dtype, slope, inter):
    stored = _ct(dtype, slope or 1.0, inter or 0.0)
    path = _save(tmp_path / f"ct{suffix}", stored, _ras_affine(("L", "P", "S"), oblique=True), slope, inter, form)
    volume = load_volume(path)
    _assert_same(volume, _sitk_volume(path))
    itk_type = sitk.ReadImage(str(path)).GetPixelID()
    assert readers.nifti_voxels(path, itk_type) is not None


def test_uncompressed_nifti_is_memory_mapped_and_writable(tmp_path):
    path = _save(tmp_path / "ct.nii", _ct(np.int16), _ras_affine(("L", "P", "S")))
    volume = load_volume(path)
    assert isinstance(volume.hu.base, mmap.mmap) and volume.hu.flags.writeable
    volume.hu[0, 0, 0] = 123  # a private copy of that page: the file keeps its value
    assert load_volume(path).hu[0, 0, 0] == _ct(np.int16)[0, 0, 0]


def test_nifti_gz_without_isal_falls_back_to_simpleitk(tmp_path, monkeypatch):
    path = _save(tmp_path / "ct.nii.gz", _ct(np.int16), _ras_affine(("R", "A", "S")))
    monkeypatch.setattr(readers, "_gzip_open", None)
    assert readers.nifti_voxels(path, sitk.sitkInt16) is None
    _assert_same(load_volume(path), _sitk_volume(path))


@pytest.mark.parametrize("inflater", ["parallel", "isal"])
def test_both_inflaters_read_as_simpleitk(tmp_path, monkeypatch, inflater):
    """rapidgzip on every core where there is more than one, ISA-L otherwise: the same voxels."""
    if inflater == "parallel":
        if readers.rapidgzip is None:
            pytest.skip("rapidgzip is not installed")
        monkeypatch.setattr(readers, "_cores", lambda: 2)
    else:
        monkeypatch.setattr(readers, "rapidgzip", None)
    path = _save(tmp_path / "ct.nii.gz", _ct(np.int16), _ras_affine(("R", "A", "S")))
    _assert_same(load_volume(path), _sitk_volume(path))


def test_multi_member_nifti_gz_reads_as_simpleitk(tmp_path):
    """A .nii.gz in several gzip members (as bgzip writes it) is read whole, not cut at the first."""
    import gzip

    plain = _save(tmp_path / "ct.nii", _ct(np.int16), _ras_affine(("L", "P", "S")))
    data = plain.read_bytes()
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(b"".join(gzip.compress(data[i : i + 1000]) for i in range(0, len(data), 1000)))
    _assert_same(load_volume(path), _sitk_volume(plain))


@pytest.mark.parametrize("cut", [4, 100, 100_000])
def test_truncated_nifti_gz_is_refused_in_one_line(tmp_path, capfd, cut):
    """A cut .nii.gz (in its trailer, its last block, its middle): the loader's error, and no
    decoder's chatter on stderr."""
    from vertedge.errors import VertedgeError

    # 2 MiB of noisy voxels: rapidgzip splits a stream this long into chunks, and then chatters
    stored = np.random.default_rng(2).integers(-1024, 1500, (64, 64, 256)).astype(np.int16)
    path = _save(tmp_path / "ct.nii.gz", stored, _ras_affine(("R", "A", "S")))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut])
    with pytest.raises(VertedgeError, match="ct.nii.gz: cannot read"):
        load_volume(path)
    assert capfd.readouterr().err == ""


def test_nifti_gz_with_a_broken_stream_is_refused(tmp_path):
    from vertedge.errors import VertedgeError

    path = _save(tmp_path / "ct.nii.gz", _ct(np.int16), _ras_affine(("R", "A", "S")))
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # the CRC-32 in the trailer: all voxels arrive, the check fails
    path.write_bytes(bytes(data))
    with pytest.raises(readers.TruncatedData):
        readers.nifti_voxels(path, sitk.sitkInt16)
    with pytest.raises(VertedgeError, match="ct.nii.gz: cannot read"):
        load_volume(path)


@pytest.fixture
def dicom_series(structured_volume, tmp_path):
    return write_dicom_series(structured_volume, tmp_path / "series")


def test_dicom_series_reads_as_simpleitk(dicom_series):
    first = sitk.ReadImage(str(next(dicom_series.iterdir()))).GetPixelID()
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom_series)))
    assert readers.dicom_slices(files, first) is not None  # pydicom read it, not the fallback
    _assert_same(load_volume(dicom_series), _sitk_volume(dicom_series))


@pytest.mark.parametrize("syntax", ["RLE Lossless", "Deflated Explicit VR Little Endian"])
def test_compressed_dicom_series_reads_as_simpleitk(dicom_series, tmp_path, syntax):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    out = tmp_path / "compressed"
    out.mkdir()
    for f in dicom_series.iterdir():
        ds = pydicom.dcmread(f)
        if syntax == "RLE Lossless":
            ds.compress(RLELossless)  # pydicom's own RLE encoder
        else:  # the whole dataset deflated (zlib) on writing
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(out / f.name, enforce_file_format=True)
    assert pydicom.dcmread(next(out.iterdir())).file_meta.TransferSyntaxUID.name == syntax
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
    assert readers.dicom_slices(files, sitk.sitkInt16) is not None
    _assert_same(load_volume(out), _sitk_volume(out))


def test_dicom_series_without_pydicom_falls_back_to_simpleitk(dicom_series, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom now raises ImportError
    assert readers.dicom_slices([str(next(dicom_series.iterdir()))], sitk.sitkInt16) is None
    _assert_same(load_volume(dicom_series), _sitk_volume(dicom_series))


REAL_J2K = SHARED_DATA / "real" / "ts_dicom_slab" / "dicom"


@pytest.mark.skipif(not REAL_J2K.is_dir(), reason=f"no shared data at {REAL_J2K}")
def test_real_jpeg2000_series_reads_as_simpleitk():
    pytest.importorskip("openjpeg")  # pylibjpeg-openjpeg: pydicom's JPEG 2000 decoder here
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(REAL_J2K)))
    assert readers.dicom_slices(files, sitk.ReadImage(files[0]).GetPixelID()) is not None
    _assert_same(load_volume(REAL_J2K), _sitk_volume(REAL_J2K))


@pytest.mark.parametrize(("slope", "intercept"), [("1", "-1024"), ("3", "-1024"), ("0.5", "-0.25")])
def test_dicom_rescale_slope_and_intercept_read_as_simpleitk(dicom_series, tmp_path, slope, intercept):
    pydicom = pytest.importorskip("pydicom")
    out = tmp_path / "rescaled"
    out.mkdir()
    for f in dicom_series.iterdir():
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(out / f.name)
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
    assert readers.dicom_slices(files, sitk.ReadImage(files[0]).GetPixelID()) is not None
    volume = load_volume(out)
    _assert_same(volume, _sitk_volume(out))
    assert volume.hu.dtype == (np.float32 if "." in slope else np.int16)


@pytest.mark.parametrize("intercept", ["-1024", "-31000"])
def test_unsigned_dicom_series_reads_as_simpleitk(dicom_series, tmp_path, intercept):
    """Unsigned stored values (PixelRepresentation 0, as many scanners write them): int16 HU
    computed in the stored array's own bytes, also with an intercept near int16's limit."""
    pydicom = pytest.importorskip("pydicom")
    out = tmp_path / "unsigned"
    out.mkdir()
    for f in dicom_series.iterdir():
        ds = pydicom.dcmread(f)
        hu = ds.pixel_array.astype(np.int32) * int(ds.get("RescaleSlope", 1)) + int(ds.get("RescaleIntercept", 0))
        ds.PixelRepresentation = 0
        ds.PixelData = (hu - int(intercept)).astype("<u2").tobytes()
        ds.RescaleSlope, ds.RescaleIntercept = "1", intercept
        ds.save_as(out / f.name)
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(out)))
    assert readers.dicom_slices(files, sitk.ReadImage(files[0]).GetPixelID()) is not None
    _assert_same(load_volume(out), _sitk_volume(out))
