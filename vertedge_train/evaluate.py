"""Evaluation on held-out phantom seeds (0-999; training never uses them).

2D (per view, against the projected truth): localization peaks from the runtime's own peak finder
(`vertedge.labelling.peaks_of`, threshold from the model metadata) matched to the projected body
centroids (nearest, within `match_mm` at the vertebra's depth): detection rate, false positives,
mean pixel / mm error; identification: per view and vertebra, the argmax of the mean class
probabilities in its 22 mm square (2D label accuracy).
3D (when `vertedge.pipeline.Labeler` exists): Id-Rate and L-Error with `vertedge.metrics`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np


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
    tot = {"gt": 0, "det": 0, "fp": 0, "err_px": [], "err_mm": [], "id_ok": 0, "id_n": 0}
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


def evaluate_3d(models_dir: str | Path, seeds: list[int], log=print) -> dict[str, Any] | None:
    """Id-Rate / L-Error of the full runtime pipeline on phantom seeds (None without the pipeline)."""
    try:
        from vertedge import metrics
        from vertedge.pipeline import Labeler
    except ImportError:
        return None
    from vertedge.phantom import make_phantom

    labeler = Labeler(models_dir, device="cpu")
    scores = []
    for seed in seeds:
        t0 = time.time()
        ph = make_phantom(int(seed))
        result = labeler(ph.volume)
        pred = result.centroids()
        sc = metrics.score(pred, ph.centroids, exclude=[k for k, c in ph.cut.items() if c])
        scores.append(sc)
        names = " ".join(v.name for v in result.vertebrae)
        log(f"[eval3d] seed {seed} ({ph.params['region']}): Id-Rate {sc.id_rate['all']:.1f}% "
            f"L-Error {sc.l_error_mm['all']:.2f} mm; predicted {names} ({time.time() - t0:.1f}s)")
    total = metrics.pool(scores)
    log(metrics.format_table(total))
    return total.to_dict()


def evaluate_2d(run_or_models: str | Path, seeds: list[int], log=print) -> dict[str, Any]:
    """2D (and 3D when possible) evaluation of a models folder (or `<run>/models` after export)."""
    d = Path(run_or_models)
    models_dir = d if (d / "localization.onnx").exists() else d / "models"
    res = {"2d": evaluate_2d_models(models_dir, seeds, log)}
    res["3d"] = evaluate_3d(models_dir, seeds, log)
    return res


def evaluate_scans(models_dir: str | Path, scans: list, log=print) -> dict[str, Any]:
    """Per scan (`data.Scan`: a real case or a VerSe case), the runtime pipeline's Id-Rate and L-Error
    (cut vertebrae not scored) and, per truth vertebra, the nearest prediction and its distance (mm)."""
    from vertedge import metrics
    from vertedge.pipeline import Labeler

    labeler = Labeler(models_dir, device="cpu")
    out: dict[str, Any] = {}
    for scan in scans:
        gt, cut = scan.centroids, [k for k, c in scan.cut.items() if c]
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
        out[scan.name] = {"rows": rows, "scores": sc.to_dict()}
    return out


def evaluate_real(models_dir: str | Path, root: str | Path, log=print) -> dict[str, Any]:
    """`evaluate_scans` on the real cases under `root` (`data.find_cases`: */ground_truth.json)."""
    from .data import case_scan, find_cases

    return evaluate_scans(models_dir, [case_scan(c) for c in find_cases(root)], log)
