"""`python -m export CHECKPOINT_DIR OUT_DIR [--no-fp16]`: the two ONNX models with a parity check."""

from __future__ import annotations

import argparse
import sys

from . import export_run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m export", description=__doc__)
    ap.add_argument("run_dir", help="training run folder (holds loc/last.pt and id/last.pt)")
    ap.add_argument("out_dir", help="where localization.onnx and identification.onnx go")
    ap.add_argument("--no-fp16", action="store_true", help="skip the fp16 variants")
    ap.add_argument("--budget-mb", type=float, default=40.0, help="size budget for all files together")
    ap.add_argument("--threshold", type=float, default=None,
                    help="heatmap peak threshold as a fraction of the amplitude (default: the training config's)")
    args = ap.parse_args(argv)
    export_run(args.run_dir, args.out_dir, fp16=not args.no_fp16, budget_mb=args.budget_mb,
               log=lambda m: print(m, flush=True), threshold=args.threshold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
