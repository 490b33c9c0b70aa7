"""`vertedge archive`: a whole archive on a local Ray cluster, every scan labelled once, resumable."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from functools import partial
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from vertedge.archive import (  # noqa: E402
    MANIFEST_FILE,
    Manifest,
    archive_scans,
    label_archive,
    listed_paths,
    plan,
)
from vertedge.errors import VertedgeError  # noqa: E402
from vertedge.phantom import make_phantom  # noqa: E402
from vertedge.pipeline import Labeler  # noqa: E402
from vertedge.volume import save_volume  # noqa: E402

from .helpers import run_cli  # noqa: E402

N_GOOD = 20
VIEWS = 5  # fewer views than the models' 10: ~0.5 s a scan on one core, and still a spine found
DIES_ON = "s07.nii.gz"  # its first labeller dies labelling it
CORRUPT = "corrupt.nii.gz"
RETRIES = 2


class CountingLabeler(Labeler):
    """What each actor builds: a CPU Labeler that notes every scan it labelled in `calls`, and kills
    its own worker on `DIES_ON` while `flag` exists (removing it first, so the retry lives)."""

    def __init__(self, calls: Path, flag: Path) -> None:
        super().__init__(device="cpu", n_views=VIEWS)
        self.calls, self.flag = calls, flag

    def __call__(self, volume, keep_images=False):
        source = Path(volume.meta["source"]).name
        if source == DIES_ON and self.flag.exists():
            self.flag.unlink()
            os._exit(1)
        result = super().__call__(volume, keep_images)
        with open(self.calls, "a") as f:  # one short append: whole lines from every process
            f.write(source + "\n")
        return result


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: 3 CPUs, i.e. two CPU labellers and one CPU to read scans."""
    ray.init(num_cpus=3, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """`N_GOOD` small lumbar phantoms (48 x 48 x 64 voxels of 5 x 5 x 4 mm) and a corrupt file."""
    folder = tmp_path_factory.mktemp("archive")
    for seed in range(N_GOOD):
        volume = make_phantom(seed, "lumbar", shape=(48, 48, 64), spacing=(5.0, 5.0, 4.0)).volume
        save_volume(volume, folder / f"s{seed:02d}.nii.gz")
    (folder / CORRUPT).write_bytes(b"\x1f\x8b" + os.urandom(300))
    return folder


def _label(folder: Path, out: Path, make_labeler, actors: int = 2):
    """One archive job on the module's cluster, as `vertedge archive` runs it: (finished, earlier)."""
    with Manifest(out) as manifest:
        todo, earlier = plan(manifest, archive_scans([folder]), out, png=False)
        finished = list(label_archive(todo, manifest, out, make_labeler, actors=actors, gpu=False, retries=RETRIES))
    return finished, earlier


def _manifest(out: Path) -> dict[str, dict]:
    """The manifest's rows by scan name."""
    db = sqlite3.connect(out / MANIFEST_FILE)
    db.row_factory = sqlite3.Row
    rows = {r["name"]: dict(r) for r in db.execute("SELECT * FROM scans")}
    db.close()
    return rows


@pytest.fixture(scope="module")
def archived(cluster, scans, tmp_path_factory):
    """The archive labelled once, with a labeller killed on `DIES_ON`: (out, calls file, finished)."""
    work = tmp_path_factory.mktemp("job")
    calls, flag = work / "calls.txt", work / "die-once"
    flag.touch()
    out = work / "out"
    finished, earlier = _label(scans, out, partial(CountingLabeler, calls, flag))
    assert earlier == [] and not flag.exists()  # the labeller did die
    return out, calls, finished


def test_every_good_scan_is_labelled_exactly_once_though_a_labeller_died(archived):
    out, calls, finished = archived
    good = [f"s{i:02d}" for i in range(N_GOOD)]
    assert sorted(calls.read_text().split()) == sorted(f"{n}.nii.gz" for n in good)
    rows = _manifest(out)
    assert {n: rows[n]["status"] for n in good} == dict.fromkeys(good, "ok")
    assert {n: rows[n]["attempts"] for n in good} == {n: 2 if f"{n}.nii.gz" == DIES_ON else 1 for n in good}
    assert sum(f.outcome.status == "ok" for f in finished) == N_GOOD
    for n in good:
        doc = json.loads((out / f"{n}.vertebrae.json").read_text())
        assert doc["input"]["fingerprint"] == rows[n]["fingerprint"] and rows[n]["n_vertebrae"] == len(doc["vertebrae"])
    assert sum(rows[n]["n_vertebrae"] > 0 for n in good) >= N_GOOD - 2  # the pipeline did find spines


def test_a_corrupt_scan_is_recorded_failed_after_its_retries(archived):
    out, _, finished = archived
    row = _manifest(out)["corrupt"]
    assert row["status"] == "failed" and row["attempts"] == RETRIES + 1
    assert "cannot read this file as an image" in row["message"] and "\n" not in row["message"]
    assert [f.outcome.name for f in finished if f.outcome.status == "failed"] == ["corrupt"]
    assert not any(p.name.startswith("corrupt") for p in out.iterdir())


def test_outputs_are_those_of_vertedge_run(archived, scans, tmp_path, monkeypatch, capsys):
    out, _, _ = archived
    ref = tmp_path / "run"
    code, _, _ = run_cli(monkeypatch, capsys, "run", str(scans), "-o", str(ref), "-k", str(VIEWS), "--device", "cpu", "-q")
    assert code == 1  # the corrupt file
    for i in range(N_GOOD):
        mine, theirs = (json.loads((d / f"s{i:02d}.vertebrae.json").read_text()) for d in (out, ref))
        del mine["timings_ms"], theirs["timings_ms"]
        assert mine == theirs
        for suffix in ("_ctd.json", ".mrk.json"):
            assert (out / f"s{i:02d}{suffix}").read_bytes() == (ref / f"s{i:02d}{suffix}").read_bytes()


def test_a_rerun_labels_nothing_and_keeps_the_failure(archived, scans, monkeypatch, capsys):
    out, calls, _ = archived
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("s[0-9]*")}
    rows = _manifest(out)
    code, stdout, err = run_cli(monkeypatch, capsys, "archive", str(scans), "-o", str(out), "--actors", "2")
    assert code == 1, err  # the corrupt scan stays failed
    assert f"{N_GOOD + 1} scans: 0 labelled, 0 failed in this run; {N_GOOD + 1} finished earlier (1 of them failed)" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("s[0-9]*")} == before
    assert _manifest(out) == rows
    assert len(calls.read_text().split()) == N_GOOD
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 0, "failed": 1, "skipped": N_GOOD}


def test_a_killed_job_resumes_what_it_had_not_finished(archived, scans, tmp_path):
    out, _, _ = archived
    copy = tmp_path / "out"
    copy.mkdir()
    for p in out.iterdir():
        copy.joinpath(p.name).write_bytes(p.read_bytes())
    with Manifest(copy) as manifest:
        # killed while s03 was labelled and before s04's outputs were recorded: both rows say running
        manifest.update("s03", status="running")
        manifest.update("s04", status="running")
        (copy / "s03.vertebrae.json").unlink()  # s03's set never finished
        (copy / "s05_ctd.json").unlink()  # and s05's outputs were lost since
        todo, earlier = plan(manifest, archive_scans([scans]), copy, png=False)
    assert sorted(j.name for j in todo) == ["s03", "s05"]
    status = {o.name: o.status for o in earlier}
    assert status["s04"] == "skipped" and status["corrupt"] == "failed" and len(earlier) == N_GOOD - 1
    rows = _manifest(copy)
    assert rows["s04"]["status"] == "ok" and rows["s03"]["status"] == "pending" and rows["s05"]["attempts"] == 0


def test_the_command_labels_a_list_of_scans(cluster, scans, tmp_path, monkeypatch, capsys):
    listing = tmp_path / "scans.csv"
    listing.write_text(f"path,patient\n{scans / 's00.nii.gz'},a\n# not a scan\n\n{scans / 's01.nii.gz'},b\n")
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "archive", str(listing), "-o", str(out), "--actors", "2", "--device", "cpu")
    assert code == 0, err
    assert "2 scans: 0 finished earlier, 2 to label by 2 labellers on CPU" in err
    assert "scans/min, ETA" in err and "[2/2]" in err
    assert "2 scans: 2 labelled, 0 failed in this run" in stdout and "labeller-" in stdout
    assert "seconds per scan: median" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 2, "failed": 0, "skipped": 0}
    assert sorted(s["name"] for s in summary["scans"]) == ["s00", "s01"]
    assert all((out / f"s0{i}.mrk.json").is_file() for i in (0, 1))


def test_labellers_without_models_are_one_line(cluster, scans, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "archive", str(scans / "s00.nii.gz"), "-o", str(out), "--models", str(tmp_path / "none"))
    assert code == 2 and "no models installed" in err
    assert err.splitlines()[-1].startswith("vertedge: error:") and "Traceback" not in err
    assert _manifest(out)["s00"]["status"] == "pending"  # nothing labelled, nothing lost


def test_lists_name_scans_from_their_folder(tmp_path):
    (tmp_path / "lists").mkdir()
    text = tmp_path / "lists" / "scans.txt"
    text.write_text("# the night's scans\n../a.nii.gz\n\n  /data/b.nrrd  \n")
    assert listed_paths(text) == [tmp_path / "lists" / "../a.nii.gz", Path("/data/b.nrrd")]
    table = tmp_path / "scans.csv"
    table.write_text('PATH,id\n"c, d.nii.gz",1\ne.mha,2\n')  # a header, and a comma in a quoted file name
    assert listed_paths(table) == [tmp_path / "c, d.nii.gz", tmp_path / "e.mha"]
    with pytest.raises(VertedgeError, match="cannot read this list"):
        listed_paths(tmp_path / "missing.txt")


def test_a_second_job_on_the_same_folder_is_refused(tmp_path):
    with Manifest(tmp_path) as first:
        with pytest.raises(VertedgeError, match="another vertedge archive is writing to this folder"):
            Manifest(tmp_path)
        assert first.entries() == {}
    Manifest(tmp_path).close()  # released with the first
