"""Helpers the test modules share: tiny ONNX model pairs with vertedge metadata, the CLI run in-process,
a tiny training config and a stand-in spine scan for the training tests, NIfTI and DICOM writers and
one bad input of every kind, CT series as pydicom data sets, and a private Orthanc server."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from vertedge import cli
from vertedge.geometry import Protocol
from vertedge.labels import LABELS, SPINE_ORDER
from vertedge.onnx_models import IDENTIFICATION_FILE, LOCALIZATION_FILE
from vertedge.volume import load_volume, save_volume, to_sitk

ORTHANC = shutil.which("Orthanc")  # Debian's orthanc package


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `vertedge ARGS` in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr("sys.argv", ["vertedge", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_model(task: str, out_channels: int, bias: float, metadata: dict[str, str]) -> Any:
    """A 1x1 convolution with zero weights: a constant map per channel, with vertedge metadata."""
    from onnx import TensorProto, helper, numpy_helper  # the tests that call it skip without onnx

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 1, "H", "W"])
    out_name = "heatmap" if task == "localization" else "prob"
    out = helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["B", out_channels, "H", "W"])
    w = numpy_helper.from_array(np.zeros((out_channels, 1, 1, 1), np.float32), "w")
    b = numpy_helper.from_array(np.full(out_channels, bias, np.float32), "b")
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["conv"])]
    nodes.append(helper.make_node("Softmax", ["conv"], [out_name], axis=1) if task == "identification" else helper.make_node("Identity", ["conv"], [out_name]))
    graph = helper.make_graph(nodes, task, [image], [out], initializer=[w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model


def metadata(task: str, protocol: Protocol) -> dict[str, str]:
    """A complete vertedge metadata set."""
    return {
        "vertedge.task": task,
        "vertedge.protocol": protocol.to_json(),
        "vertedge.classes": json.dumps(list(SPINE_ORDER)),
        "vertedge.heatmap": json.dumps({"sigma_px": 2.0, "amplitude": 10.0, "threshold": 3.0}),
        "vertedge.model_id": f"test-{task}",
        "vertedge.model_version": "0",
    }


def write_pair(folder: Path, loc_meta: dict[str, str], id_meta: dict[str, str]) -> None:
    """Save a tiny localization/identification pair into `folder`."""
    import onnx

    onnx.save(tiny_model("localization", 1, 0.0, loc_meta), folder / LOCALIZATION_FILE)
    onnx.save(tiny_model("identification", 1 + len(SPINE_ORDER), 0.0, id_meta), folder / IDENTIFICATION_FILE)


TINY = {"base": 4, "levels": 3}  # a U-Net small enough for the CPU tests
TRAIN_PROTOCOL = Protocol(n_views=4, pixel_mm=8.0, max_rows=128, max_cols=128, step_mm=4.0)


def train_config() -> Any:
    """A tiny training config (`vertedge_train.config.TrainConfig`) for the training tests."""
    from vertedge_train.config import TrainConfig

    return TrainConfig.from_dict({
        "name": "test", "version": "0.1.0", "seed": 0, "protocol": TRAIN_PROTOCOL.to_dict(),
        "net": TINY, "heatmap": {"sigma_px": 1.5, "amplitude": 1.0, "threshold": 0.3},
        "data": {"train_seeds": [1000, 1002], "variants_per_scan": 1, "crop_prob": 0.5},
        "augment": {"gamma": 1.2, "contrast": 0.1, "offset": 0.02, "noise": 0.01},
        "loc": {"batch": 2, "crop": [32, 32]}, "id": {"batch": 2, "crop": [32, 32]},
    })


def spine_scan() -> Any:
    """A stand-in CT (a `vertedge_train.data.Scan`): soft-tissue slab with bright balls (the 'bodies') at known
    centroids along S-I."""
    from vertedge_train.data import Scan

    from .conftest import air_volume, paint_ball

    vol = air_volume((40, 40, 72), (4.0, 4.0, 4.0))
    vol.hu[:, 8:32, 8:32] = 40
    labels = [LABELS[n] for n in ("T11", "T12", "L1", "L2", "L3")]
    cents = {}
    for i, lab in enumerate(labels):
        c = np.array([0.0, 10.0, 90.0 - i * 45.0])
        paint_ball(vol, c, 10.0, 1000)
        cents[lab] = c
    return Scan("standin", vol, cents, {k: False for k in cents})


def write_nifti(path, stored, scaling, spacing=(1.0, 1.2, 2.0)):
    """Write `stored` ((i, j, k) order) as NIfTI with its own datatype and `scaling`; returns the HU it holds."""
    image = nib.Nifti1Image(stored, np.diag([*spacing, 1.0]))
    image.header.set_data_dtype(stored.dtype)
    slope, inter = scaling or (1.0, 0.0)
    if scaling is not None:
        image.header.set_slope_inter(slope, inter)
    nib.save(image, path)
    written = nib.load(path).dataobj
    assert written.dtype == stored.dtype and (written.slope, written.inter) == (slope, inter)
    return stored * slope + inter


def write_dicom_series(volume, folder, skip=()):
    """Write `volume` as a CT DICOM series, one file per k slice, leaving out the slices in `skip`."""
    image = sitk.Cast(to_sitk(volume), sitk.sitkInt16)
    direction = "\\".join(str(v) for v in np.array(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(exist_ok=True)
    for k in sorted(set(range(image.GetDepth())) - set(skip)):
        s = image[:, :, k]
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1.1")  # series instance UID
        s.SetMetaData("0020|0037", direction)
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)
    return folder


def write_bad_inputs(tmp_path, good_path):
    """Create one file or folder per kind of bad input; returns {kind: path}."""
    bad = {}
    bad["missing"] = tmp_path / "nope.nii.gz"
    (tmp_path / "random.nii.gz").write_bytes(np.random.default_rng(0).bytes(4000))
    bad["not an image"] = tmp_path / "random.nii.gz"
    (tmp_path / "corrupt.nii.gz").write_bytes(gzip.compress(b"\x00" * 100)[:10] + b"garbage" * 50)
    bad["corrupt gzip"] = tmp_path / "corrupt.nii.gz"
    data = good_path.read_bytes()
    (tmp_path / "truncated.nii.gz").write_bytes(data[: len(data) // 2])
    bad["truncated"] = tmp_path / "truncated.nii.gz"
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkInt16) + 5, str(tmp_path / "flat.nii.gz"))
    bad["2D"] = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkInt16), str(tmp_path / "four.nii.gz"))
    bad["4D"] = tmp_path / "four.nii.gz"
    (tmp_path / "empty.mha").write_text(
        "ObjectType = Image\nNDims = 3\nDimSize = 10 10 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    bad["empty"] = tmp_path / "empty.mha"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(tmp_path / "constant.nii.gz"))
    bad["constant"] = tmp_path / "constant.nii.gz"
    (tmp_path / "nodicom").mkdir()
    (tmp_path / "nodicom" / "notes.txt").write_text("no images here")
    bad["no DICOM series"] = tmp_path / "nodicom"
    good = load_volume(good_path)
    save_volume(replace(good, spacing=np.array([0.1, 0.1, 0.1])), tmp_path / "fine.nii.gz")
    bad["spacing 0.1 mm"] = tmp_path / "fine.nii.gz"
    stored = good.hu.transpose(2, 1, 0).astype(np.float32)
    stored[1, 2, 3] = np.nan
    write_nifti(tmp_path / "nan.nii.gz", stored, None)
    bad["NaN in NIfTI"] = tmp_path / "nan.nii.gz"
    bad["DICOM slice missing"] = write_dicom_series(good, tmp_path / "gap", skip=[good.shape_ijk[2] // 2])
    return bad


def ct_datasets(volume, study_uid: str, series_uid: str, **tags: Any) -> list[Any]:
    """`volume` as a single-frame CT series of pydicom data sets in memory, one per k slice (for C-STORE).

    UIDs below `series_uid`, one Frame of Reference, ImageType ORIGINAL\\PRIMARY\\AXIAL, int16 pixels in
    HU; `tags` (keyword=value) set or replace attributes of every slice.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    cosines = np.concatenate([volume.direction[:, 0], volume.direction[:, 1]])
    out = []
    for k in range(volume.shape_ijk[2]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, f"{series_uid}.{k + 1}"
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, f"{study_uid}.0"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "TEST^NODE", "NODE-1", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "20240102", "101010", "1", "A1", ""
        ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "CT", "TESTCT", 2, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SeriesDescription = "abdomen 3mm"
        ds.ImageOrientationPatient = [f"{c:.9f}" for c in cosines]
        ds.ImagePositionPatient = [f"{c:.6f}" for c in volume.index_to_world(np.array([0.0, 0.0, k]))]
        ds.PixelSpacing = [f"{volume.spacing[1]:g}", f"{volume.spacing[0]:g}"]  # row spacing (j), then column spacing (i)
        ds.SliceThickness = f"{volume.spacing[2]:g}"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = volume.hu.shape[1], volume.hu.shape[2]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "HU"
        ds.KVP, ds.AcquisitionNumber, ds.PatientPosition = "120", 1, "HFS"
        ds.PixelData = np.ascontiguousarray(volume.hu[k], dtype="<i2").tobytes()
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        out.append(ds)
    return out


# --- a private Orthanc (tests/test_serve.py, benchmarks/node.py) --------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# --- Orthanc ------------------------------------------------------------------------------------


@dataclass
class Orthanc:
    """A private Orthanc server: its DICOM port and REST API."""

    process: subprocess.Popen
    http_port: int
    dicom_port: int

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            body = r.read()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def study_instances(self, study_uid: str) -> list[dict]:
        """The instances Orthanc holds of a study (its /instances answers), [] when none."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/tools/lookup", data=study_uid.encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            found = [f for f in json.loads(r.read()) if f["Type"] == "Study"]
        return self.get(f"/studies/{found[0]['ID']}/instances") if found else []

    def modalities(self, study_uid: str) -> list[str]:
        """The modality of each instance of a study that Orthanc holds, sorted."""
        return sorted(i["MainDicomTags"].get("Modality", "") or self._modality(i["ID"]) for i in self.study_instances(study_uid))

    def _modality(self, instance_id: str) -> str:
        return str(self.get(f"/instances/{instance_id}/simplified-tags").get("Modality", ""))

    def file(self, instance_id: str) -> Any:
        """One instance, as pydicom reads it."""
        from io import BytesIO

        import pydicom

        return pydicom.dcmread(BytesIO(self.get(f"/instances/{instance_id}/file")))


@contextmanager
def orthanc_server(folder: Path, dicom_port: int | None = None) -> Iterator[Orthanc]:
    """Start Orthanc with its own configuration and storage in `folder`; stop it at the end."""
    http_port, dicom_port = free_port(), dicom_port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "vertedge-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False, "Plugins": [], "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
        "OrthancExplorerEnabled": False, "WebDavEnabled": False, "ConcurrentJobs": 1, "HttpThreadsCount": 4,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([str(ORTHANC), str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    server = Orthanc(process, http_port, dicom_port)

    def up() -> bool:
        assert process.poll() is None, (folder / "orthanc.log").read_text(errors="replace")[-2000:]
        try:
            return bool(server.get("/system"))
        except OSError:
            return False

    try:
        wait_for(up, 30, "Orthanc to start")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
