"""Digitally reconstructed radiographs on a CUDA GPU: kernels/drr.cu compiled by CuPy (RawModule).

Computes what `vertedge.drr.render` computes (same geometry, sampling and intensity transform;
see that module and the kernel's header for precision), for all K views in one launch, and keeps
the result on the device for the networks. The kernel's constants come from Python at compile
time (`kernel_defines`): the intensity transform's from `vertedge.drr`, the record layout and the
block limit from this module. CuPy is imported lazily: importing this module needs
no CuPy and no GPU; `cuda_available` says whether this backend can run here and, if not, why.
"""

from __future__ import annotations

import functools
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .drr import PER_HU, content_bounds
from .errors import VertedgeError
from .geometry import Protocol, Views
from .volume import Volume

if TYPE_CHECKING:  # pragma: no cover - typing only
    import cupy

KERNEL_FILE = "drr.cu"
_KERNELS = {np.dtype(np.int16): "drr_int16", np.dtype(np.float32): "drr_float32"}
_GEOM_DOUBLES = 24  # doubles per view record (`_geometry`); the kernel static_asserts its struct ViewGeom
_MAX_THREADS_PER_BLOCK = 256  # the kernels' __launch_bounds__
# (cols, rows) per block: 32 x 8 was the fastest of 16 x 16, 32 x 8 and 8 x 8 on an H200 (by ~10%,
# benchmarks/gpu.py): a warp along one detector row reads neighbouring voxels along the volume's rows
DEFAULT_BLOCK = (32, 8)


def _cupy() -> Any:
    """The cupy module, or a one-line VertedgeError when it is not installed."""
    try:
        import cupy
    except ImportError as e:
        raise VertedgeError("the CUDA DRR backend needs CuPy (install vertedge[gpu])") from e
    return cupy


def cuda_available(compile_kernels: bool = False) -> tuple[bool, str]:
    """(True, device name) when this backend can run on the current device, else (False, one-line reason).

    With `compile_kernels`, also compiles kernels/drr.cu (NVRTC), so a missing or broken runtime
    compiler is reported here rather than at the first render.
    """
    try:
        import cupy
    except ImportError:
        return False, "CuPy is not installed"
    except Exception as e:  # a broken CuPy install (e.g. a CUDA library it links is missing)
        return False, f"CuPy does not import: {type(e).__name__}: {e}".splitlines()[0]
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver, or no libcuda at all
        return False, f"no CUDA device ({type(e).__name__}: {e})".splitlines()[0]
    if n < 1:
        return False, "no CUDA device"
    try:
        device = cupy.cuda.Device()
        name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as e:
        return False, f"cannot query the CUDA device ({type(e).__name__}: {e})".splitlines()[0]
    if compile_kernels:
        try:
            for kernel in _KERNELS.values():
                _module(False).get_function(kernel)
        except Exception as e:
            first_line = str(e).partition("\n")[0]  # CuPy's CompileException carries NVRTC's whole log
            return False, f"cannot compile the DRR kernels ({type(e).__name__}: {first_line})"
    return True, name


def kernel_source() -> str:
    """The CUDA C text of kernels/drr.cu: from the installed package, else from the source checkout."""
    packaged = importlib.resources.files("vertedge").joinpath("kernels", KERNEL_FILE)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    checkout = Path(__file__).resolve().parents[1] / "kernels" / KERNEL_FILE
    if checkout.is_file():
        return checkout.read_text(encoding="utf-8")
    raise VertedgeError(
        f"kernel source {KERNEL_FILE} is missing: neither vertedge/kernels/ (wheel) "
        f"nor {checkout.parent} (checkout) holds it"
    )


def kernel_defines() -> tuple[str, ...]:
    """The -D options kernels/drr.cu is compiled with: the constants it shares with the host code.

    The kernel has no copy of them (it stops with #error without them), so the CPU and CUDA
    renderers cannot drift apart; .ci/compile_kernels.sh asks this function for the same options.
    """
    return (
        f"-DVERTEDGE_PER_HU={float(PER_HU)!r}f",  # a float literal: the march is float arithmetic
        f"-DVERTEDGE_VIEW_GEOM_DOUBLES={_GEOM_DOUBLES}",
        f"-DVERTEDGE_MAX_THREADS_PER_BLOCK={_MAX_THREADS_PER_BLOCK}",
    )


@functools.cache
def _module(float_setup: bool) -> Any:
    """The compiled cupy.RawModule of kernels/drr.cu (compiled on first get_function, cached)."""
    cupy = _cupy()
    options: tuple[str, ...] = ("-std=c++17", *kernel_defines())
    if float_setup:
        options += ("-DVERTEDGE_DRR_FLOAT_SETUP",)
    # The kernels are extern "C" (unmangled), so get_function takes their plain names and no
    # name_expressions are needed; the C++ template behind them is instantiated by the wrappers.
    return cupy.RawModule(code=kernel_source(), options=options)


@dataclass(frozen=True, eq=False)
class DeviceVolume:
    """A Volume's voxels on the GPU with the index <-> world transform the kernel needs."""

    hu: Any  # cupy.ndarray (nk, nj, ni) int16 or float32, HU, C-contiguous, on the device
    world_to_index: np.ndarray  # (3, 3) float64: index step (i, j, k) per world LPS mm
    origin: np.ndarray  # (3,) float64, world LPS mm of voxel (0, 0, 0)

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along index axes (i, j, k)."""
        return tuple(int(n) for n in self.hu.shape[::-1])  # type: ignore[return-value]


def host_to_device(a: np.ndarray) -> cupy.ndarray:
    """Copy a C-contiguous host array to the current device, page-locking it in place for the copy.

    A pageable copy is staged by the driver and CuPy through pinned buffers; a page-locked one is
    read by DMA directly: 18 ms instead of 38-50 ms for a 300 MiB volume on an H200 machine,
    registration included (benchmarks/gpu.py). Memory that cannot be registered is copied as is.
    """
    cupy = _cupy()
    if a.nbytes == 0:
        return cupy.asarray(a)
    ptr = a.ctypes.data
    try:
        cupy.cuda.runtime.hostRegister(ptr, a.nbytes, 0)
    except cupy.cuda.runtime.CUDARuntimeError:  # already registered, or not registrable memory
        return cupy.asarray(a)
    try:
        out = cupy.asarray(a)
        cupy.cuda.get_current_stream().synchronize()  # the DMA must be done before unlocking
    finally:
        cupy.cuda.runtime.hostUnregister(ptr)
    return out


def upload_volume(volume: Volume) -> DeviceVolume:
    """Copy the volume's voxels to the current device once (int16 kept; other dtypes as float32).

    On the device the volume is cropped to its content box (`vertedge.drr.content_bounds`, computed
    there), as `vertedge.drr.content_box` crops it on the host, so both backends march through the
    same voxels.
    """
    cupy = _cupy()
    hu = np.asarray(volume.hu)
    if hu.ndim != 3:
        raise VertedgeError(f"the DRR needs a 3D volume, got an array of shape {hu.shape}")
    dtype = hu.dtype if hu.dtype in _KERNELS else np.dtype(np.float32)
    device_hu = host_to_device(np.ascontiguousarray(hu, dtype=dtype))
    origin = np.asarray(volume.origin, np.float64).copy()
    bounds = content_bounds(device_hu)
    if bounds is not None:
        (i0, j0, k0), (i1, j1, k1) = bounds
        device_hu = cupy.ascontiguousarray(device_hu[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1])
        origin = volume.index_to_world(np.array([i0, j0, k0], float))
    return DeviceVolume(
        hu=device_hu,
        world_to_index=np.linalg.inv(volume.index_to_world_matrix),
        origin=origin,
    )


def _geometry(volume: DeviceVolume, views: Views) -> np.ndarray:
    """(K, 24) float64 per-view records in the layout of `struct ViewGeom` (kernels/drr.cu)."""
    w = volume.world_to_index
    g = np.zeros((views.n_views, _GEOM_DOUBLES), np.float64)
    g[:, 0:3] = (views.sources - volume.origin) @ w.T  # source in continuous index space
    g[:, 3:6] = views.det_origin - views.sources  # pixel (0, 0) relative to the source, mm
    g[:, 6:9] = views.row_dir * views.pixel_mm  # mm per row
    g[:, 9:12] = views.col_dir * views.pixel_mm  # mm per column
    g[:, 12:21] = w.reshape(1, 9)
    return g


def render_cuda(
    volume: Volume | DeviceVolume,
    views: Views,
    protocol: Protocol,
    *,
    out: cupy.ndarray | None = None,
    block: tuple[int, int] = DEFAULT_BLOCK,
    float_setup: bool = False,
) -> cupy.ndarray:
    """Line integrals of attenuation (K, rows, cols) float32 on the device, dimensionless, for every view.

    `volume` is a host Volume (uploaded for this call) or a DeviceVolume from `upload_volume`
    (reused across calls). The launch goes on CuPy's current stream and is not waited for.
    `out`, if given, is a C-contiguous float32 cupy array of that shape to fill. `float_setup`
    does the per-ray setup in float instead of double (for cards with slow FP64; slightly less
    exact, see kernels/drr.cu).
    """
    cupy = _cupy()
    dvol = volume if isinstance(volume, DeviceVolume) else upload_volume(volume)
    rows, cols = (int(n) for n in views.shape)
    k = views.n_views
    shape = (k, rows, cols)
    if out is None:
        out = cupy.empty(shape, cupy.float32)
    elif out.shape != shape or out.dtype != cupy.float32 or not out.flags.c_contiguous:
        raise VertedgeError(f"out must be a C-contiguous float32 array of shape {shape}")
    if k == 0 or rows == 0 or cols == 0:
        return out
    if k > 65535:
        raise VertedgeError(f"{k} views in one launch; at most 65535 (grid z)")
    bx, by = (int(b) for b in block)
    if bx < 1 or by < 1 or bx * by > _MAX_THREADS_PER_BLOCK:
        raise VertedgeError(f"block {block} must have 1..{_MAX_THREADS_PER_BLOCK} threads")
    step_mm = float(protocol.step_mm)
    if not step_mm > 0:
        raise VertedgeError(f"step_mm must be > 0, got {protocol.step_mm}")
    hu = dvol.hu
    name = _KERNELS.get(np.dtype(hu.dtype))
    if name is None or not hu.flags.c_contiguous:
        raise VertedgeError(f"device volume must be C-contiguous int16 or float32, got {hu.dtype}")
    ni, nj, nk = dvol.shape_ijk
    geom = cupy.asarray(_geometry(dvol, views))
    kernel = _module(bool(float_setup)).get_function(name)
    grid = ((cols + bx - 1) // bx, (rows + by - 1) // by, k)
    # Scalars as NumPy types of the kernel's C types: a bare Python int would go as long long.
    kernel(
        grid,
        (bx, by, 1),
        (
            hu,
            np.int32(ni),
            np.int32(nj),
            np.int32(nk),
            geom,
            np.int32(rows),
            np.int32(cols),
            np.float64(step_mm),
            np.float32(protocol.mu_water_per_mm),
            np.float32(protocol.bone_hu),
            np.float32(protocol.bone_gain),
            out,
        ),
    )
    return out


def normalize_cuda(line_integrals: cupy.ndarray, protocol: Protocol) -> cupy.ndarray:
    """Network input (K, rows, cols) float32 on the device: line integrals over their percentile across all views."""
    cupy = _cupy()
    scale = cupy.percentile(line_integrals, protocol.norm_percentile)
    # the same floor as vertedge.drr.normalize, applied on the device: no host sync
    return (line_integrals / cupy.maximum(scale, 1e-6)).astype(cupy.float32)


def synchronize() -> None:
    """Wait until the current CUDA stream (CuPy's) has done its queued work, e.g. a render."""
    _cupy().cuda.get_current_stream().synchronize()
