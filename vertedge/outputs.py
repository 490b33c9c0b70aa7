"""Files that leave the program; every write is atomic."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from .atomic import atomic_path, write_json
from .dicom_out import overview_sc, read_source_headers, vertebrae_sr, write_dicom
from .drr import to_uint8
from .errors import VertedgeError
from .geometry import Protocol, Views
from .overview import overview
from .pipeline import Result
from .verse import write_verse_ctd
from .volume import Volume


def write_png(path: Path, image_u8: np.ndarray) -> None:
    """Write an 8-bit grey (H, W) or RGB (H, W, 3) image as PNG, atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image_u8).save(tmp, format="PNG")


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write one array as .npy, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def write_drr_views(
    out_dir: Path, line_integrals: np.ndarray, images: np.ndarray, views: Views, protocol: Protocol
) -> list[Path]:
    """Write view_XX.png (normalized picture), view_XX.npy (float32 line integrals) and views.json."""
    out_dir = Path(out_dir)
    written: list[Path] = []
    for k in range(views.n_views):
        png, npy = out_dir / f"view_{k:02d}.png", out_dir / f"view_{k:02d}.npy"
        write_png(png, to_uint8(images[k]))
        write_npy(npy, line_integrals[k])
        written += [png, npy]
    meta = out_dir / "views.json"
    write_json(meta, {"protocol": protocol.to_dict(), "views": views.to_dict()})
    return written + [meta]


SLICER_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/"
    "Schema/markups-schema-v1.0.3.json#"
)


def slicer_markups(result: Result) -> dict[str, Any]:
    """A 3D Slicer markups fiducial list (LPS, mm) of the labelled vertebrae; those that need review unselected."""
    points = [
        {
            "id": str(i + 1),
            "label": v.name,
            "description": f"VerSe label {v.label}, confidence {v.confidence:.3f}"
            + (", needs review" if v.needs_review else ""),
            "associatedNodeID": "",
            "position": list(v.world_lps_mm),
            "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0],
            # Slicer draws unselected points in another colour: the labels to check stand out
            "selected": not v.needs_review,
            "locked": False,
            "visibility": True,
            "positionStatus": "defined",
        }
        for i, v in enumerate(result.vertebrae)
    ]
    return {
        "@schema": SLICER_SCHEMA,
        "markups": [
            {
                "type": "Fiducial",
                "coordinateSystem": "LPS",
                "coordinateUnits": "mm",
                "locked": False,
                "labelFormat": "%N-%d",
                "controlPoints": points,
                "measurements": [],
            }
        ],
    }


def result_paths(out_dir: Path, name: str, png: bool = False, dicom: bool = False) -> list[Path]:
    """The files of one scan's result set; the first, NAME.vertebrae.json, marks the set as complete.

    NAME.png with `png`; NAME.sr.dcm (the DICOM Structured Report) and NAME.sc.dcm (the overview
    picture as a DICOM Secondary Capture) with `dicom`.
    """
    dicom_endings = [".sr.dcm", ".sc.dcm"] if dicom else []
    endings = [".vertebrae.json", "_ctd.json", ".mrk.json", *([".png"] if png else []), *dicom_endings]
    return [Path(out_dir) / f"{name}{ending}" for ending in endings]


def dicom_sources(volume: Volume) -> list[pydicom.Dataset]:
    """The headers of the DICOM series `volume` was read from; a VertedgeError for any other scan."""
    files = volume.meta.get("dicom_files")
    if not files:
        source = Path(volume.meta.get("source", "")).name or "this scan"
        raise VertedgeError(f"{source}: not read from a DICOM series; the DICOM outputs need one")
    return read_source_headers(files)


def write_result(
    result: Result, volume: Volume, out_dir: Path, name: str, png: bool = False, dicom: bool = False
) -> list[Path]:
    """Write NAME.vertebrae.json, NAME_ctd.json (VerSe), NAME.mrk.json (Slicer), optionally NAME.png
    (the overview picture, see `overview`) and, for a scan read from a DICOM series, NAME.sr.dcm and
    NAME.sc.dcm (see `dicom_out`).

    The set appears whole or not at all: every file is first written to a temporary sibling, then
    the old marker (NAME.vertebrae.json) is removed, the others are renamed into place and the new
    marker last. Interrupted while renaming, the set's files are removed; so a marker always
    stands beside a complete set of one run. Optional files of an earlier run go when none are asked for.
    """
    paths = result_paths(out_dir, name, png, dicom)
    marker = paths[0]
    sources = dicom_sources(volume) if dicom else []  # before anything is written: it may refuse
    # an empty picture when none is asked for: no writer below uses it then
    picture = overview(result, volume, name) if png or dicom else np.zeros((0, 0, 3), np.uint8)
    try:
        # ExitStack renames in reverse order of entry: the marker, entered first, is renamed last
        with ExitStack() as stack:
            writers: dict[str, Callable[[Path], None]] = {
                ".vertebrae.json": lambda tmp: write_json(tmp, result.to_dict()),
                "_ctd.json": lambda tmp: write_verse_ctd(tmp, result.centroids(), volume),
                ".mrk.json": lambda tmp: write_json(tmp, slicer_markups(result)),
                ".png": lambda tmp: write_png(tmp, picture),
                ".sr.dcm": lambda tmp: write_dicom(tmp, vertebrae_sr(result, sources)),
                ".sc.dcm": lambda tmp: write_dicom(tmp, overview_sc(picture, sources)),
            }
            for path in paths:
                writers[path.name[len(name) :]](stack.enter_context(atomic_path(path)))
            stale = [p for p in result_paths(out_dir, name, png=True, dicom=True) if p not in paths]
            for p in (marker, *stale):
                p.unlink(missing_ok=True)
    except BaseException:
        if not marker.exists():  # some files renamed, the marker not: no half set stays behind
            for p in paths[1:]:
                p.unlink(missing_ok=True)
        raise
    return paths


def scan_name(path: Path) -> str:
    """Output name of a scan: its file name without image extensions, or its folder's name."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    name = path.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem
