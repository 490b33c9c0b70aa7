"""The DRR backends by device name: how the pipeline renders its network input on the CPU or on CUDA.

`vertedge.device.choose_device` picks the name ('cpu' or 'cuda'); `DRR_BACKENDS[name]` is then all
the pipeline needs of that device, so no stage branches on the name. Importing this module needs
no CuPy (`vertedge.drr_cuda` imports it lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import drr, drr_cuda
from .geometry import Protocol, Views
from .volume import Volume


@dataclass(frozen=True)
class DrrBackend:
    """One device's DRR renderer: line integrals, their normalization, and a wait for queued work."""

    device: str  # "cpu" or "cuda", as `vertedge.device.choose_device` names it
    # (volume, views, protocol) -> line integrals (K, rows, cols) float32, dimensionless; a NumPy
    # array on the host or a CuPy array on the device
    render: Callable[[Volume, Views, Protocol], Any]
    # (line integrals, protocol) -> network input (K, rows, cols) float32, on the same device
    normalize: Callable[[Any, Protocol], Any]
    # waits until the device has done the work queued so far; None where work is synchronous (host)
    synchronize: Callable[[], None] | None

    def images(self, volume: Volume, views: Views, protocol: Protocol) -> Any:
        """The network input (K, rows, cols) float32 of every view, on this backend's device."""
        return self.normalize(self.render(volume, views, protocol), protocol)


DRR_BACKENDS: dict[str, DrrBackend] = {
    "cpu": DrrBackend("cpu", drr.render, drr.normalize, None),
    "cuda": DrrBackend("cuda", drr_cuda.render_cuda, drr_cuda.normalize_cuda, drr_cuda.synchronize),
}
