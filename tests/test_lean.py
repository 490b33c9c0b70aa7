"""The runtime stays lean: importing it pulls no torch and no GPU package."""

from __future__ import annotations

import subprocess
import sys


def test_import_pulls_no_torch_and_no_gpu_package():
    code = (
        "import sys, vertedge, vertedge.cli, vertedge.pipeline, vertedge.batch, vertedge.drr_cuda, vertedge.device; "
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'cupy', 'onnx', 'train', 'export'}); "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""
