"""How the phantom's bone compares with real CT, in the volume and in the DRRs the nets see.

Usage:
    python benchmarks/realism.py [--seeds 0-29] [--real ../shared/data/real] [--json realism.json]

Per lumbar vertebra (L1-L5, not cut by the field of view) of every real case and of every phantom
seed that has one:
  body_hu     mean HU within 8 mm of the body centroid (cancellous bone, some cortex);
  ball_p90    90th / 99th percentile HU within 25 mm (cortex, posterior elements, soft tissue);
  ball_p99
  drr_ratio   in the runtime's normalized DRRs (the shipped models' protocol), the mean of the 3
              pixels at the projected centroid over the mean of the two pixels 40 mm to either side
              at the isocentre, median over views 0, 2 and 5: how far the spine stands out of the
              soft tissue in what the nets see (1 = not at all).
Medians per case (real) and over all seeds (phantom, with their 10th-90th percentile range).

And the ribs, as the runtime's rib probe (`vertedge.ribs.rib_sides`, tuned on real CT) sees them
at the true centroids: per group of vertebrae (T1-T3, T4-T8, T9-T12; C6-C7 and L1-L2, which bear
none), the fraction of the sides it sees on which it finds a rib, per real case and over all
seeds.

And how the ribs slope (`rib_drops`): each rib found as a connected piece of bone (> 200 HU,
resampled at 2 mm) clear of the spine, from its medial end (the 5 % of its voxels nearest the
spine's axis) to its front end (the 5 % most anterior), in vertebral steps of the case's spine,
grouped by the vertebra nearest the medial end's height: the median per group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from vertedge import drr
from vertedge.geometry import Protocol, make_views, project
from vertedge.labels import LABELS, SPINE_ORDER
from vertedge.metrics import read_points
from vertedge.onnx_models import Models
from vertedge.phantom import make_phantom
from vertedge.ribs import rib_sides
from vertedge.volume import Volume, load_volume

LUMBAR = range(20, 26)
RIB_GROUPS = {group: {LABELS[n] for n in names} for group, names in (
    ("T1-T3", ("T1", "T2", "T3")), ("T4-T8", ("T4", "T5", "T6", "T7", "T8")),
    ("T9-T12", ("T9", "T10", "T11", "T12")), ("C6-C7, L1-L2 (none)", ("C6", "C7", "L1", "L2")))}
VIEWS = (0, 2, 5)
SIDE_MM = 40.0


def ball_hu(volume: Volume, centre: np.ndarray, radius_mm: float) -> np.ndarray:
    """HU of the voxels whose centres lie within `radius_mm` of `centre` (world LPS mm)."""
    span = np.ceil(radius_mm / np.asarray(volume.spacing)).astype(int) + 1
    c = np.rint(volume.world_to_index(centre[None])[0]).astype(int)  # (i, j, k)
    lo = np.maximum(c - span, 0)
    hi = np.minimum(c + span + 1, volume.shape_ijk)
    block = volume.hu[lo[2] : hi[2], lo[1] : hi[1], lo[0] : hi[0]]
    kk, jj, ii = np.meshgrid(*(np.arange(a, b) for a, b in zip(lo[::-1], hi[::-1])), indexing="ij")
    world = volume.index_to_world(np.stack([ii.ravel(), jj.ravel(), kk.ravel()], 1).astype(float))
    return block.ravel()[np.linalg.norm(world - centre, axis=1) <= radius_mm]


def drr_ratios(volume: Volume, points: np.ndarray, protocol: Protocol) -> np.ndarray:
    """(n,) spine-over-side ratio of each point (n, 3) in the normalized DRRs (median over VIEWS)."""
    views = make_views(volume, protocol)
    images = drr.normalize(drr.render(volume, views, protocol), protocol)
    rc, _ = project(views, points)
    # magnification source_det / source_iso: a detector pixel covers pixel_mm / magnification at the isocentre
    side = int(round(SIDE_MM * protocol.source_det_mm / (protocol.source_iso_mm * protocol.pixel_mm)))
    _, rows, cols = images.shape
    out = np.full((len(VIEWS), len(points)), np.nan)
    for a, k in enumerate(VIEWS):
        r, c = np.rint(rc[k]).astype(int).T
        ok = (r >= 0) & (r < rows) & (c - side >= 0) & (c + side < cols)
        centre = images[k, r[ok, None], c[ok, None] + np.arange(-1, 2)].mean(axis=1)
        beside = 0.5 * (images[k, r[ok], c[ok] - side] + images[k, r[ok], c[ok] + side])
        out[a, ok] = centre / np.maximum(beside, 1e-6)
    return np.nanmedian(out, axis=0)


def measure(volume: Volume, centroids: dict[int, np.ndarray], protocol: Protocol) -> list[dict[str, float]]:
    """One record per lumbar vertebra of `centroids` (label -> world LPS mm)."""
    labels = [k for k in sorted(centroids) if k in LUMBAR]
    if not labels:
        return []
    points = np.array([centroids[k] for k in labels], float)
    ratios = drr_ratios(volume, points, protocol)
    records = []
    for label, point, ratio in zip(labels, points, ratios):
        ball = ball_hu(volume, point, 25.0)
        records.append({
            "label": label,
            "body_hu": float(ball_hu(volume, point, 8.0).mean()),
            "ball_p90": float(np.percentile(ball, 90)),
            "ball_p99": float(np.percentile(ball, 99)),
            "drr_ratio": float(ratio),
        })
    return records


def rib_counts(volume: Volume, centroids: dict[int, np.ndarray]) -> dict[str, list[int]]:
    """Per rib group, [sides with a rib, sides seen] where the rib probe runs on `centroids` (label ->
    world LPS mm), taken in spine order as a chain."""
    labels = sorted((k for k in centroids if k in SPINE_ORDER), key=SPINE_ORDER.index)
    counts = {group: [0, 0] for group in RIB_GROUPS}
    if len(labels) < 2:
        return counts
    sides = rib_sides(volume, np.array([centroids[k] for k in labels], float))
    for label, row in zip(labels, sides):
        for group, members in RIB_GROUPS.items():
            if label in members:
                counts[group][0] += int((row == 1).sum())
                counts[group][1] += int((row >= 0).sum())
    return counts


def rib_drops(volume: Volume, centroids: dict[int, np.ndarray], grid_mm: float = 2.0) -> dict[str, list[float]]:
    """Per rib group, the drops (vertebral steps) of the ribs whose medial end lies by one of its
    vertebrae: front end below medial end, on a `grid_mm` world LPS grid around the spine of
    `centroids` (label -> world LPS mm, >= 3 vertebrae)."""
    labels = sorted((k for k in centroids if k in SPINE_ORDER), key=SPINE_ORDER.index)
    drops: dict[str, list[float]] = {group: [] for group in RIB_GROUPS}
    if len(labels) < 3:
        return drops
    pts = np.array([centroids[k] for k in labels], float)
    step = float(np.median(np.linalg.norm(np.diff(pts, axis=0), axis=1)))
    lo = pts.min(axis=0) - [170.0, 230.0, 30.0]  # the cage's width, its depth in front of the spine
    hi = pts.max(axis=0) + [170.0, 60.0, 30.0]
    x, y, z = np.meshgrid(*(np.arange(a, b, grid_mm) for a, b in zip(lo, hi)), indexing="ij")
    hu = volume.hu_linear(np.stack([x, y, z], -1).reshape(-1, 3)).reshape(x.shape)
    order = np.argsort(pts[:, 2])
    axis_x, axis_y = (np.interp(z, pts[order, 2], pts[order, c]) for c in (0, 1))
    radius = np.hypot(x - axis_x, y - axis_y)
    pieces, _ = ndimage.label((hu > 200.0) & (radius > 45.0) & (np.abs(x - axis_x) > 25.0))
    for label, piece in enumerate(ndimage.find_objects(pieces), start=1):
        idx = pieces[piece] == label
        px, py, pz, pr = (a[piece][idx] for a in (x, y, z, radius))
        lateral = np.abs(px - axis_x[piece][idx])
        # a rib reaches 100 mm lateral and runs 60 mm front to back (a transverse process, the sternum do not)
        if idx.sum() < 150 or lateral.max() < 100.0 or np.ptp(py) < 60.0:
            continue
        medial, front = pr <= np.percentile(pr, 5), py <= np.percentile(py, 5)  # LPS: anterior is -y
        # ... and starts within 80 mm of the spine's axis and hangs from there: a piece whose top lies
        # away from the spine is a rib grown into the scapula or an arm lying against the chest
        if pr[medial].mean() > 80.0 or pz[medial].mean() < np.percentile(pz, 80):
            continue
        near = labels[int(np.argmin(np.abs(pts[:, 2] - pz[medial].mean())))]
        for group, members in RIB_GROUPS.items():
            if near in members:
                drops[group].append(float((pz[medial].mean() - pz[front].mean()) / step))
    return drops


def summary(records: list[dict[str, float]]) -> dict[str, Any]:
    """Median (and 10th-90th percentile) of each measure over records."""
    keys = ("body_hu", "ball_p90", "ball_p99", "drr_ratio")
    a = {k: np.array([r[k] for r in records]) for k in keys}
    return {k: {"median": float(np.nanmedian(v)), "p10": float(np.nanpercentile(v, 10)), "p90": float(np.nanpercentile(v, 90))}
            for k, v in a.items()} | {"n": len(records)}


def main() -> None:
    """Measure the real cases and the phantom seeds; print a table and save JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-29")
    ap.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    protocol = Models(device="cpu").protocol
    report: dict[str, Any] = {"protocol": protocol.to_dict(), "real": {}, "phantom": {}, "ribs": {}, "rib_drops": {}}
    for case in sorted(p for p in args.real.glob("*") if (p / "ct.nii.gz").is_file()):
        truth, cut = read_points(case / "ground_truth.json")
        volume, whole = load_volume(case / "ct.nii.gz"), {k: v for k, v in truth.items() if k not in cut}
        records = measure(volume, whole, protocol)
        if records:
            report["real"][case.name] = summary(records) | {"vertebrae": records}
        report["ribs"][case.name] = rib_counts(volume, whole)
        report["rib_drops"][case.name] = rib_drops(volume, whole)
    lo, hi = (int(v) for v in args.seeds.split("-"))
    phantom_records: list[dict[str, float]] = []
    phantom_ribs = {group: [0, 0] for group in RIB_GROUPS}
    phantom_drops: dict[str, list[float]] = {group: [] for group in RIB_GROUPS}
    for seed in range(lo, hi + 1):
        ph = make_phantom(seed)
        whole = {k: c for k, c in ph.centroids.items() if not ph.cut[k]}
        phantom_records += measure(ph.volume, whole, protocol)
        for group, (found, seen) in rib_counts(ph.volume, whole).items():
            phantom_ribs[group][0] += found
            phantom_ribs[group][1] += seen
        for group, drops in rib_drops(ph.volume, whole).items():
            phantom_drops[group] += drops
        print(f"seed {seed}: {len(phantom_records)} lumbar vertebrae so far", file=sys.stderr)
    report["phantom"] = summary(phantom_records)
    report["ribs"][f"phantom seeds {args.seeds}"] = phantom_ribs
    report["rib_drops"][f"phantom seeds {args.seeds}"] = phantom_drops
    print("| source | lumbar vertebrae | body HU | 25 mm p90 HU | 25 mm p99 HU | DRR spine/side |")
    print("|---|---|---|---|---|---|")
    rows = [(name, s) for name, s in report["real"].items()] + [(f"phantom seeds {args.seeds}", report["phantom"])]
    for name, s in rows:
        cells = [f"{s[k]['median']:.0f} ({s[k]['p10']:.0f}-{s[k]['p90']:.0f})" for k in ("body_hu", "ball_p90", "ball_p99")]
        r = s["drr_ratio"]
        print(f"| {name} | {s['n']} | " + " | ".join(cells) + f" | {r['median']:.3f} ({r['p10']:.3f}-{r['p90']:.3f}) |")
    print()
    print("| source | " + " | ".join(f"ribs found beside {g}" for g in RIB_GROUPS) + " |")
    print("|---|" + "---|" * len(RIB_GROUPS))
    for name, counts in report["ribs"].items():
        if any(seen for _, seen in counts.values()):
            cells = [f"{found / seen:.0%} of {seen}" if seen else "-" for found, seen in counts.values()]
            print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    groups = [g for g in RIB_GROUPS if "none" not in g]
    print("| source | " + " | ".join(f"rib drop by {g}, steps (ribs)" for g in groups) + " |")
    print("|---|" + "---|" * len(groups))
    for name, by_group in report["rib_drops"].items():
        if any(by_group[g] for g in groups):
            cells = [f"{np.median(by_group[g]):.2f} ({len(by_group[g])})" if by_group[g] else "-" for g in groups]
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
