"""Choosing the device: CUDA only when its whole path works, else the CPU with one line saying why."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from vertedge import device, drr_cuda
from vertedge.errors import VertedgeError


class _BrokenNvrtc:
    """A RawModule whose compilation fails as with a broken NVRTC (CuPy's CompileException is multi-line)."""

    def get_function(self, name: str) -> None:
        raise RuntimeError("nvrtc: error: failed to open libnvrtc-builtins.so.13.0.\nMake sure it is installed.")


@pytest.fixture
def gpu_without_nvrtc(monkeypatch):
    """CuPy that sees one GPU, ONNX Runtime with its CUDA provider, and DRR kernels that do not compile."""
    runtime = SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: {"name": b"Test GPU"})
    cupy = SimpleNamespace(cuda=SimpleNamespace(runtime=runtime, Device=lambda: SimpleNamespace(id=0)))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(device, "onnx_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(drr_cuda, "_module", lambda float_setup: _BrokenNvrtc())


def test_kernels_that_do_not_compile_fall_back_to_the_cpu_on_auto(gpu_without_nvrtc):
    assert drr_cuda.cuda_available() == (True, "Test GPU")  # what the status used to rely on
    chosen, note = device.choose_device("auto")
    assert chosen == "cpu"
    assert note == (
        "running on CPU: CUDA is not usable here: cannot compile the DRR kernels "
        "(RuntimeError: nvrtc: error: failed to open libnvrtc-builtins.so.13.0.)"
    )
    with pytest.raises(VertedgeError, match=r"^--device cuda: CUDA is not usable here: cannot compile the DRR kernels"):
        device.choose_device("cuda")
