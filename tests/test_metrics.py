"""VerSe Id-Rate / L-Error against hand-computed cases, and reading centroid files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vertedge.errors import VertedgeError
from vertedge.labels import LABELS
from vertedge.metrics import format_table, pool, read_points, score
from vertedge.volume import Volume, save_volume

L1, L2, L3 = LABELS["L1"], LABELS["L2"], LABELS["L3"]


def _pts(**named: tuple[float, float, float]) -> dict[int, np.ndarray]:
    return {LABELS[k]: np.array(v, float) for k, v in named.items()}


# Three lumbar vertebrae 30 mm apart along z.
GT = _pts(L1=(0, 0, 0), L2=(0, 0, 30), L3=(0, 0, 60))


def test_perfect_prediction() -> None:
    s = score(GT, GT)
    assert s.id_rate["all"] == s.id_rate["lumbar"] == 100.0
    assert s.l_error_mm["all"] == 0.0
    assert s.n_gt["all"] == s.n_identified["all"] == 3
    assert math.isnan(s.id_rate["cervical"]) and math.isnan(s.l_error_mm["thoracic"])
    assert s.n_gt["cervical"] == 0


def test_swapped_labels() -> None:
    pred = _pts(L1=(0, 0, 30), L2=(0, 0, 0), L3=(0, 0, 60))
    s = score(pred, GT)
    by_label = {r["label"]: r for r in s.per_vertebra}
    assert not by_label[L1]["identified"] and not by_label[L2]["identified"]
    assert by_label[L3]["identified"]
    assert by_label[L1]["distance_mm"] == by_label[L2]["distance_mm"] == 30.0
    assert s.id_rate["all"] == pytest.approx(100 / 3)
    assert s.l_error_mm["all"] == pytest.approx((30 + 30 + 0) / 3)


def test_missing_vertebra() -> None:
    pred = _pts(L1=(0, 0, 1), L3=(0, 0, 62))
    s = score(pred, GT)
    row = next(r for r in s.per_vertebra if r["label"] == L2)
    assert row["pred_lps"] is None and row["distance_mm"] is None and not row["identified"]
    assert s.n_gt["all"] == 3 and s.n_identified["all"] == 2
    assert s.l_error_mm["all"] == pytest.approx((1 + 2) / 2)  # only vertebrae in both


def test_prediction_25_mm_off() -> None:
    pred = _pts(L1=(0, 0, 0), L2=(25, 0, 30), L3=(0, 0, 60))
    s = score(pred, GT)
    assert s.n_identified["all"] == 2  # nearest to L2, but beyond 20 mm
    assert s.l_error_mm["all"] == pytest.approx(25 / 3)  # its distance still counts


def test_within_20_mm_but_another_label_nearer() -> None:
    pred = _pts(L1=(0, 0, 15), T12=(0, 0, -5), L2=(0, 0, 30), L3=(0, 0, 60))
    s = score(pred, GT)
    row = next(r for r in s.per_vertebra if r["label"] == L1)
    assert row["distance_mm"] == 15.0 and not row["identified"]
    assert s.n_gt["all"] == 3  # a prediction without ground truth adds no vertebra


def test_20_mm_is_within() -> None:
    s = score(_pts(L1=(20, 0, 0), L2=(0, 0, 30), L3=(0, 0, 60)), GT)
    assert s.n_identified["all"] == 3


def test_per_region_split() -> None:
    gt = _pts(C6=(0, 0, 90), C7=(0, 0, 75), T1=(0, 0, 60), T2=(0, 0, 40), L1=(0, 0, -100))
    pred = _pts(C6=(0, 0, 90), C7=(3, 4, 75), T1=(0, 0, 40), T2=(0, 0, 60), L1=(0, 0, -100))
    s = score(pred, gt)
    assert s.n_gt == {"cervical": 2, "thoracic": 2, "lumbar": 1, "all": 5}
    assert s.id_rate == {"cervical": 100.0, "thoracic": 0.0, "lumbar": 100.0, "all": 60.0}
    assert s.l_error_mm["cervical"] == pytest.approx(2.5)
    assert s.l_error_mm["thoracic"] == pytest.approx(20.0)
    assert s.l_error_mm["lumbar"] == 0.0
    assert s.l_error_mm["all"] == pytest.approx((0 + 5 + 20 + 20 + 0) / 5)


def test_cut_vertebrae_are_excluded() -> None:
    gt = {**GT, LABELS["T12"]: np.array([0.0, 0, -30])}
    pred = {**GT, LABELS["T12"]: np.array([50.0, 0, -30])}
    s = score(pred, gt, exclude={LABELS["T12"]})
    assert s.n_gt["all"] == 3 and s.id_rate["all"] == 100.0 and s.l_error_mm["all"] == 0.0
    assert math.isnan(s.id_rate["thoracic"])


def test_non_vertebra_labels_are_not_scored() -> None:
    s = score(GT, {**GT, 26: np.zeros(3)})
    assert s.n_gt["all"] == 3


def test_pool_over_scans() -> None:
    a = score(GT, GT)  # 3 identified, distances 0, 0, 0
    b = score(_pts(L1=(0, 0, 30), L2=(0, 0, 0)), GT)  # swapped, L3 missing: 0 of 3; 30, 30
    p = pool([a, b])
    assert p.n_gt["all"] == 6 and p.n_identified["all"] == 3
    assert p.id_rate["all"] == 50.0
    assert p.l_error_mm["all"] == pytest.approx(60 / 5)  # over matched vertebrae, not scans
    assert len(p.per_vertebra) == 6


def test_to_dict_is_strict_json() -> None:
    d = score(GT, GT).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["id_rate"]["cervical"] is None and d["id_rate"]["all"] == 100.0
    assert d["per_vertebra"][0]["name"] == "L1" and d["per_vertebra"][0]["gt_lps"] == [0, 0, 0]


def test_format_table() -> None:
    lines = format_table(score(_pts(L1=(0, 0, 1), L2=(0, 0, 30), C7=(0, 0, 200)), GT)).splitlines()
    assert lines[0].split("|")[0].strip() == "region" and lines[0].split("|")[-1].strip() == "extra"
    cells = [[c.strip() for c in line.split("|")] for line in lines[2:]]
    rows = {c[0]: c[1:] for c in cells}
    assert rows["cervical"] == ["0", "-", "-", "1"]
    assert rows["lumbar"] == ["3", "66.67", "0.50", "0"]
    assert rows["all"] == ["3", "66.67", "0.50", "1"]


def test_extra_predictions_are_labels_without_a_ground_truth_vertebra() -> None:
    t12 = LABELS["T12"]
    gt = {**GT, t12: np.array([0.0, 0, -30])}  # T12 cut: not scored, but there
    pred = _pts(T11=(0, 0, -60), T12=(0, 0, -30), L1=(0, 0, 0), L2=(0, 0, 30), L3=(0, 0, 60), L4=(0, 0, 90))
    s = score(pred, gt, exclude={t12})
    assert [e["name"] for e in s.extra_predictions] == ["T11", "L4"]
    assert s.n_extra == {"cervical": 0, "thoracic": 1, "lumbar": 1, "all": 2}
    assert s.id_rate["all"] == 100.0  # extra predictions do not change the VerSe scores
    assert pool([s, score(GT, GT)]).n_extra["all"] == 2


def test_pairing_by_case_name() -> None:
    from vertedge.metrics import pair_cases

    preds = ["c1_ct", "c1_b_ct", "c2", "c2_ct", "c3_x", "c3_y", "c4", "other"]
    truths = ["c1", "c1_b", "c2", "c3", "c5"]
    # the longest case a name starts with owns it; an exact name wins; two candidates: no pair
    assert pair_cases(preds, truths) == {"c1": "c1_ct", "c1_b": "c1_b_ct", "c2": "c2"}
    assert pair_cases(["case10_ct"], ["case1"]) == {}


def test_role_of_a_file_is_read_from_its_content(tmp_path: Path) -> None:
    result = {"vertebrae": [{"label": 20, "world_lps_mm": [1, 2, 3]}], "models": {}, "timings_ms": {}}
    truth = {"vertebrae": [{"label": 20, "world_lps_mm": [1, 2, 3], "cut_by_field_of_view": False}]}
    plain = {"vertebrae": [{"label": 20, "world_lps_mm": [1, 2, 3]}]}
    with pytest.raises(VertedgeError, match="a.json: this is a vertedge result, given as a ground truth"):
        read_points(_write(tmp_path / "a.json", result), role="truth")
    with pytest.raises(VertedgeError, match="b.json: this is a ground truth, given as a vertedge result"):
        read_points(_write(tmp_path / "b.json", truth), role="prediction")
    for doc, role in ((result, "prediction"), (truth, "truth"), (plain, "truth"), (plain, "prediction")):
        assert set(read_points(_write(tmp_path / "c.json", doc), role=role)[0]) == {20}


# --- reading centroid files ---------------------------------------------------------------------


def _write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def test_read_our_vertebrae_json(tmp_path: Path) -> None:
    doc = {
        "input": {"path": "ct.nii.gz"},
        "vertebrae": [
            {"label": 20, "name": "L1", "world_lps_mm": [1, 2, 3], "voxel_ijk": [0, 0, 0],
             "confidence": 0.9},
            {"label": 28, "name": "T13", "world_lps_mm": [1, 2, 33], "confidence": 0.8},
        ],
    }
    points, cut = read_points(_write(tmp_path / "scan.vertebrae.json", doc))
    assert set(points) == {20, 28} and cut == set()
    assert np.array_equal(points[20], [1, 2, 3])


def test_read_ground_truth_json(tmp_path: Path) -> None:
    doc = {"vertebrae": [
        {"label": 24, "name": "L5", "world_lps_mm": [1.34, -133.97, 242.37],
         "cut_by_field_of_view": False},
        {"label": 19, "name": "T12", "world_lps_mm": [4.48, -111.02, 416.61],
         "cut_by_field_of_view": True},
    ]}
    points, cut = read_points(_write(tmp_path / "ground_truth.json", doc))
    assert cut == {19}
    assert np.allclose(points[24], [1.34, -133.97, 242.37])


def _volume() -> Volume:
    """A 4x5x6 LPS-oriented CT-like volume (-1000 to 1380 HU), spacing (2, 2, 3) mm, origin (10, 20, 30)."""
    hu = (np.arange(120, dtype=np.int16) * 20 - 1000).reshape(6, 5, 4)
    return Volume(hu=hu, spacing=np.array([2.0, 2, 3]), origin=np.array([10.0, 20, 30]),
                  direction=np.eye(3))


CTD = [{"direction": ["L", "P", "S"]}, {"label": 20, "X": 2.0, "Y": 3.0, "Z": 3.0}]


def test_read_verse_ctd_needs_image(tmp_path: Path) -> None:
    path = _write(tmp_path / "sub-01_ctd.json", CTD)
    with pytest.raises(VertedgeError, match="sub-01_ctd.json.*image"):
        read_points(path)


def test_read_verse_ctd_with_volume_or_path(tmp_path: Path) -> None:
    path = _write(tmp_path / "sub-01_ctd.json", CTD)
    volume = _volume()
    # VerSe X, Y, Z are voxel indices: world = origin + spacing * (X, Y, Z) here.
    points, cut = read_points(path, volume)
    assert cut == set() and np.allclose(points[20], [14, 26, 39])
    save_volume(volume, tmp_path / "ct.nii.gz")
    points, _ = read_points(path, tmp_path / "ct.nii.gz")
    assert np.allclose(points[20], [14, 26, 39])


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"points": []}),
        json.dumps({"vertebrae": {"label": 20}}),
        json.dumps({"vertebrae": [{"label": 20}]}),
        json.dumps({"vertebrae": [{"label": 20, "world_lps_mm": [1, 2]}]}),
        json.dumps({"vertebrae": [{"label": 99, "world_lps_mm": [1, 2, 3]}]}),
        json.dumps({"vertebrae": [{"label": 20, "world_lps_mm": [1, 2, 3]}] * 2}),
    ],
)
def test_invalid_files_raise(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(VertedgeError, match="bad.json"):
        read_points(path)


def test_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(VertedgeError, match="nope.json"):
        read_points(tmp_path / "nope.json")
