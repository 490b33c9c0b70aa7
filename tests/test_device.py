"""Choosing the device: CUDA only when its whole path works, else the CPU with one line saying why."""

from __future__ import annotations

import importlib.machinery
import logging
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
    cupy.__spec__ = importlib.machinery.ModuleSpec("cupy", None)  # installed, as far as find_spec can tell
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(device, "onnx_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(drr_cuda, "_module", lambda float_setup: _BrokenNvrtc())


def test_kernels_that_do_not_compile_fall_back_to_the_cpu_on_auto(gpu_without_nvrtc, vertedge_log):
    assert drr_cuda.cuda_available() == (True, "Test GPU")  # what the status used to rely on
    assert device.choose_device("auto") == "cpu"
    # a GPU install (ONNX Runtime lists its CUDA provider here) falling back is worth a warning
    assert [(r.name, r.levelno, r.getMessage()) for r in vertedge_log.records] == [
        (
            "vertedge.device",
            logging.WARNING,
            "running on CPU: CUDA is not usable here: cannot compile the DRR kernels "
            "(RuntimeError: nvrtc: error: failed to open libnvrtc-builtins.so.13.0.)",
        )
    ]
    with pytest.raises(VertedgeError, match=r"^--device cuda: CUDA is not usable here: cannot compile the DRR kernels"):
        device.choose_device("cuda")


def test_a_cpu_install_falls_back_quietly_and_a_request_is_a_detail(monkeypatch, vertedge_log):
    monkeypatch.setattr(device, "cuda_status", lambda: (False, "CuPy is not installed"))
    monkeypatch.setattr(device, "gpu_packages_installed", lambda: False)
    assert device.choose_device("auto") == "cpu"
    assert device.choose_device("cpu") == "cpu"
    assert [(r.levelno, r.getMessage()) for r in vertedge_log.records] == [
        (logging.DEBUG, "running on CPU: CUDA is not usable here: CuPy is not installed"),
        (logging.DEBUG, "CPU requested"),
    ]
