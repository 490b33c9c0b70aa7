"""`vertedge-train data` (vertedge_train/datasets): body centroids from masks, the dataset readers, downloads
from a local HTTP server, and a reader's Slicer corrections as a training case.

numpy and SimpleITK only: these run without torch. No test touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from vertedge.errors import VertedgeError
from vertedge.labels import LABELS
from vertedge.verse import read_verse_ctd, write_verse_ctd
from vertedge.volume import Volume, from_sitk, load_volume, save_volume, to_sitk
from vertedge_train.cli import main
from vertedge_train.data import find_verse_cases, verse_scan
from vertedge_train.datasets import download as dl
from vertedge_train.datasets.body import body_centroids
from vertedge_train.datasets.corrections import add_correction, read_markups
from vertedge_train.datasets.layouts import TOTALSEG_FILES, index_ctspine1k, index_totalseg, index_verse

from .conftest import SHARED_DATA
from .helpers import write_dicom_series

SAMPLE = SHARED_DATA / "shapes"
needs_sample = pytest.mark.skipif(not (SAMPLE / "sub-verse004_seg-vert_msk.nii.gz").exists(), reason="../shared/data absent")


# ----------------------------------------------------------------------------- fixtures


def spine_mask(levels: tuple[str, ...] = ("T12", "L1", "L2"), closed_ring: bool = True) -> tuple[Volume, dict[int, np.ndarray]]:
    """Synthetic vertebrae on a 1 x 1 x 2 mm grid stored PIR, and their body centroids (LPS mm).

    Each vertebra: a body (cylinder, radius 15 mm, 20 mm tall, centred at (0, 0, z)), a neural arch (a
    ring around the canal at y = +25 mm, inner radius 9, outer 14, joining the body's back), transverse
    processes and a spinous process reaching 35 mm behind the arch and 12 mm down. `closed_ring`
    False leaves the arch open at the back (no canal to find).
    """
    xs, ys, zs = np.arange(-40, 41, 1.0), np.arange(-20, 66, 1.0), np.arange(-18, 26 * len(levels) + 2, 2.0)
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")  # (k, j, i) = (S, P, L) in LPS
    labels = np.zeros(x.shape, np.int16)
    truth = {}
    for n, name in enumerate(levels):
        zc = 26.0 * (len(levels) - 1 - n)  # cranial first
        dz = z - zc
        body = (x**2 + y**2 <= 15**2) & (np.abs(dz) <= 10)
        r = np.hypot(x, y - 25.0)
        ring = (r >= 9) & (r <= 14) & (y >= 15) & (np.abs(dz) <= 7)
        if not closed_ring:
            ring &= y <= 30
        transverse = (np.abs(x) >= 12) & (np.abs(x) <= 35) & (y >= 20) & (y <= 28) & (np.abs(dz) <= 4)
        spinous = (np.abs(x) <= 3) & (y >= 37) & (y <= 60) & (dz >= -12) & (dz <= 2)
        labels[body | ring | transverse | spinous] = LABELS[name]
        # the body's centroid: the cylinder's, on this grid (voxel centres inside it)
        truth[LABELS[name]] = np.array([x[body].mean(), y[body].mean(), z[body].mean()])
    vol = Volume(labels, np.array([1.0, 1.0, 2.0]), np.array([xs[0], ys[0], zs[0]]), np.eye(3))
    return vol.reoriented((1, 2, 0), (False, True, False)), truth  # stored P, I, L-ish: not LPS


def ct_on(mask: Volume) -> Volume:
    """A CT on the mask's grid: bone where the mask is, air elsewhere (enough for load_volume's checks)."""
    hu = np.where(np.asarray(mask.hu) > 0, 700, -1000).astype(np.int16)
    return Volume(hu, mask.spacing, mask.origin, mask.direction)


def _err(c: dict, truth: dict) -> dict[int, float]:
    return {lab: float(np.linalg.norm(c[lab] - truth[lab])) for lab in truth}


# ----------------------------------------------------------------------------- body centroids


def test_body_centroid_of_synthetic_vertebrae_is_the_body_not_the_whole_mask():
    mask, truth = spine_mask()
    found = body_centroids(mask)
    assert set(found) == set(truth)
    for lab, c in found.items():
        assert c.method == "canal" and not c.cut
        assert np.linalg.norm(c.body_lps - truth[lab]) < 1.0
        assert np.linalg.norm(c.whole_lps - truth[lab]) > 8.0  # the arch and processes pull it back
        assert c.whole_lps[1] > truth[lab][1]  # posterior (+y in LPS)


def test_body_centroid_without_a_canal_falls_back_to_the_anterior_half():
    mask, truth = spine_mask(closed_ring=False)
    for lab, c in body_centroids(mask).items():
        assert c.method == "anterior-half"
        assert np.linalg.norm(c.body_lps - truth[lab]) < np.linalg.norm(c.whole_lps - truth[lab])


def test_body_centroids_do_not_depend_on_the_mask_orientation():
    mask, _ = spine_mask()
    ref = body_centroids(mask)
    for perm, flips in [((2, 1, 0), (True, False, True)), ((0, 2, 1), (False, True, True))]:
        again = body_centroids(mask.reoriented(perm, flips))
        for lab in ref:
            np.testing.assert_allclose(again[lab].body_lps, ref[lab].body_lps, atol=1e-6)


def test_a_vertebra_touching_the_border_is_flagged_cut():
    mask, _ = spine_mask()
    k = mask.axcodes().index("I")  # index axis along S-I; hu is (k, j, i)
    sl = [slice(None)] * 3
    sl[2 - k] = slice(0, mask.shape_ijk[k] - 8)  # cut 16 mm off the inferior end: through L2's body
    cut = Volume(np.ascontiguousarray(mask.hu[tuple(sl)]), mask.spacing, mask.origin, mask.direction)
    flags = {lab: c.cut for lab, c in body_centroids(cut).items()}
    assert flags == {LABELS["T12"]: False, LABELS["L1"]: False, LABELS["L2"]: True}


@needs_sample
def test_body_centroids_match_verse_official_centroids_on_its_sample():
    """VerSe's sample: body centroids within 2.5 mm of the official ones (measured 0.7-2.3, mean 1.2),
    each far nearer than the whole-mask centroid (9.5-14.9 mm away, mean 11.7)."""
    mask = from_sitk(sitk.ReadImage(str(SAMPLE / "sub-verse004_seg-vert_msk.nii.gz")))
    official = read_verse_ctd(SAMPLE / "sub-verse004_seg-subreg_ctd.json", mask)
    found = body_centroids(mask)
    assert set(found) == set(official) == set(range(16, 25))
    body = _err({lab: c.body_lps for lab, c in found.items()}, official)
    whole = _err({lab: c.whole_lps for lab, c in found.items()}, official)
    assert all(c.method == "canal" for c in found.values())
    assert np.mean(list(body.values())) <= 1.5
    assert max(body.values()) <= 2.5
    assert min(whole.values()) > 9.0
    assert all(body[lab] < whole[lab] / 3 for lab in body)


# ----------------------------------------------------------------------------- readers (--from)


def _verse_tree(folder: Path, subject: str, mask: Volume, cents: dict[int, np.ndarray]) -> None:
    raw, der = folder / "rawdata" / subject, folder / "derivatives" / subject
    save_volume(ct_on(mask), raw / f"{subject}_ct.nii.gz")
    save_volume(mask, der / f"{subject}_seg-vert_msk.nii.gz")
    write_verse_ctd(der / f"{subject}_seg-subreg_ctd.json", cents, mask)


def test_verse_folder_is_indexed_with_linked_cts_and_official_centroids(tmp_path):
    mask, truth = spine_mask()
    src = tmp_path / "dl"
    _verse_tree(src / "dataset-verse19training", "sub-verse901", mask, truth)
    _verse_tree(src / "dataset-verse19test", "sub-verse902", mask, truth)
    out = tmp_path / "out"
    report = index_verse(src, out, log=lambda m: None)
    assert report.cases == 2 and sum(report.placed.values()) == 2
    cases = find_verse_cases(out)
    assert [c[0].name for c in cases] == ["sub-verse901_ct.nii.gz", "sub-verse902_ct.nii.gz"]
    ct_out = cases[0][0]
    assert ct_out.samefile(src / "dataset-verse19training/rawdata/sub-verse901/sub-verse901_ct.nii.gz")  # linked, not copied
    scan = verse_scan(*cases[0])
    for lab, c in truth.items():
        np.testing.assert_allclose(scan.centroids[lab], c, atol=1e-3)
    again = index_verse(src, out, log=lambda m: None)  # idempotent
    assert again.placed == {"present": 2}


def test_ctspine1k_folder_gives_body_centroids_and_skips_what_it_cannot_use(tmp_path):
    mask, truth = spine_mask()
    src = tmp_path / "CTSpine1K" / "rawdata"
    save_volume(ct_on(mask), src / "volumes" / "COLONOG" / "1.3.6.1.4.1.9328.50.4.0001.nii.gz")
    save_volume(mask, src / "labels" / "COLONOG" / "1.3.6.1.4.1.9328.50.4.0001_seg.nii.gz")
    save_volume(mask, src / "labels" / "COLONOG" / "lonely_seg.nii.gz")  # no CT
    shifted = Volume(mask.hu, mask.spacing, mask.origin + 5.0, mask.direction)
    save_volume(ct_on(mask), src / "volumes" / "HNSCC-3DCT-RT" / "HN-1.nii.gz")
    save_volume(shifted, src / "labels" / "HNSCC-3DCT-RT" / "HN-1_seg.nii.gz")  # not on the CT's grid
    out = tmp_path / "out"
    report = index_ctspine1k(tmp_path / "CTSpine1K", out, log=lambda m: None)
    assert report.cases == 1 and report.vertebrae == 3
    assert report.skipped == {"mask without its CT": 1, "mask not on the CT's voxel grid": 1}
    (case,) = find_verse_cases(out)
    assert case[0].name == "sub-1.3.6.1.4.1.9328.50.4.0001_ct.nii.gz"
    scan = verse_scan(*case)
    assert max(_err(scan.centroids, truth).values()) < 1.0
    manifest = json.loads((out / "vertedge-data.json").read_text())
    assert manifest["cases"]["sub-1.3.6.1.4.1.9328.50.4.0001"]["dataset"] == "ctspine1k"


def _totalseg_case(folder: Path, mask: Volume) -> None:
    """A TotalSegmentator case: ct.nii.gz and one binary file per structure (empty ones too, as it writes them)."""
    save_volume(ct_on(mask), folder / "ct.nii.gz")
    image = to_sitk(mask)
    arr = sitk.GetArrayFromImage(image)
    for label, name in [*TOTALSEG_FILES.items(), (26, "vertebrae_S1.nii.gz")]:
        one = sitk.GetImageFromArray((arr == label).astype(np.uint8))
        one.CopyInformation(image)
        (folder / "segmentations").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(one, str(folder / "segmentations" / name), useCompression=True)


def test_totalsegmentator_folder_gives_body_centroids_and_leaves_out_cut_vertebrae(tmp_path):
    mask, truth = spine_mask()
    k = mask.axcodes().index("I")
    sl = [slice(None)] * 3
    sl[2 - k] = slice(0, mask.shape_ijk[k] - 8)  # L2 cut by the field of view
    cut = Volume(np.ascontiguousarray(mask.hu[tuple(sl)]), mask.spacing, mask.origin, mask.direction)
    src = tmp_path / "Totalsegmentator_dataset_v201"
    _totalseg_case(src / "s0001", cut)
    _totalseg_case(src / "s0002", Volume(np.zeros_like(mask.hu), mask.spacing, mask.origin, mask.direction))  # a head scan: no spine
    out = tmp_path / "out"
    report = index_totalseg(src, out, log=lambda m: None)
    assert report.cases == 1 and report.dropped_cut == 1
    assert report.skipped == {"no vertebra inside the field of view": 1}
    (case,) = find_verse_cases(out)
    assert case[0].parent.name == "sub-s0001"
    scan = verse_scan(*case)
    assert set(scan.centroids) == {LABELS["T12"], LABELS["L1"]}
    assert max(_err(scan.centroids, {k: truth[k] for k in scan.centroids}).values()) < 1.0


@needs_sample
def test_ctspine1k_reader_on_the_verse_sample_mask(tmp_path):
    """VerSe's real mask as a CTSpine1K case (same label numbers): the written centroids are within 2.5 mm of VerSe's."""
    mask = from_sitk(sitk.ReadImage(str(SAMPLE / "sub-verse004_seg-vert_msk.nii.gz")))
    src = tmp_path / "ctspine1k"
    save_volume(ct_on(mask), src / "volumes" / "verse004.nii.gz")
    (src / "labels").mkdir()
    shutil.copyfile(SAMPLE / "sub-verse004_seg-vert_msk.nii.gz", src / "labels" / "verse004_seg.nii.gz")
    out = tmp_path / "out"
    assert index_ctspine1k(src, out, log=lambda m: None).cases == 1
    scan = verse_scan(*find_verse_cases(out)[0])
    official = read_verse_ctd(SAMPLE / "sub-verse004_seg-subreg_ctd.json", mask)
    assert set(scan.centroids) == set(official)
    assert max(_err(scan.centroids, official).values()) <= 2.5


# ----------------------------------------------------------------------------- downloads


class _Server:
    """A local HTTP server (127.0.0.1) serving bytes by path, with Range support; it can break off a
    transfer after `cut[path]` bytes (once), or ignore Range (`no_range`)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.cut: dict[str, int] = {}
        self.no_range = False
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and not outer.no_range:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                for k, v in outer.headers.get(self.path, {}).items():
                    self.send_header(k, v)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                stop = outer.cut.pop(self.path, None)
                self.wfile.write(body if stop is None else body[:stop])
                if stop is not None:
                    self.wfile.flush()
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def test_download_resumes_after_a_broken_transfer_and_checks_the_md5(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    data = np.random.default_rng(0).bytes(3_000_000)
    server.files["/files/big.bin"] = data
    server.cut["/files/big.bin"] = 1_000_000
    src = dl.Source("https://example.org/files/big.bin", "big.bin", size=len(data), md5=hashlib.md5(data).hexdigest(), extract=False)
    with pytest.raises(VertedgeError, match="run again to resume"):
        dl.fetch(src, tmp_path, server.base, retries=0)
    part = tmp_path / "big.bin.part"
    assert part.exists() and 0 < part.stat().st_size < len(data) and not (tmp_path / "big.bin").exists()
    have = part.stat().st_size
    path = dl.fetch(src, tmp_path, server.base, retries=0)
    assert path.read_bytes() == data and not part.exists()
    assert server.requests[-1] == ("/files/big.bin", f"bytes={have}-")  # resumed, not restarted
    assert "MB" in capsys.readouterr().err  # progress on stderr
    recorded = json.loads((tmp_path / "checksums.json").read_text())
    assert recorded["big.bin"]["sha256"] == hashlib.sha256(data).hexdigest()


def test_download_resumes_within_one_call(server, tmp_path, monkeypatch):
    monkeypatch.setattr(dl.time, "sleep", lambda s: None)
    data = np.random.default_rng(1).bytes(2_500_000)
    server.files["/f.bin"] = data
    server.cut["/f.bin"] = 700_000
    src = dl.Source("https://x.org/f.bin", "f.bin", sha256=hashlib.sha256(data).hexdigest(), extract=False)
    assert dl.fetch(src, tmp_path, server.base, retries=2).read_bytes() == data
    assert [r for _, r in server.requests] == [None, "bytes=700000-"]


def test_a_server_ignoring_range_starts_the_file_over(server, tmp_path):
    data = np.random.default_rng(2).bytes(1_500_000)
    server.files["/f.bin"] = data
    server.no_range = True
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)  # a stale part that Range would append to
    src = dl.Source("https://x.org/f.bin", "f.bin", md5=hashlib.md5(data).hexdigest(), extract=False)
    assert dl.fetch(src, tmp_path, server.base).read_bytes() == data


def test_checksum_mismatch_is_refused_and_nothing_is_left_as_complete(server, tmp_path):
    server.files["/f.bin"] = b"not what was published" * 1000
    src = dl.Source("https://x.org/f.bin", "f.bin", md5="0" * 32, extract=False)
    with pytest.raises(VertedgeError, match="MD5"):
        dl.fetch(src, tmp_path, server.base)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "f.bin.part").exists()
    wrong_size = dl.Source("https://x.org/f.bin", "f.bin", size=5, extract=False)
    with pytest.raises(VertedgeError, match="expected 5"):
        dl.fetch(wrong_size, tmp_path, server.base)
    assert not list(tmp_path.iterdir())


def test_totalsegmentator_table_has_zenodo_md5_and_a_wrong_file_is_refused(server, tmp_path, monkeypatch, capsys):
    (src,) = dl.SOURCES["totalsegmentator"]
    assert src.md5 == "fe250e5718e0a3b5df4c4ea9d58a62fe" and src.size == 23_581_218_285
    server.files["/records/10047292/files/Totalsegmentator_dataset_v201.zip"] = b"a small impostor"
    code = main(["data", "totalsegmentator", "--to", str(tmp_path / "ts"), "--url", server.base])
    assert code == 1
    err = capsys.readouterr().err
    assert "Totalsegmentator_dataset_v201.zip: 16 bytes, expected 23581218285" in err
    assert not list((tmp_path / "ts" / "downloads" / "totalsegmentator").glob("*.zip*"))


def _zip_of(folder: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder.parent).as_posix())
    return buf.getvalue()


def test_verse_download_then_index_end_to_end(server, tmp_path, capsys):
    mask, truth = spine_mask()
    for n, split in enumerate(("training", "validation", "test")):
        tree = tmp_path / "src" / f"dataset-verse19{split}"
        _verse_tree(tree, f"sub-verse9{n:02d}", mask, truth)
        server.files[f"/public/VerSe-complete/dataset-verse19{split}.zip"] = _zip_of(tree)
    out = tmp_path / "verse19"
    assert main(["data", "verse19", "--to", str(out), "--url", server.base]) == 0
    assert "verse19: 3 cases" in capsys.readouterr().out
    cases = find_verse_cases(out)
    assert len(cases) == 3
    scan = verse_scan(*cases[0])
    assert max(_err(scan.centroids, truth).values()) < 1e-3
    assert (out / "downloads" / "verse19" / "dataset-verse19training.zip").exists()


def test_a_zip_failing_its_crc_is_refused(server, tmp_path):
    mask, truth = spine_mask(("L1",))
    tree = tmp_path / "src" / "dataset-verse20training"
    _verse_tree(tree, "sub-verse999", mask, truth)
    data = bytearray(_zip_of(tree))
    at = data.find(b"\x1f\x8b")  # inside the stored CT (a gzip stream): flip a byte
    data[at + 200] ^= 0xFF
    server.files["/public/VerSe-complete/dataset-verse20training.zip"] = bytes(data)
    src = dl.SOURCES["verse20"][0]
    with pytest.raises(VertedgeError, match="CRC"):
        dl.fetch(src, tmp_path / "dl", server.base)
    assert not list((tmp_path / "dl").iterdir())


def test_ctspine1k_download_lists_the_hub_with_sha256_and_follows_pages(server, tmp_path):
    mask, truth = spine_mask()
    ct = tmp_path / "ct.nii.gz"
    seg = tmp_path / "seg.nii.gz"
    save_volume(ct_on(mask), ct)
    save_volume(mask, seg)
    files = {"rawdata/volumes/COLONOG/case1.nii.gz": ct.read_bytes(), "rawdata/labels/COLONOG/case1_seg.nii.gz": seg.read_bytes()}
    repo = "/datasets/alexanderdann/CTSpine1K/resolve/main/"
    entries = []
    for path, data in files.items():
        server.files[repo + path] = data
        entries.append({"type": "file", "path": path, "size": len(data), "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data)}})
    api = "/api/datasets/alexanderdann/CTSpine1K/tree/main/rawdata?recursive=true"
    server.files[api] = json.dumps([{"type": "directory", "path": "rawdata/volumes"}, entries[0]]).encode()
    server.headers[api] = {"Link": f'<{server.base}/page2>; rel="next"'}
    server.files["/page2"] = json.dumps([entries[1]]).encode()
    out = tmp_path / "ctspine1k"
    assert main(["data", "ctspine1k", "--to", str(out), "--url", server.base]) == 0
    (case,) = find_verse_cases(out)
    assert max(_err(verse_scan(*case).centroids, truth).values()) < 1.0
    # a file whose bytes differ from the Hub's SHA-256 is refused
    bad = dl.Source(server.base + repo + "x", "x.nii.gz", sha256="1" * 64, extract=False)
    server.files[repo + "x"] = b"abc"
    with pytest.raises(VertedgeError, match="SHA-256"):
        dl.fetch(bad, tmp_path / "x")


# ----------------------------------------------------------------------------- corrections (data add)


def _scan(tmp_path: Path) -> tuple[Path, Volume, dict[int, np.ndarray]]:
    mask, truth = spine_mask()
    path = tmp_path / "patient 7.nii.gz"
    save_volume(ct_on(mask), path)
    return path, load_volume(path), truth


def _vertedge_markups(volume: Volume, cents: dict[int, np.ndarray]) -> dict:
    from vertedge.labels import name
    from vertedge.outputs import slicer_markups
    from vertedge.pipeline import Result, Vertebra

    verts = tuple(
        Vertebra(lab, name(lab), tuple(map(float, c)), tuple(map(float, volume.world_to_index(c))), 0.9, 1.0, 10)  # type: ignore[arg-type]
        for lab, c in cents.items()
    )
    return slicer_markups(Result(verts, {}, {}, "cpu", {}))


def test_add_round_trip_of_vertedge_markups_edited_in_slicer(tmp_path, capsys):
    scan, volume, truth = _scan(tmp_path)
    doc = _vertedge_markups(volume, truth)
    points = doc["markups"][0]["controlPoints"]
    points[0]["position"] = list(np.add(points[0]["position"], [0.0, -2.0, 1.0]))  # moved
    truth[LABELS["T12"]] = truth[LABELS["T12"]] + [0.0, -2.0, 1.0]
    points[2]["label"] = " l3 "  # renamed (case and spaces are forgiven)
    truth[LABELS["L3"]] = truth.pop(LABELS["L2"])
    del points[1]  # removed
    truth.pop(LABELS["L1"])
    doc["markups"].append({"type": "Line", "coordinateSystem": "LPS", "controlPoints": [{"label": "L-1", "position": [0, 0, 0]}]})  # a ruler
    mrk = tmp_path / "patient 7.mrk.json"
    mrk.write_text(json.dumps(doc))
    out = tmp_path / "site"
    assert main(["data", "add", str(scan), str(mrk), "--to", str(out)]) == 0
    assert "sub-patient-7: 2 vertebrae (T12 L3)" in capsys.readouterr().out
    (case,) = find_verse_cases(out)
    assert case[0].samefile(scan)  # hard-linked
    got = verse_scan(*case).centroids
    assert set(got) == set(truth)
    for lab in truth:
        np.testing.assert_allclose(got[lab], truth[lab], atol=0.1)


def test_add_reads_ras_markups_and_dicom_scans(tmp_path):
    _, volume, truth = _scan(tmp_path)
    dicom = write_dicom_series(volume, tmp_path / "series")
    doc = _vertedge_markups(volume, truth)
    doc["markups"][0]["coordinateSystem"] = "RAS"
    for p in doc["markups"][0]["controlPoints"]:
        p["position"] = [-p["position"][0], -p["position"][1], p["position"][2]]
    mrk = tmp_path / "edited.mrk.json"
    mrk.write_text(json.dumps(doc))
    added = add_correction(dicom, mrk, tmp_path / "site")
    assert added.case_id == "sub-series" and added.placed == "written"
    got = verse_scan(*find_verse_cases(tmp_path / "site")[0]).centroids
    for lab in truth:
        np.testing.assert_allclose(got[lab], truth[lab], atol=0.1)


def test_add_refuses_bad_markups_and_writes_nothing(tmp_path, capsys):
    scan, volume, truth = _scan(tmp_path)
    out = tmp_path / "site"
    for edit, message in [
        (lambda pts: pts[1].update(label="L7"), "unknown vertebra label 'L7' (control point 2)"),
        (lambda pts: pts[1].update(label="T12"), "label 'T12' is given twice"),
        (lambda pts: pts[0].update(position=[0.0, 0.0, 900.0]), "point T12 at LPS (0.0, 0.0, 900.0) mm lies outside the scan"),
    ]:
        doc = _vertedge_markups(volume, truth)
        edit(doc["markups"][0]["controlPoints"])
        mrk = tmp_path / "bad.mrk.json"
        mrk.write_text(json.dumps(doc))
        assert main(["data", "add", str(scan), str(mrk), "--to", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0
        assert not out.exists()
    mrk.write_text(json.dumps({"not": "markups"}))
    with pytest.raises(VertedgeError, match="not a 3D Slicer markups file"):
        read_markups(mrk)


def test_add_skips_unplaced_points_and_refuses_to_overwrite_another_scan(tmp_path):
    scan, volume, truth = _scan(tmp_path)
    doc = _vertedge_markups(volume, truth)
    doc["markups"][0]["controlPoints"][2]["positionStatus"] = "undefined"
    mrk = tmp_path / "a.mrk.json"
    mrk.write_text(json.dumps(doc))
    out = tmp_path / "site"
    first = add_correction(scan, mrk, out)
    assert set(first.centroids) == {LABELS["T12"], LABELS["L1"]}
    again = add_correction(scan, mrk, out)  # the same scan again: fine (new corrections)
    assert again.placed == "present"
    other = tmp_path / "other" / "patient 7.nii.gz"
    moved = load_volume(scan)
    save_volume(Volume(moved.hu, moved.spacing, moved.origin + 1.0, moved.direction), other)
    with pytest.raises(VertedgeError, match="already holds another scan"):
        add_correction(other, mrk, out)
    before = first.ctd.read_text()
    assert add_correction(other, mrk, out, force=True).case_id == first.case_id
    assert first.ctd.read_text() != before
