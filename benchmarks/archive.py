"""Scans per hour of `vertedge archive --ray local` against the plain batch (`vertedge run`) on the same scans.

Usage:
    python benchmarks/archive.py [--scans 50] [--shape 256x256x256] [--folder DIR] [--repeats 3]
                                 [--archive 1:2,2:3] [--json results.json] [--markdown results.md]

Each run is the command a user types, in a fresh process and into a fresh output folder, timed end
to end: Python and model start-up, and for the archive starting the local Ray cluster
(`--cpus C`) and its `--actors A` labellers, then shutting it down. Scans: `--folder DIR`, or
`--scans` full-spine phantoms of `--shape` (`latency.spine_phantom`, seeds 0, 1, ...) written once
into `--work`. Per mode: the median wall time over `--repeats` runs (with min and max), scans per
hour from it, the median seconds per scan from summary.json, and the ratio to the batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from latency import machine, spine_phantom


def phantoms(folder: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    """`n` full-spine phantoms of `shape` in `folder`, made once (kept for later runs)."""
    from vertedge.volume import save_volume

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ph{seed:03d}.nii.gz" for seed in range(n)]
    for seed, path in enumerate(paths):
        if not path.exists():
            save_volume(spine_phantom(shape, seed).volume, path)
    return paths


def timed_run(args: list[str], out: Path) -> dict[str, Any]:
    """Run `vertedge ARGS -o OUT -q`: its wall time, exit code and the median seconds per scan it reports."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vertedge", *args, "-o", str(out), "-q"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"vertedge {' '.join(args)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    scans = json.loads((out / "summary.json").read_text())["scans"]
    seconds = [s["seconds"] for s in scans if s["status"] == "ok"]
    return {"wall_s": wall, "scan_median_s": float(np.median(seconds)), "ok": len(seconds), "load": load}


def measure(mode: str, args: list[str], n: int, repeats: int, work: Path) -> dict[str, Any]:
    """`repeats` runs of one mode: median, min and max wall time, scans per hour, seconds per scan."""
    runs = []
    for r in range(repeats):
        runs.append(timed_run(args, work / f"out-{mode.replace(' ', '_').replace(':', '-')}-{r}"))
        print(f"{mode} run {r + 1}: {runs[-1]['wall_s']:.1f} s", file=sys.stderr)
    walls = [run["wall_s"] for run in runs]
    wall = float(np.median(walls))
    return {
        "mode": mode,
        "command": "vertedge " + " ".join(args),
        "runs": runs,
        "wall_s": wall,
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
        "scans_per_hour": n / wall * 3600,
        "scan_median_s": float(np.median([run["scan_median_s"] for run in runs])),
        "load": [round(run["load"], 2) for run in runs],
    }


def markdown(rows: list[dict[str, Any]], n: int) -> str:
    """The results as a Markdown table, the batch first."""
    batch = rows[0]["wall_s"]
    lines = [
        f"| mode ({n} scans) | wall s: median (min-max) | scans/hour | s per scan (median, in the scan's worker) | wall / batch | load |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['wall_s']:.1f} ({r['wall_min_s']:.1f}-{r['wall_max_s']:.1f}) | {r['scans_per_hour']:.0f} "
            f"| {r['scan_median_s']:.2f} | {r['wall_s'] / batch:.2f} | {', '.join(map(str, r['load']))} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scans", type=int, default=50, help="number of phantoms (without --folder)")
    parser.add_argument("--shape", default="256x256x256", help="phantom voxels i x j x k")
    parser.add_argument("--folder", type=Path, help="label these scans instead of phantoms")
    parser.add_argument("--work", type=Path, help="folder for the phantoms and outputs (default: a new temporary one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--archive", default="1:2,2:3", help="archive runs as ACTORS:CPUS, comma-separated")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    a = parser.parse_args()

    work = a.work or Path(tempfile.mkdtemp(prefix="vertedge-archive-bench-"))
    shape = tuple(int(x) for x in a.shape.split("x"))
    if a.folder is not None:
        from vertedge.batch import expand_inputs

        folder, n = a.folder, len(expand_inputs([a.folder]))
    else:
        folder, n = work / "scans", a.scans
        phantoms(folder, n, shape)  # type: ignore[arg-type]
    device = ["--device", "cpu"]
    rows = [measure("batch (vertedge run)", ["run", str(folder), *device], n, a.repeats, work)]
    for config in a.archive.split(","):
        actors, cpus = config.split(":")
        args = ["archive", str(folder), "--ray", "local", "--cpus", cpus, "--actors", actors, *device]
        rows.append(measure(f"archive, {actors} labeller(s), {cpus} CPUs", args, n, a.repeats, work))
    table = markdown(rows, n)
    print(table)
    if a.markdown:
        a.markdown.write_text(table)
    if a.json:
        a.json.write_text(json.dumps({"machine": machine(), "scans": n, "folder": str(folder), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
