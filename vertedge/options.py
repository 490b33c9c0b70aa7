"""The labelling pipeline's settings in one frozen object, passed to `Labeler` and recorded in every result.

Everything after the DRR that is a choice rather than a fact of the scan or the models lives here:
how close two peaks may be, the fusion's gates, how the voting square and the decode's "same"
step are set, the rib probe, the counting rules behind `needs_review`, and the ONNX Runtime CUDA provider
options. The DRR protocol belongs to the models (`geometry.Protocol`, from their metadata).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Measured on an H200 (benchmarks/RESULTS.md). cuDNN's exhaustive search times every convolution
# algorithm again for each new input shape, and the detector's shape follows the scan: ~0.4 s on the
# first scan of each new size; the heuristic choice costs ~40 ms there and is as fast once warm.
# TF32 convolutions: 3.2 + 4.4 ms for both nets instead of 4.8 + 5.9 ms, outputs ~2e-3 from the
# CPU's, the same labels and centroids within 0.01 mm.
_CUDA_FP32 = (("cudnn_conv_algo_search", "HEURISTIC"), ("use_tf32", "1"))
# The fp16 models under the heuristic choice make cuDNN's frontend log "No execution plans support
# the graph" errors (it then falls back, with the same results): they search exhaustively instead.
_CUDA_FP16 = (("cudnn_conv_algo_search", "EXHAUSTIVE"),)


@dataclass(frozen=True)
class FusionOptions:
    """Gates of the least-squares fusion of the views' detection rays (`fusion.fuse`)."""

    min_views: int = 3  # a vertebra is kept when found in at least this many views
    max_residual_mm: float = 5.0  # vertebral bodies are >= ~12 mm apart, 2D errors are a few mm
    min_separation_mm: float = 8.0  # closer fused points are one vertebra (cervical bodies ~15 mm apart)
    min_pair_angle_deg: float = 30.0  # lets K=10 views 36 deg apart pair with their neighbours
    max_off_spine_mm: float = 25.0  # a vertebra lies within a few mm of the line through its neighbours
    max_duplicate_gap: float = 0.5  # x the local gap: closer chain neighbours are one vertebra seen twice
    # A point between two chain neighbours whose distance is one regular gap is a stray detection
    # in the disc or a split one (`fusion.split_detections`): the neighbours' distance within this
    # factor of the local gap, each part under `split_part` of it, and the point seen in at most
    # `split_views` times the views of either neighbour; None keeps every such point
    split_regular: float | None = 1.35
    split_part: float = 0.75
    split_views: float = 0.5

    def __post_init__(self) -> None:
        if self.min_views < 2:
            raise ValueError(f"min_views must be at least 2 (two rays fix a point), got {self.min_views}")
        if self.split_regular is not None and not (
                self.split_regular >= 1.0 and 0.0 < self.split_part <= 1.0 and 0.0 < self.split_views <= 1.0):
            raise ValueError("split_regular must be at least 1 and split_part, split_views in (0, 1], got "
                             f"{self.split_regular}, {self.split_part}, {self.split_views}")


@dataclass(frozen=True)
class ReviewOptions:
    """The counting rules that decide `needs_review` (`anchors`); gaps are local vertebral gaps."""

    room_gaps: float = 1.5  # a terminus needs the scan to go on this many gaps beyond the end vertebra
    edge_gaps: float = 0.5  # an end vertebra closer than this many gaps to the scan's edge is cut
    probe_radius_gaps: float = 0.25  # radius of the ball sampled one gap beyond an end
    tissue_hu: float = -300.0  # above: tissue, not air or lung (beyond C1 lies the skull base)
    bone_hu: float = 60.0  # above: the sacrum's cancellous bone, not the pelvic soft tissue or fat
    regular_gap: tuple[float, float] = (0.6, 1.6)  # a gap within these multiples of its neighbours: none missed or doubled
    unsupported_confidence: float = 0.5  # the most a label no count reaches may claim
    # a count up from the sacrum stands only where the rib probe sees the junction above its L1 (a rib
    # beside the vertebra above, none beside L1): out of sight, six lumbar vertebrae read as five
    junction_seen: bool = True


@dataclass(frozen=True)
class RibOptions:
    """The rib probe and what its finding weighs in the decode (`ribs`); mm, HU, local gaps."""

    slab_gaps: tuple[float, float] = (-0.2, 0.7)  # along the spine from the body's centroid: its own rib, not the next
    slab_samples: int = 9  # planes in the slab's maximum-HU projection
    pixel_mm: float = 1.5  # in-plane sampling (a rib is ~6 mm thick)
    inner_mm: float = 40.0  # a rib's component reaches inside this radius (transverse processes end here or further out)
    outer_mm: float = 68.0  # ... and outside this one (lumbar transverse processes end at <= 50 mm)
    wedge_deg: tuple[float, float] = (-35.0, 75.0)  # from lateral, posterior positive: a rib, not the clavicle
    bone_hu: float = 250.0  # above: rib cortex in the projection, not muscle under 60 HU noise
    seen_fraction: float = 0.95  # of the wedge's slab inside the scan: enough to say a side has no rib
    whole_chain: bool = True  # a side the local slab leaves unseen: probe across the whole chain's axis (a curved end)
    at_bodies: bool = True  # probe at the bodies (`body.body_centres`, when `BodyOptions.enabled`), not the nets' points
    ribs_if_none: float = 0.25  # likelihood of a rib on one side of a cervical or lumbar vertebra, against none
    none_if_ribs: float = 0.35  # likelihood of no rib on one side of a thoracic vertebra (short or faint ribs)
    bearing: bool = True  # ribs found on both sides: no cervical class, no lumbar one above L5 (`ribs.rib_bearing_classes`)
    junction: bool = True  # the last vertebra with ribs above ribless ones is T12 or T13 ...
    junction_ribless: int = 3  # ... where this many below it are seen without ribs (`ribs.junction_classes`)
    # ... and with the sacrum right below the chain, where the rows from that L1 to the sacrum number one of these
    # (L1-L5 or L1-L6: the two counts meet; another number is a miss of the probe or of the nets; () never)
    lumbar_counts: tuple[int, ...] = (5, 6)
    pool_runs: bool = True  # a side one view start's probe could not see, read from the others' (`consensus.pooled_sides`)


@dataclass(frozen=True)
class SacrumOptions:
    """The sacrum probe at the chain's caudal end and what it weighs in the decode (`sacrum`); mm, HU, local gaps."""

    slab_gaps: tuple[float, float] = (-0.25, 0.25)  # along the spine from the point: S1's alae, not L5's neighbours
    slab_samples: int = 9  # planes in the slab's maximum-HU projection
    pixel_mm: float = 1.5  # in-plane sampling
    bone_hu: float = 150.0  # above: the alae's cancellous bone and the iliac cortex in the projection
    core_mm: float = 20.0  # the bone is grown from within this radius of the point (the body)
    reach_mm: float = 85.0  # ... and S1's reaches this far on a side (L5's transverse processes end at <= 50)
    band_deg: tuple[float, float] = (-30.0, 60.0)  # from lateral, posterior positive: alae and SI joints, not vessels
    fill_from_mm: float = 50.0  # the band's outer part, beyond the body and L5's transverse processes ...
    fill: float = 0.25  # ... is at least this fraction bone beside S1 (iliac plates), a rib's less (0.02-0.13)
    seen_fraction: float = 0.95  # of a side's band inside the scan: enough to say that side does not bridge
    tail_rows: int = 2  # the chain's last points probed
    variant: float = 0.2  # likelihood of L4 or L6 directly above the sacrum (four or six lumbar vertebrae), against L5
    other: float = 0.02  # ... of any other class
    count: bool = True  # no rib in the chain: the vertebra above the sacrum is L5 (`sacrum.last_lumbar_classes`)


@dataclass(frozen=True)
class BodyOptions:
    """Where each point's body lies along and across the spine (`body`); local gaps, mm, HU, degrees."""

    enabled: bool = True
    radius_gaps: float = 0.3  # the profile's disc across the spine: inside the body (bodies are >= ~1.2 gaps wide)
    step_mm: float = 1.0  # the profile's sampling along the spine
    smooth_mm: float = 1.0  # Gaussian sigma: less than an endplate's thickness
    search_gaps: float = 0.45  # the body's centre lies within this of the point (a neighbour's beyond it)
    mirror_gaps: float = 0.5  # the symmetry is compared this far either side: the body and half of each disc
    middle_gaps: float = 0.25  # a body's middle is cancellous bone, a disc's holds two endplates (0.15: 3 mm slices fail)
    neighbours: int = 2  # on either side, whose offsets the median takes
    max_voxel_gaps: float = 0.25  # a voxel longer along the spine than this: no reading, no move along it
    seen_fraction: float = 0.6  # of a candidate's mirrored pairs inside the scan: enough to judge it (a body at the scan's edge)
    regular_ratio: float = 1.4  # a point's gap within this factor of its neighbours': it moves with them
    clear_symmetry: float = 0.7  # x the median asymmetry over the search: a clearer best is a centre of symmetry
    slab_gaps: float = 0.2  # the cross-section's slab either side of the centre: clear of the pedicles' tops and rib heads
    slab_planes: int = 5
    tilt_deg: float = 35.0  # the midline searched this far either side of the posterior direction (rolled patients)
    tilt_step_deg: float = 5.0
    midline_gaps: float = 0.6  # the mirror image is compared this far either side of the midline
    offset_gaps: float = 0.4  # ... and this far either side of the point; the section centroid no further from it
    seen_fraction_across: float = 0.9  # of the cross-section's slab inside the scan: enough to read it
    soft_tissue_hu: float = 40.0  # muscle: the bone's threshold is halfway between it and the body's median
    section_gaps: float = 0.75  # the body's cross-section lies within this of the midline point (lumbar bodies ~0.65 gap wide each side)
    canal_gaps: float = 0.15  # the canal is at least this long front to back (~5 mm), a dark patch in the body less
    min_bone_contrast_hu: float = 30.0  # the body's median above soft tissue by less: no section is read
    canal_bone_hu: float = 150.0  # the bony ring around the canal (the body's back wall, the laminae), not cord or fluid
    canal_reach_gaps: float = 0.75  # ... lies within this in front of and behind a point in the canal (~15-20 mm across)
    canal_ring_mm: float = 11.0  # a foot as bright as muscle: the ring lies this close on average all round (a body's cortex 14+)
    canal_body_gaps: float = 0.5  # ... and the bone in front of it goes on this far (a body, not a cortex before a vessel)
    column_gaps: float = 0.35  # x half their distance: a body farther off two adjacent levels' midpoint is not placed by them ...
    column_end_gaps: float = 0.6  # ... x their distance: nor one farther off the line through the two above (below) it, continued
    beyond_ends: bool = True  # a body one gap beyond the chain's top or bottom is a vertebra the nets missed (chain_ends.py)
    beyond_gap_tolerance: float = 0.3  # ... where it lies within this of one gap from the end's own body
    beyond_inside_gaps: float = 0.4  # ... and the scan holds this much either side of it along the spine (a body's half height)
    top_off_gaps: float = 0.4  # the top vertebra's point farther than this from the body the chain below continues to moves onto it
    between: bool = True  # a body in the middle of a gap twice its neighbours' is a vertebra the nets missed (chain_ends.py)
    double_gap: tuple[float, float] = (1.6, 2.6)  # ... a gap within these multiples of the gaps around it
    # ... whose middle is bone: above soft tissue by `min_bone_contrast_hu`, or by this part of the dimmer
    # middle of the two bodies beside it where that is less (an osteoporotic spine; None: the first alone)
    between_beside_contrast: float | None = 0.5
    same_body_gap: float = 0.25  # x the local gap along the spine: two decoded points on bodies this close are one vertebra


@dataclass(frozen=True)
class SizeOptions:
    """The views' scale set by the patient's size (`patient_size`): a spine much larger (or, where
    `scale_range` allows, smaller) than the nets read best is labelled again from views that show it
    at that size."""

    enabled: bool = True
    # The spine's size against the phantom's at stature 1 (`patient_size.apparent_size`) that the
    # nets read best: the real chest CT reads 0.92 and is labelled right, 1.10 (the chest 1.2 times
    # its size) and every level is read one off; the lumbar CT reads 0.99-1.02, right.
    best: float = 0.93
    tolerance: float = 1.12  # a size within this factor of `best`: the views as the protocol has them
    min_pairs: int = 3  # neighbouring levels the size is read from, at least (a median needs a few)
    # ... and to read a spine as smaller than the best: a crop's short chain seen in few views reads
    # small (its points sit inside the bodies: the chest CT's lower half 0.69 from 5 pairs, where
    # its truth reads 0.86), as small as a small patient's (the chest 0.8 times its size 0.75-0.79
    # from 10-11 pairs); the chest's S-I crops hold 5-8
    min_pairs_smaller: int = 9
    scale_range: tuple[float, float] = (0.8, 1.25)  # the factor on the detector's pixels stays within these
    # The labels read at the new scale are kept only where its views find at least as many
    # vertebrae: the rule renames the vertebrae the first views found, and a chain one short is a
    # chain read anew (phantom 746, a spine with a T13: at 1.18 times the pixels the C7 at its top
    # edge is lost, and its thirteen rib-bearing vertebrae above the last rib's L1 named C7-T12)
    as_complete: bool = True

    def __post_init__(self) -> None:
        if not (self.tolerance >= 1.0 and 0.0 < self.scale_range[0] <= 1.0 <= self.scale_range[1] and self.best > 0):
            raise ValueError(f"size options need tolerance >= 1, a scale range about 1 and best > 0, got {self}")


@dataclass(frozen=True)
class PipelineOptions:
    """Every setting of `pipeline.Labeler` after the DRR; `to_dict` is what a result records."""

    min_peak_distance_mm: float = 8.0  # at the isocentre: closer peaks are one vertebra (cervical bodies ~15 mm apart)
    fusion: FusionOptions = field(default_factory=FusionOptions)
    id_square_mm: float = 22.0  # side of the square whose class probabilities vote for a vertebra (paper Sec. 2.3)
    solid_views: float = 0.7  # fraction of views: a fused point found in this many is surely a vertebra of its own
    seen_views: float = 0.5  # fraction of views: fewer, and a fused point may be a stray blob
    full_gap: float = 0.85  # x the local gap: points this far apart, both seen in `seen_views`, are two vertebrae
    label_floor: float = 0.01  # the decode names no vertebra with a class its evidence leaves under this (a ribless T13)
    t13_from_above: bool = True  # a T13 is named only with the cervical spine in the chain (`labelling.label`)
    review: ReviewOptions = field(default_factory=ReviewOptions)
    ribs: RibOptions = field(default_factory=RibOptions)
    sacrum: SacrumOptions = field(default_factory=SacrumOptions)
    body: BodyOptions = field(default_factory=BodyOptions)
    size: SizeOptions = field(default_factory=SizeOptions)
    # The nets learned from phantoms whose spine runs along the scan's S-I axis (the principal axis
    # of their centroids within 1 degree of it in most, 2.5 on average); a real lumbar or thoracic
    # segment leans 8-9 degrees in the sagittal plane, and a tilted patient more. When the first
    # pass's vertebrae lean more than this, the views are rendered again about the spine's own axis
    # (`pipeline.upright_axis`); None: never.
    upright_min_deg: float | None = 3.0
    # At most this many renderings about the spine's axis, each estimated from the last one (a view
    # that sees the spine tilted underestimates its lean). Robustness benchmark, 2 against 1: the
    # chest CT 75 -> 92 % as stored, 65 -> 73 % over its variations; the lumbar CT 74 -> 81 %.
    upright_rounds: int = 2
    # Runs per scan, their views started evenly over one view step (`consensus`): a scan not seen
    # before stands at no particular angle to the views. Robustness benchmark, 3 against 1: 246 and
    # 238 of 285 real vertebrae at two phases of the start against 230-241 from single starts; the
    # chest CT's variations without S-I crops 94-95 % against 85-92 %; three times the pipeline's time.
    view_starts: int = 3
    # Where the kept run's chain stops short of another run's, that run's vertebrae beyond its ends
    # continue it (`consensus.beyond_kept`), flagged: the starts differ in how far along the spine
    # their views find peaks.
    ends_from_runs: bool = True
    # Of the runs that agree most with the others, the consensus keeps the one most confident in the
    # vertebrae the others agree with (`consensus.consensus`); off: the earliest, the protocol's own start.
    tie_by_confidence: bool = True
    # Views per ONNX Runtime call on the CPU. One at a time is lighter and no slower: on a 512 x 512 x
    # 600 scan's 10 views of 512 x 288 pixels both nets peak at 2.6 GiB in one call and 0.85 GiB one
    # view at a time (1.6 s against 1.3 s, 2-core AMD EPYC). On CUDA all views go in one call.
    cpu_views_per_run: int = 1
    cuda_fp32: tuple[tuple[str, str], ...] = _CUDA_FP32  # ONNX Runtime CUDA provider options, fp32 models
    cuda_fp16: tuple[tuple[str, str], ...] = _CUDA_FP16  # the same for the fp16 models

    def __post_init__(self) -> None:
        if self.view_starts < 1:
            raise ValueError(f"view_starts must be at least 1, got {self.view_starts}")

    def cuda_provider_options(self, fp16: bool) -> dict[str, str]:
        """The CUDA provider options for fp32 or fp16 models."""
        return dict(self.cuda_fp16 if fp16 else self.cuda_fp32)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the provider options as objects)."""
        out = asdict(self)
        out["cuda_fp32"], out["cuda_fp16"] = dict(self.cuda_fp32), dict(self.cuda_fp16)
        return out


DEFAULT_OPTIONS = PipelineOptions()
