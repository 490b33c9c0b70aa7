"""Fusion alone: `fusion.fuse` on the detections of the 512 x 512 x 600 full-spine phantom, warm and on its first call.

Usage:
    python benchmarks/fusion.py [--repeats 30] [--json fusion.json]

The phantom (`latency.spine_phantom`, K = 10) goes once through `Labeler` on the CPU, which
records fuse's inputs; then `--repeats` timed calls after one warm-up (median, min, p95 ms). The
first call in a fresh process runs twice in subprocesses sharing a new, empty Numba cache: the
first compiles the kernels, the second loads them. Each subprocess warms Numba up on another
vertedge kernel first (as the pipeline's DRR and peaks do before fusion), so the time is fusion's.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from latency import machine, spine_phantom, wall_times  # benchmarks/ is the script's folder, so on sys.path

FIRST_CALL = """
import pickle, sys, time
import numpy as np
import vertedge.peaks, vertedge.fusion
z = np.zeros(3, np.int64)
vertedge.peaks._nearest_denser(z, z, z, 4, 4, 2.0)
peaks, views, options = pickle.load(open(sys.argv[1], "rb"))
t0 = time.perf_counter()
vertedge.fusion.fuse(peaks, views, options)
print((time.perf_counter() - t0) * 1e3)
"""


def fuse_inputs() -> tuple[Any, Any, Any]:
    """(peaks, views, options) that the pipeline passes to `fuse` for the 512 x 512 x 600 phantom."""
    from vertedge import pipeline

    original, seen = pipeline.fuse, []

    def recording_fuse(*args: Any) -> Any:
        seen.append(args)
        return original(*args)

    pipeline.fuse = recording_fuse
    try:
        pipeline.Labeler(device="cpu")(spine_phantom((512, 512, 600)).volume)
    finally:
        pipeline.fuse = original
    return seen[0]


def first_calls(inputs: Path) -> list[float]:
    """ms of the first `fuse` call in two fresh processes: with an empty Numba cache, then with the one it filled."""
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"NUMBA_CACHE_DIR": cache}
        return [
            float(subprocess.run([sys.executable, "-c", FIRST_CALL, str(inputs)], env=env, capture_output=True, text=True, check=True).stdout)
            for _ in range(2)
        ]


def main() -> None:
    """Time fusion and print (and optionally save) the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from vertedge.fusion import fuse

    peaks, views, options = fuse_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "fuse_inputs.pkl"
        inputs.write_bytes(pickle.dumps((peaks, views, options)))
        compile_ms, cached_ms = first_calls(inputs)
    fused = fuse(peaks, views, options)
    report = {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "detections": len(peaks),
        "views": views.n_views,
        "fused": len(fused),
        "warm": wall_times(lambda: fuse(peaks, views, options), args.repeats),
        "first_call_ms": {"empty_cache": round(compile_ms, 1), "filled_cache": round(cached_ms, 1)},
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
