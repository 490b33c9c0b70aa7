"""VerSe challenge metrics: identification rate (Id-Rate) and localisation error (L-Error).

- A ground-truth vertebra is identified when the prediction with its label is its nearest
  prediction (among all predictions) and lies within 20 mm of it.
- L-Error is the mean Euclidean distance (mm) between a ground-truth centroid and the prediction
  with the same label, over the vertebrae present in both.
- An extra prediction (a false positive) is a predicted label the ground truth has no vertebra
  for (a vertebra cut by the field of view is one the ground truth has).
All per region (cervical, thoracic, lumbar) and overall; ground-truth vertebrae cut by the field
of view are left out of Id-Rate and L-Error. Points are world LPS mm centroids keyed by VerSe label.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import VertedgeError
from .labels import NAMES, name, region
from .verse import read_verse_ctd
from .volume import Volume, load_volume

ID_RADIUS_MM = 20.0
REGIONS = ("cervical", "thoracic", "lumbar", "all")


@dataclass(frozen=True)
class Scores:
    """Id-Rate (%), L-Error (mm) and extra predictions per region ("cervical", "thoracic", "lumbar", "all").

    NaN where a region has no ground-truth vertebra (Id-Rate) or no matched one (L-Error).
    """

    id_rate: dict[str, float]
    l_error_mm: dict[str, float]
    n_gt: dict[str, int]
    n_identified: dict[str, int]
    per_vertebra: list[dict[str, Any]]
    extra_predictions: list[dict[str, Any]] = field(default_factory=list)  # label, name, pred_lps

    @property
    def n_extra(self) -> dict[str, int]:
        """Extra predictions (labels without a ground-truth vertebra) per region."""
        return {
            reg: sum(reg == "all" or region(e["label"]) == reg for e in self.extra_predictions) for reg in REGIONS
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; NaN becomes None."""
        return _nan_to_none(asdict(self))


def _nan_to_none(obj: Any) -> Any:
    """`obj` with every float NaN (at any depth of dicts and lists) replaced by None."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _as_points(points: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Labels (m,) int and points (m, 3) float64 mm of a label -> point dict."""
    labels = np.array(sorted(int(k) for k in points), dtype=int)
    xyz = np.array([np.asarray(points[k], float).reshape(3) for k in labels]).reshape(-1, 3)
    return labels, xyz


def _vertebra_rows(
    pred: dict[int, np.ndarray], gt: dict[int, np.ndarray], exclude: Iterable[int]
) -> list[dict[str, Any]]:
    """One per-vertebra record per scored ground-truth vertebra (label order)."""
    pred_labels, pred_xyz = _as_points(pred)
    excluded = {int(x) for x in exclude}
    # Sacrum (26) and coccyx (27), which VerSe files may hold, are not vertebrae to score.
    scored = {k: v for k, v in gt.items() if int(k) in NAMES and int(k) not in excluded}
    gt_labels, gt_xyz = _as_points(scored)
    # (n_gt, n_pred) distances: the nearest prediction of each GT vertebra, whatever its label.
    dist = np.linalg.norm(gt_xyz[:, None, :] - pred_xyz[None, :, :], axis=-1)
    rows = []
    for g, label in enumerate(gt_labels):
        match = np.flatnonzero(pred_labels == label)
        d = float(dist[g, match[0]]) if match.size else None
        # Ties with another label's prediction count as nearest: the challenge gives no tie rule.
        identified = d is not None and d <= ID_RADIUS_MM and d <= dist[g].min()
        rows.append(
            {
                "label": int(label),
                "name": name(label),
                "gt_lps": gt_xyz[g].tolist(),
                "pred_lps": pred_xyz[match[0]].tolist() if match.size else None,
                "distance_mm": d,
                "identified": bool(identified),
            }
        )
    return rows


def _extra_rows(pred: dict[int, np.ndarray], gt: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """One record per predicted label the ground truth has no vertebra for (label order)."""
    return [
        {"label": int(k), "name": name(k), "pred_lps": np.asarray(pred[k], float).reshape(3).tolist()}
        for k in sorted(int(k) for k in pred)
        if k not in {int(g) for g in gt}
    ]


def _summarise(rows: Sequence[dict[str, Any]], extra: Sequence[dict[str, Any]] = ()) -> Scores:
    """Per-region Id-Rate and L-Error from per-vertebra records, with the extra predictions."""
    id_rate, l_error, n_gt, n_identified = {}, {}, {}, {}
    for reg in REGIONS:
        mine = [r for r in rows if reg == "all" or region(r["label"]) == reg]
        hits = sum(r["identified"] for r in mine)
        dists = [r["distance_mm"] for r in mine if r["distance_mm"] is not None]
        n_gt[reg], n_identified[reg] = len(mine), hits
        id_rate[reg] = 100.0 * hits / len(mine) if mine else math.nan
        l_error[reg] = float(np.mean(dists)) if dists else math.nan
    return Scores(id_rate, l_error, n_gt, n_identified, list(rows), list(extra))


def score(
    pred: dict[int, np.ndarray], gt: dict[int, np.ndarray], exclude: Iterable[int] = frozenset()
) -> Scores:
    """Scores of one scan; `pred`, `gt`: VerSe label -> world LPS mm (3,); `exclude`: cut labels."""
    return _summarise(_vertebra_rows(pred, gt, exclude), _extra_rows(pred, gt))


def pool(scores: Sequence[Scores]) -> Scores:
    """Scores over scans: Id-Rate = identified / GT vertebrae; L-Error over all matched ones."""
    return _summarise(
        [row for s in scores for row in s.per_vertebra], [e for s in scores for e in s.extra_predictions]
    )


def _read_json(path: str | os.PathLike[str]) -> Any:
    """Parsed JSON of `path`, or VertedgeError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise VertedgeError(f"{path}: cannot read ({e.strerror or e})") from e
    except ValueError as e:
        raise VertedgeError(f"{path}: not valid JSON ({e})") from e


def _vertebra_entry(entry: Any, path: str | os.PathLike[str]) -> tuple[int, np.ndarray, bool]:
    """(label, world LPS mm (3,), cut by the field of view) of one "vertebrae" entry."""
    try:
        label = int(entry["label"])
        xyz = np.array(entry["world_lps_mm"], dtype=float).reshape(3)
        cut = bool(entry.get("cut_by_field_of_view", False))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise VertedgeError(
            f"{path}: malformed vertebra entry {entry!r} (needs 'label' and 3 'world_lps_mm')"
        ) from e
    if label not in NAMES or not np.isfinite(xyz).all():
        raise VertedgeError(f"{path}: invalid vertebra entry {entry!r}")
    return label, xyz, cut


def _read_vertebrae(
    doc: dict[str, Any], path: str | os.PathLike[str]
) -> tuple[dict[int, np.ndarray], set[int]]:
    """Points and cut labels of our `{"vertebrae": [...]}` schema (outputs and ground truth)."""
    entries = doc["vertebrae"]
    if not isinstance(entries, list):
        raise VertedgeError(f"{path}: 'vertebrae' is not a list")
    points: dict[int, np.ndarray] = {}
    cut: set[int] = set()
    for entry in entries:
        label, xyz, is_cut = _vertebra_entry(entry, path)
        if label in points:
            raise VertedgeError(f"{path}: vertebra {name(label)} (label {label}) appears twice")
        points[label] = xyz
        if is_cut:
            cut.add(label)
    return points, cut


ROLES = {"prediction": "a vertedge result", "truth": "a ground truth"}


def _role(doc: dict[str, Any]) -> str | None:
    """'prediction' or 'truth' where the content says which (None for a plain vertebra list).

    A result carries its `models` and `timings_ms`; a ground truth marks `cut_by_field_of_view`.
    """
    if "models" in doc or "timings_ms" in doc:
        return "prediction"
    entries = doc.get("vertebrae")
    if isinstance(entries, list) and any(isinstance(e, dict) and "cut_by_field_of_view" in e for e in entries):
        return "truth"
    return None


def read_points(
    path: str | os.PathLike[str],
    image: str | os.PathLike[str] | Volume | None = None,
    role: str | None = None,
) -> tuple[dict[int, np.ndarray], set[int]]:
    """Centroids (label -> world LPS mm (3,)) and labels cut by the field of view of a JSON file.

    Reads `<name>.vertebrae.json` and `ground_truth.json` (`{"vertebrae": [{"label",
    "world_lps_mm", "cut_by_field_of_view"?}]}`) and VerSe `_ctd.json` files; a VerSe file holds
    continuous voxel indices, so it needs its `image` (a path or a Volume) to reach world space.
    With `role` ('prediction' or 'truth'), a file whose content shows the other role is refused.
    """
    doc = _read_json(path)
    if isinstance(doc, dict) and "vertebrae" in doc:
        found = _role(doc)
        if role is not None and found is not None and found != role:
            raise VertedgeError(
                f"{path}: this is {ROLES[found]}, given as {ROLES[role]} "
                "(swapped arguments? the order is PREDICTION TRUTH)"
            )
        return _read_vertebrae(doc, path)
    if isinstance(doc, list):
        if image is None:
            raise VertedgeError(
                f"{path}: a VerSe centroid file is in image coordinates; give its CT image too"
            )
        volume = image if isinstance(image, Volume) else load_volume(image)
        return read_verse_ctd(path, volume), set()
    raise VertedgeError(
        f"{path}: unknown centroid format (expected {{'vertebrae': [...]}} or a VerSe ctd list)"
    )


def _cell(value: float, fmt: str) -> str:
    """`value` formatted, or "-" for NaN."""
    return "-" if math.isnan(value) else format(value, fmt)


def format_table(scores: Scores) -> str:
    """Plain-text table: region | n | Id-Rate % | L-Error mm | extra, one line per region and overall."""
    header = f"{'region':<9} | {'n':>4} | {'Id-Rate %':>9} | {'L-Error mm':>10} | {'extra':>5}"
    lines = [header, "-" * len(header)]
    for reg in REGIONS:
        lines.append(
            f"{reg:<9} | {scores.n_gt[reg]:>4} | {_cell(scores.id_rate[reg], '.2f'):>9} | "
            f"{_cell(scores.l_error_mm[reg], '.2f'):>10} | {scores.n_extra[reg]:>5}"
        )
    return "\n".join(lines)


def format_cases(cases: Sequence[tuple[str, Scores]]) -> str:
    """Plain-text table, one row per scan: n, identified, Id-Rate %, L-Error mm, extra predictions."""
    width = max([4, *(len(c) for c, _ in cases)])
    header = (
        f"{'scan':<{width}} | {'n':>4} | {'identified':>10} | {'Id-Rate %':>9} | {'L-Error mm':>10} | extra"
    )
    lines = [header, "-" * len(header)]
    for case, s in cases:
        extra = ", ".join(e["name"] for e in s.extra_predictions) or "-"
        lines.append(
            f"{case:<{width}} | {s.n_gt['all']:>4} | {s.n_identified['all']:>10} | "
            f"{_cell(s.id_rate['all'], '.2f'):>9} | {_cell(s.l_error_mm['all'], '.2f'):>10} | {extra}"
        )
    return "\n".join(lines)


PRED_SUFFIXES = (".vertebrae.json", "_ctd.json")
GT_SUFFIXES = ("_gt.json", "_ctd.json", "ground_truth.json")


@dataclass(frozen=True)
class Evaluation:
    """Scores per scan and pooled, and the files that found no partner."""

    cases: list[tuple[str, Scores]]  # (scan name, its scores), by name
    pooled: Scores
    truth_without_prediction: list[str]  # scan names
    prediction_without_truth: list[str]  # scan names


def _case_name(path: Path, suffix: str) -> str:
    """The scan name a truth file belongs to; `ground_truth.json` is named by its folder."""
    stem = path.name[: -len(suffix)].rstrip("_.")
    return stem or path.parent.name


def _prediction_name(path: Path, folder: Path, suffix: str) -> str:
    """A prediction's scan name: its file's, after the folders below `folder` (`c1/ct.vertebrae.json`: `c1_ct`)."""
    return "_".join((*path.parent.relative_to(folder).parts, path.name[: -len(suffix)]))


def _files_by_case(folder: Path, suffixes: Sequence[str], prediction: bool) -> dict[str, Path]:
    """Map scan name -> file for every matching file below `folder`; an earlier suffix is preferred."""
    found: dict[str, Path] = {}
    for suffix in suffixes:
        mine: dict[str, Path] = {}
        for path in sorted(folder.rglob(f"*{suffix}")):
            case = _prediction_name(path, folder, suffix) if prediction else _case_name(path, suffix)
            if case in mine:
                raise VertedgeError(f"{mine[case]}, {path}: two files for scan '{case}'")
            mine[case] = path
        for case, path in mine.items():
            found.setdefault(case, path)
    return found


def pair_cases(predictions: Sequence[str], truths: Sequence[str]) -> dict[str, str]:
    """truth case -> its prediction: the one named as the case, else the one named `CASE_...`.

    A prediction belongs to the longest case name it starts with (`CASE_` + the scan's own name,
    as `vertedge run` names scans found in `CASE/` folders); a case claimed by several predictions,
    none named exactly as it, stays unpaired.
    """
    owned: dict[str, list[str]] = {}
    for p in predictions:
        owners = [c for c in truths if p == c or p.startswith(c + "_")]
        if owners:
            owned.setdefault(max(owners, key=len), []).append(p)
    pairs = {}
    for case, preds in owned.items():
        if case in preds:
            pairs[case] = case
        elif len(preds) == 1:
            pairs[case] = preds[0]
    return pairs


def evaluate_paths(
    pred: str | os.PathLike[str], gt: str | os.PathLike[str], image: str | os.PathLike[str] | None = None
) -> Evaluation:
    """Scores of one prediction file against one truth file, or of two folders paired by scan name.

    The arguments' order is checked by content (`read_points` with a role) and, for folders, by
    which kinds of files each holds.
    """
    pred, gt = Path(pred), Path(gt)
    if pred.is_dir() != gt.is_dir():
        raise VertedgeError(f"{pred}, {gt}: give two files or two folders")
    if not pred.is_dir():
        truth, cut = read_points(gt, image, role="truth")
        scores = score(read_points(pred, image, role="prediction")[0], truth, exclude=cut)
        return Evaluation([(pred.name, scores)], pool([scores]), [], [])
    preds = _files_by_case(pred, PRED_SUFFIXES, prediction=True)
    truths = _files_by_case(gt, GT_SUFFIXES, prediction=False)
    if not preds and _files_by_case(pred, ("_gt.json", "ground_truth.json"), prediction=False):
        raise VertedgeError(
            f"{pred}: holds ground-truth files and no predictions (swapped arguments? the order is PREDICTION TRUTH)"
        )
    pairs = pair_cases(list(preds), list(truths))
    if not pairs:
        raise VertedgeError(f"{pred}, {gt}: no scan has both a prediction and a ground truth")
    cases = []
    for case in sorted(pairs):
        truth, cut = read_points(truths[case], image, role="truth")
        cases.append((case, score(read_points(preds[pairs[case]], image, role="prediction")[0], truth, exclude=cut)))
    return Evaluation(
        cases,
        pool([s for _, s in cases]),
        sorted(set(truths) - set(pairs)),
        sorted(set(preds) - set(pairs.values())),
    )
