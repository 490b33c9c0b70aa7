"""Evaluation of exported models: the one place that scores phantoms and real cases (the training
commands and `benchmarks/accuracy.py` use it). Phantom seeds 0-999 are held out: training never uses them.

2D (per view, against the projected truth): localization peaks from the runtime's own peak finder
(`vertedge.labelling.peaks_of`, threshold from the model metadata) matched to the projected body
centroids (nearest, within `match_mm` at the vertebra's depth): detection rate, false positives,
mean pixel / mm error; identification: per view and vertebra, the argmax of the mean class
probabilities in its 22 mm square (2D label accuracy).
3D: the runtime pipeline's Id-Rate and L-Error (`vertedge.metrics`, VerSe rules) on phantoms
(`score_phantoms`, with hard-case groups) and on real or VerSe cases (`score_scans`). No torch here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vertedge import metrics
from vertedge.labels import name
from vertedge.pipeline import Labeler

from .data import Scan, case_scan, find_cases


def _sessions(models_dir: Path):
    from vertedge.onnx_models import Models

    return Models(models_dir, "cpu")


def evaluate_2d_models(models_dir: str | Path, seeds: list[int], log=print, match_mm: float = 10.0) -> dict[str, Any]:
    """2D scores of the ONNX models in `models_dir` on phantom seeds (all views, start angle 0)."""
    from vertedge import drr
    from vertedge.boxes import box_means, square_half_px
    from vertedge.geometry import make_views, pixel_mm_at_depth, project
    from vertedge.labelling import peaks_of
    from vertedge.options import DEFAULT_OPTIONS
    from vertedge.phantom import make_phantom

    models = _sessions(Path(models_dir))
    protocol = models.protocol
    classes = models.classes
    thr = models.loc_info.heatmap.get("threshold", 0.3)
    tot: dict[str, Any] = {"gt": 0, "det": 0, "fp": 0, "err_px": [], "err_mm": [], "id_ok": 0, "id_n": 0}
    per_region: dict[str, dict[str, int]] = {}
    for seed in seeds:
        t0 = time.time()
        ph = make_phantom(int(seed))
        views = make_views(ph.volume, protocol)
        images = drr.normalize(drr.render(ph.volume, views, protocol), protocol)
        heat = models.localize(images)
        prob = models.identify(images)
        labels = np.array(sorted(ph.centroids, key=classes.index))
        pts = np.array([ph.centroids[int(lab)] for lab in labels]).reshape(-1, 3)
        rc, depth = project(views, pts)
        pxmm = pixel_mm_at_depth(views, depth)
        peaks = peaks_of(heat, views, thr)
        h, w = views.shape
        s = {"gt": 0, "det": 0, "fp": 0, "id_ok": 0, "id_n": 0}
        for k in range(views.n_views):
            inside = (rc[k, :, 0] >= 0) & (rc[k, :, 0] < h) & (rc[k, :, 1] >= 0) & (rc[k, :, 1] < w)
            det = peaks.in_view(k)
            used = np.zeros(len(det), bool)
            for i in np.flatnonzero(inside):
                s["gt"] += 1
                if len(det):
                    d = np.linalg.norm(det - rc[k, i], axis=1)
                    d[used] = np.inf
                    j = int(np.argmin(d))
                    if d[j] * pxmm[k, i] <= match_mm:
                        used[j] = True
                        s["det"] += 1
                        tot["err_px"].append(d[j])
                        tot["err_mm"].append(d[j] * pxmm[k, i])
            s["fp"] += int((~used).sum())
            half = square_half_px(pxmm[k, inside], DEFAULT_OPTIONS.id_square_mm)
            p, valid = box_means(prob[k : k + 1, 1:], rc[k : k + 1, inside], half[None])
            pred = np.asarray(classes)[p[0].argmax(-1)]
            ok = (pred == labels[inside]) & valid[0]
            s["id_ok"] += int(ok.sum())
            s["id_n"] += int(valid[0].sum())
        for key, value in s.items():
            tot[key] += value
        reg = per_region.setdefault(ph.params["region"], {"gt": 0, "det": 0, "id_ok": 0, "id_n": 0, "scans": 0})
        for key in ("gt", "det", "id_ok", "id_n"):
            reg[key] += s[key]
        reg["scans"] += 1
        log(f"[eval2d] seed {seed} ({ph.params['region']}, {len(labels)} vertebrae): detected {s['det']}/{s['gt']}, "
            f"fp {s['fp']}, 2D label acc {s['id_ok']}/{s['id_n']} ({time.time() - t0:.1f}s)")
    res = {
        "detection_rate": tot["det"] / max(tot["gt"], 1),
        "false_positives_per_view": tot["fp"] / max(len(seeds) * protocol.n_views, 1),
        "mean_err_px": float(np.mean(tot["err_px"])) if tot["err_px"] else float("nan"),
        "mean_err_mm_at_depth": float(np.mean(tot["err_mm"])) if tot["err_mm"] else float("nan"),
        "label_acc_2d": tot["id_ok"] / max(tot["id_n"], 1),
        "per_region": {r: {"detection_rate": v["det"] / max(v["gt"], 1), "label_acc_2d": v["id_ok"] / max(v["id_n"], 1),
                           "scans": v["scans"]} for r, v in per_region.items()},
        "seeds": list(seeds),
    }
    log("[eval2d] " + json.dumps(res))
    return res


def hard_cases(params: dict[str, Any]) -> list[str]:
    """The hard-case groups a phantom belongs to (from what its seed chose)."""
    groups = [f"region:{params.get('region', '?')}"]
    for key, group in (("metal", "metal"), ("scoliosis", "scoliosis")):
        if params.get(key):
            groups.append(group)
    if params.get("variant") in ("T13", "L6"):  # "normal" otherwise
        groups.append(f"variant:{params['variant']}")
    return groups


def score_phantoms(labeler: Labeler, seeds: list[int], log=print) -> tuple[metrics.Scores, list[dict[str, Any]]]:
    """The runtime pipeline on phantom seeds: scores pooled over the seeds (VerSe Id-Rate and L-Error,
    cut vertebrae left out) and one record per seed (its hard-case groups, counts, scores, seconds)."""
    from vertedge.phantom import make_phantom

    per_seed, records = [], []
    for seed in seeds:
        ph = make_phantom(int(seed))
        t0 = time.perf_counter()
        result = labeler(ph.volume)
        sc = metrics.score(result.centroids(), ph.centroids, exclude={k for k, c in ph.cut.items() if c})
        per_seed.append(sc)
        records.append({"seed": int(seed), "groups": hard_cases(ph.params), "n_true": len(ph.centroids),
                        "n_found": len(result.vertebrae), "id_rate": sc.id_rate["all"],
                        "l_error_mm": sc.l_error_mm["all"], "seconds": round(time.perf_counter() - t0, 2)})
        log(f"[eval3d] seed {seed} ({ph.params['region']}): Id-Rate {sc.id_rate['all']:.1f}% L-Error "
            f"{sc.l_error_mm['all']:.2f} mm; predicted {' '.join(v.name for v in result.vertebrae)} "
            f"({records[-1]['seconds']:.1f}s)")
    return metrics.pool(per_seed), records


def evaluate_3d(models_dir: str | Path, seeds: list[int], log=print) -> dict[str, Any]:
    """Pooled Id-Rate / L-Error of the models in `models_dir` on phantom seeds (`score_phantoms`)."""
    total, _ = score_phantoms(Labeler(models_dir, device="cpu"), seeds, log)
    log(metrics.format_table(total))
    return total.to_dict()


def score_scans(labeler: Labeler, scans: list[Scan], log=print) -> dict[str, Any]:
    """Per scan (a real or VerSe case, `data.Scan`): what the runtime found, the cut labels, the scores
    (VerSe rules, cut vertebrae not scored, per vertebra) and, per truth vertebra, the nearest prediction
    and its distance (mm)."""
    out: dict[str, Any] = {}
    for scan in scans:
        gt, cut = scan.centroids, sorted(k for k, c in scan.cut.items() if c)
        result = labeler(scan.volume)
        pred = result.centroids()
        sc = metrics.score(pred, gt, exclude=cut)
        rows = []
        for lab in sorted(gt, key=lambda k: -gt[k][2]):
            d = float(np.linalg.norm(pred[lab] - gt[lab])) if lab in pred else float("nan")
            near = min(pred, key=lambda k: np.linalg.norm(pred[k] - gt[lab])) if pred else None
            dn = float(np.linalg.norm(pred[near] - gt[lab])) if near is not None else float("nan")
            rows.append({"label": lab, "cut": lab in cut, "same_label_dist_mm": d,
                         "nearest_pred": near, "nearest_dist_mm": dn})
            log(f"[real] {scan.name} {lab:>2}{' (cut)' if lab in cut else ''}: nearest prediction "
                f"{near} at {dn:.1f} mm; same label at {d:.1f} mm")
        log(f"[real] {scan.name}: predicted {[v.name for v in result.vertebrae]}, "
            f"Id-Rate {sc.id_rate['all']:.1f}%, L-Error {sc.l_error_mm['all']:.2f} mm")
        out[scan.name] = {"found": [v.name for v in result.vertebrae], "cut_by_field_of_view": [name(c) for c in cut],
                          "scores": sc.to_dict(), "rows": rows}
    return out


def evaluate_real(models_dir: str | Path, root: str | Path, log=print) -> dict[str, Any]:
    """`score_scans` of the models in `models_dir` on the real cases under `root` (`data.find_cases`)."""
    return score_scans(Labeler(models_dir, device="cpu"), [case_scan(c) for c in find_cases(root)], log)
