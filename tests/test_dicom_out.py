"""DICOM out: the vertebrae as a Structured Report and the overview as a Secondary Capture in the
source's study, valid and true to the JSON."""

from __future__ import annotations

import json
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from vertedge.dicom_out import CONFIDENCE, NEEDS_REVIEW, VERTEBRA_CODES
from vertedge.labels import LABELS, name
from vertedge.outputs import write_result
from vertedge.pipeline import Result, Vertebra, input_description
from vertedge.volume import load_volume, save_volume, to_sitk

from .conftest import air_volume, paint_ball, rotation
from .helpers import run_cli

SOURCE = {
    "PatientName": "DOE^JANE",
    "PatientID": "P-0042",
    "PatientBirthDate": "19700101",
    "PatientSex": "F",
    "StudyInstanceUID": "1.2.826.0.1.3680043.2.1125.9.1",
    "StudyID": "S1",
    "StudyDate": "20240102",
    "StudyTime": "101010",
    "AccessionNumber": "ACC-7",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.2.1125.9.2",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.2.1125.9.3",
}


def write_ct_series(volume, folder) -> list[str]:
    """Write `volume` as a CT DICOM series of one study and Frame of Reference (`SOURCE`); its SOP Instance UIDs."""
    image = sitk.Cast(to_sitk(volume), sitk.sitkInt16)
    cosines = np.array(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel()
    tags = {pydicom.datadict.tag_for_keyword(k): v for k, v in SOURCE.items()}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True)
    uids = []
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in tags.items():
            s.SetMetaData(f"{tag >> 16:04x}|{tag & 0xFFFF:04x}", value)
        uids.append(f"{SOURCE['SeriesInstanceUID']}.{k + 1}")
        s.SetMetaData("0008|0018", uids[-1])
        s.SetMetaData("0008|0060", "CT")
        s.SetMetaData("0020|0013", str(k + 1))
        s.SetMetaData("0020|0037", "\\".join(f"{c:.9f}" for c in cosines))
        s.SetMetaData("0020|0032", "\\".join(f"{c:.6f}" for c in image.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"ct{k:03d}.dcm"))
        writer.Execute(s)
    return uids


@pytest.fixture
def series(tmp_path):
    """An oblique CT series (folder, SOP Instance UIDs) with a bone ball."""
    volume = air_volume((24, 20, 16), (1.5, 1.5, 2.5), rotation("z", 15), (5, -10, 30))
    paint_ball(volume, np.array([5.0, -10.0, 30.0]), 8.0, 900)
    folder = tmp_path / "series"
    return folder, write_ct_series(volume, folder)


@pytest.fixture
def labelled(series):
    """The series' volume and a result with L1, a T13 to review and an L6."""
    volume = load_volume(series[0])
    points = {"L1": (3.0, -12.0, 36.0), "T13": (5.0, -10.0, 30.0), "L6": (6.5, -9.0, 24.123456)}
    vertebrae = tuple(
        Vertebra(LABELS[n], n, p, tuple(volume.world_to_index(np.array(p))), c, 0.3, 10, needs_review=n == "T13")
        for (n, p), c in zip(points.items(), (0.93, 0.41, 0.77))
    )
    models = {"localization": "loc-1234", "identification": "id-5678"}
    return volume, Result(vertebrae, input_description(volume), models, "cpu", {})


def _region_point(group) -> np.ndarray:
    """The (x, y, z) LPS mm of a group's SCOORD3D POINT."""
    assert group.roi.graphic_type == hd.sr.GraphicTypeValues3D.POINT
    return group.roi.value[0]


def _texts(item, concept: str) -> list[str]:
    """The TEXT values named `concept` anywhere below an SR content item."""
    found = []
    for child in item.get("ContentSequence", []):
        if child.ValueType == "TEXT" and child.ConceptNameCodeSequence[0].CodeMeaning == concept:
            found.append(child.TextValue)
        found += _texts(child, concept)
    return found


def test_sr_holds_each_vertebra_at_its_json_point_in_the_source_study(series, labelled, tmp_path):
    volume, result = labelled
    out = tmp_path / "out"
    paths = write_result(result, volume, out, "scan", dicom=True)
    assert {out / "scan.sr.dcm", out / "scan.sc.dcm"} <= set(paths)
    ds = pydicom.dcmread(out / "scan.sr.dcm")
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID",
                    "AccessionNumber", "StudyDate", "StudyTime"):
        assert str(ds[keyword].value) == SOURCE[keyword], keyword
    folder, source_uids = series
    assert ds.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.SOPInstanceUID not in source_uids and ds.SeriesInstanceUID != SOURCE["SeriesInstanceUID"]
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    (referenced,) = evidence.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == SOURCE["SeriesInstanceUID"]
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced.ReferencedSOPSequence) == sorted(source_uids)
    assert {r.ReferencedSOPClassUID for r in referenced.ReferencedSOPSequence} == {pydicom.uid.CTImageStorage}

    doc = json.loads((out / "scan.vertebrae.json").read_text())
    groups = hd.sr.srread(out / "scan.sr.dcm").content.get_planar_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == [v["name"] for v in doc["vertebrae"]]
    for g, v in zip(groups, doc["vertebrae"]):
        np.testing.assert_allclose(_region_point(g), v["world_lps_mm"], atol=0.01)
        assert g.roi.ReferencedFrameOfReferenceUID == SOURCE["FrameOfReferenceUID"]
        assert g.finding_type == hd.sr.CodedConcept.from_code(VERTEBRA_CODES[v["label"]])
        (confidence,) = g.get_measurements(name=CONFIDENCE)
        assert confidence.value == pytest.approx(v["confidence"], abs=1e-4) and confidence.unit.value == "1"
        (review,) = g.get_qualitative_evaluations(name=NEEDS_REVIEW)
        assert review.value == (codes.SCT.Yes if v["needs_review"] else codes.SCT.No)
        assert {"identification model id-5678", "localization model loc-1234"} <= set(_texts(g[0], "Algorithm Parameters"))

    again = write_result(result, volume, tmp_path / "again", "scan", dicom=True)[-2]
    assert pydicom.dcmread(again).SOPInstanceUID != ds.SOPInstanceUID  # a new instance every time


def test_every_label_has_its_own_snomed_code_and_transitional_ones_their_regions():
    assert set(VERTEBRA_CODES) == set(LABELS.values())
    assert len({c.value for c in VERTEBRA_CODES.values()}) == len(VERTEBRA_CODES)
    assert all(c.scheme_designator == "SCT" for c in VERTEBRA_CODES.values())
    # the standard's own concepts (DICOM CID 7603 "Vertebra", as pydicom ships them)
    for label in range(1, 25):
        assert VERTEBRA_CODES[label] == getattr(codes.SCT, f"{name(label)}Vertebra")
    assert "thoracic" in VERTEBRA_CODES[LABELS["T13"]].meaning and "lumbar" in VERTEBRA_CODES[LABELS["L6"]].meaning


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
@pytest.mark.parametrize("found", ["vertebrae", "none"])
def test_sr_and_sc_pass_the_dicom_validator(labelled, tmp_path, found):
    from dataclasses import replace

    volume, result = labelled
    result = result if found == "vertebrae" else replace(result, vertebrae=())
    sr, sc = write_result(result, volume, tmp_path, "scan", dicom=True)[-2:]
    for path, iod in ((sr, "Comprehensive3DSR"), (sc, "SCImage")):
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = (report.stdout + report.stderr).splitlines()
        assert lines and lines[0].strip() == iod
        assert not [line for line in lines if line.startswith("Error")], "\n".join(lines)


def test_sc_is_the_overview_picture_in_the_source_study(series, labelled, tmp_path):
    from PIL import Image

    volume, result = labelled
    write_result(result, volume, tmp_path, "scan", png=True, dicom=True)
    sc = pydicom.dcmread(tmp_path / "scan.sc.dcm")
    sr = pydicom.dcmread(tmp_path / "scan.sr.dcm")
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "AccessionNumber"):
        assert str(sc[keyword].value) == SOURCE[keyword], keyword
    assert sc.SeriesInstanceUID not in (SOURCE["SeriesInstanceUID"], sr.SeriesInstanceUID)
    assert sc.SOPInstanceUID not in series[1]
    np.testing.assert_array_equal(sc.pixel_array, np.asarray(Image.open(tmp_path / "scan.png")))


def test_dicom_out_refuses_a_scan_not_read_from_dicom_and_writes_nothing(labelled, tmp_path, tiny_models, monkeypatch, capsys):
    from vertedge.errors import VertedgeError

    volume, result = labelled
    nifti = tmp_path / "ct.nii.gz"
    save_volume(volume, nifti)
    with pytest.raises(VertedgeError, match="not read from a DICOM series"):
        write_result(result, load_volume(nifti), tmp_path / "lib", "ct", dicom=True)
    assert not (tmp_path / "lib").exists()
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "run", str(nifti), "-o", str(out), "--models", str(tiny_models), "--dicom")
    assert code == 2 and "--dicom" in err and "ct.nii.gz is not a DICOM series folder" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_dicom_outputs_join_the_set_and_skip_existing_wants_them(series, tiny_models, tmp_path, monkeypatch, capsys):
    folder, _ = series
    out = tmp_path / "out"
    args = ["run", str(folder), "-o", str(out), "--models", str(tiny_models), "-q"]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    first = (out / "series.vertebrae.json").read_text()
    assert not list(out.glob("*.dcm"))
    assert run_cli(monkeypatch, capsys, *args, "--dicom", "--skip-existing")[0] == 0  # done, but without DICOM
    assert (out / "series.vertebrae.json").read_text() != first  # redone (new timings) ...
    sr = hd.sr.srread(out / "series.sr.dcm")  # ... with its report: no vertebra in this ball
    assert sr.StudyInstanceUID == SOURCE["StudyInstanceUID"]
    assert not sr.content.get_planar_roi_measurement_groups()
    (none_found,) = sr.content.get_image_measurement_groups()
    (absent,) = none_found.get_qualitative_evaluations(name=codes.SCT.Vertebra)
    assert absent.value == codes.SCT.Absent
    stamp = (out / "series.sr.dcm").stat().st_mtime_ns
    assert run_cli(monkeypatch, capsys, *args, "--dicom", "--skip-existing")[0] == 0
    assert (out / "series.sr.dcm").stat().st_mtime_ns == stamp  # whole: skipped
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    assert not list(out.glob("*.dcm"))  # a set without --dicom leaves no report of an earlier run
