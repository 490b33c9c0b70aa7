"""Robustness benchmark: real CT and held-out phantoms, as stored and under everyday variations.

Usage:
    python benchmarks/robustness.py [--real ../shared/data/real] [--phantoms 500-503]
        [--variations stored,tilt+8,...] [--start-angles 0,12,24] [--models DIR] [--json out.json]
        [--markdown out.md]

Every case (each `../shared/data/real/<case>/` with `ct.nii.gz` or a DICOM `dicom/` folder, and
phantom seeds) runs as stored and under the variations of `VARIATIONS`: the patient tilted about
L-R, rolled about S-I, both at once (oblique), air padded in-plane, a spine-centred in-plane
field of view, S-I crops down to a third, thick slices, white and grainy noise, a smaller and a larger patient
(the anatomy scaled by 0.8 and 1.2 about the spine centre), and the same voxels stored in a
permuted and flipped grid (and, only when named in `--variations`, bone 0.4 times as bright over
muscle, `bone40`: an osteoporotic patient); with `--start-angles`, each run again with the views started that many
degrees further round (the nets' readings change with where the views stand). Every pose change
resamples the patient into the stored scan's axis-aligned grid (air outside it), as a scanner
does, and moves the ground truth with the patient: `x' = R (x - c) + c` about the spine centre
`c`. The variations live in `vertedge_train.variations`, so that a training augmentation can draw
from the same code.

Per case and variation: Id-Rate and L-Error (VerSe rules, `vertedge.metrics`; vertebrae cut by
the field of view are not scored) and every prediction's correctness: a prediction is right when
the ground-truth vertebra nearest to it (cut ones included) lies within 20 mm and has its label,
wrong otherwise (a false positive is wrong too). Reported: the highest confidence of a wrong
label, how many wrong labels are not flagged `needs_review`, and over all predictions the
expected calibration error (ECE, 10 equal-width bins) and the fraction of wrong labels above 0.5.
Per variation and per case both the mean of the runs' Id-Rates and L-Errors and the same pooled
over their vertebrae (`pooled`: as `vertedge.metrics.pool` scores a set of scans, and as
benchmarks/accuracy.py reports phantoms).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vertedge import metrics
from vertedge.options import DEFAULT_OPTIONS, PipelineOptions
from vertedge.pipeline import Labeler
from vertedge.volume import Volume, load_volume
from vertedge_train import variations
from vertedge_train.data import case_scan_path, find_cases

MATCH_MM = metrics.ID_RADIUS_MM


@dataclass(frozen=True, eq=False)
class Case:
    """A scan with its truth: label -> world LPS mm body centroid, and the labels cut by the FOV."""

    name: str
    volume: Volume
    truth: dict[int, np.ndarray]
    cut: frozenset[int]

    def spine_centre(self) -> np.ndarray:
        """World LPS mm (3,): the mean of the truth points."""
        return np.mean(list(self.truth.values()), axis=0)


# ----------------------------------------------------------------------------- variations


def _moved(case: Case, volume: Volume, truth: dict[int, np.ndarray] | None = None) -> Case:
    """`case` on a new volume (truth moved to `truth` if given). A vertebra whose centroid left the
    scan, or lies near one of its S-I faces, is cut: not scored, but a prediction on it is judged."""
    truth = case.truth if truth is None else truth
    labels = list(truth)
    kept, cut = variations.inside(volume, np.array([truth[k] for k in labels]))  # cut: variations.CUT_MARGIN_MM
    new_cut = {k for k, keep, c in zip(labels, kept, cut) if c or not keep}
    return Case(case.name, volume, dict(truth), frozenset(new_cut | set(case.cut)))


def turned(tilt_deg: float = 0.0, roll_deg: float = 0.0, yaw_deg: float = 0.0) -> Callable[[Case], Case]:
    """The patient tilted about L-R, rolled about S-I, turned about A-P, about its spine centre."""

    def apply(case: Case) -> Case:
        rot, c = variations.rotation(tilt_deg, roll_deg, yaw_deg), case.spine_centre()
        truth = {k: variations.turn_points(p, rot, c) for k, p in case.truth.items()}
        return _moved(case, variations.rotated(case.volume, rot, c), truth)

    return apply


def sized(factor: float) -> Callable[[Case], Case]:
    """The patient `factor` times its size about its spine centre (a smaller or a larger patient's spine)."""

    def apply(case: Case) -> Case:
        return _moved(case, *variations.scaled_patient(case.volume, case.truth, factor))

    return apply


def on_volume(change: Callable[[Case], Volume]) -> Callable[[Case], Case]:
    """A variation that changes only the scan (the patient stays where it is)."""
    return lambda case: _moved(case, change(case))


def noise(sigma_hu: float, grain_mm: float = 0.0) -> Callable[[Case], Case]:
    """Gaussian noise of `sigma_hu` on every voxel, white or with in-plane grains of `grain_mm`
    (seeded by the case name)."""

    def apply(case: Case) -> Case:
        rng = np.random.default_rng([int(sigma_hu), sum(map(ord, case.name))])
        return replace(case, volume=variations.with_noise(case.volume, sigma_hu, rng, grain_mm))

    return apply


VARIATIONS: dict[str, Callable[[Case], Case]] = {
    "stored": lambda case: case,
    "tilt+8": turned(tilt_deg=8.0),
    "tilt-15": turned(tilt_deg=-15.0),
    "tilt+15": turned(tilt_deg=15.0),
    "roll+15": turned(roll_deg=15.0),
    "roll-30": turned(roll_deg=-30.0),
    "oblique": turned(tilt_deg=10.0, roll_deg=20.0, yaw_deg=5.0),
    "pad25mm": on_volume(lambda c: variations.pad_in_plane(c.volume, 25.0)),
    "fov180mm": on_volume(lambda c: variations.in_plane_window(c.volume, c.spine_centre(), 180.0)),
    "si-mid60": on_volume(lambda c: variations.si_window(c.volume, 0.2, 0.8)),
    "si-upper50": on_volume(lambda c: variations.si_window(c.volume, 0.5, 1.0)),
    "si-lower50": on_volume(lambda c: variations.si_window(c.volume, 0.0, 0.5)),
    "si-mid33": on_volume(lambda c: variations.si_window(c.volume, 0.33, 0.67)),
    "slice3mm": on_volume(lambda c: variations.thick_slices(c.volume, 3.0)),
    "slice5mm": on_volume(lambda c: variations.thick_slices(c.volume, 5.0)),
    "noise20": noise(20.0),
    "noise60": noise(60.0),
    # a low-dose scan through a soft kernel: its noise comes in grains, which a DRR does not average away
    "noise40grain": noise(40.0, grain_mm=1.5),
    # a smaller and a larger patient than the case (its voxels unchanged, spacing x factor)
    "size80": sized(0.8),
    "size120": sized(1.2),
    # the same voxels stored with permuted and flipped index axes (world content unchanged)
    "regrid": lambda case: replace(case, volume=case.volume.reoriented((1, 2, 0), (True, False, True))),
    # an osteoporotic patient: bone 0.4 times as bright over muscle
    "bone40": on_volume(lambda c: variations.with_faint_bone(c.volume, 0.4)),
}
SI_CROPS = frozenset(k for k in VARIATIONS if k.startswith("si-"))
# run only when named: the figures up to stop 62 are over the other 21
ASKED_ONLY = frozenset({"bone40"})


# ----------------------------------------------------------------------------- cases


def real_cases(root: Path) -> list[Case]:
    """Every case under `root` in the real-case layout (`vertedge_train.data.find_cases`), every
    truth label kept."""
    cases = []
    for folder in find_cases(root):
        truth, cut = metrics.read_points(folder / "ground_truth.json")
        cases.append(Case(folder.name, load_volume(case_scan_path(folder)), truth, frozenset(cut)))
    return cases


def phantom_case(seed: int) -> Case:
    """A held-out phantom (seeds 0-999 are never trained on)."""
    from vertedge.phantom import make_phantom

    ph = make_phantom(seed)
    cut = frozenset(k for k, c in ph.cut.items() if c)
    return Case(f"phantom_{seed}", ph.volume, dict(ph.centroids), cut)


# ----------------------------------------------------------------------------- scoring


def judge(case: Case, result: Any) -> dict[str, Any]:
    """Scores and per-prediction correctness of one labelled case."""
    pred = result.centroids()
    rows = []
    labels = np.array(sorted(case.truth), int)
    pts = np.array([case.truth[k] for k in labels]).reshape(-1, 3)
    for v in result.vertebrae:
        d = np.linalg.norm(pts - np.array(v.world_lps_mm), axis=1)
        j = int(np.argmin(d))
        right = bool(d[j] <= MATCH_MM and labels[j] == v.label)
        near = int(labels[j]) if d[j] <= MATCH_MM else None
        rows.append({"name": v.name, "label": v.label, "confidence": round(v.confidence, 4),
                     "needs_review": bool(getattr(v, "needs_review", False)), "right": right,
                     "truth_label": near})
    scored = {k: p for k, p in case.truth.items() if k not in case.cut}
    sc = metrics.score(pred, case.truth, exclude=case.cut) if scored else None
    wrong = [r for r in rows if not r["right"]]
    return {
        "n_scored": len(scored),
        "id_rate": sc.id_rate["all"] if sc else math.nan,
        "l_error_mm": sc.l_error_mm["all"] if sc else math.nan,
        "n_identified": sc.n_identified["all"] if sc else 0,
        # the vertebrae whose label was predicted: what the L-Error averages over
        "n_matched": sum(r["distance_mm"] is not None for r in sc.per_vertebra) if sc else 0,
        "predictions": rows,
        "view_scale": float(getattr(result, "view_scale", 1.0)),  # the views' scale kept (`patient_size`)
        "n_wrong": len(wrong),
        "max_wrong_confidence": max((r["confidence"] for r in wrong), default=math.nan),
        "wrong_unflagged": sum(not r["needs_review"] for r in wrong),
        "wrong_above_half": sum(r["confidence"] > 0.5 for r in wrong),
    }


def calibration(rows: list[dict[str, Any]], bins: int = 10) -> dict[str, float]:
    """ECE (10 equal-width confidence bins) and wrong-label statistics over predictions."""
    if not rows:
        return {"ece": math.nan, "n": 0, "n_wrong": 0, "wrong_above_half": 0, "frac_wrong_above_half": math.nan}
    conf = np.array([r["confidence"] for r in rows])
    right = np.array([r["right"] for r in rows], float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = sum(abs(right[which == b].mean() - conf[which == b].mean()) * (which == b).sum()
              for b in range(bins) if (which == b).any()) / len(rows)
    wrong = right == 0
    above = int((conf[wrong] > 0.5).sum())
    return {"ece": float(ece), "n": len(rows), "n_wrong": int(wrong.sum()), "wrong_above_half": above,
            "frac_wrong_above_half": above / max(int(wrong.sum()), 1),
            "wrong_unflagged": int(sum(not r["needs_review"] for r in rows if not r["right"]))}


def _mean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def pooled(records: list[dict[str, Any]]) -> tuple[float, float]:
    """Id-Rate (%) and L-Error (mm) over the vertebrae of all `records` together, as
    `vertedge.metrics.pool` scores a set of scans: identified over scored, and the mean distance
    over every vertebra whose label was predicted (a scan of many vertebrae weighs more than a
    crop of two; the per-case means weigh each run alike)."""
    n_scored = sum(r["n_scored"] for r in records)
    n_matched = sum(r["n_matched"] for r in records)
    l_sum = sum(r["l_error_mm"] * r["n_matched"] for r in records if r["n_matched"])
    return (100.0 * sum(r["n_identified"] for r in records) / n_scored if n_scored else math.nan,
            l_sum / n_matched if n_matched else math.nan)


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per variation and per case group (and the same pooled over their vertebrae), and
    calibration over everything."""
    out: dict[str, Any] = {"per_variation": {}, "per_case": {}}
    for key, field in (("per_variation", "variation"), ("per_case", "case")):
        for name in dict.fromkeys(r[field] for r in records):
            mine = [r for r in records if r[field] == name]
            pooled_id, pooled_l = pooled(mine)
            out[key][name] = {
                "id_rate": _mean([r["id_rate"] for r in mine]),
                "l_error_mm": _mean([r["l_error_mm"] for r in mine]),
                "pooled_id_rate": pooled_id,
                "pooled_l_error_mm": pooled_l,
                "max_wrong_confidence": max((r["max_wrong_confidence"] for r in mine
                                             if not math.isnan(r["max_wrong_confidence"])), default=math.nan),
                "wrong_above_half": sum(r["wrong_above_half"] for r in mine),
            }
    every = [p for r in records for p in r["predictions"]]
    out["calibration"] = calibration(every)
    return out


def _fmt(v: float, f: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)


def markdown(records: list[dict[str, Any]], summ: dict[str, Any]) -> str:
    """Per-case tables (variation rows) and the summary, as Markdown."""
    lines = []
    for case in dict.fromkeys(r["case"] for r in records):
        lines += [f"#### {case}", "", "| variation | scored | Id-Rate % | L-Error mm | predicted | wrong (>0.5) | max wrong conf |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in records if r["case"] == case):
            names = " ".join(p["name"] + ("?" if p["needs_review"] else "") + ("" if p["right"] else "*")
                             for p in r["predictions"])
            lines.append(f"| {r['variation']} | {r['n_scored']} | {_fmt(r['id_rate'])} | {_fmt(r['l_error_mm'])} | "
                         f"{names} | {r['n_wrong']} ({r['wrong_above_half']}) | {_fmt(r['max_wrong_confidence'], '.2f')} |")
        lines.append("")
    lines += ["#### per variation (mean over cases; pooled over their vertebrae)", "",
              "| variation | Id-Rate % | L-Error mm | pooled Id-Rate % | pooled L-Error mm | wrong > 0.5 | max wrong conf |",
              "|---|---|---|---|---|---|---|"]
    for name, s in summ["per_variation"].items():
        lines.append(f"| {name} | {_fmt(s['id_rate'])} | {_fmt(s['l_error_mm'])} | {_fmt(s['pooled_id_rate'])} | "
                     f"{_fmt(s['pooled_l_error_mm'])} | {s['wrong_above_half']} | {_fmt(s['max_wrong_confidence'], '.2f')} |")
    c = summ["calibration"]
    lines += ["", (f"Calibration over {c['n']} predictions: ECE {_fmt(c['ece'], '.3f')}, {c['n_wrong']} wrong, "
              f"{c['wrong_above_half']} of them above 0.5, {c.get('wrong_unflagged', 0)} not flagged needs_review."), ""]
    return "\n".join(lines)


def with_settings(options: PipelineOptions, settings: list[str]) -> PipelineOptions:
    """`options` with each "NAME=JSON" of `settings` set; a JSON object sets some fields of a nested
    options object (e.g. fusion={"min_views": 4}) and keeps the rest."""
    changes: dict[str, Any] = {}
    for setting in settings:
        name, _, text = setting.partition("=")
        value, current = json.loads(text), getattr(options, name)
        nested = isinstance(value, dict) and is_dataclass(current) and not isinstance(current, type)
        changes[name] = replace(current, **value) if nested else value
    return replace(options, **changes)


def seeds_of(spec: str) -> list[int]:
    """'500-503' -> [500, ..., 503]; '' -> []."""
    if not spec:
        return []
    lo, _, hi = spec.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def case_arguments(ap: argparse.ArgumentParser, variations_default: str) -> None:
    """The options that choose cases, variations and models (this script and `view_bias.py`)."""
    ap.add_argument("--real", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"))
    ap.add_argument("--phantoms", default="500-503", help="held-out phantom seeds, e.g. 500-503 ('' for none)")
    ap.add_argument("--variations", default=variations_default)
    ap.add_argument("--cases", default="", help="comma-separated case names to run (default: all)")
    ap.add_argument("--models", default=None)


def chosen_variations(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The names in `--variations`; an unknown one is a usage error."""
    names = args.variations.split(",")
    unknown = [n for n in names if n not in VARIATIONS]
    if unknown:
        ap.error(f"unknown variations {unknown}; known: {', '.join(VARIATIONS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    case_arguments(ap, ",".join(k for k in VARIATIONS if k not in ASKED_ONLY))
    ap.add_argument("--option", action="append", default=[], metavar="NAME=JSON",
                    help="a PipelineOptions field for an ablation, e.g. upright_min_deg=null or "
                         "fusion='{\"min_views\": 4}' (repeatable)")
    ap.add_argument("--start-angles", default="0", metavar="DEG,...",
                    help="the views' start angles, degrees: every run at each, named VARIATION@DEG past 0 "
                         "(the nets' readings change with where the views stand; RESULTS.md)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    names = chosen_variations(ap, args)
    try:
        options = with_settings(DEFAULT_OPTIONS, args.option)
    except (AttributeError, TypeError, ValueError) as e:
        ap.error(f"--option: {e}")
    try:
        starts = [float(a) for a in args.start_angles.split(",")]
    except ValueError as e:
        ap.error(f"--start-angles: {e}")
    labeler = Labeler(args.models, device="cpu", options=options)
    protocol = labeler.protocol
    cases = real_cases(Path(args.real)) if Path(args.real).is_dir() else []
    seeds = seeds_of(args.phantoms)
    wanted = set(filter(None, args.cases.split(",")))
    records = []
    t_start = time.time()
    for case in [*cases, *seeds]:
        if isinstance(case, int):
            if wanted and f"phantom_{case}" not in wanted:
                continue
            case = phantom_case(case)
        elif wanted and case.name not in wanted:
            continue
        for name in names:
            t_variant = time.time()
            variant = VARIATIONS[name](case)
            t_variant = time.time() - t_variant
            for start in starts:
                t0 = time.time()
                labeler.protocol = replace(protocol, start_angle_deg=protocol.start_angle_deg + start)
                result = labeler(variant.volume)
                run = f"{name}@{start:g}" if start else name
                seconds = round(time.time() - t0 + t_variant, 1)
                rec = {"case": case.name, "variation": run, **judge(variant, result), "seconds": seconds}
                records.append(rec)
                print(f"[robustness] {case.name:<16} {run:<11} Id-Rate {_fmt(rec['id_rate']):>5} L-Error "
                      f"{_fmt(rec['l_error_mm']):>5}  {' '.join(p['name'] + ('' if p['right'] else '*') for p in rec['predictions'])}"
                      f"  max wrong conf {_fmt(rec['max_wrong_confidence'], '.2f')} ({rec['seconds']} s)",
                      file=sys.stderr, flush=True)
    summ = summary(records)
    print(markdown(records, summ))
    print(f"[robustness] {len(records)} runs in {time.time() - t_start:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps({"records": records, "summary": summ, "models": labeler.models.ids,
                                               "options": options.to_dict()},
                                              indent=1, default=float))
    if args.markdown:
        Path(args.markdown).write_text(markdown(records, summ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
