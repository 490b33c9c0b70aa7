"""`vertedge-train COMMAND`: train the two U-Nets that vertedge ships and export them as ONNX.

- render:   fill the sample cache (phantom seeds of the config, VerSe roots) with DRRs
- pretrain: SimSiam pretraining of the shared encoder (two views of one scan = positive pair)
- loc, id:  the localization and identification U-Nets (encoder from pretraining when present)
- all:      render (if needed), pretrain, loc, id in sequence
- eval:     2D and 3D evaluation of exported models on held-out phantom seeds (and real cases)
- finetune: the shipped (or given) ONNX models continued on real scans mixed with phantoms, or on phantoms only
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
    p = sub.add_parser("finetune", help="continue the shipped models on real scans mixed with phantoms, or on phantoms only")
    p.add_argument("--models", default=None, help="ONNX models to start from (default: the shipped ones)")
    p.add_argument("--data", action="append", default=[],
                   help="dataset folder (VerSe layout, or case folders with ground_truth.json); repeatable; "
                        "none: the config's phantoms only")
    p.add_argument("--out", required=True, help="run folder; the new ONNX models and the model card go here")
    p.add_argument("--config", default=None, help="fine-tuning config (default: configs/finetune_real.json)")
    p.add_argument("--val", action="append", default=[], help="a case to hold out for validation (repeatable)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of the cases held out when --val is not given")
    p.add_argument("--steps", type=int, default=None, help="steps per net (default: the config's)")
    p.add_argument("--real-fraction", type=float, default=None, help="share of each batch drawn from real scans")
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


def _finetune(args: argparse.Namespace) -> int:
    from vertedge.onnx_models import default_models_dir

    from .finetune import DEFAULT_CONFIG, finetune

    try:
        finetune(args.models or default_models_dir(), args.data, args.out, args.config or DEFAULT_CONFIG,
                 args.val_fraction, args.val, args.steps, args.real_fraction, log=_log)
    except (ValueError, FileNotFoundError) as e:
        print(f"vertedge-train finetune: {e}", file=sys.stderr)
        return 2
    return 0


def _train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vertedge.atomic import write_json

    from .config import TrainConfig
    from .data import cache_folder, prerender, sources_from_config

    try:
        cfg = TrainConfig.load(args.config)
    except ValueError as e:
        print(f"vertedge-train: {e}", file=sys.stderr)
        return 2
    if args.verse:
        cfg = replace(cfg, data=replace(cfg.data, verse_roots=(*cfg.data.verse_roots, *args.verse)))
    out = Path(args.out)
    write_json(out / "config.json", cfg.to_dict())
    if args.command in ("render", "all"):
        d = cfg.data
        prerender(sources_from_config(d), cfg.protocol, cache_folder(d.cache, cfg.protocol, d.size_range),
                  d.variants_per_scan, cfg.seed, d.crop_prob, d.min_keep, workers=args.workers or d.render_workers,
                  log=_log, size_range=d.size_range)
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
    if args.command == "finetune":
        return _finetune(args)
    if args.command == "data":
        return run_data(args)
    return _train(args)
