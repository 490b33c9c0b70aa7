"""The CUDA path on a real GPU: DRR kernel time and agreement with the CPU, per-stage pipeline latency, fp16 vs fp32.

Usage:
    python benchmarks/gpu.py [--repeats 20] [--seeds 0-19] [--json gpu.json] [--markdown gpu.md]

Sections (each runs on its own; a failing one is recorded with its error and the rest go on):
  env        GPU name, CUDA runtime/driver, CuPy and ONNX Runtime versions and providers.
  drr        512x512x600 full-spine phantom, K=10: kernel time by CUDA events (median of
             `--repeats`) for the models' protocol and finer detectors, block shapes, float ray
             setup, int16 vs float32 volume; the upload (host -> device, content crop) and two
             alternatives to a plain pageable copy; max relative difference to the Numba CPU render.
  pipeline   the same scan through Labeler on CUDA (fp32 and fp16 models) and on the CPU: per-stage
             medians (stages end with a stream synchronize), centroid and label agreement.
  options    ONNX Runtime CUDA provider options (cuDNN algorithm search, TF32): warm net times and
             the first call on a new detector shape (new input shapes trigger the search).
  accuracy   held-out phantom seeds through CUDA fp32, CUDA fp16 and CPU fp32: Id-Rate, L-Error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from latency import (  # benchmarks/ is the script's folder, so on sys.path
    spine_phantom,
    stats,
    wall_times,
)

SHAPE = (512, 512, 600)


def event_times(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """GPU time of `fn` by CUDA events on the current stream, after one warm-up call (ms)."""
    import cupy

    fn()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop))
    return stats(times)


def section_env() -> dict[str, Any]:
    """What this machine's CUDA stack is."""
    import cupy
    import onnxruntime as ort

    from vertedge.device import cuda_status

    props = cupy.cuda.runtime.getDeviceProperties(0)
    return {
        "gpu": props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]),
        "sm": f"{props['major']}.{props['minor']}",
        "multiprocessors": props["multiProcessorCount"],
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        "cupy": cupy.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
        "cuda_status": list(cuda_status()),
    }


def staged_upload(hu: np.ndarray, pinned: list[np.ndarray]) -> Any:
    """Copy `hu` to the device through two pinned staging buffers: host memcpy of one chunk overlaps the DMA of the other."""
    import cupy

    flat = hu.reshape(-1)
    out = cupy.empty(flat.shape, flat.dtype)
    per = pinned[0].size
    stream = cupy.cuda.Stream(non_blocking=True)
    done: list[Any] = [None, None]
    for c, start in enumerate(range(0, flat.size, per)):
        b = c % 2
        if done[b] is not None:
            done[b].synchronize()  # that buffer's previous DMA is finished
        m = min(per, flat.size - start)
        np.copyto(pinned[b][:m], flat[start : start + m])
        out[start : start + m].set(pinned[b][:m], stream=stream)
        done[b] = stream.record()
    stream.synchronize()
    return out.reshape(hu.shape)


def upload_variants(hu: np.ndarray) -> dict[str, Any]:
    """Host -> device time of the int16 volume: page-locked in place (what upload_volume does) against a pageable copy and pinned staging."""
    import cupy
    import cupyx

    from vertedge.drr_cuda import host_to_device

    sync = cupy.cuda.get_current_stream().synchronize
    plain = cupy.asarray(hu)
    pinned = [cupyx.empty_pinned(16 << 20, hu.dtype) for _ in range(2)]  # 32 MiB each, allocated once
    out: dict[str, Any] = {
        "pageable copy": wall_times(lambda: (cupy.asarray(hu), sync()), 5),
        "pinned staging 2x32 MiB": wall_times(lambda: staged_upload(hu, pinned), 5),
        "page-locked in place": wall_times(lambda: (host_to_device(hu), sync()), 5),
    }
    out["staged equals plain"] = bool(cupy.array_equal(staged_upload(hu, pinned), plain))
    out["page-locked equals plain"] = bool(cupy.array_equal(host_to_device(hu), plain))
    return out


def kernel_variants(dvol, fvol, views, protocol, all_variants: bool) -> dict[str, Callable[[], Any]]:
    """Named launches to time: the default kernel, and with `all_variants` block shapes, float setup, a float32 volume."""
    from vertedge import drr_cuda

    rows, cols = drr_cuda.DEFAULT_BLOCK
    out = {f"int16 {rows}x{cols} (default)": lambda: drr_cuda.render_cuda(dvol, views, protocol)}
    if all_variants:
        out |= {
            "int16 16x16": lambda: drr_cuda.render_cuda(dvol, views, protocol, block=(16, 16)),
            "int16 8x8": lambda: drr_cuda.render_cuda(dvol, views, protocol, block=(8, 8)),
            "int16 float setup": lambda: drr_cuda.render_cuda(dvol, views, protocol, float_setup=True),
            "float32 volume": lambda: drr_cuda.render_cuda(fvol, views, protocol),
            "int16 + normalize": lambda: drr_cuda.normalize_cuda(drr_cuda.render_cuda(dvol, views, protocol), protocol),
        }
    return out


def section_drr(repeats: int) -> dict[str, Any]:
    """Kernel time and CPU agreement for K=10 views of a 512x512x600 scan."""
    import cupy

    from vertedge import drr, drr_cuda
    from vertedge.geometry import make_views
    from vertedge.onnx_models import Models

    vol = spine_phantom(SHAPE).volume
    base = Models(device="cpu").protocol
    out: dict[str, Any] = {"volume": list(vol.shape_ijk), "int16_mib": round(vol.hu.nbytes / 2**20, 1)}
    out["upload"] = wall_times(lambda: (drr_cuda.upload_volume(vol), cupy.cuda.get_current_stream().synchronize()), 5)
    try:
        out["upload_variants"] = upload_variants(np.ascontiguousarray(vol.hu))
    except Exception as e:  # an alternative that does not work here must not cost the kernel figures
        out["upload_variants"] = {"error": f"{type(e).__name__}: {e}"}
    dvol = drr_cuda.upload_volume(vol)
    out["cropped_volume"] = list(dvol.shape_ijk)
    fvol = drr_cuda.DeviceVolume(dvol.hu.astype(cupy.float32), dvol.world_to_index, dvol.origin)
    rows = []
    for pixel_mm in (base.pixel_mm, 2.5, 1.25):
        protocol = replace(base, pixel_mm=pixel_mm, max_rows=4096, max_cols=4096)
        views = make_views(vol, protocol)
        t0 = time.perf_counter()
        cpu = drr.render(vol, views, protocol)
        cpu_ms = (time.perf_counter() - t0) * 1e3
        gpu = drr_cuda.render_cuda(dvol, views, protocol).get()
        rel = float(np.abs(gpu - cpu).max() / np.abs(cpu).max())
        variants = kernel_variants(dvol, fvol, views, protocol, all_variants=pixel_mm == base.pixel_mm)
        rows.append(
            {
                "pixel_mm": pixel_mm,
                "detector": list(views.shape),
                "views": views.n_views,
                "step_mm": protocol.step_mm,
                "cpu_numba_ms_first_call": round(cpu_ms, 1),
                "max_rel_diff_vs_cpu": rel,
                "kernels": {name: event_times(fn, repeats) for name, fn in variants.items()},
            }
        )
    out["protocols"] = rows
    return out


def run_labeler(labeler, volume, repeats: int) -> tuple[dict[str, Any], Any]:
    """Per-stage medians over `repeats` calls after two warm-ups, and the last result."""
    for _ in range(2):
        result = labeler(volume)
    samples: dict[str, list[float]] = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = labeler(volume)
        total = (time.perf_counter() - t0) * 1e3
        for stage, ms in {**result.timings_ms, "total": total}.items():
            samples.setdefault(stage, []).append(ms)
    return {stage: stats(v) for stage, v in samples.items()}, result


def agreement(a, b) -> dict[str, Any]:
    """Do two Results list the same labels, and how far apart are their centroids (mm)?"""
    la, lb = [v.label for v in a.vertebrae], [v.label for v in b.vertebrae]
    out: dict[str, Any] = {"same_labels": la == lb, "n": [len(la), len(lb)]}
    ca, cb = a.centroids(), b.centroids()
    common = sorted(set(ca) & set(cb))
    if common:
        d = np.linalg.norm(np.array([ca[k] for k in common]) - np.array([cb[k] for k in common]), axis=1)
        out["max_centroid_diff_mm"] = round(float(d.max()), 4)
    return out


def section_pipeline(repeats: int) -> dict[str, Any]:
    """Per-stage latency on CUDA (fp16, fp32) and CPU for one 512x512x600 scan, and their agreement."""
    from vertedge.metrics import score
    from vertedge.pipeline import Labeler

    ph = spine_phantom(SHAPE)
    out: dict[str, Any] = {"volume": list(ph.volume.shape_ijk)}
    results = {}
    for name, fp16, device, n in (
        ("cuda fp32", False, "cuda", repeats),
        ("cuda fp16", True, "cuda", repeats),
        ("cpu fp32", False, "cpu", 3),
    ):
        labeler = Labeler(device=device, fp16=fp16)
        stages, result = run_labeler(labeler, ph.volume, n)
        s = score(result.centroids(), ph.centroids)
        out[name] = {
            "stages": stages, "found": len(result.vertebrae), "id_rate_pct": s.id_rate["all"],
            "l_error_mm": s.l_error_mm["all"], "models": labeler.models.ids,
        }
        results[name] = result
    out["agreement"] = {
        "cuda fp32 vs cpu fp32": agreement(results["cuda fp32"], results["cpu fp32"]),
        "cuda fp16 vs cpu fp32": agreement(results["cuda fp16"], results["cpu fp32"]),
    }
    return out


def section_options(repeats: int) -> dict[str, Any]:
    """Net times under each CUDA provider option set: warm, and the first call on a new detector shape."""
    from dataclasses import replace

    from vertedge.options import DEFAULT_OPTIONS
    from vertedge.pipeline import Labeler

    volume, other = spine_phantom(SHAPE).volume, spine_phantom((400, 400, 420), seed=1).volume
    out: dict[str, Any] = {"default": DEFAULT_OPTIONS.cuda_provider_options(fp16=False)}
    for search in ("HEURISTIC", "EXHAUSTIVE", "DEFAULT"):
        for tf32 in ("0", "1"):
            options = replace(DEFAULT_OPTIONS, cuda_fp32=(("cudnn_conv_algo_search", search), ("use_tf32", tf32)))
            labeler = Labeler(device="cuda", options=options)
            stages, _ = run_labeler(labeler, volume, repeats)
            first = labeler(other)
            out[f"{search} tf32={tf32}"] = {
                "warm_ms": {k: stages[k]["median_ms"] for k in ("localization_net", "identification_net", "total")},
                "new_shape_first_call_ms": {k: round(first.timings_ms[k], 1) for k in ("localization_net", "identification_net")},
            }
    return out


def section_accuracy(seeds: list[int]) -> dict[str, Any]:
    """Pooled Id-Rate / L-Error on held-out seeds for CUDA fp16, CUDA fp32 and CPU fp32."""
    from vertedge.metrics import pool, score
    from vertedge.phantom import make_phantom
    from vertedge.pipeline import Labeler

    labelers = {"cuda fp32": Labeler(device="cuda"), "cuda fp16": Labeler(device="cuda", fp16=True), "cpu fp32": Labeler(device="cpu")}
    per: dict[str, list] = {k: [] for k in labelers}
    differ = []
    for seed in seeds:
        ph = make_phantom(seed)
        cut = {k for k, c in ph.cut.items() if c}
        results = {k: lab(ph.volume) for k, lab in labelers.items()}
        for k, r in results.items():
            per[k].append(score(r.centroids(), ph.centroids, exclude=cut))
        for name in ("cuda fp32", "cuda fp16"):
            a = agreement(results[name], results["cpu fp32"])
            if not a["same_labels"] or a.get("max_centroid_diff_mm", 0) > 0.5:
                differ.append({"seed": seed, "backend": name, **a})
    out: dict[str, Any] = {"seeds": [seeds[0], seeds[-1]], "differs_from_cpu": differ}
    for k, scores in per.items():
        p = pool(scores)
        out[k] = {"id_rate_pct": p.id_rate, "l_error_mm": p.l_error_mm}
    return out


def markdown(report: dict[str, Any]) -> str:
    """The headline figures as Markdown tables."""
    env = report.get("env", {})
    lines = [f"GPU: {env.get('gpu', '?')} (sm {env.get('sm', '?')}), CUDA runtime {env.get('cuda_runtime', '?')}, "
             f"CuPy {env.get('cupy', '?')}, ONNX Runtime {env.get('onnxruntime', '?')}; {report['date']}", ""]
    d = report.get("drr")
    if isinstance(d, dict) and "protocols" in d:
        lines += [f"DRR, volume {d['volume']} int16 ({d['int16_mib']} MiB), cropped to {d['cropped_volume']}; upload median {d['upload']['median_ms']:.1f} ms",
                  f"Upload alternatives: {json.dumps(d.get('upload_variants'))}", "",
                  "| pixel mm | detector | K | variant | kernel median ms | min ms | max rel diff vs CPU |", "|---|---|---|---|---|---|---|"]
        for r in d["protocols"]:
            for name, t in r["kernels"].items():
                lines.append(
                    f"| {r['pixel_mm']} | {r['detector'][0]}x{r['detector'][1]} | {r['views']} | {name} | "
                    f"{t['median_ms']:.3f} | {t['min_ms']:.3f} | {r['max_rel_diff_vs_cpu']:.1e} |"
                )
        lines.append("")
    p = report.get("pipeline")
    if isinstance(p, dict) and "cuda fp16" in p:
        names = [k for k in ("cuda fp32", "cuda fp16", "cpu fp32") if k in p]
        stages = list(p[names[0]]["stages"])
        lines += [f"Pipeline, volume {p['volume']} in host memory, median ms", "", "| stage | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for s in stages:
            lines.append(f"| {s} | " + " | ".join(f"{p[n]['stages'].get(s, {}).get('median_ms', float('nan')):.2f}" for n in names) + " |")
        lines += ["", f"Agreement: {json.dumps(p['agreement'])}", ""]
    o = report.get("options")
    if isinstance(o, dict) and "default" in o:
        lines += ["CUDA provider options, net medians ms (warm) and the first call on a new detector shape", "",
                  "| options | loc warm | id warm | total warm | loc new shape | id new shape |", "|---|---|---|---|---|---|"]
        for k, v in o.items():
            if k != "default":
                w, f = v["warm_ms"], v["new_shape_first_call_ms"]
                lines.append(
                    f"| {k} | {w['localization_net']:.2f} | {w['identification_net']:.2f} | {w['total']:.1f} | "
                    f"{f['localization_net']:.1f} | {f['identification_net']:.1f} |"
                )
        lines.append("")
    a = report.get("accuracy")
    if isinstance(a, dict) and "cuda fp16" in a:
        lines += [f"Accuracy, held-out seeds {a['seeds'][0]}-{a['seeds'][1]}", "", "| backend | Id-Rate | L-Error mm |", "|---|---|---|"]
        for k in ("cuda fp32", "cuda fp16", "cpu fp32"):
            lines.append(f"| {k} | {a[k]['id_rate_pct']['all']:.2f}% | {a[k]['l_error_mm']['all']:.2f} |")
        lines += ["", f"Seeds where a CUDA backend and CPU fp32 differ (labels, or centroids > 0.5 mm): {a['differs_from_cpu']}", ""]
    for k, v in report.items():
        if isinstance(v, dict) and "error" in v:
            lines.append(f"Section {k} failed: {v['error']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the sections, print and save the report."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seeds", default="0-19")
    ap.add_argument("--sections", default="env,drr,pipeline,options,accuracy")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    lo, hi = (int(v) for v in args.seeds.split("-"))
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:])}
    sections = {
        "env": section_env,
        "drr": lambda: section_drr(args.repeats),
        "pipeline": lambda: section_pipeline(args.repeats),
        "options": lambda: section_options(max(5, args.repeats // 2)),
        "accuracy": lambda: section_accuracy(list(range(lo, hi + 1))),
    }
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            report[name] = sections[name]()
        except Exception as e:  # record and go on: one device session must yield every section it can
            report[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        print(f"[{name}] {time.perf_counter() - t0:.1f} s: {json.dumps(report[name])[:2000]}", file=sys.stderr, flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
    text = markdown(report)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
