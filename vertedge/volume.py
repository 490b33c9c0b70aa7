"""The `Volume` type: a CT in its own voxel grid with its index <-> world (LPS mm) transform.

Conventions (ITK/SimpleITK, DICOM):
- `hu` is indexed `hu[k, j, i]` (NumPy order of SimpleITK), voxel index `(i, j, k)`.
- `spacing`, `origin` and the columns of `direction` are in `(i, j, k)` order.
- world_lps_mm = origin + direction @ (spacing * ijk); LPS: +x left, +y posterior, +z superior.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import VertedgeError

MAX_SPACING_MM = 20.0


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


def from_sitk(image: sitk.Image, source: str = "") -> Volume:
    """Wrap a 3D scalar SimpleITK image as a Volume (int16 when the values fit, else float32)."""
    arr = sitk.GetArrayFromImage(image)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if arr.dtype != np.int16 and -32768 <= lo and hi <= 32767:
            arr = arr.astype(np.int16)
        elif arr.dtype != np.int16:
            arr = arr.astype(np.float32)
    elif arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return Volume(
        hu=arr,
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


def _read_dicom_series(folder: Path) -> sitk.Image:
    """Read the DICOM series with the most files in `folder`."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VertedgeError(f"{folder}: no DICOM series in this folder")
    files = max(
        (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), s) for s in series), key=len
    )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _check_image(image: sitk.Image, name: str) -> None:
    """Refuse images that cannot be a 3D CT: wrong dimension, components or spacing."""
    dim = image.GetDimension()
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VertedgeError(
            f"{name}: {image.GetNumberOfComponentsPerPixel()} values per voxel; a CT has one"
        )
    if dim == 2 or (dim == 3 and min(size) == 1 and max(size) > 1):
        raise VertedgeError(f"{name}: a 2D image ({'x'.join(map(str, size))}); a 3D CT is needed")
    if dim != 3:
        raise VertedgeError(f"{name}: a {dim}D image; a 3D CT is needed")
    if min(size) == 0 or max(size) == 1:
        raise VertedgeError(f"{name}: empty volume ({'x'.join(map(str, size))} voxels)")
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or spacing.min() <= 0 or spacing.max() > MAX_SPACING_MM:
        raise VertedgeError(
            f"{name}: implausible voxel spacing {tuple(np.round(spacing, 3))} mm "
            f"(expected 0 < spacing <= {MAX_SPACING_MM:g} mm)"
        )
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise VertedgeError(f"{name}: the direction cosines are not a rotation")


def _check_values(volume: Volume, name: str) -> None:
    """Refuse voxel values that cannot be a CT: non-finite or constant."""
    hu = volume.hu
    if hu.dtype.kind == "f" and not np.isfinite(hu).all():
        raise VertedgeError(f"{name}: the volume holds NaN or infinite values")
    lo, hi = hu.min(), hu.max()
    if lo == hi:
        raise VertedgeError(f"{name}: constant volume (every voxel is {lo}); not a CT")


def _check_gzip_complete(path: Path, image: sitk.Image) -> None:
    """Refuse a truncated .gz: ITK decodes one silently, but its trailer then disagrees with the image size."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")  # uncompressed size mod 2**32 (RFC 1952)
    data_bytes = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    header_bytes = (isize - data_bytes) % 2**32
    if not 0 <= header_bytes <= 1 << 20:  # a header (348 B for NIfTI) plus extensions, not more
        raise VertedgeError(f"{path}: the gzip stream is truncated or corrupt")


def load_volume(path: str | os.PathLike[str]) -> Volume:
    """Read a 3D CT (NIfTI, NRRD, MHA, ... or a DICOM series folder) into a Volume in HU."""
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise VertedgeError(f"{name}: no such file or folder")
    try:
        if p.is_dir():
            image = _read_dicom_series(p)
        else:
            image = sitk.ReadImage(str(p))
    except VertedgeError:
        raise
    except (RuntimeError, OSError) as e:
        kind = "folder" if p.is_dir() else "file"
        raise VertedgeError(
            f"{name}: cannot read this {kind} as an image (corrupt, truncated or not an image format)"
        ) from e
    _check_image(image, name)
    if p.suffix == ".gz":
        _check_gzip_complete(p, image)
    try:
        volume = from_sitk(image, source=str(p.resolve()))
    except RuntimeError as e:  # ITK reads some truncated files lazily
        raise VertedgeError(f"{name}: cannot read the voxel data (truncated or corrupt)") from e
    _check_values(volume, name)
    return volume
