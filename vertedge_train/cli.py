"""`vertedge-train COMMAND`: train the two U-Nets that vertedge ships and export them as ONNX.

- render:   fill the sample cache (phantom seeds of the config, VerSe roots) with DRRs
- pretrain: SimSiam pretraining of the shared encoder (two views of one scan = positive pair)
- loc, id:  the localization and identification U-Nets (encoder from pretraining when present)
- all:      render (if needed), pretrain, loc, id in sequence
- eval:     2D and 3D evaluation of exported models on held-out phantom seeds (and real cases)
- export:   a training run's two nets as ONNX models with a parity check (non-zero exit on a mismatch)
- data:     public datasets (download or index) and corrected scans as training cases (VerSe layout)

Every training command resumes from `<out>/<task>/last.pt`; progress goes to stdout and the loss
log to `<out>/<task>/log.jsonl`. The config is copied to `<out>/config.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .datasets.cli import add_data_parser, run_data

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.json"


def _log(msg: str) -> None:
    print(msg, flush=True)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vertedge-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("render", "pretrain", "loc", "id", "all"):
        p = sub.add_parser(name, help=f"{name} (see above)")
        p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training config JSON (default: the shipped models')")
        p.add_argument("--out", default="runs/default", help="run folder (checkpoints, logs, config copy)")
        p.add_argument("--workers", type=int, default=None, help="render processes (default: config)")
        p.add_argument("--steps", type=int, default=None, help="override the task's step count")
        p.add_argument("--verse", action="append", default=[], help="extra VerSe-layout root (repeatable)")
    p = sub.add_parser("eval", help="score exported models on held-out phantoms (and real cases)")
    p.add_argument("--models", required=True, help="folder with localization.onnx and identification.onnx")
    p.add_argument("--seeds", default="0-19", help="held-out phantom seeds, e.g. 0-19")
    p.add_argument("--real", default=None, help="folder of real cases (*/ct.nii.gz + ground_truth.json)")
    p.add_argument("--no-3d", action="store_true", help="2D scores only")
    p.add_argument("--report", default=None, help="write the scores as JSON here")
    p = sub.add_parser("export", help="ONNX models of a training run, with a parity check")
    p.add_argument("run_dir", help="training run folder (holds loc/last.pt and id/last.pt)")
    p.add_argument("out_dir", help="where localization.onnx and identification.onnx go")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 variants")
    p.add_argument("--budget-mb", type=float, default=40.0, help="size budget for all files together")
    p.add_argument("--threshold", type=float, default=None,
                   help="heatmap peak threshold as a fraction of the amplitude (default: the training config's)")
    add_data_parser(sub)
    return ap


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_2d_models, evaluate_3d, evaluate_real

    lo, _, hi = args.seeds.partition("-")
    seeds = list(range(int(lo), int(hi or lo) + 1))
    if any(s >= 1000 for s in seeds):
        _log("[eval] warning: seeds >= 1000 are training seeds")
    models = Path(args.models)
    res = {"2d": evaluate_2d_models(models, seeds, log=_log)}
    if not args.no_3d:
        res["3d"] = evaluate_3d(models, seeds, log=_log)
    if args.real:
        res["real"] = evaluate_real(models, args.real, log=_log)
    if args.report:
        Path(args.report).write_text(json.dumps(res, indent=2, default=float))
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import ParityError, export_run

    try:
        export_run(args.run_dir, args.out_dir, fp16=not args.no_fp16, budget_mb=args.budget_mb, log=_log,
                   threshold=args.threshold)
    except ParityError as e:
        print(f"vertedge-train export: {e}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from vertedge.geometry import Protocol

    from .data import cache_folder, prerender, sources_from_config

    cfg = json.loads(Path(args.config).read_text())
    if args.verse:
        cfg["data"]["verse_roots"] = list(cfg["data"].get("verse_roots", [])) + args.verse
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    protocol = Protocol.from_dict(cfg["protocol"])
    if args.command in ("render", "all"):
        d = cfg["data"]
        prerender(sources_from_config(d), protocol, cache_folder(d.get("cache"), protocol),
                  int(d["variants_per_scan"]), int(cfg.get("seed", 0)), float(d.get("crop_prob", 0.5)),
                  float(d.get("min_keep", 0.35)), workers=args.workers or int(d.get("render_workers", 1)), log=_log)
    if args.command == "render":
        return 0
    from .loop import run_task

    for task in ["pretrain", "loc", "id"] if args.command == "all" else [args.command]:
        run_task(task, cfg, out, log=_log, steps=args.steps)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "eval":
        return _eval(args)
    if args.command == "export":
        return _export(args)
    if args.command == "data":
        return run_data(args)
    return _train(args)
