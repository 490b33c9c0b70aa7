"""Unattended work: batches go on past bad scans; bad input is one line and leaves nothing behind."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vertedge.errors import VertedgeError
from vertedge.volume import load_volume, save_volume, to_sitk

from .conftest import air_volume, paint_ball
from .helpers import run_cli, write_bad_inputs


@pytest.fixture
def good_scan(tmp_path):
    volume = air_volume((30, 30, 30), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 12.0, 300)
    path = tmp_path / "good.nii.gz"
    save_volume(volume, path)
    return path


def _more_bad_inputs(tmp_path, good_volume):
    """Bad inputs beyond the loader's format checks: NaN, spacing, not HU, too large."""
    bad = {}
    image = sitk.Cast(to_sitk(good_volume), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(image)
    arr[3, 4, 5] = np.nan
    nan_image = sitk.GetImageFromArray(arr)
    nan_image.CopyInformation(image)
    sitk.WriteImage(nan_image, str(tmp_path / "nan.mha"))  # ITK's NIfTI reader turns NaN into 0
    bad["NaN"] = tmp_path / "nan.mha"
    wide = sitk.Image(image)
    wide.SetSpacing((2.0, 2.0, 35.0))
    sitk.WriteImage(wide, str(tmp_path / "spacing.nii.gz"))
    bad["absurd spacing"] = tmp_path / "spacing.nii.gz"
    mr = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 1500, (20, 20, 20)).astype(np.int16))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    bad["MR"] = tmp_path / "mr.nii.gz"
    return bad


def test_every_bad_input_to_run_is_one_line_and_leaves_nothing(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    bad = write_bad_inputs(tmp_path, good_scan) | _more_bad_inputs(tmp_path, load_volume(good_scan))
    for kind, path in bad.items():
        out = tmp_path / f"out-{kind}"
        code, stdout, err = run_cli(monkeypatch, capsys, "run", str(path), "-o", str(out), "--models", str(tiny_models), "-q")
        assert code == 2, kind
        assert err.count("\n") == 1 and err.startswith(f"vertedge: error: {path}"), (kind, err)
        assert "Traceback" not in err and not out.exists(), kind


def test_volume_too_large_for_memory_is_refused_before_reading(good_scan, monkeypatch):
    monkeypatch.setattr("vertedge.volume._available_memory_bytes", lambda: 10_000)
    with pytest.raises(VertedgeError, match="needs about .* GiB to load"):
        load_volume(good_scan)


def test_no_spine_found_is_a_valid_empty_result_with_a_warning(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    code, stdout, err = run_cli(monkeypatch, capsys, "run", str(good_scan), "-o", str(tmp_path / "o"), "--models", str(tiny_models), "--json")
    assert code == 0
    assert json.loads(stdout)["vertebrae"] == []
    assert "no spine found" in err


@pytest.mark.slow
def test_batch_goes_on_past_bad_scans_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    from vertedge.metrics import read_points, score
    from vertedge.phantom import make_phantom, save_phantom

    folder = tmp_path / "batch"
    folder.mkdir()
    good = make_phantom(0, "lumbar")  # held out from training
    save_phantom(good, tmp_path / "truth" / "a_good.nii.gz")
    os.replace(tmp_path / "truth" / "a_good.nii.gz", folder / "a_good.nii.gz")
    (folder / "b_corrupt.nii.gz").write_bytes(b"\x1f\x8b" + os.urandom(300))
    sitk.WriteImage(sitk.Image(16, 16, sitk.sitkInt16) + 3, str(folder / "c_flat.nii.gz"))
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "run", str(folder), "-o", str(out))  # the shipped models
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    status = {s["name"]: s["status"] for s in summary["scans"]}
    assert status == {"a_good": "ok", "b_corrupt": "failed", "c_flat": "failed"}
    assert summary["counts"] == {"ok": 1, "failed": 2, "skipped": 0}
    assert (out / "a_good.vertebrae.json").exists() and (out / "a_good_ctd.json").exists()
    truth, cut = read_points(tmp_path / "truth" / "a_good_gt.json")
    found, _ = read_points(out / "a_good.vertebrae.json")
    assert score(found, truth, exclude=cut).id_rate["all"] == 100.0
    assert not any(p.name.startswith(("b_corrupt", "c_flat")) for p in out.iterdir())
    for name in status:
        assert name in stdout  # the summary table


def test_skip_existing_does_not_redo_finished_scans(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    other = tmp_path / "second.nii.gz"
    save_volume(load_volume(good_scan), other)
    out = tmp_path / "out"
    args = ["run", str(good_scan), str(other), "-o", str(out), "--models", str(tiny_models)]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    first = (out / "good.vertebrae.json").stat().st_mtime_ns
    (out / "second.vertebrae.json").unlink()
    assert run_cli(monkeypatch, capsys, *args, "--skip-existing")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["scans"]] == ["skipped", "ok"]
    assert (out / "good.vertebrae.json").stat().st_mtime_ns == first


SUFFIXES = st.sampled_from([".nii.gz", ".nii", ".mha", ".nrrd"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=2000), suffix=SUFFIXES)
def test_fuzz_random_bytes_only_raise_the_tools_error(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        load_volume(path)
    except VertedgeError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    dtype=st.sampled_from([np.int16, np.uint8, np.int32, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
    spacing=st.floats(0.01, 30.0),
    suffix=SUFFIXES,
)
def test_fuzz_random_small_arrays_load_or_raise_the_tools_error(tmp_path, shape, dtype, seed, spacing, suffix):
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 800, shape)
    if dtype in (np.float32, np.float64) and rng.random() < 0.3:
        values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf])
    array = values.astype(dtype) if np.issubdtype(dtype, np.floating) else np.clip(values, np.iinfo(dtype).min, np.iinfo(dtype).max).astype(dtype)
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing([spacing] * image.GetDimension())
    path = tmp_path / f"fuzz{suffix}"
    try:
        sitk.WriteImage(image, str(path))
    except RuntimeError:
        return  # a format that cannot hold this image: nothing to load
    try:
        volume = load_volume(path)
    except VertedgeError:
        return
    assert volume.hu.ndim == 3 and np.isfinite(volume.hu).all()


# --- naming, DICOM folders with several series -----------------------------------------------


def _write_dicom_series(folder, volume, uid: str, description: str, prefix: str) -> None:
    """Write `volume` (axis-aligned) as one DICOM series of int16 slices into `folder`."""
    image = sitk.Cast(to_sitk(volume), sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0020|000e", uid)
        s.SetMetaData("0008|103e", description)
        s.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(s)


def _ct(n_slices: int):
    volume = air_volume((20, 20, n_slices), (2.0, 2.0, 2.0))
    paint_ball(volume, np.zeros(3), 8.0, 300)
    return volume


UID_A, UID_B, UID_C = (f"1.2.826.0.1.3680043.2.1125.7.{i}" for i in (1, 2, 3))


def test_each_series_of_a_dicom_folder_is_its_own_scan(tmp_path, tiny_models, monkeypatch, capsys):
    from vertedge.batch import expand_inputs, unique_names

    study = tmp_path / "study"
    _write_dicom_series(study, _ct(12), UID_A, "CHEST/ABD 5.0 B31f", "a")
    _write_dicom_series(study, _ct(16), UID_B, "", "b")  # no description: named by its UID
    _write_dicom_series(study, _ct(14), UID_C, "CHEST/ABD 5.0 B31f", "c")  # the same description twice
    scans = expand_inputs([study])
    assert sorted(s.series_id for s in scans) == sorted([UID_A, UID_B, UID_C])
    names = dict(zip((s.series_id for s in scans), unique_names(scans)))
    assert names == {UID_A: f"study_{UID_A}", UID_B: f"study_{UID_B}", UID_C: f"study_{UID_C}"}
    assert {s.series_id: s.load().shape_ijk[2] for s in scans} == {UID_A: 12, UID_B: 16, UID_C: 14}

    (tmp_path / "two").mkdir()
    _write_dicom_series(tmp_path / "two" / "exam", _ct(12), UID_A, "CHEST/ABD 5.0 B31f", "a")
    _write_dicom_series(tmp_path / "two" / "exam", _ct(16), UID_B, "..", "b")
    found = expand_inputs([tmp_path / "two"])  # searched: the folder above the series is in the name
    assert sorted(unique_names(found)) == sorted(["exam_CHEST_ABD_5.0_B31f", f"exam_{UID_B}"])

    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "run", str(study), "-o", str(out), "--models", str(tiny_models), "--json")
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["name"] for s in summary["scans"]) == sorted(names.values())
    for uid, name in names.items():
        doc = json.loads((out / f"{name}.vertebrae.json").read_text())
        assert doc["input"]["series_instance_uid"] == uid and doc["input"]["source"] == "study"


def test_same_file_names_get_distinct_stable_names(tmp_path):
    from vertedge.batch import Scan, unique_names

    scans = [Scan(tmp_path / "a" / "ct.nii.gz"), Scan(tmp_path / "b" / "ct.nii.gz"), Scan(tmp_path / "b" / "x" / "ct.nii.gz")]
    assert unique_names(scans) == ["a_ct", "b_ct", "b_x_ct"]
    # same folder, another extension or only the case differs: a digest of the path tells them apart
    clash = [Scan(tmp_path / "ct.nii.gz"), Scan(tmp_path / "ct.nrrd"), Scan(tmp_path / "CT.mha"), Scan(tmp_path / "other.mha")]
    names = unique_names(clash)
    assert len({n.casefold() for n in names}) == 4 and names[3] == "other"
    assert all(n.casefold().startswith("ct-") for n in names[:3])
    assert unique_names(clash) == names  # the same on every run


def test_same_file_name_in_two_folders_never_reuses_the_other_scans_result(tmp_path, tiny_models, monkeypatch, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_volume(_ct(12), tmp_path / "a" / "ct.nii.gz")
    save_volume(_ct(16), tmp_path / "b" / "ct.nii.gz")
    out = tmp_path / "out"
    base = ["-o", str(out), "--models", str(tiny_models)]
    assert run_cli(monkeypatch, capsys, "run", str(tmp_path / "a" / "ct.nii.gz"), str(tmp_path / "b" / "ct.nii.gz"), *base)[0] == 0
    shapes = {n: json.loads((out / f"{n}.vertebrae.json").read_text())["input"]["shape_ijk"] for n in ("a_ct", "b_ct")}
    assert shapes == {"a_ct": [20, 20, 12], "b_ct": [20, 20, 16]}
    # one at a time into one folder: both are "ct"; b must not be taken for a's finished scan
    assert run_cli(monkeypatch, capsys, "run", str(tmp_path / "a" / "ct.nii.gz"), *base)[0] == 0
    doc = json.loads((out / "ct.vertebrae.json").read_text())
    assert doc["input"]["source"] == "ct.nii.gz" and str(tmp_path) not in json.dumps(doc)
    assert doc["input"]["fingerprint"].startswith("sha256:")
    code, _, _ = run_cli(monkeypatch, capsys, "run", str(tmp_path / "b" / "ct.nii.gz"), *base, "--skip-existing", "--json")
    assert code == 0
    assert json.loads((out / "ct.vertebrae.json").read_text())["input"]["shape_ijk"] == [20, 20, 16]


def test_full_paths_on_request(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    out = tmp_path / "out"
    run_cli(monkeypatch, capsys, "run", str(good_scan), "-o", str(out), "--models", str(tiny_models), "--full-paths")
    assert json.loads((out / "good.vertebrae.json").read_text())["input"]["source"] == str(good_scan.resolve())


# --- whole result sets, resuming ------------------------------------------------------------------


def _two_scans(tmp_path, good_scan):
    other = tmp_path / "second.nii.gz"
    save_volume(_ct(14), other)
    return [str(good_scan), str(other)]


def test_a_failed_write_leaves_no_marker_and_a_rerun_redoes_the_scan(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    import vertedge.outputs

    out = tmp_path / "out"
    args = ["run", *_two_scans(tmp_path, good_scan), "-o", str(out), "--models", str(tiny_models), "--png"]

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(vertedge.outputs, "write_png", disk_full)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1 and "No space left on device" in err
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]
    monkeypatch.undo()
    code, _, _ = run_cli(monkeypatch, capsys, *args, "--skip-existing")
    assert code == 0
    assert [s["status"] for s in json.loads((out / "summary.json").read_text())["scans"]] == ["ok", "ok"]
    # a set missing one file is not trusted either
    (out / "second_ctd.json").unlink()
    run_cli(monkeypatch, capsys, *args, "--skip-existing")
    assert [s["status"] for s in json.loads((out / "summary.json").read_text())["scans"]] == ["skipped", "ok"]
    assert (out / "second_ctd.json").exists()


def test_png_on_a_resumed_batch_renders_the_scans_done_without_it(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    out = tmp_path / "out"
    args = ["run", *_two_scans(tmp_path, good_scan), "-o", str(out), "--models", str(tiny_models)]
    assert run_cli(monkeypatch, capsys, *args)[0] == 0
    assert not list(out.glob("*.png"))
    assert run_cli(monkeypatch, capsys, *args, "--png", "--skip-existing")[0] == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["good.png", "second.png"]
    assert [s["status"] for s in json.loads((out / "summary.json").read_text())["scans"]] == ["ok", "ok"]
    # done with PNGs: a resumed --png batch has nothing left to do
    assert run_cli(monkeypatch, capsys, *args, "--png", "--skip-existing")[0] == 0
    assert [s["status"] for s in json.loads((out / "summary.json").read_text())["scans"]] == ["skipped", "skipped"]


def test_summary_of_a_resumed_batch_keeps_the_earlier_results(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    out = tmp_path / "out"
    scans = _two_scans(tmp_path, good_scan)
    third = tmp_path / "third.nii.gz"
    save_volume(_ct(10), third)
    base = ["-o", str(out), "--models", str(tiny_models)]
    assert run_cli(monkeypatch, capsys, "run", *scans, str(third), *base)[0] == 0
    first = {s["name"]: s for s in json.loads((out / "summary.json").read_text())["scans"]}
    (out / "second.vertebrae.json").unlink()
    assert run_cli(monkeypatch, capsys, "run", *scans, *base, "--skip-existing")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    entries = {s["name"]: s for s in summary["scans"]}
    assert entries["good"]["status"] == "skipped"
    assert entries["good"]["n_vertebrae"] == 0 and entries["good"]["seconds"] == first["good"]["seconds"]
    assert entries["good"]["message"] == first["good"]["message"]
    assert entries["second"]["status"] == "ok"
    assert entries["third"] == first["third"]  # not in this run: kept as it was
    assert summary["counts"] == {"ok": 2, "failed": 0, "skipped": 1}


# --- output folder, aborts, Ctrl-C ----------------------------------------------------------------


def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(tmp_path, good_scan, monkeypatch, capsys):
    (tmp_path / "hostname").write_text("a file")
    for out in (tmp_path / "hostname" / "out", tmp_path / "hostname"):
        # models that do not exist: refused for the folder first, so no work was started
        code, _, err = run_cli(monkeypatch, capsys, "run", str(good_scan), "-o", str(out), "--models", str(tmp_path / "none"))
        assert code == 2 and err.count("\n") == 1
        assert err.startswith(f"vertedge: error: -o {out}: cannot create the output folder")
    code, _, err = run_cli(monkeypatch, capsys, "drr", str(good_scan), "-o", str(tmp_path / "hostname" / "d"))
    assert code == 2 and "cannot create the output folder" in err and err.count("\n") == 1


def test_a_scan_whose_outputs_cannot_be_written_fails_alone(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    out = tmp_path / "out"
    (out / "good.vertebrae.json").mkdir(parents=True)  # where the marker must go: the rename fails
    code, _, err = run_cli(monkeypatch, capsys, "run", *_two_scans(tmp_path, good_scan), "-o", str(out), "--models", str(tiny_models))
    assert code == 1 and "cannot write the outputs of good" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["scans"]] == ["failed", "ok"]
    assert not (out / "good_ctd.json").exists()


def _interrupt_at(monkeypatch, call: int, error: type[BaseException]) -> None:
    """Make the Labeler raise `error` on its `call`-th scan."""
    from vertedge.pipeline import Labeler

    label = Labeler.__call__
    calls = []

    def labeler(self, volume, keep_images=False):
        calls.append(1)
        if len(calls) == call:
            raise error()
        return label(self, volume, keep_images)

    monkeypatch.setattr(Labeler, "__call__", labeler)


def test_ctrl_c_writes_the_summary_of_what_finished_and_says_how_to_resume(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    out = tmp_path / "out"
    third = tmp_path / "third.nii.gz"
    save_volume(_ct(10), third)
    args = ["run", *_two_scans(tmp_path, good_scan), str(third), "-o", str(out), "--models", str(tiny_models), "-q"]
    _interrupt_at(monkeypatch, 2, KeyboardInterrupt)
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 130
    last = err.splitlines()[-1]
    assert last.startswith("warning: interrupted: 1 of 3 scans finished") and last.endswith("-q --skip-existing")
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["scans"]] == [("good", "ok")]
    assert sorted(p.name for p in out.iterdir()) == ["good.mrk.json", "good.vertebrae.json", "good_ctd.json", "summary.json"]
    monkeypatch.undo()
    assert run_cli(monkeypatch, capsys, *args, "--skip-existing")[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary["scans"]] == ["skipped", "ok", "ok"]


def test_an_unexpected_error_still_leaves_the_summary(tmp_path, good_scan, tiny_models, monkeypatch, capsys):
    out = tmp_path / "out"
    _interrupt_at(monkeypatch, 2, MemoryError)
    with pytest.raises(MemoryError):
        run_cli(monkeypatch, capsys, "run", *_two_scans(tmp_path, good_scan), "-o", str(out), "--models", str(tiny_models))
    assert [s["name"] for s in json.loads((out / "summary.json").read_text())["scans"]] == ["good"]
