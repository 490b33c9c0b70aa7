"""Fast voxel readers for the commonest CT files, each giving exactly the voxels SimpleITK gives.

- NIfTI-1 `.nii.gz`: inflated straight into the voxel array, on every core by `rapidgzip` (one
  gzip stream decoded in parallel chunks) where more than one core is free, else by ISA-L (the
  `isal` package, about twice zlib's speed); `.nii`: memory-mapped at `vox_offset`, copied only
  when scaled.
- DICOM series: pydicom reads and decodes the slices into one array.

Each reader returns None for what it does not handle (another format, a missing package or
decoder, a header it does not model), and the caller reads the file with SimpleITK instead.
Geometry is not read here: SimpleITK's header reading stays its source (for a DICOM series,
with the slice positions read here combined as ITK's series reader does, in `volume.py`).
"""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

if TYPE_CHECKING:
    from pydicom import Dataset

_gzip_open: Callable[..., io.BufferedIOBase] | None
try:  # ISA-L's inflate; without it .nii.gz goes to SimpleITK (zlib), which is as exact but slower
    from isal.igzip import open as _gzip_open
except ImportError:
    _gzip_open = None
try:  # one gzip stream inflated on many cores (ISA-L's inflate in each); without it, ISA-L alone
    import rapidgzip
except ImportError:
    rapidgzip = None


# ITK's pixel type for each NIfTI datatype it hands over unscaled
_ITK_PIXEL_OF_DTYPE = {
    np.dtype(np.uint8): sitk.sitkUInt8,
    np.dtype(np.int8): sitk.sitkInt8,
    np.dtype(np.uint16): sitk.sitkUInt16,
    np.dtype(np.int16): sitk.sitkInt16,
    np.dtype(np.uint32): sitk.sitkUInt32,
    np.dtype(np.int32): sitk.sitkInt32,
    np.dtype(np.uint64): sitk.sitkUInt64,
    np.dtype(np.int64): sitk.sitkInt64,
    np.dtype(np.float32): sitk.sitkFloat32,
    np.dtype(np.float64): sitk.sitkFloat64,
}
_LITTLE_ENDIAN_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # Implicit and Explicit VR Little Endian


class TruncatedData(OSError):
    """The file ends (or its compressed stream breaks off) before all its voxels."""


def _nifti_header(path: Path) -> nib.Nifti1Header | None:
    """The NIfTI-1 header of a single-file `.nii` or `.nii.gz`; None for any other file."""
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return None
    opener = _gzip_open if name.endswith(".gz") else open
    if opener is None:
        return None
    try:
        with opener(path, "rb") as f:
            raw = f.read(348)
    except (EOFError, OSError) as e:  # ITK has read this header: the stream breaks off just after it
        raise TruncatedData(str(e)) from e
    try:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw), check=True)
    except (nib.spatialimages.HeaderDataError, ValueError, EOFError):
        return None
    if header["magic"].item() != b"n+1":
        return None  # a NIfTI-2 or an ANALYZE header: SimpleITK's business
    return header


def _itk_scaling(header: nib.Nifti1Header) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) as ITK applies them, or None where ITK keeps the stored values.

    ITK (nifti_io) ignores a zero or non-finite slope and an identity (1, 0) scaling.
    """
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or not np.isfinite(slope) or (slope == 1 and inter == 0):
        return None
    return slope, inter if np.isfinite(inter) else 0.0


def nifti_voxels(path: Path, itk_pixel_id: int) -> np.ndarray | None:
    """Voxels of a single-file NIfTI-1, (k, j, i), in ITK's pixel type `itk_pixel_id`, as SimpleITK reads them.

    Scaled data are `stored * scl_slope + scl_inter` computed in float64 and stored as ITK's
    type (float32 for scaled integers). An unscaled `.nii` in native byte order is returned as a
    private (copy-on-write) memory map of the file. Returns None when the file is not a NIfTI-1
    this reader models, when `.nii.gz` is read without `isal`, or when the header would give a
    pixel type other than `itk_pixel_id`; raises TruncatedData when the voxels are cut short.
    """
    header = _nifti_header(path)
    if header is None:
        return None
    shape_ijk = header.get_data_shape()
    stored = header.get_data_dtype()
    if len(shape_ijk) != 3 or stored.newbyteorder("=") not in _ITK_PIXEL_OF_DTYPE:
        return None
    scaling = _itk_scaling(header)
    native = stored.newbyteorder("=")
    if scaling is None:
        itk_type = _ITK_PIXEL_OF_DTYPE[native]
    else:  # ITK scales into float32, or float64 when the stored floats are float64
        itk_type = sitk.sitkFloat64 if native == np.float64 else sitk.sitkFloat32
    if itk_type != itk_pixel_id:
        return None  # a header case this reader does not model: leave it to SimpleITK
    shape = tuple(int(n) for n in shape_ijk[::-1])
    offset = int(header["vox_offset"])
    if path.name.lower().endswith(".gz"):
        voxels = _inflate(path, offset, shape, stored)
    else:
        voxels = _map(path, offset, shape, stored)
    if scaling is not None:
        slope, inter = scaling
        out = np.empty(shape, np.float64 if itk_type == sitk.sitkFloat64 else np.float32)
        for k in range(shape[0]):  # one slice's float64 temporary at a time
            np.add(np.multiply(voxels[k], slope, dtype=np.float64), inter, out=out[k], casting="same_kind")
        return out
    return voxels if stored.isnative else voxels.astype(native)


_INFLATE_SLAB = 16 * 2**20  # bytes inflated per read into the voxel array


def _cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gzip_isize(path: str | os.PathLike[str]) -> int:
    """The size a .gz file's trailer records (ISIZE: the last member's uncompressed length mod 2**32, RFC 1952).

    A complete single-member file of n bytes gives n mod 2**32; a truncated file, or a multi-member
    one (bgzip writes one member per 64 KiB), almost never gives that.
    """
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _inflate(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Inflate a .nii.gz's voxels (after `offset` header bytes) into a fresh array, checking the gzip trailer."""
    assert _gzip_open is not None, "nifti_voxels reads no .nii.gz without isal"
    out = np.empty(shape, dtype)
    view = out.reshape(-1).view(np.uint8).data  # the array's bytes, filled in place
    cores = _cores()
    # rapidgzip only for the file it decodes cleanly: it prints to stderr on a truncated stream,
    # which the trailer check sends to ISA-L instead, whose EOFError says it in one line
    parallel = rapidgzip is not None and cores > 1 and gzip_isize(path) == (offset + view.nbytes) % 2**32
    opened = rapidgzip.open(str(path), parallelization=cores) if parallel else _gzip_open(path, "rb")
    with opened as f:
        try:
            f.seek(offset)  # forward seek in a gzip stream: inflates and discards the header
            # In slabs: one readinto of the whole array goes through a temporary as large as the
            # volume (a second 300 MiB for a 512 x 512 x 600 int16 scan); 16 MiB slabs cost nothing.
            got = 0
            while got < view.nbytes:
                n = f.readinto(view[got : got + _INFLATE_SLAB])
                if not n:
                    break
                got += n
            # reading on to the end makes the reader check the stream's CRC-32 and length
            trailing = f.read(1)
        except (EOFError, OSError, RuntimeError, ValueError) as e:  # rapidgzip: RuntimeError, ValueError
            raise TruncatedData(str(e)) from e
    if got != view.nbytes or trailing:
        raise TruncatedData(f"{path}: {got} of {view.nbytes} voxel bytes")
    return out


def _map(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The voxels of a .nii as a private memory map: pages come from the file as they are read."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if path.stat().st_size < offset + nbytes:
        raise TruncatedData(f"{path}: shorter than its {nbytes} voxel bytes")
    with open(path, "rb") as f:
        # ACCESS_COPY: writable (Numba kernels want writable arrays) without touching the file
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    return np.ndarray(shape, dtype, buffer=mapped, offset=offset)


@dataclass(frozen=True)
class DicomSlices:
    """A DICOM series read by pydicom, its slices in the order of the files given (SimpleITK's)."""

    hu: np.ndarray  # (n_files, rows, cols) int16 or float32, HU (rescale slope/intercept applied)
    positions: np.ndarray  # (n_files, 3) ImagePositionPatient, LPS mm
    cosines: np.ndarray  # (6,) ImageOrientationPatient of the first file (row then column direction)


def dicom_slices(files: list[str], itk_pixel_id: int) -> DicomSlices | None:
    """Read a single-frame DICOM series with pydicom, one file after another, in the order of `files`.

    Each file's pixels go into its slice of one array as it is read (its bytes are then dropped).
    Not threaded: pydicom's parsing holds the GIL, and two threads were no faster than one, on
    uncompressed, RLE and JPEG 2000 files alike (benchmarks/RESULTS.md, "Decode"). HU = stored *
    RescaleSlope + RescaleIntercept, as SimpleITK's reader then `from_sitk` give it (see
    `_rescaled`). Returns None (read it with SimpleITK) without pydicom or a decoder for the
    transfer syntax, for a file pydicom cannot read, or when the slices differ in size, pixel
    format, rescale or transfer syntax.
    """
    try:
        import pydicom
        from pydicom.pixels import get_decoder
    except ImportError:
        return None
    try:
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        if not get_decoder(first.file_meta.TransferSyntaxUID).is_available:
            return None
    except Exception:  # whatever pydicom cannot read, GDCM may; its errors are the ones to report
        return None
    fmt = _pixel_format(first)
    if fmt[0] != 1 or fmt[3] not in (8, 16) or fmt[6] != 1:  # one frame of 8- or 16-bit greyscale pixels
        return None
    # pydicom's pixel_array dtype: signed or unsigned integers of BitsAllocated bits
    stored = np.empty((len(files), first.Rows, first.Columns), f"<{'i' if first.PixelRepresentation else 'u'}{fmt[3] // 8}")
    # uncompressed little-endian pixels using every allocated bit are the stored values as they lie
    native = first.file_meta.TransferSyntaxUID in _LITTLE_ENDIAN_NATIVE and fmt[3] == fmt[4]

    def read(k: int) -> tuple[np.ndarray, np.ndarray] | None:
        ds = pydicom.dcmread(files[k])
        if _pixel_format(ds) != fmt or "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            return None
        stored[k] = _native_pixels(ds, stored.dtype) if native else ds.pixel_array
        return np.array(ds.ImagePositionPatient, float), np.array(ds.ImageOrientationPatient, float)

    try:
        tags = [read(k) for k in range(len(files))]
    except Exception:  # as above: SimpleITK reads it or says why not
        return None
    found = [t for t in tags if t is not None]
    if len(found) < len(tags):
        return None
    slope, inter = float(first.get("RescaleSlope", 1.0)), float(first.get("RescaleIntercept", 0.0))
    hu = _rescaled(stored, slope, inter, integer=sitk.GetPixelIDValueAsString(itk_pixel_id).endswith("integer"))
    if hu is None:
        return None
    return DicomSlices(hu=hu, positions=np.array([t[0] for t in found]), cosines=found[0][1])


def _native_pixels(ds: Dataset, dtype: np.dtype) -> np.ndarray:
    """The pixels of an uncompressed little-endian slice straight from its bytes (pydicom's pixel_array
    gives the same values, with checks costing more than the copy)."""
    return np.frombuffer(ds.PixelData, dtype, count=ds.Rows * ds.Columns).reshape(ds.Rows, ds.Columns)


def _pixel_format(ds: Dataset) -> tuple:
    """What must agree across a series' files for one array: frames, size, bits, sign, rescale, syntax."""
    return (
        int(ds.get("NumberOfFrames", 1) or 1), ds.get("Rows"), ds.get("Columns"), ds.get("BitsAllocated"),
        ds.get("BitsStored"), ds.get("PixelRepresentation"), ds.get("SamplesPerPixel", 1),
        ds.get("RescaleSlope"), ds.get("RescaleIntercept"), ds.file_meta.TransferSyntaxUID,
    )


def _rescaled(stored: np.ndarray, slope: float, inter: float, integer: bool) -> np.ndarray | None:
    """HU = stored * slope + inter as SimpleITK then `from_sitk` give it.

    `integer`: ITK's pixel type is an integer (GDCM does that for whole slope and intercept), so
    the HU are exact integers, stored as int16 when they fit, else float32; otherwise ITK computes
    in float64 and `from_sitk` keeps float32. None when ITK's type and the rescale disagree.
    """
    if integer and (slope != int(slope) or inter != int(inter)):
        return None
    lo, hi = float(stored.min()), float(stored.max())
    ends = np.array([lo, hi]) * slope + inter
    fits = integer and -32768 <= ends.min() and ends.max() <= 32767
    out = np.int16 if fits else np.float32
    if slope == 1 and inter == 0 and stored.dtype == out:
        return stored
    work: type[Any]
    if fits and slope == 1 and -32768 <= min(lo, inter) and max(hi, inter) <= 32767:
        work = np.int16  # stored, intercept and every sum fit int16: exact in int16
    else:  # int32 is exact for 16-bit stored values times a slope that keeps the HU within int16
        work = (np.int32 if fits else np.int64) if integer else np.float64
    # In place where the HU take as many bytes as the stored values (16-bit stored, int16 HU): a
    # second volume-sized array would be 300 MiB more for a 512 x 512 x 600 series. Each slice is
    # computed into its own temporary before it overwrites its stored values.
    hu = stored.view(out) if np.dtype(out).itemsize == stored.itemsize else np.empty(stored.shape, out)
    for k in range(len(stored)):
        scaled = stored[k] if slope == 1 else np.multiply(stored[k], work(slope), dtype=work, casting="unsafe")
        hu[k] = np.add(scaled, work(inter), dtype=work, casting="unsafe")
    return hu
