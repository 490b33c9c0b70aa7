"""Writing a phantom: the image, its VerSe centroid file and the ground-truth record."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..atomic import write_json
from ..errors import VertedgeError
from ..labels import NAMES
from ..verse import write_verse_ctd
from ..volume import save_volume
from .build import Phantom

_SUFFIXES = re.compile(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", re.IGNORECASE)


def _stem(path: Path) -> str:
    """The file name without its image extension."""
    return _SUFFIXES.sub("", path.name)


def save_phantom(phantom: Phantom, path: str | os.PathLike[str]) -> list[Path]:
    """Write the volume (format by extension), `<stem>_ctd.json` (VerSe) and `<stem>_gt.json`; atomic."""
    p = Path(path)
    if not _SUFFIXES.search(p.name):
        raise VertedgeError(f"{p}: unknown image extension (use .nii.gz, .nii, .nrrd, .mha or .mhd)")
    ctd = p.with_name(_stem(p) + "_ctd.json")
    gt = p.with_name(_stem(p) + "_gt.json")
    save_volume(phantom.volume, p)
    write_verse_ctd(ctd, phantom.centroids, phantom.volume)
    order = sorted(phantom.centroids, key=lambda lab: phantom.centroids[lab][2], reverse=True)
    write_json(gt, {
        "vertebrae": [
            {"label": int(lab), "name": NAMES[lab],
             "world_lps_mm": [round(float(v), 3) for v in phantom.centroids[lab]],
             "cut_by_field_of_view": bool(phantom.cut[lab])}
            for lab in order
        ],
        "phantom": phantom.params,
    })
    return [p, ctd, gt]
