"""Choosing CPU or CUDA: CUDA needs both CuPy (DRR kernels) and ONNX Runtime's CUDA provider.

The choice is logged where it is made, on the `vertedge.device` logger: the device chosen at DEBUG;
a fallback from CUDA to the CPU at WARNING on a GPU install and at DEBUG on a CPU install, which has
no CUDA to miss (`log_cpu_fallback`).
"""

from __future__ import annotations

import importlib.util
import logging

from .errors import VertedgeError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")

log = logging.getLogger(__name__)


def onnx_providers() -> list[str]:
    """Execution providers the installed ONNX Runtime offers (empty when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def gpu_packages_installed() -> bool:
    """Whether this is a GPU install (CuPy or ONNX Runtime's CUDA provider present), working or not."""
    return importlib.util.find_spec("cupy") is not None or "CUDAExecutionProvider" in onnx_providers()


def cuda_versions() -> str | None:
    """'runtime 13.2, driver 13.0' (CUDA versions CuPy sees), or None without CuPy or a driver."""
    try:
        import cupy

        versions = cupy.cuda.runtime.runtimeGetVersion(), cupy.cuda.runtime.driverGetVersion()
    except Exception:  # no CuPy, a broken one, or no driver: there is nothing to report
        return None
    runtime, driver = (f"{v // 1000}.{v % 1000 // 10}" for v in versions)
    return f"runtime {runtime}, driver {driver}"


def cuda_status() -> tuple[bool, str]:
    """(True, GPU name) when the whole CUDA path works, else (False, why not in one line).

    The DRR kernels are compiled here (NVRTC; CuPy keeps the result), so that a broken runtime
    compiler is a reason to use the CPU rather than a crash at the first render.
    """
    from .drr_cuda import cuda_available

    ok, what = cuda_available(compile_kernels=True)
    if not ok:
        return False, what
    if "CUDAExecutionProvider" not in onnx_providers():
        return False, "ONNX Runtime has no CUDA provider (install vertedge[gpu], not vertedge[cpu])"
    return True, what


def parse_device(requested: str) -> tuple[str, int | None]:
    """('auto' | 'cpu' | 'cuda', GPU index or None) of a --device value: auto, cpu, cuda or cuda:N."""
    kind, colon, index = requested.strip().lower().partition(":")
    if kind == "cuda" and (not colon or index.isdigit()):
        return kind, int(index) if colon else None
    if kind in ("auto", "cpu") and not colon:
        return kind, None
    raise VertedgeError(f"--device {requested}: choose one of {', '.join(DEVICES)} (N: the GPU's index)")


def select_gpu(index: int) -> str:
    """Make GPU `index` the current CUDA device of this thread; its name.

    The DRR kernels (CuPy) run on the current device and `models.Models` gives ONNX Runtime the
    same one (`current_gpu`), so both follow this choice.
    """
    import cupy

    count = cupy.cuda.runtime.getDeviceCount()
    if not 0 <= index < count:
        raise VertedgeError(f"--device cuda:{index}: no such GPU (this machine has {count}: 0 to {count - 1})")
    cupy.cuda.Device(index).use()
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def current_gpu() -> int:
    """Index of this thread's current CUDA device (CuPy's)."""
    import cupy

    return int(cupy.cuda.runtime.getDevice())


def log_cpu_fallback(reason: str) -> None:
    """Log that labelling runs on the CPU because CUDA cannot (`reason`, one line).

    A warning on a GPU install (`gpu_packages_installed`), whose user means to use the GPU; a debug
    detail on a CPU install, where running on the CPU is what was installed for.
    """
    log.log(logging.WARNING if gpu_packages_installed() else logging.DEBUG, "running on CPU: %s", reason)


def choose_device(requested: str) -> str:
    """Resolve 'auto' | 'cpu' | 'cuda' | 'cuda:N' to 'cpu' or 'cuda', logging the choice.

    'cuda:N' also makes GPU N the current device (`select_gpu`). 'cuda' or 'cuda:N' where CUDA is
    not usable raise VertedgeError; 'auto' then falls back to the CPU (`log_cpu_fallback`).
    """
    kind, index = parse_device(requested)
    if kind == "cpu":
        log.debug("CPU requested")
        return "cpu"
    ok, what = cuda_status()
    if ok:
        if index is not None:
            what = f"{select_gpu(index)} (GPU {index})"
        log.debug("CUDA on %s", what)
        return "cuda"
    if kind == "cuda":
        raise VertedgeError(f"--device {requested}: CUDA is not usable here: {what}")
    log_cpu_fallback(f"CUDA is not usable here: {what}")
    return "cpu"
