"""The runtime stays lean: importing it pulls no torch, no GPU package and no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import vertedge
from vertedge.numba_cache import COMPILE_NOTE


def test_import_pulls_no_torch_no_gpu_package_and_no_ray():
    code = (
        "import sys, vertedge, vertedge.cli, vertedge.pipeline, vertedge.batch, vertedge.archive, vertedge.drr_cuda, "
        "vertedge.device; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'cupy', 'onnx', 'train', 'export', 'ray'}); "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


# The smallest cached kernel (about 1 s to compile): enough to see where Numba caches and when it compiles.
COMPILE_ONE_KERNEL = (
    "import numpy as np, vertedge.drr, vertedge.peaks as p; "
    "z = np.zeros(3, np.int64); p._nearest_denser(z, z, z, 4, 4, 2.0)"
)


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter without NUMBA_CACHE_DIR, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean | env)


def test_kernels_are_cached_in_the_user_cache_and_compiling_is_said_once(tmp_path):
    package = Path(vertedge.__file__).parent
    start = time.time() - 1
    first = _python(COMPILE_ONE_KERNEL, XDG_CACHE_HOME=str(tmp_path))
    cache = tmp_path / "vertedge" / "numba"
    assert list(cache.rglob("peaks._nearest_denser-*.nbi")), "the kernel was not cached in the user cache"
    # nothing new in the package: files there outlive an uninstall and shadow the next install
    assert [p for p in package.rglob("*.nb[ic]") if p.stat().st_mtime >= start] == []
    notes = [line for line in first.stderr.splitlines() if "compiling the CPU kernels" in line]
    assert notes == [COMPILE_NOTE.format(cache)]
    second = _python(COMPILE_ONE_KERNEL, XDG_CACHE_HOME=str(tmp_path))
    assert "compiling" not in second.stderr


@pytest.mark.parametrize("numba_first", [False, True], ids=["vertedge-first", "numba-first"])
def test_numba_cache_dir_is_the_users_choice_or_the_user_cache(tmp_path, numba_first):
    # numba-first: numba read its configuration before vertedge could set it
    code = ("import numba; " if numba_first else "") + "import vertedge, numba; print(numba.core.config.CACHE_DIR)"
    chosen = _python(code, NUMBA_CACHE_DIR=str(tmp_path / "mine"))
    assert chosen.stdout.strip() == str(tmp_path / "mine")
    default = _python(code, XDG_CACHE_HOME=str(tmp_path))
    assert default.stdout.strip() == str(tmp_path / "vertedge" / "numba")
