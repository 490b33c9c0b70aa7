"""Choosing CPU or CUDA: CUDA needs both CuPy (DRR kernels) and ONNX Runtime's CUDA provider."""

from __future__ import annotations

from .errors import VertedgeError

DEVICES = ("auto", "cpu", "cuda")


def onnx_providers() -> list[str]:
    """Execution providers the installed ONNX Runtime offers (empty when it is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


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


def choose_device(requested: str) -> tuple[str, str]:
    """Resolve 'auto' | 'cpu' | 'cuda' to 'cpu' or 'cuda', with a one-line note on the choice."""
    if requested not in DEVICES:
        raise VertedgeError(f"--device {requested}: choose one of {', '.join(DEVICES)}")
    if requested == "cpu":
        return "cpu", "CPU requested"
    ok, what = cuda_status()
    if ok:
        return "cuda", f"CUDA on {what}"
    if requested == "cuda":
        raise VertedgeError(f"--device cuda: CUDA is not usable here: {what}")
    return "cpu", f"running on CPU: CUDA is not usable here: {what}"
