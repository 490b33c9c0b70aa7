"""VerSe centroid files (`*_ctd.json`): read and write vertebra centroids in VerSe's own convention.

A VerSe centroid file is a JSON list: first `{"direction": [a, b, c]}`, axis codes (nibabel's:
the letter an index axis points to, e.g. ["P", "I", "R"]), then one `{"label", "X", "Y", "Z"}` per
vertebra, where X, Y, Z are continuous voxel indices (voxel centres at integers, not millimetres)
of the image reoriented to those axis codes (VerSe README: "in voxels in the image space").
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_json
from .errors import VertedgeError
from .volume import Volume

_OPPOSITE = {"L": "R", "R": "L", "P": "A", "A": "P", "S": "I", "I": "S"}


def _axis_map(entry: Any, volume: Volume, name: str) -> tuple[np.ndarray, np.ndarray]:
    """How the file's axes sit in `volume`: file axis m is image axis perm[m], reversed if flip[m]."""
    codes = entry.get("direction") if isinstance(entry, dict) else None
    if codes is None:
        raise VertedgeError(f"{name}: not a VerSe centroid file (first entry has no 'direction')")
    codes = [str(c).upper() for c in codes]
    image = volume.axcodes()
    perm, flip = [], []
    for c in codes:
        same = [a for a in range(3) if image[a] == c]
        opposite = [a for a in range(3) if image[a] == _OPPOSITE.get(c)]
        perm += same or opposite
        flip += [not same]
    if len(codes) != 3 or sorted(perm) != [0, 1, 2]:
        raise VertedgeError(
            f"{name}: axis codes {''.join(codes)} are not three of L/R, A/P, S/I, one each"
        )
    return np.array(perm), np.array(flip)


def write_verse_ctd(
    path: str | os.PathLike[str], centroids_world: dict[int, np.ndarray], volume: Volume
) -> None:
    """Write world LPS mm centroids as a VerSe `_ctd.json` for `volume`, atomically.

    The file's `direction` is the image's own axis codes, so X, Y, Z are its continuous voxel
    indices (i, j, k).
    """
    entries: list[dict[str, Any]] = [{"direction": list(volume.axcodes())}]
    for label in sorted(centroids_world):
        ijk = volume.world_to_index(np.asarray(centroids_world[label], float))
        entries.append(
            {"label": int(label), "X": float(ijk[0]), "Y": float(ijk[1]), "Z": float(ijk[2])}
        )
    write_json(path, entries)


def read_verse_ctd(path: str | os.PathLike[str], volume: Volume) -> dict[int, np.ndarray]:
    """Read a VerSe `_ctd.json` against its image (in any orientation): label -> world LPS mm (3,)."""
    name = str(path)
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise VertedgeError(f"{name}: cannot read as a JSON centroid file") from e
    if not isinstance(entries, list) or not entries:
        raise VertedgeError(f"{name}: not a VerSe centroid file (expected a non-empty JSON list)")
    perm, flip = _axis_map(entries[0], volume, name)
    last = np.array(volume.shape_ijk)[perm] - 1
    out: dict[int, np.ndarray] = {}
    for entry in entries[1:]:
        try:
            xyz = np.array([entry["X"], entry["Y"], entry["Z"]], float)
            label = int(entry["label"])
        except (KeyError, TypeError, ValueError) as err:
            raise VertedgeError(f"{name}: malformed centroid entry {entry!r}") from err
        # Reorienting reverses an axis as index -> n - 1 - index (voxel centres stay on integers;
        # VerSe's own reorient_centroids_to uses n - index, one voxel off).
        ijk = np.empty(3)
        ijk[perm] = np.where(flip, last - xyz, xyz)
        out[label] = volume.index_to_world(ijk)
    return out
