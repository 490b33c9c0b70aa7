"""Accuracy of the shipped (or given) models: held-out phantom seeds and the real cases in shared/data.

Usage:
    python benchmarks/accuracy.py [--seeds 0-39] [--models DIR] [--device cpu] [--real ../shared/data/real]
                                  [--json accuracy.json]

Phantom seeds 0-999 are never used for training (vertedge_train draws from 1000 up). Each seed's
phantom is labelled and scored against its true body centroids (VerSe Id-Rate and L-Error, cut
vertebrae left out); scores are pooled over all seeds, per region, and listed per hard-case group.
Each real case is scored the same way and listed per vertebra. The scoring is
`vertedge_train.evaluate` (torch-free), the one place the training side scores models too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vertedge.metrics import format_table
from vertedge.pipeline import Labeler
from vertedge_train.data import case_scan, find_cases
from vertedge_train.evaluate import score_phantoms, score_scans


def parse_seeds(text: str) -> list[int]:
    """'0-39' or '1,5,9' -> a list of seeds."""
    if "-" in text:
        lo, hi = (int(v) for v in text.split("-"))
        return list(range(lo, hi + 1))
    return [int(v) for v in text.split(",")]


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
    pooled, records = score_phantoms(labeler, parse_seeds(args.seeds), log=lambda m: print(m, file=sys.stderr))
    print(f"held-out phantoms, seeds {args.seeds}:\n{format_table(pooled)}\n")
    groups = sorted({g for r in records for g in r["groups"]})
    for g in groups:
        rs = [r for r in records if g in r["groups"]]
        print(f"{g:<24} scans {len(rs):>3}  mean Id-Rate {sum(r['id_rate'] for r in rs) / len(rs):6.1f} %")
    cases = [case_scan(c) for c in find_cases(args.real)] if args.real.is_dir() else []
    real = score_scans(labeler, cases, log=lambda m: None)
    for case_name, case in real.items():
        print(f"\n{case_name}: found {', '.join(case['found'])}; cut, not scored: {case['cut_by_field_of_view']}")
        for row in case["scores"]["per_vertebra"]:
            dist = "-" if row["distance_mm"] is None else f"{row['distance_mm']:.1f} mm"
            print(f"  {row['name']:<4} identified={row['identified']!s:<5} distance={dist}")
    if args.json:
        args.json.write_text(json.dumps({"phantoms": pooled.to_dict(), "seeds": records, "real": real}, indent=2))


if __name__ == "__main__":
    main()
