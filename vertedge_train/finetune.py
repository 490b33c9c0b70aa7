"""`vertedge-train finetune`: the shipped models continued on real scans mixed with phantoms, or on phantoms only.

Steps: bring both ONNX models back as torch nets (`from_onnx`, BatchNorms frozen); split the real
cases into training and validation (by name, stable); render the training cases' variants (the
whole scan, then random pose, field of view, slices, noise and S-I crops: `data.everyday_variant`)
and the phantoms' into the DRR cache; train localization and identification on a pool that holds
only those sources, `real_fraction` of every batch real; export both (with the parity check) into
the output folder, which `vertedge run --models` then takes; score the validation cases and
held-out phantoms with the source models and the new ones; write a model card (JSON and Markdown).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from vertedge.atomic import write_json
from vertedge.geometry import Protocol
from vertedge.phantom import PHANTOM_VERSION

from .config import HeatmapConfig, TrainConfig
from .data import Pool, cache_folder, data_sources, prerender, scan_of, source_tag
from .export import FILES
from .from_onnx import Imported, import_onnx, write_init

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "finetune_real.json"


def source_name(source: str) -> str:
    """A readable name of a data source: the case folder's or the CT file's name."""
    kind, _, spec = source.partition(":")
    if kind == "case":
        return Path(spec).name
    return Path(spec.partition("::")[0]).name.removesuffix(".nii.gz").removesuffix("_ct")


def split(sources: Sequence[str], val_fraction: float, val_names: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """(training, validation) sources: the named ones, else a stable `val_fraction` of them by name hash.

    At least one case stays in training; a non-zero fraction of two or more cases holds out at least one.
    """
    names = {source_name(s): s for s in sources}
    unknown = sorted(set(val_names) - set(names))
    if unknown:
        raise ValueError(f"--val {', '.join(unknown)}: no such case (cases: {', '.join(sorted(names))})")
    if val_names:
        val = [names[n] for n in val_names]
    else:
        k = min(math.ceil(val_fraction * len(sources)), len(sources) - 1) if val_fraction > 0 else 0
        val = sorted(sources, key=lambda s: hashlib.sha1(source_name(s).encode()).hexdigest())[:k]
    train = [s for s in sources if s not in val]
    if not train:
        raise ValueError("every case is held out for validation: nothing left to train on")
    return train, val


def _configure(cfg: TrainConfig, nets: dict[str, Imported], real: list[str]) -> TrainConfig:
    """The template config completed from the ONNX models: protocol, heatmap, architecture, version."""
    loc, ident = nets["loc"], nets["id"]
    protocol = Protocol.from_dict(json.loads(loc.metadata["vertedge.protocol"]))
    if Protocol.from_dict(json.loads(ident.metadata["vertedge.protocol"])) != protocol:
        raise ValueError("the two models were trained on different DRR protocols")
    hm = json.loads(loc.metadata.get("vertedge.heatmap", "{}"))
    amp = float(hm.get("amplitude", 1.0))
    heatmap = HeatmapConfig(float(hm.get("sigma_px", 1.5)), amp, float(hm.get("threshold", 0.5 * amp)) / amp)
    if ident.design != loc.design:
        raise ValueError("the two models have different encoders; fine-tuning expects one design")
    version = cfg.version or loc.metadata.get("vertedge.model_version", "0") + "+finetune"
    return replace(cfg, protocol=protocol, heatmap=heatmap, net=loc.design, version=version,
                   data=replace(cfg.data, real_cases=tuple(source_name(s) for s in real)),
                   id=replace(cfg.id, context_dilations=ident.context),
                   source_models={t: n.metadata.get("vertedge.model_id", "?") for t, n in nets.items()})


def finetune(models_dir: str | Path, data_roots: Sequence[str | Path], out: str | Path,
             config: str | Path = DEFAULT_CONFIG, val_fraction: float = 0.2, val_names: Sequence[str] = (),
             steps: int | None = None, real_fraction: float | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fine-tune the models in `models_dir` on the cases under `data_roots` (none: on the config's
    phantoms only, e.g. after a phantom change); the new models go into `out`. A task whose steps
    are 0 keeps its source net's weights.

    Returns the model card (also written as `out/model_card.json` and `out/MODEL_CARD.md`).
    """
    from vertedge.pipeline import Labeler

    from .evaluate import evaluate_3d, score_scans
    from .export import export_run
    from .loop import run_task

    if not data_roots and (val_names or real_fraction is not None):  # said, not silently dropped
        what = "validation cases (--val)" if val_names else "a real share (--real-fraction)"
        raise ValueError(f"{what} need real scans (--data); without them the fine-tune is on phantoms only")
    t0 = time.time()
    models_dir, out = Path(models_dir), Path(out)
    nets = {task: import_onnx(models_dir / FILES[task]) for task in ("loc", "id")}
    sources = sorted({s for root in data_roots for s in data_sources(root)})
    train, val = split(sources, val_fraction, val_names) if data_roots else ([], [])
    cfg = _configure(TrainConfig.load(config), nets, train)
    if real_fraction is not None:
        cfg = replace(cfg, data=replace(cfg.data, real_fraction=float(real_fraction)))
    if not train:  # phantoms only (a new phantom version): no real share to draw
        cfg = replace(cfg, data=replace(cfg.data, real_fraction=None))
    d = cfg.data
    log(f"[finetune] {len(train)} training cases ({', '.join(map(source_name, train))}), "
        f"{len(val)} for validation ({', '.join(map(source_name, val)) or 'none'})")
    write_json(out / "config.json", cfg.to_dict())

    folder = cache_folder(d.cache, cfg.protocol, d.size_range)
    lo, hi = d.train_seeds
    phantoms = [f"phantom:{s}" for s in range(lo, hi)]
    prerender(phantoms, cfg.protocol, folder, d.variants_per_scan, cfg.seed, d.crop_prob, d.min_keep,
              workers=d.render_workers, log=log, size_range=d.size_range)
    prerender(train, cfg.protocol, folder, d.real_variants, cfg.seed, d.crop_prob, d.min_keep,
              workers=d.render_workers, log=log, everyday=True, size_range=d.size_range)
    pool = Pool(folder, tags={source_tag(s) for s in phantoms} | {source_tag(s, everyday=True) for s in train})
    log(f"[finetune] {len(pool)} samples, {sum(not t.startswith('phantom_') for t in pool.tags)} of them real")

    for task in ("loc", "id"):
        init = write_init(nets[task], out / task / "init.pt")
        cfg = cfg.with_task(task, init=str(init))
        run_task(task, cfg, out, log=log, pool=pool, steps=steps)
    export_run(out, out, log=log)

    card: dict[str, Any] = {
        "models": dict(cfg.source_models),
        "version": cfg.version,
        "training_cases": [source_name(s) for s in train],
        "validation_cases": [source_name(s) for s in val],
        "phantom_seeds": [lo, hi - 1],
        "phantom_version": PHANTOM_VERSION,
        "real_fraction": d.real_fraction,
        "steps": {t: cfg.task(t).steps if steps is None else steps for t in ("loc", "id")},
        "minutes": round((time.time() - t0) / 60, 1),
    }
    for label, folder_ in (("source models", models_dir), ("fine-tuned", out)):
        entry: dict[str, Any] = {}
        if val:
            scans = [scan_of(s) for s in val]
            entry["validation"] = {k: v["scores"] for k, v in score_scans(Labeler(folder_, device="cpu"), scans, log).items()}
        if cfg.validation_seeds:
            entry["phantoms"] = evaluate_3d(folder_, list(cfg.validation_seeds), log)
        card[label] = entry
    write_json(out / "model_card.json", card)
    (out / "MODEL_CARD.md").write_text(model_card_markdown(card), encoding="utf-8")
    log(f"[finetune] done in {card['minutes']} min: {out}")
    return card


def _scores(name: str, s: dict[str, Any]) -> str:
    rate, err = s["id_rate"]["all"], s["l_error_mm"]["all"]
    if rate is None:
        return f"{name}: nothing scorable (every vertebra cut)"
    return f"{name}: Id-Rate {rate:.1f} %, L-Error " + ("-" if err is None else f"{err:.2f} mm")  # none when no label matched


def _score_line(entry: dict[str, Any]) -> str:
    parts = [_scores(name, s) for name, s in entry.get("validation", {}).items()]
    if entry.get("phantoms"):
        parts.append(_scores("phantoms", entry["phantoms"]))
    return "; ".join(parts) or "not scored"


def model_card_markdown(card: dict[str, Any]) -> str:
    """The model card as a short Markdown page."""
    return "\n".join([
        f"# vertedge models {card['version']} (fine-tuned)",
        "",
        f"- From: {card['models']['loc']} and {card['models']['id']}",
        (f"- Real training cases: {', '.join(card['training_cases'])}; {card['real_fraction']} of each batch real, "
         f"the rest phantoms (seeds {card['phantom_seeds'][0]}-{card['phantom_seeds'][1]})" if card["training_cases"] else
         f"- Phantoms only (seeds {card['phantom_seeds'][0]}-{card['phantom_seeds'][1]}, phantom version {card['phantom_version']})"),
        f"- Steps: localization {card['steps']['loc']}, identification {card['steps']['id']}; {card['minutes']} min",
        f"- Validation cases: {', '.join(card['validation_cases']) or 'none'}",
        f"- Source models: {_score_line(card['source models'])}",
        f"- Fine-tuned: {_score_line(card['fine-tuned'])}",
        "",
    ])
