"""CUDA DRR: the GPU images equal the CPU ones; the kernel compiles with nvcc; clean skips without a GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vertedge import drr_cuda
from vertedge.drr import normalize, render
from vertedge.errors import VertedgeError
from vertedge.geometry import Protocol, make_views
from vertedge.volume import Volume

from .conftest import air_volume, cuda_gpu, paint_ball, rotation

_HAS_CUPY = importlib.util.find_spec("cupy") is not None

RTOL = 1e-3  # max |gpu - cpu| / max(cpu): float32 march vs the CPU's float64


def _phantom() -> Volume:
    """A 48x40x36 anisotropic, obliquely rotated int16 volume with a box and balls of different HU."""
    vol = air_volume((48, 40, 36), (1.3, 0.9, 2.2), rotation("z", 20) @ rotation("x", 8), (5, -10, 30))
    vol.hu[8:26, 10:30, 12:36] = 40  # soft tissue box
    vol.hu[14:18, 5:12, 20:30] = -200  # fat slab, partly inside the box
    paint_ball(vol, np.array([5.0, -10.0, 30.0]), 9.0, 900)
    paint_ball(vol, np.array([17.0, 0.0, 20.0]), 5.0, 1500)
    paint_ball(vol, np.array([-8.0, -18.0, 45.0]), 4.0, 2500)
    return vol


def _rel_err(gpu_images: np.ndarray, cpu_images: np.ndarray) -> float:
    """Max abs difference over the CPU images' max value."""
    return float(np.abs(gpu_images - cpu_images).max() / np.abs(cpu_images).max())



# ---------------------------------------------------------------------------------------------
# CPU-only: these run everywhere.


def test_module_imports_and_reports_why_without_cuda():
    ok, why = drr_cuda.cuda_available()
    assert isinstance(ok, bool) and isinstance(why, str) and why and "\n" not in why
    try:
        import cupy  # noqa: F401
    except ImportError:
        assert (ok, why) == (False, "CuPy is not installed")


def test_kernel_source_is_found_and_matches_the_host_layout():
    src = drr_cuda.kernel_source()
    for name in drr_cuda._KERNELS.values():
        assert re.search(rf'extern "C" __global__ void __launch_bounds__\(VERTEDGE_MAX_THREADS_PER_BLOCK\)\s+{name}\(', src)
    # struct ViewGeom must be exactly the doubles that _geometry writes per view (nvcc also
    # static_asserts it; this checks it where no compiler is at hand)
    body = re.search(r"struct ViewGeom \{(.*?)\};", src, re.S).group(1)
    sizes = [int(n) for n in re.findall(r"^\s*double \w+\[(\d+)\];", body, re.M)]
    assert sum(sizes) == drr_cuda._GEOM_DOUBLES


def _code_of(cuda_source: str) -> str:
    """CUDA C without its comments."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", cuda_source, flags=re.S)


def test_kernel_takes_the_host_constants_from_python():
    """kernels/drr.cu writes none of the constants it shares with the host: they come from kernel_defines."""
    from vertedge.drr import PER_HU

    defines = dict(d.removeprefix("-D").split("=", 1) for d in drr_cuda.kernel_defines())
    code = _code_of(drr_cuda.kernel_source())
    used = set(re.findall(r"\bVERTEDGE_\w+", code)) - {"VERTEDGE_DRR_FLOAT_SETUP"}  # the one build switch
    assert used == set(defines)  # every constant it uses is given, and every one given is used
    assert np.float32(float(defines["VERTEDGE_PER_HU"].removesuffix("f"))) == np.float32(PER_HU)
    assert defines["VERTEDGE_PER_HU"].endswith("f")  # a float literal: no double arithmetic in the march
    assert int(defines["VERTEDGE_VIEW_GEOM_DOUBLES"]) == drr_cuda._GEOM_DOUBLES
    assert int(defines["VERTEDGE_MAX_THREADS_PER_BLOCK"]) == drr_cuda._MAX_THREADS_PER_BLOCK
    # no copy of the transform's constant in any spelling (0.001f, 1e-3, 1000.0f ...)
    numbers = {float(n) for n in re.findall(r"(?<![\w.])(\d+\.?\d*(?:[eE][-+]?\d+)?)f?\b", code)}
    assert not numbers & {PER_HU, 1.0 / PER_HU}, sorted(numbers)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize(
    "defines", [[], ["-DVERTEDGE_DRR_FLOAT_SETUP"]], ids=["double-setup", "float-setup"]
)
def test_kernel_compiles_with_nvcc(tmp_path: Path, defines: list[str]):
    src = Path(__file__).resolve().parents[1] / "kernels" / "drr.cu"
    cmd = ["nvcc", "-std=c++17", "--Werror", "all-warnings", "-c", "-arch=sm_90", *drr_cuda.kernel_defines(), *defines]
    cmd += [str(src), "-o", str(tmp_path / "drr.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "drr.o").stat().st_size > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
def test_kernel_does_not_compile_without_the_host_constants(tmp_path: Path):
    src = Path(__file__).resolve().parents[1] / "kernels" / "drr.cu"
    cmd = ["nvcc", "-std=c++17", "-E", str(src), "-o", str(tmp_path / "drr.i")]  # the preprocessor is enough
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "kernel_defines" in result.stderr


@pytest.mark.skipif(_HAS_CUPY, reason="checks the error raised without CuPy")
def test_render_without_cupy_is_a_clear_error():
    vol = air_volume((4, 4, 4), (1.0, 1.0, 1.0))
    protocol = Protocol(n_views=1)
    with pytest.raises(VertedgeError, match="CuPy"):
        drr_cuda.render_cuda(vol, make_views(vol, protocol), protocol)


# ---------------------------------------------------------------------------------------------
# GPU: skipped unless CuPy and a CUDA device are present.


@pytest.mark.gpu
@cuda_gpu
@pytest.mark.parametrize("dtype", ["int16", "float32"])
@pytest.mark.parametrize(
    ("perm", "flips"),
    [((0, 1, 2), (False, False, False)), ((2, 0, 1), (True, False, True))],
    ids=["ijk", "kij-flipped"],
)
@pytest.mark.parametrize("step_mm", [1.0, 0.7])
def test_gpu_matches_cpu(dtype: str, perm, flips, step_mm: float):
    import cupy

    vol = _phantom().reoriented(perm, flips)
    if dtype == "float32":  # fractional HU, so float volumes are not just int16 in disguise
        noise = np.random.default_rng(0).uniform(-0.5, 0.5, vol.hu.shape)
        vol = dataclasses.replace(vol, hu=(vol.hu + noise).astype(np.float32))
    protocol = Protocol(n_views=6, start_angle_deg=17.0, pixel_mm=3.0, step_mm=step_mm)
    views = make_views(vol, protocol)
    # a detector wider than the fitted one, so rays that miss the box are checked to give 0
    views = make_views(vol, protocol, shape=(views.shape[0] + 16, views.shape[1] + 16))
    cpu = render(vol, views, protocol)
    out = drr_cuda.render_cuda(vol, views, protocol)
    assert isinstance(out, cupy.ndarray)
    assert out.shape == cpu.shape and out.dtype == cupy.float32
    got = cupy.asnumpy(out)
    corners = (slice(None), [0, 0, -1, -1], [0, -1, 0, -1])
    assert np.all(cpu[corners] == 0) and np.all(got[corners] == 0)  # rays that miss the box
    assert _rel_err(got, cpu) <= RTOL


@pytest.mark.gpu
@cuda_gpu
def test_float_setup_variant_matches_cpu():
    import cupy

    vol = _phantom()
    protocol = Protocol(n_views=4, pixel_mm=3.0)
    views = make_views(vol, protocol)
    cpu = render(vol, views, protocol)
    got = cupy.asnumpy(drr_cuda.render_cuda(vol, views, protocol, float_setup=True))
    # float ray setup may shift a rare ray's step count by one near an edge: twice the bound
    assert _rel_err(got, cpu) <= 2 * RTOL


@pytest.mark.gpu
@cuda_gpu
def test_batched_views_equal_per_view_renders_on_device():
    import cupy

    vol = _phantom()
    protocol = Protocol(n_views=5, pixel_mm=3.0)
    views = make_views(vol, protocol)
    dvol = drr_cuda.upload_volume(vol)
    assert isinstance(dvol.hu, cupy.ndarray) and dvol.hu.dtype == cupy.int16
    batched = drr_cuda.render_cuda(dvol, views, protocol)
    assert isinstance(batched, cupy.ndarray)
    for k in range(views.n_views):
        single = drr_cuda.render_cuda(dvol, views.take([k]), protocol)
        assert isinstance(single, cupy.ndarray) and single.shape == (1, *views.shape)
        # a pixel's value depends on its own ray only: bit-identical
        assert bool(cupy.array_equal(single[0], batched[k]))
    # a host Volume (uploaded per call) and an `out` buffer give the same images
    out = cupy.full((views.n_views, *views.shape), cupy.nan, cupy.float32)
    again = drr_cuda.render_cuda(vol, views, protocol, out=out)
    assert again is out and bool(cupy.array_equal(out, batched))


@pytest.mark.gpu
@cuda_gpu
@pytest.mark.parametrize("block", [(16, 16), (32, 8), (8, 4)])
def test_block_shape_does_not_change_the_images(block: tuple[int, int]):
    import cupy

    vol = _phantom()
    protocol = Protocol(n_views=3, pixel_mm=4.0)
    views = make_views(vol, protocol, shape=(37, 53))  # not a multiple of any block side
    ref = drr_cuda.render_cuda(vol, views, protocol)
    assert bool(cupy.array_equal(drr_cuda.render_cuda(vol, views, protocol, block=block), ref))


@pytest.mark.gpu
@cuda_gpu
def test_normalize_cuda_and_the_cuda_backend_match_cpu():
    import cupy

    from vertedge.drr_backends import DRR_BACKENDS

    vol = _phantom()
    protocol = Protocol(n_views=4, pixel_mm=3.0)
    views = make_views(vol, protocol)
    cpu = render(vol, views, protocol)
    got = drr_cuda.normalize_cuda(cupy.asarray(cpu), protocol)
    assert isinstance(got, cupy.ndarray) and got.dtype == cupy.float32
    np.testing.assert_allclose(cupy.asnumpy(got), normalize(cpu, protocol), rtol=1e-5, atol=1e-6)
    # the backend the pipeline uses: render and normalize on the device, then wait for them
    images = DRR_BACKENDS["cuda"].images(vol, views, protocol)
    DRR_BACKENDS["cuda"].synchronize()
    assert isinstance(images, cupy.ndarray) and images.dtype == cupy.float32
    assert _rel_err(cupy.asnumpy(images), normalize(cpu, protocol)) <= RTOL


@pytest.mark.gpu
@cuda_gpu
def test_host_to_device_copies_exactly_and_unlocks_the_memory():
    import cupy

    rng = np.random.default_rng(3)
    volume = rng.integers(-1024, 3000, (37, 41, 43)).astype(np.int16)
    offset = rng.random(1001).astype(np.float32)[1:]  # a buffer that does not start on a page
    for a in (volume, offset, np.zeros((0, 4), np.int16)):
        got = drr_cuda.host_to_device(a)
        assert isinstance(got, cupy.ndarray) and got.dtype == a.dtype
        np.testing.assert_array_equal(got.get(), a)
        if a.nbytes:  # registering again succeeds only if the copy unregistered it
            cupy.cuda.runtime.hostRegister(a.ctypes.data, a.nbytes, 0)
            cupy.cuda.runtime.hostUnregister(a.ctypes.data)
