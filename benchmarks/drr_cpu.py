"""CPU DRR benchmark: vertedge's Numba ray marcher against DiffDRR on the same volume, detector and views.

Usage: python benchmarks/drr_cpu.py [--seed 3] [--repeats 5] [--diffdrr-repeats 2] [--band-rows 4] [--json out.json]

Every figure is the median (and min) wall time of timed runs after one untimed warm-up run, with the
1-minute load average read after the runs (the machine may be shared). DiffDRR gets the same voxels
as attenuation mu per mm (so both renderers integrate the same field), the same detector pitch,
source distances and the same 10 poses in one batch. DiffDRR's CPU renderers cost ~1 s per few
thousand rays on a 512^3 volume, so it renders only a central band of `--band-rows` detector rows
(full width, all 10 views; the same rays as those rows of our detector). Its full-detector time is
extrapolated (linear in the number of rays) and compared with ours on the full detector; the band
ratio compares both on the band itself (ours then includes fixed per-call costs).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffdrr.data import read
from diffdrr.drr import DRR
from diffdrr.pose import RigidTransform
from diffdrr.renderers import _get_alpha_minmax
from torchio import ScalarImage

from vertedge.drr import _render, mu_per_mm, render
from vertedge.geometry import Protocol, Views, make_views
from vertedge.phantom import make_phantom
from vertedge.volume import Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
PROTOCOLS = {
    "default": Protocol.paper(),  # named "default" in RESULTS.md's commands and rows
    "light": Protocol(pixel_mm=4.0, max_rows=512, max_cols=512, step_mm=2.0),
}


@dataclass
class Timing:
    """Wall times of repeated runs (ms) and the 1-minute load average after them."""

    median_ms: float
    min_ms: float
    runs: int
    load_1min: float


def time_runs(fn: Callable[[], Any], repeats: int) -> tuple[Any, Timing]:
    """Run `fn` once untimed (warm-up), then `repeats` timed times; its last result and the timing."""
    result = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1e3)
    return result, Timing(statistics.median(times), min(times), repeats, os.getloadavg()[0])


def mu_field(volume: Volume, protocol: Protocol) -> np.ndarray:
    """Attenuation per mm (nk, nj, ni) float32 per voxel by `vertedge.drr`'s HU transform (ours: of interpolated HU)."""
    return mu_per_mm(volume.hu, protocol, np.float32)  # float32 halves the memory of a 512^3 field


def diffdrr_drr(volume: Volume, views: Views, protocol: Protocol, renderer: str) -> DRR:
    """A DiffDRR module on the volume's voxels (RAS affine, (i, j, k) order) with the detector of `views`."""
    affine_ras = np.eye(4)
    affine_ras[:3] = LPS_TO_RAS @ volume.affine[:3]
    hu_ijk = torch.from_numpy(np.ascontiguousarray(volume.hu.transpose(2, 1, 0)))[None]
    subject = read(ScalarImage(tensor=hu_ijk, affine=affine_ras), orientation=None, center_volume=False)
    mu_ijk = torch.from_numpy(np.ascontiguousarray(mu_field(volume, protocol).transpose(2, 1, 0)))[None]
    subject.density = ScalarImage(tensor=mu_ijk, affine=affine_ras)
    return DRR(
        subject,
        sdd=views.source_det_mm,
        height=views.shape[0],
        width=views.shape[1],
        delx=views.pixel_mm,
        dely=views.pixel_mm,
        renderer=renderer,
    )


def diffdrr_poses(views: Views) -> RigidTransform:
    """Camera-to-world RAS poses of our views: camera +z = central ray, +x = -col_dir, +y = -row_dir."""
    rot = np.stack([-views.col_dir, -views.row_dir, views.axis_dir], axis=2)  # (K, 3, 3), columns
    matrix = np.tile(np.eye(4), (views.n_views, 1, 1))
    matrix[:, :3, :3] = LPS_TO_RAS @ rot
    matrix[:, :3, 3] = views.sources @ LPS_TO_RAS
    return RigidTransform(torch.as_tensor(matrix, dtype=torch.float32))


def trilinear_points(drr: DRR, pose: RigidTransform, step_mm: float) -> int:
    """DiffDRR trilinear samples per ray so that its step along the central ray is `step_mm`."""
    source, target = drr.detector(pose, None)
    dims = torch.tensor(drr.density.shape, dtype=torch.float32)
    amin, amax = _get_alpha_minmax(drr.affine_inverse(source), drr.affine_inverse(target), dims, 0.5, 1e-8)
    return math.ceil(drr.detector.sdd * float(amax.max() - amin.min()) / step_mm)


def band_views(views: Views, rows: int) -> Views:
    """The same views cut to the central `rows` detector rows (same rays as those rows of `views`)."""
    skip = (views.shape[0] - rows) // 2
    det_origin = views.det_origin + skip * views.pixel_mm * views.row_dir
    return replace(views, det_origin=det_origin, shape=(rows, views.shape[1]))


def ap_agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """Pearson correlation and mean relative difference of the AP views (view 0) of both renderers."""
    a, b = ours[0].ravel(), theirs[0].ravel()
    return {
        "ap_correlation": float(np.corrcoef(a, b)[0, 1]),
        "ap_mean_rel_diff": float(np.abs(a - b).mean() / a.mean()),
    }


def bench_protocol(
    volume: Volume, name: str, protocol: Protocol, repeats: int, diffdrr_repeats: int, band_rows: int
) -> dict[str, Any]:
    """Time our render (full detector and band) and DiffDRR's Siddon and trilinear renderers (band)."""
    views = make_views(volume, protocol)
    band = band_views(views, band_rows)
    t = time.perf_counter()
    render(volume, views, protocol)  # first call: JIT compile (or load from Numba's cache) + one render
    first_call_s = time.perf_counter() - t
    cache = {
        "numba_cache_hits": sum(_render.stats.cache_hits.values()),
        "numba_cache_misses": sum(_render.stats.cache_misses.values()),
    }
    _, ours_t = time_runs(lambda: render(volume, views, protocol), repeats)
    ours_band, ours_band_t = time_runs(lambda: render(volume, band, protocol), repeats)
    scale = views.shape[0] / band_rows
    row: dict[str, Any] = {
        "protocol": name,
        "detector_rows_cols": list(views.shape),
        "band_rows": band_rows,
        "pixel_mm": protocol.pixel_mm,
        "step_mm": protocol.step_mm,
        "views": views.n_views,
        "ours_first_call_s": first_call_s,
        **cache,
        "ours": asdict(ours_t),
        "ours_band": asdict(ours_band_t),
    }
    print(f"[{name}] detector {views.shape}, ours: first call {first_call_s:.2f} s, {ours_t}", flush=True)
    print(f"[{name}] ours on the band: {ours_band_t}", flush=True)
    pose = diffdrr_poses(band)
    for renderer in ("siddon", "trilinear"):
        drr = diffdrr_drr(volume, band, protocol, renderer)
        kwargs = {"n_points": trilinear_points(drr, pose, protocol.step_mm)} if renderer == "trilinear" else {}
        with torch.no_grad():
            img, their_t = time_runs(functools.partial(drr, pose, **kwargs), diffdrr_repeats)
        row[f"diffdrr_{renderer}"] = {
            "band": asdict(their_t),
            **kwargs,
            "full_detector_median_ms_extrapolated": their_t.median_ms * scale,
            "ratio_ours_over_theirs_full": ours_t.median_ms / (their_t.median_ms * scale),
            "ratio_ours_over_theirs_band": ours_band_t.median_ms / their_t.median_ms,
            **ap_agreement(ours_band, img[:, 0].numpy()),
        }
        print(f"[{name}] diffdrr {renderer}: {row[f'diffdrr_{renderer}']}", flush=True)
    return row


def machine() -> dict[str, Any]:
    """CPU model, core count, RAM and library versions of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    import diffdrr
    import numba

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "diffdrr": diffdrr.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def main() -> None:
    """Parse arguments, run both protocols, print and optionally save the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3, help="phantom seed (3: a full spine, about 512x512x550 voxels)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of our renderer")
    parser.add_argument("--diffdrr-repeats", type=int, default=2, help="timed runs of each DiffDRR renderer")
    parser.add_argument("--band-rows", type=int, default=4, help="central detector rows DiffDRR renders")
    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=["light", "default"])
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args()
    if args.band_rows % 2:
        parser.error("--band-rows must be even (the band is centred on the detector)")
    torch.set_num_threads(2)

    volume = make_phantom(args.seed).volume
    info: dict[str, Any] = {
        "seed": args.seed,
        "shape_ijk": list(volume.shape_ijk),
        "spacing_mm": volume.spacing.round(4).tolist(),
        "axcodes": "".join(volume.axcodes()),
    }
    host = machine()
    print(f"machine {host}\nvolume {info}", flush=True)
    rows = [
        bench_protocol(volume, p, PROTOCOLS[p], args.repeats, args.diffdrr_repeats, args.band_rows)
        for p in args.protocols
    ]
    result = {"machine": host, "volume": info, "results": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
