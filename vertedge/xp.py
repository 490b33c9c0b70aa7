"""NumPy or CuPy by the array at hand, so one function serves host and device arrays."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_module(a: Any) -> ModuleType:
    """`cupy` for a CuPy array, else `numpy`; CuPy is imported only when such an array exists."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_host(a: Any) -> np.ndarray:
    """A host NumPy array of `a` (a device-to-host copy for a CuPy array)."""
    return a.get() if array_module(a) is not np else np.asarray(a)
