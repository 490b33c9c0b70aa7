"""One scan through every stage: DRR -> localization -> peaks -> fusion -> identification -> vote -> review.

The pipeline only composes the stage modules and times each stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import drr
from .anchors import review
from .boxes import box_means, square_half_px
from .device import choose_device
from .errors import CudaProviderError, VertedgeError
from .fusion import Fused, fuse, relative_gaps
from .geometry import Views, make_views, pixel_mm_at_depth, project
from .labels import name as label_name
from .models import Models
from .peaks import Peaks, find_peaks
from .sequence import identify
from .volume import Volume
from .xp import to_host

ID_SQUARE_MM = 22.0  # side of the square whose class probabilities vote for a vertebra (paper Sec. 2.3)
SOLID_VIEWS = 0.7  # fraction of views: a fused point found in this many is surely a vertebra of its own
SEEN_VIEWS = 0.5  # fraction of views: fewer, and a fused point may be a stray blob
FULL_GAP = 0.85  # x the local gap: points this far apart, both seen in SEEN_VIEWS, are two vertebrae
MIN_PEAK_DISTANCE_MM = 8.0  # at the isocentre: closer peaks are one vertebra (cervical bodies ~15 mm apart)


@dataclass(frozen=True)
class Vertebra:
    """One labelled vertebra: body centroid in world LPS mm and as a continuous voxel index."""

    label: int
    name: str
    world_lps_mm: tuple[float, float, float]
    voxel_index: tuple[float, float, float]
    confidence: float
    residual_mm: float
    n_views: int
    needs_review: bool = False  # the scan gives no count from C1 or the sacrum to this label (anchors.py)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "label": self.label,
            "name": self.name,
            "world_lps_mm": [round(v, 3) for v in self.world_lps_mm],
            "voxel_index": [round(v, 3) for v in self.voxel_index],
            "confidence": round(self.confidence, 4),
            "residual_mm": round(self.residual_mm, 3),
            "n_views": self.n_views,
            "needs_review": self.needs_review,
        }


@dataclass(frozen=True, eq=False)
class Result:
    """The labelled vertebrae of one scan, with provenance and per-stage timings."""

    vertebrae: tuple[Vertebra, ...]
    input: dict[str, Any]
    models: dict[str, str]
    device: str
    timings_ms: dict[str, float]
    views: Views | None = field(default=None, repr=False)
    images: np.ndarray | None = field(default=None, repr=False)  # (K, H, W) normalized DRRs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the images)."""
        return {
            "vertebrae": [v.to_dict() for v in self.vertebrae],
            "input": self.input,
            "models": self.models,
            "device": self.device,
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
        }

    def centroids(self) -> dict[int, np.ndarray]:
        """label -> world LPS mm (3,)."""
        return {v.label: np.array(v.world_lps_mm) for v in self.vertebrae}


class _Timer:
    """Collects wall-clock milliseconds per named stage.

    GPU work is asynchronous: with `sync` (the device stream's synchronize) each stage waits for
    its own kernels, so a stage's time is not billed to the next one that happens to wait.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.ms: dict[str, float] = {}
        self._sync = sync

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if self._sync is not None:
            self._sync()
        self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - t0) * 1e3


def input_description(volume: Volume) -> dict[str, Any]:
    """The scan's grid and frame, for the result's metadata.

    `source` is the input's file (or folder) name only: a full path can carry a patient's name.
    """
    return {
        "source": Path(volume.meta.get("source", "")).name,
        "shape_ijk": list(volume.shape_ijk),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
        "origin_lps_mm": [round(float(o), 6) for o in volume.origin],
        "direction": [round(float(d), 8) for d in volume.direction.ravel()],
        "axcodes": "".join(volume.axcodes()),
    }


def peaks_of(heatmaps: np.ndarray, views: Views, threshold: float) -> Peaks:
    """2D vertebra centroids in every view from localization heatmaps (K, H, W)."""
    iso_depth = np.linalg.norm(views.sources - views.center_lps, axis=1)
    iso_px_mm = float(pixel_mm_at_depth(views, iso_depth).mean())
    return find_peaks(heatmaps, threshold=threshold, min_distance_px=MIN_PEAK_DISTANCE_MM / iso_px_mm)


def may_be_one_vertebra(fused: Fused, n_views: int) -> np.ndarray:
    """(n - 1,) bool: may fused rows i, i + 1 be one vertebra found twice (the DP's "same" step)?

    Not when both were found in at least a `SOLID_VIEWS` fraction of the `n_views` views (fusion
    never lets two points share a detection, and `fusion.distinct_vertebrae` has already merged
    points closer than half the local gap), nor when both were found in `SEEN_VIEWS` and lie a
    full vertebral gap apart (`FULL_GAP` x the gaps around them). A point seen in fewer views may
    be a stray blob (dental metal above C1), which the DP must stay free to absorb. Without this
    the DP can read a real vertebra as a duplicate to keep the anatomical count of a normal spine,
    which shifts every label on one side of a T13 or L6 by one.
    """
    solid = fused.n_views >= SOLID_VIEWS * n_views
    seen = fused.n_views >= SEEN_VIEWS * n_views
    full = relative_gaps(fused.points_lps) >= FULL_GAP  # NaN (False) on chains too short to tell
    return ~((solid[1:] & solid[:-1]) | (full & seen[1:] & seen[:-1]))


def label(
    fused: Fused, views: Views, prob: np.ndarray, classes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Labels (n,) and confidences (n,) by per-view square means, sequence-weighted vote and DP decode."""
    rc, depth = project(views, fused.points_lps)
    half_px = square_half_px(pixel_mm_at_depth(views, depth), ID_SQUARE_MM)
    p, valid = box_means(prob[:, 1:], rc, half_px)
    # each row's class distribution, background left out
    p /= np.maximum(p.sum(-1, keepdims=True), 1e-9)
    return identify(p, classes, valid=valid, same_ok=may_be_one_vertebra(fused, views.n_views))


def one_per_label(labels: np.ndarray, fused: Fused) -> np.ndarray:
    """Row indices (cranial -> caudal) keeping one row per label: the best-supported one.

    Consecutive rows share a label only through the DP's "same" step, which reads the second row
    as a duplicate detection of the same vertebra (Eq. 1): keep the row seen in the most views,
    then with the smaller residual.
    """
    order = np.lexsort((fused.residual_mm, -fused.n_views, labels))
    keep = order[np.r_[True, labels[order][1:] != labels[order][:-1]]]
    return np.sort(keep)


class Labeler:
    """Holds both models (and the GPU kernels when used); call it on a Volume per scan."""

    def __init__(
        self,
        models_dir: str | Path | None = None,
        device: str = "auto",
        n_views: int | None = None,
        fp16: bool = False,
    ) -> None:
        """Choose the device and open the models; `fp16` runs the fp16 models on CUDA."""
        self.device, self.device_note = choose_device(device)
        try:
            self.models = Models(models_dir, self.device, fp16)
        except CudaProviderError as e:
            if device != "auto":
                raise VertedgeError(f"--device cuda: {e}") from e
            self.device, self.device_note = "cpu", f"running on CPU: {e}"
            self.models = Models(models_dir, "cpu")
        self.protocol = self.models.protocol.with_views(n_views)

    def _device_sync(self) -> Callable[[], None] | None:
        """The current CUDA stream's synchronize on CUDA, else None (host work is synchronous)."""
        if self.device != "cuda":
            return None
        import cupy

        return cupy.cuda.get_current_stream().synchronize

    def _render(self, volume: Volume, views: Views) -> Any:
        """Normalized DRRs (K, H, W) float32, on the chosen device (a CuPy array on CUDA)."""
        if self.device == "cuda":
            from .drr_cuda import normalize_cuda, render_cuda

            return normalize_cuda(render_cuda(volume, views, self.protocol), self.protocol)
        return drr.normalize(drr.render(volume, views, self.protocol), self.protocol)

    def __call__(self, volume: Volume, keep_images: bool = False) -> Result:
        """Find and label the vertebrae of one scan."""
        timer = _Timer(self._device_sync())
        protocol = self.protocol
        with timer("drr"):
            views = make_views(volume, protocol)
            images = self._render(volume, views)
        with timer("localization_net"):
            heatmaps = self.models.localize(images)
        with timer("peaks"):
            peaks = peaks_of(heatmaps, views, self.models.loc_info.heatmap["threshold"])
        with timer("fusion"):
            fused = fuse(peaks, views)
        vertebrae: tuple[Vertebra, ...] = ()
        if len(fused):
            with timer("identification_net"):
                prob = self.models.identify(images)
            with timer("voting"):
                labels, confidence = label(fused, views, prob, self.models.classes)
                keep = one_per_label(labels, fused)
            with timer("review"):
                points = fused.points_lps[keep]
                confidence, needs_review = review(volume, points, labels[keep], confidence[keep])
                voxel = volume.world_to_index(points)
                vertebrae = tuple(
                    Vertebra(
                        label=int(labels[i]),
                        name=label_name(int(labels[i])),
                        world_lps_mm=tuple(float(x) for x in points[j]),  # type: ignore[arg-type]
                        voxel_index=tuple(float(x) for x in voxel[j]),  # type: ignore[arg-type]
                        confidence=float(confidence[j]),
                        residual_mm=float(fused.residual_mm[i]),
                        n_views=int(fused.n_views[i]),
                        needs_review=bool(needs_review[j]),
                    )
                    for j, i in enumerate(keep)
                )
        return Result(
            vertebrae=vertebrae,
            input=input_description(volume),
            models=self.models.ids,
            device=self.device,
            timings_ms=timer.ms,
            views=views if keep_images else None,
            images=to_host(images) if keep_images else None,
        )
