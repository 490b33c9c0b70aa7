"""VerSe centroid files (`*_ctd.json`): read and write vertebra centroids in VerSe's own convention.

A VerSe centroid file is a JSON list: first `{"direction": [a, b, c]}`, the orientation letters of
the image's index axes (i, j, k) (e.g. ["L", "P", "S"]), then one `{"label", "X", "Y", "Z"}` per
vertebra, where X, Y, Z are the continuous voxel index along i, j, k times that axis's spacing:
millimetres from voxel 0 along the image's own axes (equal to the voxel index at 1 mm).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .atomic import write_json
from .errors import VertedgeError
from .volume import Volume


def _check_direction(entry: Any, volume: Volume, name: str) -> None:
    """Refuse a file whose axis codes disagree with the image it is read against."""
    codes = entry.get("direction") if isinstance(entry, dict) else None
    if codes is None:
        raise VertedgeError(f"{name}: not a VerSe centroid file (first entry has no 'direction')")
    if tuple(str(c).upper() for c in codes) != tuple(volume.axcodes()):
        raise VertedgeError(
            f"{name}: centroids are for an image oriented {''.join(map(str, codes))}, "
            f"this image is {''.join(volume.axcodes())}"
        )


def write_verse_ctd(
    path: str | os.PathLike[str], centroids_world: dict[int, np.ndarray], volume: Volume
) -> None:
    """Write world LPS mm centroids as a VerSe `_ctd.json` for `volume` (index * spacing, image axes), atomically."""
    entries: list[dict[str, Any]] = [{"direction": list(volume.axcodes())}]
    for label in sorted(centroids_world):
        mm = volume.world_to_index(np.asarray(centroids_world[label], float)) * volume.spacing
        entries.append(
            {"label": int(label), "X": float(mm[0]), "Y": float(mm[1]), "Z": float(mm[2])}
        )
    write_json(path, entries)


def read_verse_ctd(path: str | os.PathLike[str], volume: Volume) -> dict[int, np.ndarray]:
    """Read a VerSe `_ctd.json` against its image: label -> world LPS mm (3,)."""
    name = str(path)
    try:
        entries = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError) as e:
        raise VertedgeError(f"{name}: cannot read as a JSON centroid file") from e
    if not isinstance(entries, list) or not entries:
        raise VertedgeError(f"{name}: not a VerSe centroid file (expected a non-empty JSON list)")
    _check_direction(entries[0], volume, name)
    out: dict[int, np.ndarray] = {}
    for e in entries[1:]:
        try:
            mm = np.array([e["X"], e["Y"], e["Z"]], float)
            label = int(e["label"])
        except (KeyError, TypeError, ValueError) as err:
            raise VertedgeError(f"{name}: malformed centroid entry {e!r}") from err
        out[label] = volume.index_to_world(mm / volume.spacing)
    return out
