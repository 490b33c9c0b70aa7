"""Output files: our JSON, VerSe centroids (round trip) and a Slicer markups list."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vertedge.geometry import Protocol, make_views
from vertedge.labels import name
from vertedge.metrics import read_points
from vertedge.outputs import scan_name, write_result
from vertedge.pipeline import Result, Vertebra, input_description
from vertedge.verse import read_verse_ctd

from .conftest import air_volume, paint_ball, rotation


@pytest.fixture
def result_and_volume():
    volume = air_volume((50, 40, 60), (1.5, 1.5, 2.0), rotation("z", 15), (5, -20, 100)).reoriented((0, 2, 1), (True, False, True))
    truth = {20: np.array([3.0, -15.0, 130.0]), 21: np.array([4.0, -18.0, 100.0]), 22: np.array([5.0, -20.0, 70.0])}
    vertebrae = tuple(
        Vertebra(lab, name(lab), tuple(p), tuple(volume.world_to_index(p)), 0.9, 0.4, 10) for lab, p in truth.items()
    )
    views = make_views(volume, Protocol(pixel_mm=4.0, n_views=4))
    images = np.random.default_rng(0).random((4, *views.shape)).astype(np.float32)
    result = Result(vertebrae, input_description(volume), {"localization": "a", "identification": "b"}, "cpu", {"drr": 1.0}, views, images)
    return result, volume, truth


def test_files_parse_and_verse_round_trips(result_and_volume, tmp_path):
    result, volume, truth = result_and_volume
    paths = write_result(result, volume, tmp_path, "scan", png=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    doc = json.loads((tmp_path / "scan.vertebrae.json").read_text())
    assert [v["name"] for v in doc["vertebrae"]] == ["L1", "L2", "L3"]
    assert {"input", "models", "timings_ms", "device"} <= set(doc)
    for v in doc["vertebrae"]:
        np.testing.assert_allclose(volume.index_to_world(v["voxel_index"]), v["world_lps_mm"], atol=1e-2)
    back = read_verse_ctd(tmp_path / "scan_ctd.json", volume)
    for label, p in truth.items():
        np.testing.assert_allclose(back[label], p, atol=1e-3)
    ours, _ = read_points(tmp_path / "scan.vertebrae.json")
    assert set(ours) == set(truth)


def test_verse_file_is_in_voxel_indices(result_and_volume, tmp_path):
    result, volume, truth = result_and_volume
    write_result(result, volume, tmp_path, "scan")
    entries = json.loads((tmp_path / "scan_ctd.json").read_text())
    assert entries[0] == {"direction": list(volume.axcodes())}
    first = entries[1]
    expected = volume.world_to_index(truth[first["label"]])
    np.testing.assert_allclose([first["X"], first["Y"], first["Z"]], expected, atol=1e-3)


def test_slicer_markups_have_the_fields_slicer_reads(result_and_volume, tmp_path):
    result, volume, truth = result_and_volume
    write_result(result, volume, tmp_path, "scan")
    doc = json.loads((tmp_path / "scan.mrk.json").read_text())
    assert doc["@schema"].endswith("markups-schema-v1.0.3.json#")
    (markup,) = doc["markups"]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == ["L1", "L2", "L3"]
    for p, xyz in zip(points, truth.values()):
        assert {"id", "label", "position", "orientation", "positionStatus"} <= set(p)
        np.testing.assert_allclose(p["position"], xyz)


def test_scan_names():
    from pathlib import Path

    assert scan_name(Path("a/sub-01_ct.nii.gz")) == "sub-01_ct"
    assert scan_name(Path("b/scan.nrrd")) == "scan"


def test_a_failed_write_keeps_the_earlier_set_and_leaves_no_new_file(result_and_volume, tmp_path, monkeypatch):
    import dataclasses

    import vertedge.outputs

    result, volume, _ = result_and_volume
    write_result(result, volume, tmp_path, "scan", png=True)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vertedge.outputs, "write_png", disk_full)
    with pytest.raises(OSError):  # a new result (one vertebra fewer) whose PNG cannot be written
        write_result(dataclasses.replace(result, vertebrae=result.vertebrae[1:]), volume, tmp_path, "scan", png=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file either


def test_the_marker_appears_last_and_a_half_renamed_set_is_removed(result_and_volume, tmp_path, monkeypatch):
    import os

    result, volume, _ = result_and_volume
    renamed = []
    replace = os.replace

    def recording_replace(src, dst):
        renamed.append(os.path.basename(dst))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    paths = write_result(result, volume, tmp_path, "scan", png=True)
    outer = [n for n in renamed if not n.startswith(".part-")]
    assert outer[-1] == "scan.vertebrae.json" and sorted(outer) == sorted(p.name for p in paths)

    def interrupted_replace(src, dst):
        if os.path.basename(dst) == "scan_ctd.json":
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_result(result, volume, tmp_path, "scan")
    assert list(tmp_path.iterdir()) == []  # the old marker went first; nothing half-done is left


def test_a_set_without_png_removes_an_earlier_runs_png(result_and_volume, tmp_path):
    result, volume, _ = result_and_volume
    write_result(result, volume, tmp_path, "scan", png=True)
    write_result(result, volume, tmp_path, "scan")
    assert not (tmp_path / "scan.png").exists()


def test_result_names_the_input_file_not_its_path(result_and_volume):
    import dataclasses

    _, volume, _ = result_and_volume
    volume = dataclasses.replace(volume, meta={"source": "/home/DOE^JOHN/ct.nii.gz"})
    assert input_description(volume)["source"] == "ct.nii.gz"


def test_labels_that_need_review_are_marked_in_every_output(result_and_volume, tmp_path):
    from dataclasses import replace

    from vertedge.batch import result_note

    result, volume, _ = result_and_volume
    doubtful = replace(result.vertebrae[1], confidence=0.3, needs_review=True)
    result = replace(result, vertebrae=(result.vertebrae[0], doubtful, result.vertebrae[2]))
    write_result(result, volume, tmp_path, "scan", png=True)
    doc = json.loads((tmp_path / "scan.vertebrae.json").read_text())
    assert [v["needs_review"] for v in doc["vertebrae"]] == [False, True, False]
    points = json.loads((tmp_path / "scan.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert [p["selected"] for p in points] == [True, False, True]
    assert "needs review" in points[1]["description"] and "needs review" not in points[0]["description"]
    note = result_note(result)
    assert "L2" in note and "L1" not in note and "needs_review" in note and "\n" not in note
    sure = replace(result, vertebrae=(result.vertebrae[0],))
    assert result_note(sure) == ""


def test_overview_labels_never_overlap_and_stay_near_their_points():
    from vertedge.overview import spread

    rows = np.array([100.0, 101.0, 99.0, 300.0, 5.0, 398.0])
    placed = spread(rows, gap=18.0, height=400.0)
    ordered = np.sort(placed)
    assert np.all(np.diff(ordered) >= 18.0 - 1e-9) and ordered[0] >= 9.0 and ordered[-1] <= 391.0
    assert np.array_equal(np.argsort(placed, kind="stable"), np.argsort(rows, kind="stable"))  # order kept
    assert abs(placed[3] - 300.0) < 1e-9  # a lone label stays level with its point


def test_overview_shows_the_bone_and_marks_each_vertebra_in_its_colour(tmp_path):
    from dataclasses import replace

    from vertedge.overview import REVIEW, TRUSTED, overview

    volume = air_volume((40, 40, 60), (1.0, 1.0, 2.0), rotation("z", 10), (0, 0, 0))
    volume.hu[...] = -100  # fat: grey in the bone window
    paint_ball(volume, np.array([0.0, 0.0, 20.0]), 6.0, 1200)
    paint_ball(volume, np.array([0.0, 0.0, -20.0]), 6.0, 1200)
    vertebrae = tuple(
        Vertebra(lab, name(lab), (0.0, 0.0, z), tuple(volume.world_to_index(np.array([0.0, 0.0, z]))), 0.9, 0.4, 10, review)
        for lab, z, review in ((20, 20.0, False), (21, -20.0, True))
    )
    result = Result(vertebrae, input_description(volume), {}, "cpu", {})
    picture = overview(result, volume, "ct-42")
    assert picture.ndim == 3 and picture.shape[2] == 3 and picture.shape[0] >= 640
    # the bone balls are white, as bright as anything in the picture's grey panels
    grey = picture[(picture[..., 0] == picture[..., 1]) & (picture[..., 1] == picture[..., 2])][:, 0]
    assert (grey == 255).sum() > 100 and ((grey > 60) & (grey < 140)).sum() > 1000  # bone white, fat grey
    unlabelled = overview(replace(result, vertebrae=()), volume, "ct-42")

    def count(image, colour):
        return int(np.all(image == colour, axis=-1).sum())

    for colour in (TRUSTED, REVIEW):  # the legend has both colours; the marks add to them
        assert count(picture, colour) > count(unlabelled, colour) + 50
