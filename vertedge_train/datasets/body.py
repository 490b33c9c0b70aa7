"""Vertebral-body centroids from whole-vertebra masks (CTSpine1K, TotalSegmentator, VerSe masks).

vertedge's targets are **body** centroids (DESIGN.md "Labels and centroids"); a vertebra mask holds
the body and the posterior elements (pedicles, laminae, processes), whose mass pulls the mask's
centroid 10-15 mm posterior. The body is the part of the vertebra anterior to the spinal canal, so:

1. Local spine axis `t`: the line through the whole-mask centroids of the vertebra's neighbours in
   the same mask (the vertebra above and below, or the one that is there); the world S-I axis when
   it has none within `NEIGHBOUR_MM`.
2. Project the vertebra's voxels along `t` onto the plane perpendicular to it (a 2D occupancy image
   at `raster_mm`, closed by two pixels so that the voxel grid leaves no gaps). Seen along the spine
   axis the vertebra is a ring: the vertebral foramen (the canal) is the largest hole of that image.
3. Anterior direction `a`: from the canal's centre towards the whole-mask centroid (which lies
   between the canal and the body), so neither the patient's position nor the image orientation
   matters. The body is every voxel whose projection lies anterior to the canal's anterior edge
   (the posterior wall of the body); its centroid is the body centroid.
4. Without a canal (a mask that does not close the ring, a vertebra cut by the field of view) the
   body is the half of the vertebra anterior to its whole-mask centroid, along the patient's
   anterior direction (-y in LPS) made perpendicular to `t`.

Validated on VerSe's own sample (`../shared/data/shapes`, sub-verse004, T9-L5, 1 x 1 x 2 mm): the
body centroid lies 0.7-2.3 mm (mean 1.2 mm) from the official one; the whole-mask centroid lies
9.5-14.9 mm (mean 11.7 mm) from it (tests/test_train_datasets.py checks this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from vertedge.labels import SPINE_ORDER
from vertedge.volume import Volume

RASTER_MM = 1.0  # finest raster of the projection; coarser (half the largest voxel spacing) for coarse grids
CLOSING_PX = 2  # closing radius of the projection (pixels): fills the gaps between projected voxel centres
MIN_CANAL_MM2 = 20.0  # a smaller hole is a gap in the mask, not the vertebral foramen (a cervical one is > 150 mm²)
NEIGHBOUR_MM = 60.0  # whole-mask centroids further apart than this are not adjacent vertebrae
MIN_BODY_FRACTION = 0.1  # a cut leaving less of the vertebra than this is not the body: fall back
ANTERIOR_LPS = np.array([0.0, -1.0, 0.0])  # the patient's anterior in LPS (-y)


@dataclass(frozen=True, eq=False)
class MaskCentroid:
    """One vertebra of a mask: its body and whole-mask centroids (world LPS mm) and how it was found."""

    label: int  # VerSe label
    body_lps: np.ndarray  # (3,) float64, world LPS mm: the vertebral-body centroid
    whole_lps: np.ndarray  # (3,) float64, world LPS mm: the centroid of the whole mask
    method: str  # "canal" (cut at the canal's anterior edge) or "anterior-half" (no canal found)
    cut: bool  # the mask touches the border of the volume: the vertebra may be cut by the field of view
    voxels: int  # voxels in the mask


def _perpendicular(v: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """`v` made perpendicular to unit `t` and normalised; None when `v` is (nearly) parallel to it."""
    p = v - t * float(v @ t)
    n = float(np.linalg.norm(p))
    return p / n if n > 1e-3 else None


def _canal(q: np.ndarray, res: float) -> np.ndarray | None:
    """Centres (M, 2) in mm (the frame of `q`) of the pixels of the largest hole of the projection `q`
    ((N, 2) mm points rasterised at `res` mm); None when no hole is at least `MIN_CANAL_MM2`."""
    ij = np.round(q / res).astype(np.int64)
    lo = ij.min(0) - CLOSING_PX - 1
    ij -= lo
    occ = np.zeros(tuple(ij.max(0) + CLOSING_PX + 2), np.uint8)
    occ[ij[:, 0], ij[:, 1]] = 1
    image = sitk.BinaryMorphologicalClosing(sitk.GetImageFromArray(occ), [CLOSING_PX, CLOSING_PX])
    closed = sitk.GetArrayFromImage(image)
    hole = sitk.GetArrayFromImage(sitk.BinaryFillhole(image)) & (1 - closed)
    components = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(hole))))
    pixels = np.argwhere(components == 1)  # RelabelComponent numbers by size: 1 is the largest
    if len(pixels) * res * res < MIN_CANAL_MM2:
        return None
    return (pixels + lo) * res


def _body(points: np.ndarray, whole: np.ndarray, t: np.ndarray, res: float) -> tuple[np.ndarray, str]:
    """Body centroid (3,) world LPS mm of one vertebra's voxel centres `points` (N, 3), and the method."""
    a0 = _perpendicular(ANTERIOR_LPS, t)
    if a0 is None:  # a spine axis along A-P: not a spine, but give an answer
        a0 = _perpendicular(np.array([1.0, 0.0, 0.0]), t)
    assert a0 is not None
    b = np.cross(t, a0)
    rel = points - whole
    q = np.stack([rel @ a0, rel @ b], -1)  # (N, 2) mm in the plane perpendicular to t; +x = anterior
    canal = _canal(q, res)
    if canal is not None:
        centre = canal.mean(0)
        dist = float(np.linalg.norm(centre))
        a2 = -centre / dist if dist > 2.0 else np.array([1.0, 0.0])  # canal -> whole-mask centroid
        edge = float(((canal - centre) @ a2).max())  # the canal's anterior edge (pixel centres)
        keep = (q - centre) @ a2 > edge
        if keep.sum() >= MIN_BODY_FRACTION * len(points):
            return points[keep].mean(0), "canal"
    keep = q[:, 0] > 0.0
    return (points[keep].mean(0) if keep.any() else whole), "anterior-half"


def body_centroids(mask: Volume, raster_mm: float = RASTER_MM) -> dict[int, MaskCentroid]:
    """Body centroids of every vertebra of a label mask (VerSe labels in `mask.hu`, 0 = background).

    `mask.hu` is (nk, nj, ni) integer labels on the mask's own grid (any orientation); labels that
    are not vertebrae (26 sacrum, 27 coccyx, others) are ignored. Returns label -> MaskCentroid, the
    centroids in world LPS mm.
    """
    arr = np.asarray(mask.hu)
    vertebra = np.isin(arr, np.array(SPINE_ORDER))
    k, j, i = np.nonzero(vertebra)
    labels = arr[k, j, i].astype(np.int64)
    order = np.argsort(labels, kind="stable")
    k, j, i, labels = k[order], j[order], i[order], labels[order]
    present, starts = np.unique(labels, return_index=True)
    bounds = dict(zip(present.tolist(), zip(starts, [*starts[1:], len(labels)])))
    nk, nj, ni = arr.shape
    world = {lab: mask.index_to_world(np.stack([i[s:e], j[s:e], k[s:e]], -1).astype(float)) for lab, (s, e) in bounds.items()}
    whole = {lab: pts.mean(0) for lab, pts in world.items()}
    res = max(float(raster_mm), float(np.max(mask.spacing)) / 2.0)
    ordered = [lab for lab in SPINE_ORDER if lab in whole]
    out: dict[int, MaskCentroid] = {}
    for n, lab in enumerate(ordered):
        near = [whole[x] for x in ordered[max(n - 1, 0) : n + 2] if np.linalg.norm(whole[x] - whole[lab]) <= NEIGHBOUR_MM]
        axis = near[-1] - near[0] if len(near) > 1 else np.array([0.0, 0.0, 1.0])
        t = axis / np.linalg.norm(axis)
        body, method = _body(world[lab], whole[lab], t, res)
        s, e = bounds[lab]
        cut = bool(
            np.any((k[s:e] == 0) | (k[s:e] == nk - 1) | (j[s:e] == 0) | (j[s:e] == nj - 1) | (i[s:e] == 0) | (i[s:e] == ni - 1))
        )
        out[lab] = MaskCentroid(lab, body, whole[lab], method, cut, int(e - s))
    return out
