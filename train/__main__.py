"""`python -m train render|pretrain|loc|id|all|eval --config CONFIG --out RUN_DIR`.

- render:   fill the sample cache (phantom seeds of the config, VerSe roots) with DRRs
- pretrain: SimSiam pretraining of the shared encoder (two views of one scan = positive pair)
- loc, id:  the localization and identification U-Nets (encoder from pretraining when present)
- all:      render (if needed), pretrain, loc, id in sequence
- eval:     2D and 3D evaluation of exported models on held-out phantom seeds (and real cases)

Every training command resumes from `<out>/<task>/last.pt`; progress goes to stdout and the loss
log to `<out>/<task>/log.jsonl`. The config is copied to `<out>/config.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["render", "pretrain", "loc", "id", "all", "eval"])
    ap.add_argument("--config", default=str(Path(__file__).parent / "configs" / "default.json"))
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--workers", type=int, default=None, help="render processes (default: config)")
    ap.add_argument("--steps", type=int, default=None, help="override the task's step count")
    ap.add_argument("--verse", action="append", default=[], help="extra VerSe-layout root (repeatable)")
    ap.add_argument("--seeds", default="0-19", help="eval: held-out phantom seeds, e.g. 0-19")
    ap.add_argument("--models", default=None, help="eval: ONNX models folder (default: <out>/models or <out>)")
    ap.add_argument("--real", default=None, help="eval: folder of real cases (*/ct.nii.gz + ground_truth.json)")
    ap.add_argument("--no-3d", action="store_true", help="eval: 2D scores only")
    ap.add_argument("--report", default=None, help="eval: write the scores as JSON here")
    args = ap.parse_args(argv)

    cfg = json.loads(Path(args.config).read_text())
    if args.verse:
        cfg["data"]["verse_roots"] = list(cfg["data"].get("verse_roots", [])) + args.verse
    out = Path(args.out)
    if args.command != "eval":
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2))

    from vertedge.geometry import Protocol

    from .data import cache_folder, prerender, sources_from_config

    protocol = Protocol.from_dict(cfg["protocol"])
    if args.command in ("render", "all"):
        d = cfg["data"]
        prerender(sources_from_config(d), protocol, cache_folder(d.get("cache"), protocol),
                  int(d["variants_per_scan"]), int(cfg.get("seed", 0)), float(d.get("crop_prob", 0.5)),
                  float(d.get("min_keep", 0.35)), workers=args.workers or int(d.get("render_workers", 1)), log=_log)
    if args.command == "eval":
        from .evaluate import evaluate_2d_models, evaluate_3d, evaluate_real

        lo, _, hi = args.seeds.partition("-")
        seeds = list(range(int(lo), int(hi or lo) + 1))
        if any(s >= 1000 for s in seeds):
            _log("[eval] warning: seeds >= 1000 are training seeds")
        models = Path(args.models) if args.models else (out if (out / "localization.onnx").exists() else out / "models")
        res = {"2d": evaluate_2d_models(models, seeds, log=_log)}
        if not args.no_3d:
            res["3d"] = evaluate_3d(models, seeds, log=_log)
        if args.real:
            res["real"] = evaluate_real(models, args.real, log=_log)
        if args.report:
            Path(args.report).write_text(json.dumps(res, indent=2, default=float))
        return 0
    from .loop import run_task

    tasks = ["pretrain", "loc", "id"] if args.command == "all" else [args.command] if args.command != "render" else []
    for task in tasks:
        run_task(task, cfg, out, log=_log, steps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
