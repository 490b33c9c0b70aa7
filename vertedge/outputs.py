"""Files that leave the program; every write is atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_path, write_json
from .drr import to_uint8
from .geometry import Protocol, Views


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
