"""One scan through every stage: DRR -> localization -> peaks -> fusion -> ribs, from each of several view
starts; the ribs the starts saw pooled; then per start identification -> sacrum -> vote -> review;
then the starts' consensus; all of it again at another scale of the views where the labelled spine's
size lies far from the size the nets read best.

The pipeline only composes the stage modules and times each stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .anchors import gaps_to_edge, review
from .body import NO_BODY, body_centres, onto_column
from .chain_ends import beyond_ends, bodies_between
from .consensus import Run, consensus, pooled_sides
from .device import choose_device, log_cpu_fallback
from .drr_backends import DRR_BACKENDS
from .errors import CudaProviderError, VertedgeError
from .fusion import Fused, distinct_vertebrae, fuse
from .geometry import Protocol, Views, make_views
from .labelling import label, net_reads, one_per_label, peaks_of, spine_gaps, view_votes, well_seen
from .labels import name as label_name
from .onnx_models import Models
from .options import DEFAULT_OPTIONS, PipelineOptions
from .patient_size import apparent_size, rescaled_kept, view_scale
from .ribs import rib_sides
from .sacrum import on_sacrum, sacral_start, sacrum_below
from .volume import Volume
from .xp import to_host

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vertebra:
    """One labelled vertebra: body centroid in world LPS mm and as a continuous voxel index."""

    label: int
    name: str
    world_lps_mm: tuple[float, float, float]
    voxel_index: tuple[float, float, float]
    confidence: float
    residual_mm: float  # of the views' rays at the fused point
    n_views: int  # the views that found it; 0: read from the CT beyond the chain's end or inside it (chain_ends.py), residual 0
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
    # the views and (K, H, W) normalized DRRs of the run the consensus kept (`consensus.consensus`)
    views: Views | None = field(default=None, repr=False)
    images: np.ndarray | None = field(default=None, repr=False)
    options: dict[str, Any] = field(default_factory=dict)  # the `PipelineOptions` it was labelled with
    # world LPS unit vector the kept run's views were rendered about: the scan's S-I axis, or the
    # spine's own where its first pass found it leaning (`PipelineOptions.upright_min_deg`)
    view_axis_lps: tuple[float, float, float] | None = None
    # the factor on the protocol's detector pixels the kept views were rendered at: above 1 the
    # patient was read as larger than the nets learned best (and shown smaller), below 1 as smaller
    # (`patient_size.view_scale`)
    view_scale: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the images)."""
        return {
            "vertebrae": [v.to_dict() for v in self.vertebrae],
            "input": self.input,
            "models": self.models,
            "vertedge_version": __version__,
            "device": self.device,
            "options": self.options,
            "view_axis_lps": None if self.view_axis_lps is None else [round(v, 6) for v in self.view_axis_lps],
            "view_scale": round(self.view_scale, 4),
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


def _size_of(result: Result) -> tuple[float, int]:
    """`patient_size.apparent_size` of a result's labelled vertebrae: (size, neighbour pairs)."""
    points = np.array([v.world_lps_mm for v in result.vertebrae], float).reshape(-1, 3)
    return apparent_size(np.array([v.label for v in result.vertebrae], int), points)


def spine_axis(points_lps: np.ndarray) -> np.ndarray:
    """(3,) unit vector, world LPS, pointing superior: the principal axis of vertebra centroids (n, 3) mm."""
    centred = points_lps - points_lps.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    return axis if axis[2] >= 0 else -axis


def upright_axis(points_lps: np.ndarray, view_axis: np.ndarray, min_deg: float | None) -> np.ndarray | None:
    """The axis to render the views about again so that a leaning spine stands as the nets learned
    spines to stand (`PipelineOptions.upright_min_deg`): the principal axis of the vertebrae found
    (n, 3) mm when it leans more than `min_deg` degrees from the `view_axis` they were found about
    (at first the scan's S-I axis), else None (also for fewer than three vertebrae, or `min_deg` None)."""
    if min_deg is None or len(points_lps) < 3:
        return None
    axis = spine_axis(points_lps)
    lean_deg = np.degrees(np.arccos(min(1.0, float(axis @ view_axis))))
    return axis if lean_deg > min_deg else None


@dataclass(frozen=True, eq=False)
class _Found:
    """One run's vertebrae before they are named: its views and their images, the fused points, the
    points the rib probe read (world LPS mm, (n, 3)) and what it found there (`ribs.rib_sides`, (n, 2))."""

    views: Views
    images: Any
    fused: Fused
    probed: np.ndarray
    sides: np.ndarray


@dataclass(frozen=True, eq=False)
class _Labelled:
    """One run's vertebrae with what the result reports of the run it chose: each vertebra's fusion
    residual (mm) and views, the views and their images."""

    run: Run
    residual_mm: np.ndarray
    n_views: np.ndarray
    views: Views
    images: Any


class Labeler:
    """Holds both models (and the GPU kernels when used); call it on a Volume per scan."""

    def __init__(
        self,
        models_dir: str | Path | None = None,
        device: str = "auto",
        n_views: int | None = None,
        fp16: bool = False,
        options: PipelineOptions = DEFAULT_OPTIONS,
    ) -> None:
        """Choose the device and open the models; `fp16` runs the fp16 models on CUDA; `options` are
        the pipeline's settings (recorded in every result)."""
        self.options = options
        self.device = choose_device(device)  # logs the choice (vertedge.device)
        try:
            self.models = Models(models_dir, self.device, fp16, self.options)
        except CudaProviderError as e:
            if device != "auto":
                raise VertedgeError(f"--device cuda: {e}") from e
            log_cpu_fallback(str(e))
            self.device = "cpu"
            self.models = Models(models_dir, "cpu", options=self.options)
        self.protocol = self.models.protocol.with_views(n_views)
        self.drr_backend = DRR_BACKENDS[self.device]  # renders the network input on the chosen device

    def _localize(self, volume: Volume, views: Views, timer: _Timer) -> tuple[Views, Any, Fused]:
        """Render `views`, find the vertebrae in each and fuse them: (views, images, fused points)."""
        with timer("drr"):
            images = self.drr_backend.images(volume, views, self.protocol)
        with timer("localization_net"):
            heatmaps = self.models.localize(images)
        with timer("peaks"):
            peaks = peaks_of(heatmaps, views, self.models.loc_info.heatmap["threshold"], self.options)
        with timer("fusion"):
            fused = fuse(peaks, views, self.options.fusion)
        return views, images, fused

    def _find(self, volume: Volume, protocol: Protocol, timer: _Timer) -> _Found:
        """Where the views of `protocol` find the vertebrae, and the ribs the scan shows at them."""
        options = self.options
        views, images, fused = self._localize(volume, make_views(volume, protocol), timer)
        # Views about a leaning spine's own axis; a view that sees the spine tilted underestimates
        # its lean (a phantom tilted 12 degrees read as 8), so the axis is estimated again from
        # each new rendering until it moves by no more than the threshold.
        axis = volume.si_axis()[1]
        for _ in range(options.upright_rounds):
            new_axis = upright_axis(fused.points_lps, axis, options.upright_min_deg)
            if new_axis is None:
                break
            axis = new_axis
            views, images, fused = self._localize(volume, make_views(volume, protocol, axis_lps=axis), timer)
        with timer("ribs"):
            # where the scan shows the bodies, at them: the nets' points may sit 6-10 mm off
            # (the chest CT), enough for a slab to leave a scan whose edge is near; read as the
            # probe's rules were measured (benchmarks/RESULTS.md, stop 43)
            at_bodies = options.ribs.at_bodies and options.body.enabled
            probed = (body_centres(volume, fused.points_lps, options.body, through_body=False)
                      if at_bodies and len(fused) else fused.points_lps)
            sides = rib_sides(volume, probed, options.ribs)
        return _Found(views, images, fused, probed, sides)

    def _run(self, volume: Volume, found: _Found, timer: _Timer) -> _Labelled:
        """Label the vertebrae one run `found`: every stage after the ribs."""
        options = self.options
        views, images, fused, probed, sides = found.views, found.images, found.fused, found.probed, found.sides
        if not len(fused):
            return _Labelled(Run(np.zeros(0, int), np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool)),
                             np.zeros(0), np.zeros(0, int), views, images)
        with timer("identification_net"):
            prob = self.models.identify(images)
        with timer("voting"):
            per_view = view_votes(fused, views, prob, options)
        with timer("sacrum"):
            # the points on the sacrum leave the chain; the vertebra above them is the last lumbar one
            sacrum = sacral_start(volume, fused.points_lps, sides, net_reads(per_view, self.models.classes),
                                  options.sacrum)
            above_sacrum = sacrum < len(fused)
            fused, sides = fused.head(sacrum), sides[:sacrum]
            per_view = (per_view[0][:, :sacrum], per_view[1][:, :sacrum])
            # what a count up from the sacrum starts from (anchors.py)
            below = above_sacrum or (len(fused) >= 2 and sacrum_below(volume, fused.points_lps, options.sacrum))
            last_on_sacrum = len(fused) >= 2 and on_sacrum(volume, fused.points_lps, options.sacrum)
        with timer("voting"):
            labels, confidence = label(fused, per_view, views.n_views, self.models.classes, options, sides,
                                       above_sacrum, below)
            keep = one_per_label(labels, fused)
        with timer("between"):
            # a vertebra the nets missed between two of the vertebrae (chain_ends.py): read from the CT,
            # then voted on by the identification net and decoded again with the others
            # two vertebrae the decode named apart whose points the CT puts on one body (under a quarter
            # of a gap apart along the spine; at half a gap one of them is not on a body, and which
            # one cannot be told) are one seen twice; the gap left may be a missed vertebra's
            distinct = distinct_vertebrae(probed[keep], fused.n_views[keep], fused.residual_mm[keep],
                                          options.body.same_body_gap, gaps=spine_gaps)
            keep = keep[distinct]
            at, bodies = bodies_between(volume, probed[keep], options.body, read=~np.isin(labels[keep], NO_BODY))
            inserted = np.zeros(len(fused), bool)
            if len(at) or not distinct.all():
                inserted = np.isin(np.arange(len(keep) + len(at)), at + np.arange(1, len(at) + 1))
                fused = fused.rows(keep).inserted(at + 1, bodies)
                probed = np.insert(probed[keep], at + 1, bodies, axis=0)
                new_sides = rib_sides(volume, probed, options.ribs, rows=np.flatnonzero(inserted))[inserted]
                sides = np.insert(sides[keep], at + 1, new_sides, axis=0)
                per_view = view_votes(fused, views, prob, options)
                labels, confidence = label(fused, per_view, views.n_views, self.models.classes, options, sides,
                                           above_sacrum, below)
                keep = one_per_label(labels, fused)
        with timer("review"):
            points = fused.points_lps[keep]
            confidence, needs_review = review(
                volume, points, labels[keep], confidence[keep], options.review, sides[keep], below,
                last_on_sacrum=bool(last_on_sacrum) and keep[-1] == len(fused) - 1,
                merged=np.bincount(labels, minlength=labels.max() + 1)[labels[keep]] > 1,
                seen=well_seen(fused, views.n_views, options)[keep],
            )
            # no view localized an inserted vertebra: flagged, as one read beyond the chain's ends
            confidence = np.where(inserted[keep], np.minimum(confidence, options.review.unsupported_confidence), confidence)
            needs_review |= inserted[keep]
        if options.body.enabled:
            with timer("body"):
                # the nets' points, kept for the labels above, moved onto the bodies the scan shows
                read = ~np.isin(labels[keep], NO_BODY)
                points = body_centres(volume, points, options.body, read=read)
                points = onto_column(volume, points, labels[keep], options.body, read=read)
        return _Labelled(Run(labels[keep], points, confidence, needs_review),
                         fused.residual_mm[keep], fused.n_views[keep], views, images)

    def starts_deg(self, protocol: Protocol) -> np.ndarray:
        """The views' start angles of the runs whose consensus labels a scan, degrees: `protocol`'s,
        then spread evenly over one view step (`PipelineOptions.view_starts`)."""
        step = 360.0 / protocol.n_views
        return protocol.start_angle_deg + np.arange(self.options.view_starts) * step / self.options.view_starts

    def __call__(self, volume: Volume, keep_images: bool = False) -> Result:
        """Find and label the vertebrae of one scan: one run per view start, then their consensus; the
        scan labelled again from views at another scale where the labelled spine's size lies far
        from the size the nets read best (`patient_size`)."""
        timer = _Timer(self.drr_backend.synchronize)
        result = self._labelled(volume, self.protocol, timer, keep_images)
        size, pairs = _size_of(result)
        scale = view_scale(size, pairs, self.options.size)
        if scale != 1.0:
            again = self._labelled(volume, replace(self.protocol, pixel_mm=self.protocol.pixel_mm * scale), timer,
                                   keep_images)
            size_again, pairs_again = _size_of(again)
            confirmed = rescaled_kept((size, pairs, len(result.vertebrae)), (size_again, pairs_again, len(again.vertebrae)),
                                      self.options.size)
            log.info("the spine reads %.2f times the size the models learned best: labelled again from views at "
                     "%.2f times the detector's pixels, %s (%.2f, %d of %d vertebrae)", size / self.options.size.best,
                     scale, "kept" if confirmed else "not kept: another size or fewer vertebrae read there",
                     size_again / self.options.size.best, len(again.vertebrae), len(result.vertebrae))
            result, scale = (again, scale) if confirmed else (result, 1.0)
        return replace(result, view_scale=scale, timings_ms=timer.ms)

    def _labelled(self, volume: Volume, protocol: Protocol, timer: _Timer, keep_images: bool) -> Result:
        """The scan labelled from the views of `protocol`: one run per view start, then their consensus."""
        found = [self._find(volume, replace(protocol, start_angle_deg=float(a)), timer) for a in self.starts_deg(protocol)]
        if self.options.ribs.pool_runs:
            # a side one run's probe could not see takes a rib another run found at that vertebra
            with timer("ribs"):
                sides = pooled_sides([f.probed for f in found], [f.sides for f in found],
                                     self.options.fusion.min_separation_mm)
                found = [replace(f, sides=s) for f, s in zip(found, sides)]
        runs = [self._run(volume, f, timer) for f in found]
        with timer("consensus"):
            edge_gaps = self.options.review.edge_gaps
            agreed = consensus([r.run for r in runs], self.options.fusion.min_separation_mm,
                               self.options.review.unsupported_confidence,
                               self.options.body.regular_ratio if self.options.ends_from_runs else None,
                               whole=lambda point, step: gaps_to_edge(volume, point, step) >= edge_gaps,
                               tie_by_confidence=self.options.tie_by_confidence)
        chosen = runs[agreed.index]
        with timer("ends"):
            # a vertebra the nets missed beyond either end (chain_ends.py): read from the CT, in no view
            points, labels, added = beyond_ends(volume, agreed.points_lps, agreed.labels, self.options.body)
        of_run = np.clip(np.cumsum(~added) - 1, 0, None)  # each row's consensus vertebra; an added one's neighbour
        run_of, row_of = agreed.source[of_run].T  # the run and its row that each comes from
        confidence = np.where(added, np.minimum(agreed.confidence[of_run], self.options.review.unsupported_confidence),
                              agreed.confidence[of_run])
        voxel = volume.world_to_index(points)
        vertebrae = tuple(
            Vertebra(
                label=int(labels[j]),
                name=label_name(int(labels[j])),
                world_lps_mm=tuple(float(x) for x in points[j]),  # type: ignore[arg-type]
                voxel_index=tuple(float(x) for x in voxel[j]),  # type: ignore[arg-type]
                confidence=float(confidence[j]),
                residual_mm=0.0 if added[j] else float(runs[run_of[j]].residual_mm[row_of[j]]),
                n_views=0 if added[j] else int(runs[run_of[j]].n_views[row_of[j]]),
                needs_review=bool(added[j] or agreed.needs_review[of_run[j]]),
            )
            for j in range(len(points))
        )
        views = chosen.views
        return Result(
            vertebrae=vertebrae,
            input=input_description(volume),
            models=self.models.ids,
            device=self.device,
            timings_ms=timer.ms,
            options=self.options.to_dict(),
            view_axis_lps=tuple(float(v) for v in -views.row_dir[0]),  # type: ignore[arg-type]
            views=views if keep_images else None,
            images=to_host(chosen.images) if keep_images else None,
        )
