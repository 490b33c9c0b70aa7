"""`vertedge serve` against a real PACS: series in by C-STORE, the SR and the Secondary Capture out to
Orthanc, read back through Orthanc's REST API; restarts, a destination down, bad peers, the selector.

Each test starts its own Orthanc (Debian's `orthanc` package) on free localhost ports with a
temporary configuration and storage; the tests that need one skip without the `Orthanc` binary.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from vertedge.node.config import Destination, NodeOptions, RetryOptions, SelectOptions, load_config
from vertedge.node.select import SeriesInfo, choose, why_not
from vertedge.node.store import safe_key
from vertedge.phantom import make_phantom

from .conftest import air_volume, paint_ball
from .helpers import ORTHANC, Orthanc, ct_datasets, free_port, orthanc_server, run_cli, wait_for

pynetdicom = pytest.importorskip("pynetdicom", reason='pynetdicom is not installed (pip install "vertedge[dicom]")')
needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="the Orthanc binary is not installed (Debian package orthanc)")
REPO = Path(__file__).parents[1]
STUDY = "1.2.826.0.1.3680043.8.498.1"
CALLER = "SCANNER"


@pytest.fixture
def orthanc(tmp_path) -> Iterator[Orthanc]:
    if ORTHANC is None:
        pytest.skip("the Orthanc binary is not installed (Debian package orthanc)")
    with orthanc_server(tmp_path / "orthanc") as server:
        yield server


# --- the node -----------------------------------------------------------------------------------


class Lines(logging.Handler):
    """The node's log lines, kept."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def starting(self, word: str) -> list[str]:
        return [line for line in self.lines if line.startswith(word + " ")]


@pytest.fixture
def node_log() -> Iterator[Lines]:
    logger, lines = logging.getLogger("vertedge.node"), Lines()
    before = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(lines)
    logger.setLevel(before)


def node_options(tmp_path: Path, models: Path | None, *destinations: Destination, **values: Any) -> NodeOptions:
    """A node on a free port that accepts CALLER, completes a study after 1 s, and retries quickly."""
    retry = RetryOptions(first_delay_s=0.3, max_delay_s=1.0, timeout_s=5)
    return NodeOptions(tmp_path / "node", (CALLER,), port=free_port(), host="127.0.0.1", series_quiet_s=1.0, device="cpu",
                       models=models, destinations=destinations, retry=retry, **values)


@contextmanager
def running_node(options: NodeOptions) -> Iterator[Any]:
    """A `Node` serving in a thread of this process; stopped at the end."""
    from vertedge.node.server import Node

    node = Node(options)
    ready = threading.Event()
    thread = threading.Thread(target=node.run, kwargs={"ready": ready.set}, daemon=True)
    thread.start()
    wait_for(lambda: ready.is_set() or not thread.is_alive(), 60, "the node to start")
    assert thread.is_alive()
    try:
        yield node
    finally:
        node.stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the node did not stop"


def send(port: int, datasets: list[Any], calling: str = CALLER, called: str = "VERTEDGE") -> list[int]:
    """C-STORE `datasets` (or Part 10 file paths) to a node in one association: each status."""
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:100]
    ae.add_requested_context(pydicom.uid.SecondaryCaptureImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def destination(server: Orthanc, name: str = "orthanc") -> Destination:
    return Destination("ORTHANC", "127.0.0.1", server.dicom_port, name)


def small_ct(series_uid: str, n_slices: int = 40, thickness: float = 3.0, study: str = STUDY, **tags: Any) -> list[Any]:
    """A small CT series (32 x 32 x n_slices) with a bone ball: quick to label with the tiny models."""
    volume = air_volume((32, 32, n_slices), (4.0, 4.0, thickness), center_lps=(0, 0, 0))
    paint_ball(volume, np.array([0.0, 0.0, 0.0]), 20.0, 700)
    return ct_datasets(volume, study, series_uid, **tags)


# --- the end to end test ------------------------------------------------------------------------


@needs_orthanc
def test_a_series_sent_to_the_node_comes_back_to_orthanc_as_sr_and_sc(tmp_path, orthanc, node_log):
    # seed 5 at 3 mm: the shipped models find L1-L5, each within 2 mm (seed 4 at this size comes out one level off)
    phantom = make_phantom(5, "lumbar", shape=(96, 96, 80), spacing=(3.0, 3.0, 3.0), orientation="LPS")
    series_uid = f"{STUDY}.7"
    datasets = ct_datasets(phantom.volume, STUDY, series_uid)
    folder = tmp_path / "series"
    folder.mkdir()
    for ds in datasets:
        ds.save_as(folder / f"{ds.InstanceNumber:03d}.dcm", enforce_file_format=True)
    options = node_options(tmp_path, None, destination(orthanc))  # the shipped models: real labels
    with running_node(options):
        # a real C-STORE client as a user runs it (the README's command)
        sent = subprocess.run(
            [sys.executable, "-m", "pynetdicom", "storescu", "127.0.0.1", str(options.port), str(folder), "-aet", CALLER, "-aec", "VERTEDGE"],
            capture_output=True, text=True, timeout=120,
        )
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: orthanc.modalities(STUDY) == ["OT", "SR"], 120, "the SR and the Secondary Capture in Orthanc")
        wait_for(lambda: node_log.starting("series_done"), 10, "the series' log line")

    instances = orthanc.study_instances(STUDY)
    files = {ds.Modality: ds for ds in (orthanc.file(i["ID"]) for i in instances)}
    sr, sc = files["SR"], files["OT"]
    for ds in (sr, sc):
        assert ds.StudyInstanceUID == STUDY and ds.PatientID == "NODE-1" and ds.SeriesInstanceUID != series_uid
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and sc.Rows > 100 and sc.SamplesPerPixel == 3
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    (referenced,) = evidence.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == series_uid
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced.ReferencedSOPSequence) == sorted(ds.SOPInstanceUID for ds in datasets)

    name = safe_key(series_uid)
    doc = json.loads((options.storage / "outputs" / f"{name}.vertebrae.json").read_text())
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_planar_roi_measurement_groups()
    assert [v["name"] for v in doc["vertebrae"]] == ["L1", "L2", "L3", "L4", "L5"] and len(groups) == 5  # one point per vertebra
    truth = phantom.centroids
    for g, v in zip(groups, doc["vertebrae"]):
        assert g.tracking_identifier == v["name"]
        np.testing.assert_allclose(g.roi.value[0], v["world_lps_mm"], atol=0.01)
        assert g.roi.ReferencedFrameOfReferenceUID == f"{STUDY}.0"
        assert np.linalg.norm(np.array(v["world_lps_mm"]) - truth[v["label"]]) < 5  # the right vertebra, where it is
    for ending in (".sr.dcm", ".sc.dcm", ".png", "_ctd.json", ".mrk.json"):
        assert (options.storage / "outputs" / f"{name}{ending}").is_file()
    assert len(list((options.storage / "incoming" / name).glob("*.dcm"))) == len(datasets)
    (line,) = node_log.starting("series_done")
    assert f"series_uid={series_uid}" in line and f"instances={len(datasets)}" in line
    assert f"vertebrae={len(doc['vertebrae'])}" in line and "sent_to=orthanc" in line and "total_s=" in line


# --- restart, a destination down, bad peers ------------------------------------------------------


def serve_process(config: Path, log_file: Path) -> subprocess.Popen:
    """`vertedge serve --config CONFIG` as its own process (this checkout's code)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "vertedge", "serve", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log_file, "ab"))


def write_config(path: Path, options: NodeOptions) -> Path:
    """`options` (one destination, no selector or retry changes but the delays) as a TOML file."""
    (d,) = options.destinations
    path.write_text(f"""
[node]
ae_title = "{options.ae_title}"
port = {options.port}
host = "{options.host}"
storage = "{options.storage}"
calling_ae_titles = ["{CALLER}"]
series_quiet_s = {options.series_quiet_s}
device = "cpu"
models = "{options.models}"

[select]
min_slices = 10

[retry]
first_delay_s = 0.3
max_delay_s = 1.0

[[destinations]]
name = "{d.name}"
ae_title = "{d.ae_title}"
host = "{d.host}"
port = {d.port}
""")
    return path


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@needs_orthanc
def test_a_node_killed_mid_series_loses_nothing_and_labels_the_series_once(tmp_path, orthanc, tiny_models):
    options = node_options(tmp_path, tiny_models, destination(orthanc))
    config = write_config(tmp_path / "node.toml", options)
    datasets = small_ct(f"{STUDY}.20", n_slices=24)
    log_file = tmp_path / "node.log"
    first = serve_process(config, log_file)
    try:
        wait_for(lambda: listening(options.port) or first.poll() is not None, 60, "the node to listen")
        assert send(options.port, datasets[:12]) == [0] * 12  # acknowledged: on the disk
        first.send_signal(signal.SIGKILL)  # no chance to tidy up, well within the quiet time
        first.wait(10)
    finally:
        first.kill()
    second = serve_process(config, log_file)
    try:
        wait_for(lambda: listening(options.port) or second.poll() is not None, 60, "the node to listen again")
        assert send(options.port, datasets[12:]) == [0] * 12
        wait_for(lambda: orthanc.modalities(STUDY) == ["OT", "SR"], 60, "the SR and the Secondary Capture in Orthanc")
        time.sleep(2 * options.series_quiet_s + 1)  # time enough for a second labelling, were there one
        assert orthanc.modalities(STUDY) == ["OT", "SR"]  # labelled once
        (sr,) = [orthanc.file(i["ID"]) for i in orthanc.study_instances(STUDY) if orthanc._modality(i["ID"]) == "SR"]
        referenced = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert sorted(r.ReferencedSOPInstanceUID for r in referenced) == sorted(ds.SOPInstanceUID for ds in datasets)  # nothing lost
        second.send_signal(signal.SIGTERM)  # a graceful stop
        assert second.wait(30) == 0
    finally:
        second.kill()
    log = log_file.read_text()
    assert log.count("series_done ") == 1 and "stopped " in log
    assert "pending_receiving=1" in log  # the second start found the first half in the queue


@needs_orthanc
def test_results_reach_a_destination_that_was_down_when_it_comes_back(tmp_path, tiny_models, node_log):
    port = free_port()
    down = Destination("ORTHANC", "127.0.0.1", port, "late")
    options = node_options(tmp_path, tiny_models, down, select=SelectOptions(min_slices=10))
    with running_node(options) as node:
        assert send(options.port, small_ct(f"{STUDY}.30", n_slices=12)) == [0] * 12
        wait_for(lambda: len(node_log.starting("send_failed")) >= 4, 30, "failed attempts at the down destination")
        failed = node_log.starting("send_failed")
        assert "attempt=1 " in failed[0] and any("attempt=2 " in line for line in failed)
        with orthanc_server(tmp_path / "late", dicom_port=port) as late:
            wait_for(lambda: late.modalities(STUDY) == ["OT", "SR"], 30, "the outputs at the destination once it is up")
            wait_for(lambda: node_log.starting("series_done"), 10, "the series' log line")
        assert {s.status for s in node.store.sends(f"{STUDY}.30")} == {"sent"}
    assert not node_log.starting("send_given_up")


@needs_orthanc
def test_bad_peers_and_bad_instances_do_not_stop_the_node(tmp_path, orthanc, tiny_models, node_log):
    options = node_options(tmp_path, tiny_models, destination(orthanc), select=SelectOptions(min_slices=10))
    with running_node(options):
        # an unknown calling AE title: the association is rejected
        assert send(options.port, small_ct(f"{STUDY}.40", n_slices=12), calling="STRANGER") == []
        assert node_log.starting("association_rejected") and "calling_ae=STRANGER" in node_log.starting("association_rejected")[0]
        # garbage on the port, then a connection dropped half way through an association request
        for garbage in (np.random.default_rng(0).bytes(5000), b"\x01\x00\x00\x00\x10\x00" + b"\x00" * 20):
            with socket.create_connection(("127.0.0.1", options.port), timeout=5) as s:
                s.sendall(garbage)
                s.shutdown(socket.SHUT_WR)  # and no more: the node must not wait for the rest
                s.settimeout(5)
                try:
                    while s.recv(4096):
                        pass
                except (TimeoutError, ConnectionResetError):
                    pass
        # a data set cut short: refused with a failure status, nothing stored
        good = small_ct(f"{STUDY}.41", n_slices=12)
        broken = tmp_path / "broken.dcm"
        good[0].save_as(broken, enforce_file_format=True)
        data = broken.read_bytes()
        broken.write_bytes(data[: len(data) - 700] + b"\xe0\x7f\x10\x00OW\x00\x00\xff\xff\x00\x10")  # a pixel data header with too long a length
        missing = small_ct(f"{STUDY}.42", n_slices=1)[0]
        del missing.SeriesInstanceUID
        statuses = send(options.port, [broken, missing])
        assert statuses[0] >= 0xA000 and statuses[1] == 0xA900, [hex(s) for s in statuses]
        assert len(node_log.starting("refused_instance")) == 2
        assert not (options.storage / "incoming" / f"{STUDY}.41").exists()
        # the node still works: a good series is labelled and delivered
        assert send(options.port, good) == [0] * 12
        wait_for(lambda: node_log.starting("series_done"), 30, "the good series to be labelled and sent")
    (line,) = node_log.starting("series_done")
    assert f"series_uid={STUDY}.41" in line and "instances=12" in line and "sent_to=orthanc" in line
    assert orthanc.modalities(STUDY) == ["OT", "SR"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_cannot_name_a_path_outside_the_storage(tmp_path, tiny_models, node_log):
    options = node_options(tmp_path, tiny_models)
    evil = small_ct(f"{STUDY}.50", n_slices=2)
    evil[0].SeriesInstanceUID, evil[0].SOPInstanceUID = "../../escaped", "../../../x"
    evil[1].SOPInstanceUID = "/tmp/abs"
    with running_node(options):
        assert send(options.port, evil) == [0, 0]  # stored (PACS keep odd UIDs too), under safe names
    stored = sorted(p.relative_to(options.storage) for p in options.storage.rglob("*.dcm"))
    assert stored == sorted([Path("incoming", safe_key("../../escaped"), safe_key("../../../x") + ".dcm"),
                             Path("incoming", f"{STUDY}.50", safe_key("/tmp/abs") + ".dcm")])
    assert all(len(p.parts) == 3 and p.parts[1].startswith(("x", "1.")) for p in stored)
    assert not list(tmp_path.glob("escaped*")) and not (tmp_path / "x.dcm").exists() and not Path("/tmp/abs.dcm").exists()
    assert safe_key(f"{STUDY}.50") == f"{STUDY}.50" and safe_key("1.02.3") != "1.02.3" and safe_key("1." + "2" * 70).startswith("x")


@needs_orthanc
def test_the_selector_keeps_scouts_and_secondary_captures_out_and_takes_the_thinnest_series(tmp_path, orthanc, tiny_models, node_log):
    options = node_options(tmp_path, tiny_models, destination(orthanc), select=SelectOptions(min_slices=10))
    scout = small_ct(f"{STUDY}.60", n_slices=12, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], SeriesDescription="Topogram 0.6 T20f")
    capture = small_ct(f"{STUDY}.61", n_slices=1, SOPClassUID=pydicom.uid.SecondaryCaptureImageStorage, Modality="OT")
    thick = small_ct(f"{STUDY}.62", n_slices=12, thickness=5.0)
    thin = small_ct(f"{STUDY}.63", n_slices=20, thickness=3.0)
    with running_node(options) as node:
        for series in (scout, capture, thick, thin):
            assert send(options.port, series) == [0] * len(series)
        wait_for(lambda: node_log.starting("series_done"), 30, "the chosen series to be labelled and sent")
        status = {s.series_uid: (s.status, s.reason) for s in node.store.all_series()}
    assert status[f"{STUDY}.63"] == ("done", "")
    assert status[f"{STUDY}.60"][0] == status[f"{STUDY}.61"][0] == status[f"{STUDY}.62"][0] == "rejected"
    assert "localizer" in status[f"{STUDY}.60"][1] and "Secondary Capture" in status[f"{STUDY}.61"][1]
    assert "thinner" in status[f"{STUDY}.62"][1]
    assert len(node_log.starting("series_rejected")) == 3
    assert orthanc.modalities(STUDY) == ["OT", "SR"]  # one labelled series: one SR, one picture
    assert sorted(p.name for p in (options.storage / "outputs").glob("*.sr.dcm")) == [f"{STUDY}.63.sr.dcm"]


# --- the selector's rules and the configuration, without a network --------------------------------


def _info(**values: Any) -> SeriesInfo:
    base = dict(series_uid="1.1", study_uid="1", n_instances=100, modality="CT", sop_class_uid=pydicom.uid.CTImageStorage,
                image_type=("ORIGINAL", "PRIMARY", "AXIAL"), description="Abdomen 1.0 B30f", manufacturer="ACME",
                orientation=(1.0, 0, 0, 0, 1.0, 0), slice_thickness_mm=1.0)
    return SeriesInfo(**{**base, **values})


@pytest.mark.parametrize(
    "values, reason",
    [
        ({}, ""),
        ({"orientation": (1.0, 0, 0, 0, 0.966, -0.259)}, ""),  # 15 degrees of gantry tilt
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer"),
        ({"description": "Topogram 0.6 T20f"}, "topogram"),
        ({"description": "Dose Report", "image_type": ("DERIVED", "SECONDARY")}, "dose"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.67", "modality": "SR"}, "Structured Report"),
        ({"sop_class_uid": pydicom.uid.SecondaryCaptureImageStorage, "modality": "OT"}, "Secondary Capture"),
        ({"manufacturer": "vertedge", "sop_class_uid": pydicom.uid.SecondaryCaptureImageStorage}, "vertedge's own"),
        ({"image_type": ("DERIVED", "SECONDARY", "MPR")}, "lacks ORIGINAL, PRIMARY"),
        ({"modality": "MR", "sop_class_uid": pydicom.uid.MRImageStorage}, "modality MR"),
        ({"n_instances": 12}, "12 slices"),
        ({"orientation": (0.0, 1, 0, 0, 0, -1)}, "not axial"),  # sagittal
        ({"orientation": ()}, "no valid ImageOrientationPatient"),
    ],
)
def test_selector_rules(values, reason):
    got = why_not(_info(**values), SelectOptions())
    assert (reason in got and bool(got) == bool(reason)), got


def test_selector_takes_the_thinnest_series_per_study_and_counts_earlier_ones():
    thick, thin, short_thin, scout = (
        _info(series_uid="1.1", slice_thickness_mm=5.0), _info(series_uid="1.2", slice_thickness_mm=1.0),
        _info(series_uid="1.3", slice_thickness_mm=1.0, n_instances=60), _info(series_uid="1.4", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
    )
    picked = dict((s.series_uid, r) for s, r in choose([thick, thin, short_thin, scout], SelectOptions()))
    assert picked["1.2"] == "" and all(picked[u] for u in ("1.1", "1.3", "1.4"))
    two = dict((s.series_uid, r) for s, r in choose([thick, thin, short_thin], SelectOptions(series_per_study=2)))
    assert [u for u, r in two.items() if not r] == ["1.2", "1.3"]
    every = choose([thick, thin, scout], SelectOptions(series_per_study=0))
    assert [s.series_uid for s, r in every if not r] == ["1.1", "1.2"]
    later = choose([thin], SelectOptions(), already_labelled=1)
    assert "labelled earlier" in later[0][1]


def test_config_file_gives_the_options_and_bad_ones_end_with_one_line(tmp_path, monkeypatch, capsys):
    example = load_config(REPO / "deploy" / "vertedge-serve.toml")
    assert example.calling_ae_titles == ("CT_SCANNER", "ORTHANC") and example.destinations[0].port == 4242
    assert example.select == SelectOptions() and example.storage == Path("/var/lib/vertedge")
    good = (REPO / "deploy" / "vertedge-serve.toml").read_text()
    cases = {
        "not valid TOML": "[node\n",
        "missing calling_ae_titles": good.replace('calling_ae_titles = ["CT_SCANNER", "ORTHANC"]', ""),
        "calling_ae_titles is empty": good.replace('["CT_SCANNER", "ORTHANC"]', "[]"),
        "destinations[0]: unknown setting prot": good.replace("port = 4242", "prot = 4242"),
        "port must be int": good.replace("port = 11112", 'port = "11112"'),
        "'WAY_TOO_LONG_AE_TITLE' is not an AE title": good.replace('"VERTEDGE"', '"WAY_TOO_LONG_AE_TITLE"'),
        "min_slices must be at least 2": good.replace("min_slices = 30", "min_slices = 1"),
        "cannot read the configuration": None,
    }
    for expected, text in cases.items():
        path = tmp_path / "bad.toml"
        path.unlink(missing_ok=True)
        if text is not None:
            path.write_text(text)
        code, _, err = run_cli(monkeypatch, capsys, "serve", "--config", str(path))
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, (expected, err)
    relative = tmp_path / "rel.toml"
    relative.write_text(good.replace('"/var/lib/vertedge"', '"spool"'))
    assert load_config(relative).storage == tmp_path / "spool"


def test_retry_delays_double_up_to_the_cap():
    retry = RetryOptions(first_delay_s=2, max_delay_s=30)
    assert [retry.delay(n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    with pytest.raises(ValueError, match="first_delay_s"):
        replace(retry, first_delay_s=60)
