"""Where the localization net puts each vertebra in each view: 2D peak offsets from the projected truth.

For every scored vertebra of a case (real CT under `--real`, held-out phantoms) and variation of
`robustness.VARIATIONS`, the pipeline runs as shipped (`keep_images`, so the views are the ones it
used after its upright rounds); the localization net's peaks are taken in each of those views,
and the peak nearest the truth's projection (within `--match-mm` at the vertebra) gives the
offset along the spine (mm at the vertebra's depth, + superior, the direction from the vertebra
below to the one above on the detector) and across it. Fused 3D points average these rays, so a
bias here is the net's, not the fusion's.

`--context-mm R` first replaces every voxel inside the body (> -500 HU) farther than R mm from
the truth's spine line, measured in the scan's axial planes, by soft tissue (40 HU): what the net
sees beside the spine (lungs, heart, ribs, scapulae, arms) is then gone, the vertebrae and the
body outline stay. It is a diagnostic of what drives a bias, not a way to run the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from robustness import VARIATIONS, Case, case_arguments, chosen_variations, phantom_case, real_cases, seeds_of

from vertedge.geometry import pixel_mm_at_depth, project
from vertedge.labelling import peaks_of
from vertedge.labels import name as label_name
from vertedge.pipeline import Labeler

SOFT_TISSUE_HU = 40.0
BODY_HU = -500.0


def without_context(case: Case, radius_mm: float) -> Case:
    """`case` with the body beyond `radius_mm` of its truth spine line (in axial planes) set to soft tissue."""
    vol = case.volume
    a, axis = vol.si_axis()
    pts = np.array(list(case.truth.values()), float)
    s = pts @ axis
    order = np.argsort(s)
    pts, s = pts[order], s[order]
    hu = np.array(vol.hu, np.float32)
    hu_axis = 2 - a  # hu is stored (k, j, i)
    others = [b for b in range(3) if b != a]  # index axes of a slice, i before j before k
    n0, n1 = (vol.shape_ijk[b] for b in others)
    g0, g1 = np.meshgrid(np.arange(n0), np.arange(n1), indexing="ij")
    for n in range(vol.shape_ijk[a]):
        ijk = np.zeros((n0, n1, 3))
        ijk[..., a], ijk[..., others[0]], ijk[..., others[1]] = n, g0, g1
        world = vol.index_to_world(ijk)
        centre = np.array([np.interp(float(np.mean(world @ axis)), s, pts[:, d]) for d in range(3)])
        off = world - centre
        off -= (off @ axis)[..., None] * axis
        far = (off**2).sum(-1) > radius_mm**2  # (n0, n1) over (lower, higher) index axes
        plane = np.moveaxis(hu, hu_axis, 0)[n]  # a view: (higher, lower) index axes
        plane[far.T & (plane > BODY_HU)] = SOFT_TISSUE_HU
    return replace(case, volume=replace(vol, hu=hu))


def view_offsets(labeler: Labeler, case: Case, match_mm: float) -> list[dict]:
    """Per scored vertebra: the views whose nearest peak lies within `match_mm`, and the mean and SD
    of the peaks' offsets along (+ superior) and across the spine, mm at the vertebra."""
    result = labeler(case.volume, keep_images=True)
    views = result.views
    heatmaps = labeler.models.localize(result.images)
    peaks = peaks_of(heatmaps, views, labeler.models.loc_info.heatmap["threshold"], labeler.options)
    superior = case.volume.si_axis()[1]
    labels = sorted(case.truth, key=lambda k: -float(case.truth[k] @ superior))
    truth = np.array([case.truth[k] for k in labels])
    rc, depth = project(views, truth)  # (K, N, 2) pixels, (K, N) mm
    mm_per_px = pixel_mm_at_depth(views, depth)
    rows = []
    for j, lab in enumerate(labels):
        if lab in case.cut:
            continue
        up, down = max(j - 1, 0), min(j + 1, len(labels) - 1)
        offsets = []
        for k in range(views.n_views):
            found = peaks.in_view(k)
            if not len(found):
                continue
            along = rc[k, up] - rc[k, down]
            # one truth point has no neighbour to give the spine's direction: up the detector's rows
            along = along / np.linalg.norm(along) if up != down else np.array([-1.0, 0.0])
            e = (found - rc[k, j]) * mm_per_px[k, j]
            i = int(np.argmin(np.linalg.norm(e, axis=1)))
            if np.linalg.norm(e[i]) <= match_mm:
                offsets.append((e[i] @ along, e[i] @ np.array([-along[1], along[0]])))
        o = np.array(offsets).reshape(-1, 2)
        rows.append({"label": int(lab), "name": label_name(int(lab)), "views": len(o),
                     "along_mm": float(o[:, 0].mean()) if len(o) else None,
                     "along_sd_mm": float(o[:, 0].std()) if len(o) else None,
                     "across_mm": float(o[:, 1].mean()) if len(o) else None})
    return rows


def _mm(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    case_arguments(ap, "stored")
    ap.add_argument("--context-mm", type=float, default=None,
                    help="replace the body beyond this distance from the spine by soft tissue first")
    ap.add_argument("--match-mm", type=float, default=15.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    names = chosen_variations(ap, args)
    labeler = Labeler(args.models, device="cpu")
    wanted = set(filter(None, args.cases.split(",")))
    cases = real_cases(Path(args.real)) if Path(args.real).is_dir() else []
    cases += [phantom_case(s) for s in seeds_of(args.phantoms) if not wanted or f"phantom_{s}" in wanted]
    records = []
    print("| case | variation | vertebra | views | along mm (+ superior) | SD | across mm |\n|---|---|---|---|---|---|---|")
    for case in cases:
        if wanted and case.name not in wanted:
            continue
        for name in names:
            variant = VARIATIONS[name](case)
            if args.context_mm is not None:
                variant = without_context(variant, args.context_mm)
            for row in view_offsets(labeler, variant, args.match_mm):
                records.append({"case": case.name, "variation": name, **row})
                print(f"| {case.name} | {name} | {row['name']} | {row['views']} | {_mm(row['along_mm'], '+.1f')} | "
                      f"{_mm(row['along_sd_mm'], '.1f')} | {_mm(row['across_mm'], '+.1f')} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"records": records, "context_mm": args.context_mm,
                                               "models": labeler.models.ids}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
