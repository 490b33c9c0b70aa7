"""The DICOM node end to end: `vertedge serve` in its own process, series in by C-STORE, the SR out to Orthanc.

Usage:
    python benchmarks/node.py [--shape 512x512x600] [--runs 3] [--concurrent 3] [--quiet-s 2] [--json node.json]

A full-spine phantom of `--shape` (latency.spine_phantom) is written once as a CT series (one
file per slice). Each run sends it with new UIDs (a new study) over one association and times,
from the moment the last C-STORE is acknowledged to the moment Orthanc's REST API lists the SR in
the study: the node's quiet wait (`--quiet-s`, after which a study counts as complete), reading the
series, labelling, writing the outputs and the C-STOREs to Orthanc. The node's own log line gives
the share of labelling (read + label + write) and sending. Then `--concurrent` series are sent at
once, each over its own association, and series per hour is `--concurrent` over the time from the
first instance sent to the last SR stored (receiving included). Needs Orthanc (Debian package
`orthanc`) and pynetdicom.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from latency import machine, parse_shape, spine_phantom  # benchmarks/ is the script's folder, so on sys.path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root: tests.helpers

from tests.helpers import ORTHANC, Orthanc, ct_datasets, free_port, orthanc_server, wait_for  # noqa: E402

CALLER = "BENCH"


def write_series(shape: tuple[int, int, int], folder: Path) -> dict[str, Any]:
    """The phantom as one .dcm per slice in `folder`; its grid."""
    phantom = spine_phantom(shape)
    folder.mkdir(parents=True, exist_ok=True)
    for ds in ct_datasets(phantom.volume, "1.2.826.0.1.3680043.8.498.900", "1.2.826.0.1.3680043.8.498.900.1"):
        ds.save_as(folder / f"{int(ds.InstanceNumber):04d}.dcm", enforce_file_format=True)
    return {"shape": list(shape), "spacing_mm": [round(float(s), 4) for s in phantom.volume.spacing], "vertebrae": len(phantom.centroids)}


def send_series(folder: Path, port: int, study: str) -> float:
    """C-STORE every file of `folder` as a new study `study` (new series and instance UIDs); the time the last was acknowledged."""
    import pydicom
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ae = AE(ae_title=CALLER)
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="VERTEDGE")
    assert assoc.is_established, "the node refused the association"
    try:
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            k = int(ds.InstanceNumber)
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, f"{study}.1", f"{study}.0"
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{study}.1.{k}"
            status = assoc.send_c_store(ds)
            assert status.Status == 0, f"C-STORE status 0x{status.Status:04X}"
        return time.perf_counter()
    finally:
        assoc.release()


def sr_stored(orthanc: Orthanc, study: str) -> bool:
    """Whether Orthanc holds an SR in `study`."""
    return any(orthanc.get(f"/instances/{i['ID']}/simplified-tags").get("Modality") == "SR" for i in orthanc.study_instances(study))


def node_fields(log: str, study: str) -> dict[str, str]:
    """The key=value fields of the node's series_done line for `study` ({} while there is none)."""
    lines = [line for line in log.splitlines() if line.startswith("series_done ") and f"study_uid={study} " in line]
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', lines[0])) if lines else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="512x512x600", help="phantom voxels, i x j x k (k: slices)")
    parser.add_argument("--runs", type=int, default=3, help="timed single-series runs (after one warm-up)")
    parser.add_argument("--concurrent", type=int, default=3, help="series sent at once for the throughput run (0: none)")
    parser.add_argument("--quiet-s", type=float, default=2.0, help="the node's series_quiet_s")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=None, help="folder for the series, the node's storage and Orthanc (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if ORTHANC is None:
        sys.exit("benchmarks/node.py needs Orthanc (Debian package orthanc)")
    work = args.work or Path(tempfile.mkdtemp(prefix="vertedge-node-bench-"))
    shape = parse_shape(args.shape)
    t0 = time.perf_counter()
    grid = write_series(shape, work / "series")
    print(f"series {grid} written in {time.perf_counter() - t0:.0f} s", flush=True)

    with orthanc_server(work / "orthanc") as orthanc:
        port = free_port()
        config = work / "node.toml"
        config.write_text(
            f'[node]\nae_title = "VERTEDGE"\nport = {port}\nhost = "127.0.0.1"\nstorage = "{work / "node"}"\n'
            f'calling_ae_titles = ["{CALLER}"]\nseries_quiet_s = {args.quiet_s}\ndevice = "{args.device}"\n'
            f'[[destinations]]\nname = "orthanc"\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        log_path = work / "node.log"
        node = subprocess.Popen([sys.executable, "-m", "vertedge", "serve", "--config", str(config)], env=env,
                                stderr=open(log_path, "wb"), stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: "listening " in log_path.read_text() or node.poll() is not None, 120, "the node to start")
            single = []
            for run in range(args.runs + 1):  # run 0 warms up (compiled kernels, first model run)
                study = f"1.2.826.0.1.3680043.8.498.{1000 + run}"
                sent = send_series(work / "series", port, study)
                wait_for(lambda study=study: sr_stored(orthanc, study), 600, "the SR in Orthanc")
                seconds = time.perf_counter() - sent
                fields = wait_for(lambda study=study: node_fields(log_path.read_text(), study), 60, "the node's line")
                entry = {"run": run, "last_instance_to_sr_s": round(seconds, 2), "load_1min": round(os.getloadavg()[0], 2),
                         **{k: fields[k] for k in ("label_s", "send_s", "total_s", "vertebrae", "instances")}}
                print(entry, flush=True)
                if run:
                    single.append(entry)
            concurrent: dict[str, Any] = {}
            if args.concurrent:
                studies = [f"1.2.826.0.1.3680043.8.498.{2000 + n}" for n in range(args.concurrent)]
                start = time.perf_counter()
                threads = [threading.Thread(target=send_series, args=(work / "series", port, s)) for s in studies]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                received = time.perf_counter() - start
                wait_for(lambda: all(sr_stored(orthanc, s) for s in studies), 600 * args.concurrent, "every SR in Orthanc")
                wall = time.perf_counter() - start
                concurrent = {"series": args.concurrent, "receive_all_s": round(received, 1), "wall_s": round(wall, 1),
                              "series_per_hour": round(args.concurrent * 3600 / wall), "load_1min": round(os.getloadavg()[0], 2)}
                print(concurrent, flush=True)
        finally:
            node.terminate()
            node.wait(120)
    latency = [e["last_instance_to_sr_s"] for e in single]
    report = {
        "machine": machine(), "grid": grid, "quiet_s": args.quiet_s, "device": args.device, "runs": single,
        "median_last_instance_to_sr_s": statistics.median(latency) if latency else None,
        "median_label_s": statistics.median(float(e["label_s"]) for e in single) if single else None,
        "concurrent": concurrent,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
