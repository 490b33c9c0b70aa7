"""End-to-end latency per scan and per stage, its growth with volume size and K, and decode peers.

Usage:
    python benchmarks/latency.py [--device cpu] [--repeats 5] [--sizes 256x256x256,512x512x600]
                                 [--views 5,10,20] [--formats nii.gz,nii,dicom,dicom-rle]
                                 [--json results.json] [--markdown results.md]

Each volume size runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
A phantom of that size is written as .nii.gz, then: decode (load_volume), the pipeline stages
(Labeler timings: drr, localization_net, peaks, fusion, identification_net, ribs, sacrum, voting,
review, body, consensus; each stage summed over the view starts) and the writes, one warm-up and
`--repeats` timed runs; median and p95 per stage. Peers for decode:
SimpleITK against nibabel on the same .nii.gz. `--formats`: the reference size (512x512x600) also
as .nii, an uncompressed DICOM series and an RLE Lossless one, each from the file to the labels in
its own subprocess (the readers alone against SimpleITK, nibabel and pydicom: `decode.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "drr", "localization_net", "peaks", "fusion", "identification_net", "ribs", "sacrum", "voting",
          "between", "review", "body", "consensus", "ends", "write")


def machine() -> dict[str, Any]:
    """CPU model, cores, memory and (when used) the GPU of this machine."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "python": platform.python_version()}


def spine_phantom(shape: tuple[int, int, int], seed: int = 0):
    """A full-spine phantom of `shape` voxels, 0.8 mm in-plane, slices to cover ~650 mm."""
    from vertedge.phantom import make_phantom

    dz = float(np.clip(650.0 / shape[2], 0.6, 3.0))
    return make_phantom(seed, "full", shape=shape, spacing=(0.8, 0.8, dz), orientation="LPS")


def phantom_for(shape: tuple[int, int, int], path: Path) -> dict[str, Any]:
    """Write `spine_phantom(shape)` to `path`; its grid and number of vertebrae."""
    from vertedge.phantom import save_phantom

    ph = spine_phantom(shape)
    save_phantom(ph, path)
    return {"shape": list(shape), "spacing_mm": [round(float(s), 6) for s in ph.volume.spacing], "vertebrae": len(ph.centroids)}


def stats(samples: list[float]) -> dict[str, float]:
    """Median, min and 95th percentile (ms)."""
    a = np.asarray(samples)
    return {k: round(float(f(a)), 3) for k, f in (("median_ms", np.median), ("min_ms", np.min), ("p95_ms", lambda x: np.percentile(x, 95)))}


def wall_times(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Wall-clock time of `fn` (GPU work must synchronize itself) over `repeats` calls after one warm-up (ms)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return stats(times)


def measure_one(path: Path, views: int, device: str, models: str | None, repeats: int) -> dict[str, Any]:
    """Time every stage on one scan file (this process does nothing else, so its peak memory is the pipeline's)."""
    from vertedge.geometry import make_views
    from vertedge.outputs import write_result
    from vertedge.pipeline import Labeler
    from vertedge.volume import load_volume

    labeler = Labeler(models, device=device, n_views=views)
    with tempfile.TemporaryDirectory() as tmp:
        samples: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            volume = load_volume(path)
            decode = (time.perf_counter() - t0) * 1e3
            result = labeler(volume)
            t1 = time.perf_counter()
            write_result(result, volume, Path(tmp) / "out", "scan")
            write = (time.perf_counter() - t1) * 1e3
            rows, cols = make_views(volume, labeler.protocol).shape
            input_mib = volume.hu.size * 2 / 2**20
            found, stage_ms = len(result.vertebrae), result.timings_ms
            # as `vertedge run` of one scan after another: the last scan is gone before the next is read
            del volume, result
            if i == 0:
                continue  # warm-up: JIT compile, session first run
            timings = {"decode": decode, **stage_ms, "write": write}
            for stage in STAGES:
                samples[stage].append(timings.get(stage, 0.0))
            samples["total"].append(sum(timings.get(s, 0.0) for s in STAGES))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "views": labeler.protocol.n_views,
        "detector": [rows, cols],
        "found": found,
        "device": labeler.device,
        "stages": {s: stats(v) for s, v in samples.items()},
        "peak_rss_mib": round(peak_mib, 1),
        "input_int16_mib": round(input_mib, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def drr_scaling(path: Path, pixel_mms: list[float], repeats: int) -> list[dict[str, Any]]:
    """DRR time alone for detector pitches `pixel_mms` (the models' protocol otherwise), K as the models'."""
    from dataclasses import replace

    from vertedge.drr import render
    from vertedge.geometry import make_views
    from vertedge.onnx_models import Models
    from vertedge.volume import load_volume

    volume = load_volume(path)
    base = Models(device="cpu").protocol
    out = []
    for pixel_mm in pixel_mms:
        protocol = replace(base, pixel_mm=pixel_mm, max_rows=2048, max_cols=2048)
        views = make_views(volume, protocol)
        timing = wall_times(lambda: render(volume, views, protocol), repeats)  # noqa: B023 - called at once
        out.append({"pixel_mm": pixel_mm, "detector": list(views.shape), "views": protocol.n_views, **timing})
    return out


def write_format(volume_path: Path, fmt: str, folder: Path) -> Path:
    """The scan at `volume_path` (.nii.gz) written as `fmt`: nii.gz (itself), nii, dicom or dicom-rle."""
    from decode import write_dicom

    from vertedge.volume import load_volume, save_volume

    if fmt == "nii.gz":
        return volume_path
    volume = load_volume(volume_path)
    if fmt == "nii":
        path = folder / "scan.nii"
        save_volume(volume, path)
        return path
    if fmt in ("dicom", "dicom-rle"):
        return write_dicom(volume, folder / fmt, rle=fmt == "dicom-rle")
    raise ValueError(f"unknown format {fmt!r} (nii.gz, nii, dicom, dicom-rle)")


def decode_peers(shape: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    """SimpleITK against nibabel reading the same .nii.gz to an int16 array."""
    import SimpleITK as sitk

    out: dict[str, Any] = {"shape": list(shape)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.nii.gz"
        phantom_for(shape, path)
        out["file_mib"] = round(path.stat().st_size / 2**20, 1)
        readers = {"SimpleITK": lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))}
        try:
            import nibabel as nib

            readers["nibabel"] = lambda: np.asanyarray(nib.load(str(path)).dataobj)
        except ImportError:
            pass
        for name, read in readers.items():
            out[name] = wall_times(read, repeats)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; device {report['device']}; "
        f"{report['date']}; `{report['command']}`",
        "",
        "| volume | K | detector | found | " + " | ".join(STAGES) + " | total | peak RSS MiB (input int16 MiB) | load |",
        "|" + "---|" * (len(STAGES) + 7),
    ]
    for r in report["runs"]:
        cells = [f"{r['stages'][s]['median_ms']:.0f}" for s in STAGES]
        total = r["stages"]["total"]
        lines.append(
            f"| {'x'.join(map(str, r['shape']))} @ {r['spacing_mm'][2]:.2f} mm | {r['views']} | "
            f"{r['detector'][0]}x{r['detector'][1]} | {r['found']} | " + " | ".join(cells)
            + f" | {total['median_ms']:.0f} (p95 {total['p95_ms']:.0f}) | {r['peak_rss_mib']:.0f} ({r['input_int16_mib']:.0f}) | {r['load_avg_1min']} |"
        )
    lines += ["", "Stage times are medians in ms.", "", f"| DRR only, {report['drr_scaling_volume']} | detector | K | median ms |", "|---|---|---|---|"]
    for d in report["drr_scaling"]:
        lines.append(f"| {d['pixel_mm']} mm pixels | {d['detector'][0]}x{d['detector'][1]} | {d['views']} | {d['median_ms']:.0f} |")
    if report.get("formats"):
        lines += ["", f"| {report['drr_scaling_volume']} as | on disk MiB | decode ms | labelling ms (after decode) | "
                  "file to labels ms | peak RSS MiB |", "|---|---|---|---|---|---|"]
        for f in report["formats"]:
            st = f["stages"]
            after = st["total"]["median_ms"] - st["decode"]["median_ms"]
            lines.append(f"| {f['format']} | {f['disk_mib']} | {st['decode']['median_ms']:.0f} | {after:.0f} | "
                         f"{st['total']['median_ms']:.0f} | {f['peak_rss_mib']:.0f} |")
    lines += ["", "| decode .nii.gz | file MiB | SimpleITK ms | nibabel ms |", "|---|---|---|---|"]
    for d in report["decode"]:
        nib = d.get("nibabel", {}).get("median_ms", float("nan"))
        lines.append(f"| {'x'.join(map(str, d['shape']))} | {d['file_mib']} | {d['SimpleITK']['median_ms']:.0f} | {nib:.0f} |")
    return "\n".join(lines) + "\n"


def parse_shape(text: str) -> tuple[int, int, int]:
    """'512x512x600' -> (512, 512, 600)."""
    a, b, c = (int(v) for v in text.lower().split("x"))
    return a, b, c


def main() -> None:
    """Run every size (and K) in a subprocess, then the decode peers; print and save the report."""
    from decode import size_mib

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256x256x256,512x512x300,512x512x600,512x512x1000")
    ap.add_argument("--views", default="10", help="comma-separated K; the first for every size, the rest on 512x512x600")
    ap.add_argument("--pixel-mm", default="10,5,2.5", help="detector pitches for the DRR-only scaling run")
    ap.add_argument("--formats", default="nii.gz,nii,dicom,dicom-rle", help="formats of the reference size ('' for none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # "PATH:K" for a subprocess
    args = ap.parse_args()
    if args.one:
        path, k = args.one.rsplit(":", 1)
        print(json.dumps(measure_one(Path(path), int(k), args.device, args.models, args.repeats)))
        return
    sizes = [parse_shape(s) for s in args.sizes.split(",")]
    ks = [int(k) for k in args.views.split(",")]
    # every size at the first K, then the other K values on the scaling reference size
    reference = (512, 512, 600) if (512, 512, 600) in sizes else sizes[0]
    jobs = [(s, ks[0]) for s in sizes] + [(reference, k) for k in ks[1:]]
    runs, formats = [], []

    def one(path: Path, k: int) -> dict[str, Any]:
        cmd = [sys.executable, __file__, "--one", f"{path}:{k}", "--device", args.device, "--repeats", str(args.repeats)]
        if args.models:
            cmd += ["--models", args.models]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    with tempfile.TemporaryDirectory() as tmp:
        scans = {s: Path(tmp) / f"{'x'.join(map(str, s))}.nii.gz" for s in sizes}
        infos = {s: phantom_for(s, p) for s, p in scans.items()}
        for shape, k in jobs:
            runs.append({**infos[shape], **one(scans[shape], k)})
            print(f"{shape} K={runs[-1]['views']}: total {runs[-1]['stages']['total']['median_ms']:.0f} ms", file=sys.stderr)
        for fmt in filter(None, args.formats.split(",")):
            path = write_format(scans[reference], fmt, Path(tmp))
            formats.append({"format": fmt, "disk_mib": size_mib(path), **one(path, ks[0])})
            print(f"{fmt}: file to labels {formats[-1]['stages']['total']['median_ms']:.0f} ms", file=sys.stderr)
        scaling = drr_scaling(scans[reference], [float(p) for p in args.pixel_mm.split(",")], args.repeats)
    report = {
        "machine": machine(),
        "device": args.device,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/latency.py " + " ".join(sys.argv[1:]),
        "runs": runs,
        "formats": formats,
        "drr_scaling": scaling,
        "drr_scaling_volume": "x".join(map(str, reference)),
        "decode": [decode_peers(s, args.repeats) for s in sizes[:2]],
    }
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
