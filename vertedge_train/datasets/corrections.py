"""A reader's corrections as a training case: a CT and the 3D Slicer markups of its vertebrae.

`vertedge run` writes `NAME.mrk.json` (`vertedge.outputs.slicer_markups`: one control point per
vertebra, `label` = its name, "L1", `position` in LPS mm). A user opens it in Slicer, moves,
renames or deletes points and saves; Slicer may then write the positions in RAS (the markup's
`coordinateSystem`), and leaves points that were never placed with a `positionStatus` other than
"defined". `add_correction` turns the scan and the saved file into a case in the VerSe layout
(`layouts.case_paths`): the CT (hard-linked or copied when it is a `.nii.gz`, else written as one)
and its centroid file. Everything is checked before anything is written: an unknown label name,
a label given twice, a point outside the scan, or a file that is no markups file refuse the pair
with one line naming the file and the point.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vertedge.atomic import atomic_path
from vertedge.errors import VertedgeError
from vertedge.labels import LABELS, NAMES
from vertedge.verse import write_verse_ctd
from vertedge.volume import Volume, load_volume, save_volume

from .layouts import case_paths, check_free, safe_id, update_manifest, write_case

RAS_TO_LPS = np.array([-1.0, -1.0, 1.0])  # RAS -> LPS flips x and y (the same map both ways)


@dataclass(frozen=True)
class AddedCase:
    """A case written by `add_correction`: its id, files and vertebrae (label -> world LPS mm)."""

    case_id: str
    ct: Path
    ctd: Path
    centroids: dict[int, np.ndarray]
    placed: str  # how the CT got there: "hardlink", "copy", "written" (converted), "present"


def read_markups(path: str | os.PathLike[str]) -> dict[int, np.ndarray]:
    """The defined control points of a Slicer markups JSON as VerSe label -> world LPS mm (3,).

    Labels are vertebra names (case and surrounding spaces ignored: " l1" is L1); positions are read
    in each markup's `coordinateSystem` ("LPS", the schema's default, or "RAS"). Points whose
    `positionStatus` is not "defined" (never placed) are left out, and so are markups other than
    fiducial lists (a ruler or curve saved beside them).
    """
    name = str(path)
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VertedgeError(f"{name}: cannot read as a JSON markups file") from e
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list):
        raise VertedgeError(f"{name}: not a 3D Slicer markups file (no 'markups' list)")
    out: dict[int, np.ndarray] = {}
    for markup in markups:
        if markup.get("type", "Fiducial") != "Fiducial":  # a ruler, curve or plane drawn beside the points
            continue
        system = str(markup.get("coordinateSystem", "LPS")).upper()
        if system not in ("LPS", "RAS"):
            raise VertedgeError(f"{name}: coordinate system {system!r} is neither LPS nor RAS")
        for n, point in enumerate(markup.get("controlPoints") or [], start=1):
            out_label, lps = _point(point, system, name, n)
            if out_label is None:
                continue
            if out_label in out:
                raise VertedgeError(f"{name}: label {point.get('label')!r} is given twice (control point {n})")
            out[out_label] = lps
    if not out:
        raise VertedgeError(f"{name}: no vertebra points (no defined control point)")
    return out


def _point(point: Any, system: str, name: str, n: int) -> tuple[int | None, np.ndarray]:
    """(VerSe label, world LPS mm) of one control point; label None for a point that is not placed."""
    if not isinstance(point, dict):
        raise VertedgeError(f"{name}: control point {n} is not an object")
    if point.get("positionStatus", "defined") != "defined":
        return None, np.zeros(3)
    label = str(point.get("label", "")).strip().upper()
    if label not in LABELS:
        raise VertedgeError(
            f"{name}: unknown vertebra label {point.get('label')!r} (control point {n}); expected C1-C7, T1-T13 or L1-L6"
        )
    try:
        pos = np.array(point["position"], float).reshape(3)
    except (KeyError, TypeError, ValueError) as e:
        raise VertedgeError(f"{name}: control point {n} ({label}) has no position of three numbers") from e
    if not np.all(np.isfinite(pos)):
        raise VertedgeError(f"{name}: control point {n} ({label}) has a position that is not finite")
    return LABELS[label], pos * RAS_TO_LPS if system == "RAS" else pos


def check_inside(centroids: dict[int, np.ndarray], volume: Volume, name: str) -> None:
    """Refuse a point outside the scan's voxel grid (beyond the outer voxels' half-width)."""
    shape = np.array(volume.shape_ijk)
    for label, lps in centroids.items():
        ijk = volume.world_to_index(lps)
        if np.any(ijk < -0.5) or np.any(ijk > shape - 0.5):
            raise VertedgeError(
                f"{name}: point {NAMES[label]} at LPS ({lps[0]:.1f}, {lps[1]:.1f}, {lps[2]:.1f}) mm lies outside the scan"
            )


def add_correction(
    scan: str | os.PathLike[str],
    markups: str | os.PathLike[str],
    root: str | os.PathLike[str],
    case_id: str | None = None,
    force: bool = False,
) -> AddedCase:
    """Turn a CT (NIfTI or other image file, or a DICOM series folder) and its Slicer markups into a case under `root`.

    The case id is `case_id` or the scan's name (`vertedge.outputs.scan_name`), made safe
    (`layouts.safe_id`). A case of that id holding another scan is refused unless `force`; the same
    scan again replaces its centroids (a second round of corrections).
    """
    from vertedge.outputs import scan_name

    scan, root = Path(scan), Path(root)
    centroids = read_markups(markups)
    volume = load_volume(scan)
    check_inside(centroids, volume, str(markups))
    cid = safe_id(case_id or scan_name(scan))
    ct_dst, ctd_dst = case_paths(root, cid)
    if scan.is_file() and scan.name.lower().endswith(".nii.gz"):
        placed = write_case(root, cid, scan, lambda p: write_verse_ctd(p, centroids, volume), force, "copy")
    else:  # DICOM series or another format: written as .nii.gz (from the volume, so the geometry is the one read)
        converted = root / f".new-{ct_dst.name}"  # beside the layout: no case folder until it is whole
        try:
            save_volume(volume, converted)
            check_free(ct_dst, converted, cid, force)
            with atomic_path(ctd_dst) as tmp:
                write_verse_ctd(tmp, centroids, volume)
                ct_dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(converted, ct_dst)
        finally:
            converted.unlink(missing_ok=True)
        placed = "written"
    update_manifest(root, "corrections", scan, {cid: {"ct": str(scan.resolve()), "markups": str(Path(markups).resolve())}})
    return AddedCase(cid, ct_dst, ctd_dst, centroids, placed)
