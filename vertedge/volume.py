"""The `Volume` type: a CT in its own voxel grid with its index <-> world (LPS mm) transform.

Conventions (ITK/SimpleITK, DICOM):
- `hu` is indexed `hu[k, j, i]` (NumPy order of SimpleITK), voxel index `(i, j, k)`.
- `spacing`, `origin` and the columns of `direction` are in `(i, j, k)` order.
- world_lps_mm = origin + direction @ (spacing * ijk); LPS: +x left, +y posterior, +z superior.
"""

from __future__ import annotations

import ctypes
import os
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lazy_loader
import numpy as np

from .atomic import atomic_path
from .errors import VertedgeError

if TYPE_CHECKING:
    import nibabel as nib
    import SimpleITK as sitk
else:
    # The file-format libraries load at their first use, where a file is read or written: the
    # training path (phantoms, DRRs, nets) then runs where they are not installed, as on a lent
    # GPU's image (vertedge_train/README.md, "On a lent GPU").
    nib = lazy_loader.load("nibabel")
    sitk = lazy_loader.load("SimpleITK")

# The finest clinical CT reconstructions (ultra-high-resolution and photon-counting scanners) have
# about 0.2 mm voxels; a finer spacing is a unit error (metres or centimetres written as mm), and
# a 512-voxel row at 0.1 mm (51 mm) cannot hold a spine anyway.
MIN_SPACING_MM = 0.2
MAX_SPACING_MM = 20.0
# A DICOM series whose slice gaps differ by more than this fraction of the median gap is refused:
# ITK stacks slices at even steps, so a missing slice would shift everything beyond it.
MAX_SLICE_GAP_DEVIATION = 0.1
MIN_PLAUSIBLE_LOW_HU = -200.0  # the lowest voxel of a CT is at most this (fat, lung or air)
MAX_PLAUSIBLE_HIGH_HU = 100.0  # the highest voxel of a CT is at least this (tissue, bone)


@dataclass(frozen=True, eq=False)
class Volume:
    """A CT volume in HU in its stored voxel grid, with index <-> world LPS mm transforms."""

    hu: np.ndarray  # (nk, nj, ni) int16 or float32, HU
    spacing: np.ndarray  # (3,) float64, mm, (i, j, k)
    origin: np.ndarray  # (3,) float64, world LPS mm of voxel (0, 0, 0)
    direction: np.ndarray  # (3, 3) float64, column a = world direction of index axis a
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along index axes (i, j, k)."""
        return tuple(int(n) for n in self.hu.shape[::-1])  # type: ignore[return-value]

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """(3, 3) linear part mapping an index step (i, j, k) to a world LPS step in mm."""
        return self.direction * self.spacing[None, :]

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) homogeneous matrix: world LPS mm = affine @ (i, j, k, 1)."""
        a = np.eye(4)
        a[:3, :3] = self.index_to_world_matrix
        a[:3, 3] = self.origin
        return a

    def index_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (..., 3) (i, j, k) -> world LPS mm (..., 3)."""
        return np.asarray(ijk, float) @ self.index_to_world_matrix.T + self.origin

    def world_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """World LPS mm (..., 3) -> continuous voxel indices (..., 3) (i, j, k)."""
        inv = np.linalg.inv(self.index_to_world_matrix)
        return (np.asarray(xyz, float) - self.origin) @ inv.T

    def hu_nearest(self, xyz: np.ndarray, outside: float) -> tuple[np.ndarray, np.ndarray]:
        """HU (...) float64 of the voxel nearest each world LPS point (..., 3) mm, `outside` where
        the point lies outside the grid, and the (...) bool mask of the points inside it."""
        xyz = np.asarray(xyz, float)
        ijk = np.rint(self.world_to_index(xyz.reshape(-1, 3))).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape_ijk)), axis=1)
        hu = np.full(len(ijk), outside, dtype=np.float64)
        i, j, k = ijk[inside].T
        hu[inside] = self.hu[k, j, i]
        return hu.reshape(xyz.shape[:-1]), inside.reshape(xyz.shape[:-1])

    def hu_linear(self, xyz: np.ndarray) -> np.ndarray:
        """HU (...) float64 trilinearly interpolated at world LPS points (..., 3) mm; NaN where a
        point's eight neighbouring voxels are not all inside the grid."""
        xyz = np.asarray(xyz, float)
        ijk = self.world_to_index(xyz.reshape(-1, 3))
        base = np.floor(ijk).astype(np.int64)
        frac = ijk - base
        inside = np.all((base >= 0) & (base < np.array(self.shape_ijk) - 1), axis=1)
        i, j, k = base[inside].T
        fi, fj, fk = frac[inside].T
        hu = np.full(len(ijk), np.nan)
        acc = np.zeros(len(i))
        for di, dj, dk in np.ndindex(2, 2, 2):
            w = (fi if di else 1 - fi) * (fj if dj else 1 - fj) * (fk if dk else 1 - fk)
            acc += w * self.hu[k + dk, j + dj, i + di]
        hu[inside] = acc
        return hu.reshape(xyz.shape[:-1])

    @property
    def center_world(self) -> np.ndarray:
        """World LPS mm (3,) of the centre of the voxel grid."""
        return self.index_to_world((np.array(self.shape_ijk) - 1) / 2.0)

    def si_axis(self) -> tuple[int, np.ndarray]:
        """The index axis closest to S-I and its world unit vector, signed to point superior (+z)."""
        a = int(np.argmax(np.abs(self.direction[2])))
        u = self.direction[:, a] / np.linalg.norm(self.direction[:, a])
        return a, u * np.sign(u[2])

    def axcodes(self) -> tuple[str, str, str]:
        """Orientation letters of index axes (i, j, k): where each axis points (e.g. L, P, S)."""
        letters = np.array([["R", "L"], ["A", "P"], ["I", "S"]])
        codes = []
        for col in self.direction.T:
            w = int(np.argmax(np.abs(col)))
            codes.append(str(letters[w, int(col[w] > 0)]))
        return tuple(codes)  # type: ignore[return-value]

    def subvolume(self, lo_ijk: np.ndarray, hi_ijk: np.ndarray) -> Volume:
        """Voxels lo..hi (inclusive, (i, j, k)) as a Volume sharing this one's memory, same world frame."""
        (i0, j0, k0), (i1, j1, k1) = np.asarray(lo_ijk, int), np.asarray(hi_ijk, int)
        return Volume(
            hu=self.hu[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1],
            spacing=self.spacing,
            origin=self.index_to_world(np.array([i0, j0, k0], float)),
            direction=self.direction,
            meta=self.meta,
        )

    def reoriented(self, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Volume:
        """The same world content stored differently: new index axis m = old axis perm[m], reversed if flips[m]."""
        n = np.array(self.shape_ijk)
        ijk_first = self.hu.transpose(2, 1, 0).transpose(perm)
        ijk_first = ijk_first[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        sign = np.where(flips, -1.0, 1.0)
        direction = self.direction[:, list(perm)] * sign[None, :]
        corner = np.where(flips, n[list(perm)] - 1, 0)
        old_index = np.zeros(3)
        old_index[list(perm)] = corner
        return Volume(
            hu=np.ascontiguousarray(ijk_first.transpose(2, 1, 0)),
            spacing=self.spacing[list(perm)].copy(),
            origin=self.index_to_world(old_index),
            direction=direction,
            meta=dict(self.meta),
        )


def _hu_array(arr: np.ndarray) -> np.ndarray:
    """Voxels as Volume keeps them: int16 kept, other integers int16 when the values fit, else float32."""
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if arr.dtype != np.int16 and -32768 <= lo and hi <= 32767:
            arr = arr.astype(np.int16)
        elif arr.dtype != np.int16:
            arr = arr.astype(np.float32)
    elif arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def from_sitk(image: sitk.Image, source: str = "") -> Volume:
    """Wrap a 3D scalar SimpleITK image as a Volume (int16 when the values fit, else float32)."""
    return Volume(
        hu=_hu_array(sitk.GetArrayFromImage(image)),
        spacing=np.array(image.GetSpacing(), float),
        origin=np.array(image.GetOrigin(), float),
        direction=np.array(image.GetDirection(), float).reshape(3, 3),
        meta={"source": source, "pixel_type": image.GetPixelIDTypeAsString()},
    )


def to_sitk(volume: Volume) -> sitk.Image:
    """The Volume as a SimpleITK image with its spacing, origin and direction."""
    image = sitk.GetImageFromArray(volume.hu)
    image.SetSpacing(tuple(float(s) for s in volume.spacing))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.ravel()))
    return image


def save_volume(volume: Volume, path: str | os.PathLike[str]) -> None:
    """Write the volume to any SimpleITK format chosen by extension (.nii.gz, .nrrd, .mha), atomically."""
    with atomic_path(path) as tmp:
        sitk.WriteImage(to_sitk(volume), str(tmp), useCompression=True)


@contextmanager
def _itk_warnings_silenced() -> Iterator[None]:
    """Keep ITK's and GDCM's warnings (multi-line text on stderr) quiet for the duration."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def dicom_series_ids(folder: Path) -> list[str]:
    """GDCM's ids (the SeriesInstanceUIDs) of the DICOM series directly in `folder` (empty if none)."""
    # GDCM writes "No Series were found" straight to stderr; an empty answer says the same
    with _itk_warnings_silenced():
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def dicom_series_files(folder: Path, series_id: str | None = None) -> list[str]:
    """Files of DICOM series `series_id` directly in `folder`, by default of the one with the most files."""
    ids = dicom_series_ids(folder) if series_id is None else [series_id]
    files = max(
        (list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s)) for s in ids),
        key=len,
        default=[],
    )
    _return_freed_heap()
    return files


def _return_freed_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing).

    GDCM's series scan reads every file whole and frees it, and glibc keeps those pages: 300 MiB
    of a 600-file series stayed resident, on top of the volume read next.
    """
    if sys.platform.startswith("linux"):
        malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # absent from musl
        if malloc_trim is not None:
            malloc_trim(0)


def _read(p: Path, name: str, series_id: str | None = None) -> Volume:
    """Check the header of a file or DICOM folder (its series `series_id`), then read its voxels.

    The fast readers (`readers`) take what they handle; SimpleITK reads the rest. Both give the
    same Volume: SimpleITK's header is the geometry either way. `meta["dicom_files"]` lists the
    files of a DICOM series in slice order (none for an image file).
    """
    from . import readers  # pydicom and the fast inflaters, with the first file read

    source = str(p.resolve())
    if p.is_dir():
        files = dicom_series_files(p, series_id)
        if not files:
            raise VertedgeError(f"{name}: no DICOM series in this folder")
        header = _Header.of_series(files)
        _check_header(header, name)
        slices = readers.dicom_slices(files, header.pixel_id)
        if slices is None:
            volume = _from_sitk_read(_read_series_with_sitk(files, name), source, name)
        else:
            _check_slice_gaps(slices.positions, slices.cosines, name)
            volume = Volume(slices.hu, *_series_geometry(header, slices.positions), meta=_meta(source, header))
        volume.meta["dicom_files"] = files
        return volume
    header = _Header.of_file(p)
    _check_header(header, name)
    if sitk.ImageFileReader.GetImageIOFromFileName(str(p)) == "NiftiImageIO":
        try:
            voxels = readers.nifti_voxels(p, header.pixel_id)
        except readers.TruncatedData as e:
            raise VertedgeError(f"{name}: cannot read the voxel data (truncated or corrupt)") from e
        if voxels is not None:  # NaN and infinity stay in floats, for _check_values to refuse
            geometry = (np.array(header.spacing), np.array(header.origin), np.reshape(header.direction, (3, 3)))
            return Volume(_hu_array(voxels), *geometry, meta=_meta(source, header))
        _check_nifti_stored(p, name)
    elif p.suffix == ".gz":  # other formats are read as stored (e.g. .gipl.gz, .mgh.gz)
        _check_gzip_complete(p, int(np.prod(header.size)) * header.pixel_bytes, name)
    return _from_sitk_read(sitk.ReadImage(str(p)), source, name)


def _from_sitk_read(image: sitk.Image, source: str, name: str) -> Volume:
    """`from_sitk` of a freshly read image; ITK reads some truncated files lazily, failing here."""
    try:
        return from_sitk(image, source)
    except RuntimeError as e:
        raise VertedgeError(f"{name}: cannot read the voxel data (truncated or corrupt)") from e


def _meta(source: str, header: _Header) -> dict[str, Any]:
    """Volume.meta as `from_sitk` writes it."""
    return {"source": source, "pixel_type": sitk.GetPixelIDValueAsString(header.pixel_id)}


def _read_series_with_sitk(files: list[str], name: str) -> sitk.Image:
    """A DICOM series read by SimpleITK, its slice gaps checked."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # keep each slice's position for the spacing check
    # ITK warns of uneven spacing in several lines and reads on; _check_slice_gaps refuses in one
    with _itk_warnings_silenced():
        image = reader.Execute()
    tags = ("0020|0032", "0020|0037")  # ImagePositionPatient, ImageOrientationPatient
    n = len(files)
    if n >= 3 and all(reader.HasMetaDataKey(k, t) for k in range(n) for t in tags):
        positions = np.array([reader.GetMetaData(k, tags[0]).split("\\") for k in range(n)], float)
        _check_slice_gaps(positions, np.array(reader.GetMetaData(0, tags[1]).split("\\"), float), name)
    return image


def _series_geometry(header: _Header, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, origin, direction) of a DICOM series as ITK's ImageSeriesReader sets them.

    The first file's header gives the in-plane spacing, the origin and the row and column
    directions; the slice step is the first-to-last position difference over n - 1 (mm), and
    its unit vector is the third direction column (not the cross product of the first two).
    """
    spacing, direction = np.array(header.spacing), np.reshape(header.direction, (3, 3)).copy()
    step = positions[-1] - positions[0]
    norm = float(np.linalg.norm(step))
    if norm > 0:  # all slices at one position: ITK keeps the header's spacing and direction
        spacing[2] = norm / (len(positions) - 1)
        direction[:, 2] = step / norm
    return spacing, np.array(header.origin), direction


def _check_nifti_stored(path: Path, name: str) -> None:
    """Refuse a NIfTI whose stored voxels are truncated or not finite.

    ITK hands scaled NIfTI (scl_slope/scl_inter) over as float32 and NaN or infinity as 0, so
    both checks look at the data as stored (nibabel reads the header; the voxels only when they
    are stored as floats, the only type that can hold NaN).
    """
    try:
        stored = nib.load(path).dataobj  # type: ignore[attr-defined]  # a NIfTI image: a lazy proxy of the stored array
        data_file = Path(stored.file_like)  # the .img(.gz) of a .hdr/.img pair
        if data_file.suffix == ".gz":
            _check_gzip_complete(data_file, int(np.prod(stored.shape)) * stored.dtype.itemsize, name)
        if stored.dtype.kind == "f":
            _check_finite(stored.get_unscaled(), name)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, zlib.error, ValueError) as e:
        raise VertedgeError(f"{name}: cannot read the voxel data (truncated or corrupt)") from e


def _check_slice_gaps(positions: np.ndarray, cosines: np.ndarray, name: str) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along the slice normal.

    `positions`: (n, 3) ImagePositionPatient (0020,0032) of each slice, mm; `cosines`: (6,)
    ImageOrientationPatient (0020,0037) of the first, whose normal they are projected on.
    """
    if len(positions) < 3:
        return
    normal = np.cross(cosines[:3], cosines[3:])
    gaps = np.diff(np.sort(positions @ normal))
    if gaps.min() <= 0 or gaps.max() - gaps.min() > MAX_SLICE_GAP_DEVIATION * np.median(gaps):
        raise VertedgeError(
            f"{name}: uneven slice spacing in the DICOM series (gaps of {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm; a missing or repeated slice?)"
        )


@dataclass(frozen=True)
class _Header:
    """What an image header says, read before any voxel data."""

    dim: int
    size: tuple[int, ...]
    components: int
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_id: int  # SimpleITK's pixel type of the image it would read
    pixel_bytes: int  # bytes per voxel in ITK's buffer: as stored, but float32 for a scaled NIfTI

    @classmethod
    def of_file(cls, path: Path) -> _Header:
        """Header of one image file (ITK reads only its header here)."""
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID())
        return cls(
            dim=reader.GetDimension(),
            size=tuple(reader.GetSize()),
            components=reader.GetNumberOfComponents(),
            spacing=tuple(reader.GetSpacing()),
            origin=tuple(reader.GetOrigin()),
            direction=tuple(reader.GetDirection()),
            pixel_id=reader.GetPixelID(),
            pixel_bytes=probe.GetSizeOfPixelComponent() * reader.GetNumberOfComponents(),
        )

    @classmethod
    def of_series(cls, files: list[str]) -> _Header:
        """Header of a DICOM series: the first slice's, with one slice per file."""
        first = cls.of_file(Path(files[0]))
        size = first.size[:2] + (len(files),) if len(files) > 1 else first.size
        return replace(first, dim=3, size=size)


def _available_memory_bytes() -> int:
    """Memory the OS can still give this process (MemAvailable), or the physical total."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_header(h: _Header, name: str) -> None:
    """Refuse images that cannot be a 3D CT, or that cannot fit in memory, before reading voxels."""
    dims = "x".join(map(str, h.size))
    if h.components != 1:
        raise VertedgeError(f"{name}: {h.components} values per voxel; a CT has one")
    if h.dim == 2 or (h.dim == 3 and min(h.size) == 1 and max(h.size) > 1):
        raise VertedgeError(f"{name}: a 2D image ({dims}); a 3D CT is needed")
    if h.dim != 3:
        raise VertedgeError(f"{name}: a {h.dim}D image; a 3D CT is needed")
    if min(h.size) == 0 or max(h.size) == 1:
        raise VertedgeError(f"{name}: empty volume ({dims} voxels)")
    spacing = np.array(h.spacing)
    if not np.all(np.isfinite(spacing)) or spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise VertedgeError(
            f"{name}: implausible voxel spacing {' x '.join(f'{s:.4g}' for s in h.spacing)} mm "
            f"(a CT has {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm)"
        )
    if abs(abs(np.linalg.det(np.reshape(h.direction, (3, 3)))) - 1) > 1e-3:
        raise VertedgeError(f"{name}: the direction cosines are not a rotation")
    # the file's buffer and its int16/float32 copy live together for a moment
    need = int(np.prod(h.size, dtype=np.int64)) * (h.pixel_bytes + 4)
    have = _available_memory_bytes()
    if need > have:
        raise VertedgeError(
            f"{name}: a {dims} volume needs about {need / 2**30:.1f} GiB to load, "
            f"{have / 2**30:.1f} GiB is available"
        )


def _check_values(volume: Volume, name: str) -> None:
    """Refuse voxel values that cannot be a CT in HU: non-finite, constant, no fat/air or no tissue."""
    hu = volume.hu
    if hu.dtype.kind == "f":
        _check_finite(hu, name)
    lo, hi = float(hu.min()), float(hu.max())
    if lo == hi:
        raise VertedgeError(f"{name}: constant volume (every voxel is {lo:g}); not a CT")
    # Any CT field of view holds fat (-100 HU) or air and soft tissue (> 0); an MR, or a CT
    # stored without its rescale to HU, does not.
    if lo > MIN_PLAUSIBLE_LOW_HU or hi < MAX_PLAUSIBLE_HIGH_HU:
        raise VertedgeError(
            f"{name}: values {lo:g} to {hi:g} are not a CT in Hounsfield units "
            "(an MR, or a CT without its rescale slope/intercept?)"
        )


def _check_finite(values: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite voxel values."""
    if not np.isfinite(values).all():
        raise VertedgeError(f"{name}: the volume holds NaN or infinite values")


def _check_gzip_complete(path: Path, data_bytes: int, name: str) -> None:
    """Refuse a truncated .gz holding `data_bytes` of voxels as stored (before any scaling).

    ITK decodes a truncated stream silently, but the gzip trailer then disagrees with the size.
    """
    from . import readers

    header_bytes = (readers.gzip_isize(path) - data_bytes) % 2**32
    if not 0 <= header_bytes <= 1 << 20:  # a header (352 B for NIfTI) plus extensions, not more
        raise VertedgeError(f"{name}: the gzip stream is truncated or corrupt")


def load_volume(path: str | os.PathLike[str], series_id: str | None = None) -> Volume:
    """Read a 3D CT (NIfTI, NRRD, MHA, ... or a DICOM series folder) into a Volume in HU.

    A folder holding several DICOM series gives the one named by `series_id` (see
    `dicom_series_ids`), by default the one with the most files; the volume's
    `meta["dicom_files"]` lists the series' files (the DICOM outputs refer to them).
    """
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise VertedgeError(f"{name}: no such file or folder")
    try:
        volume = _read(p, name, series_id)
    except (RuntimeError, OSError) as e:
        kind = "folder" if p.is_dir() else "file"
        raise VertedgeError(
            f"{name}: cannot read this {kind} as an image (corrupt, truncated or not an image format)"
        ) from e
    _check_values(volume, name)
    return volume
