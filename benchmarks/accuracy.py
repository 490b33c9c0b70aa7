"""Accuracy of the shipped (or given) models: held-out phantom seeds and the real cases in shared/data.

Usage:
    python benchmarks/accuracy.py [--seeds 0-39] [--models DIR] [--device cpu] [--real ../shared/data/real]
                                  [--json accuracy.json]

Phantom seeds 0-999 are never used for training (train/ draws from 1000 up). Each seed's phantom is
labelled and scored against its true body centroids (VerSe Id-Rate and L-Error, cut vertebrae left
out); scores are pooled over all seeds, per region, and listed per hard-case group. Each real case
is scored the same way and listed per vertebra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vertedge.labels import name
from vertedge.metrics import Scores, format_table, pool, read_points, score
from vertedge.phantom import make_phantom
from vertedge.pipeline import Labeler
from vertedge.volume import load_volume


def parse_seeds(text: str) -> list[int]:
    """'0-39' or '1,5,9' -> a list of seeds."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


def hard_cases(params: dict[str, Any]) -> list[str]:
    """The hard-case groups a phantom belongs to (from what its seed chose)."""
    groups = [f"region:{params.get('region', '?')}"]
    for key, group in (("metal", "metal"), ("scoliosis", "scoliosis")):
        if params.get(key):
            groups.append(group)
    if params.get("variant") in ("T13", "L6"):  # "normal" otherwise
        groups.append(f"variant:{params['variant']}")
    return groups


def phantom_scores(labeler: Labeler, seeds: list[int]) -> tuple[Scores, list[dict[str, Any]]]:
    """Pooled scores over phantom seeds and one record per seed."""
    per_seed, records = [], []
    for seed in seeds:
        ph = make_phantom(seed)
        t0 = time.perf_counter()
        result = labeler(ph.volume)
        s = score(result.centroids(), ph.centroids, exclude={k for k, c in ph.cut.items() if c})
        per_seed.append(s)
        records.append(
            {
                "seed": seed,
                "groups": hard_cases(ph.params),
                "n_true": len(ph.centroids),
                "n_found": len(result.vertebrae),
                "id_rate": s.id_rate["all"],
                "l_error_mm": s.l_error_mm["all"],
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        print(f"seed {seed}: {records[-1]}", file=sys.stderr)
    return pool(per_seed), records


def real_scores(labeler: Labeler, root: Path) -> list[dict[str, Any]]:
    """Per-case, per-vertebra results on the real CTs under `root` (ct.nii.gz + ground_truth.json)."""
    out = []
    for case in sorted(p for p in root.iterdir() if (p / "ct.nii.gz").is_file()):
        truth, cut = read_points(case / "ground_truth.json")
        result = labeler(load_volume(case / "ct.nii.gz"))
        s = score(result.centroids(), truth, exclude=cut).to_dict()
        out.append(
            {
                "case": case.name,
                "found": [v.name for v in result.vertebrae],
                "cut_by_field_of_view": [name(c) for c in sorted(cut)],
                "scores": {k: s[k] for k in ("id_rate", "l_error_mm", "n_gt")},
                "per_vertebra": s["per_vertebra"],
            }
        )
        print(f"{case.name}: found {out[-1]['found']}", file=sys.stderr)
    return out


def main() -> None:
    """Score phantoms and real cases; print tables; optionally save JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-39")
    ap.add_argument("--models", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "real")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    labeler = Labeler(args.models, device=args.device)
    pooled, records = phantom_scores(labeler, parse_seeds(args.seeds))
    print(f"held-out phantoms, seeds {args.seeds}:\n{format_table(pooled)}\n")
    groups = sorted({g for r in records for g in r["groups"]})
    for g in groups:
        rs = [r for r in records if g in r["groups"]]
        print(f"{g:<24} scans {len(rs):>3}  mean Id-Rate {sum(r['id_rate'] for r in rs) / len(rs):6.1f} %")
    real = real_scores(labeler, args.real) if args.real.is_dir() else []
    for case in real:
        print(f"\n{case['case']}: found {', '.join(case['found'])}; cut, not scored: {case['cut_by_field_of_view']}")
        for row in case["per_vertebra"]:
            dist = "-" if row["distance_mm"] is None else f"{row['distance_mm']:.1f} mm"
            print(f"  {row['name']:<4} identified={row['identified']!s:<5} distance={dist}")
    if args.json:
        args.json.write_text(json.dumps({"phantoms": pooled.to_dict(), "seeds": records, "real": real}, indent=2))


if __name__ == "__main__":
    main()
