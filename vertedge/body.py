"""Vertebral bodies read from the CT: each labelled point moved to the middle of its body, along the spine and across it.

The fused points are where the localization net's heatmaps peak, and on real chest CT those peaks
sit on the bright bands of rib heads, necks and transverse processes in the upper half of each
vertebra: 7-8 mm cranial of the body centroid at T1-T10 of the real chest CT, in every view and
under tilt, roll, noise and thick slices (benchmarks/RESULTS.md). The scan itself says where each
body is. Along the spine the CT alternates between bodies and intervertebral discs, and a body is
mirror-symmetric about its own middle: endplate, cancellous bone, endplate, with a disc beyond
each. How the parts look differs from scan to scan (dark discs between bright endplates in one,
thin discs that only the endplates' bright lines mark in an older spine), the symmetry does not.
The pipeline moves the points after labelling: the labels, the rib and sacrum probes and the
review are read at the fused points, as they were measured (moving the points first changed the
chest CT's labels both ways: benchmarks/RESULTS.md).

Per point: the mean HU of a disc of `radius_gaps` local gaps across the spine, sampled every mm
along it through the body (from the point moved onto its body's cross-section first, as below: a
profile from behind the body or beside it reads the canal, the arch or muscle, and on 3-5 mm
slices or a spine-centred field of view the nets' points sit there) and smoothed (`smooth_mm`),
is mirrored about each candidate centre within `search_gaps` of the point; the local minima of
the mean absolute difference over `mirror_gaps` (at least `seen_fraction` of the pairs inside the
scan) are the centres of symmetry, and a clear one lies below `clear_symmetry` of the median
asymmetry over the search. A disc is one too, between two endplates; a body's middle is the smooth one, so the candidate with the least HU
spread within `middle_gaps` is the body's centre. The localization net's error along the spine
changes slowly from level to level, and one level's reading can be a disc taken for a body: each
point moves by the median of the offsets (in local gaps) read at the `2 * neighbours + 1` points
nearest it along the chain (itself among them) where at least two are read, else by the median
over the whole chain (a run of unread levels). A point whose gap differs from its neighbours' by
more than `regular_ratio` is off the chain's rhythm (a missed or stray level): only its own
reading moves it. A profile that crosses metal (a pedicle screw) is not read there, and no point
moves along the spine where a voxel spans more than `max_voxel_gaps` of its gap (5 mm slices
through a cervical spine: a disc is one slice).

Across the spine the same holds: a vertebra is mirror-symmetric about its mid-sagittal plane, and
its body is the bone in front of the spinal canal. In the mean-HU image of a slab (`slab_gaps`
either side of the body's centre along the spine) the line of best mirror symmetry is searched
over `tilt_deg` (a rolled patient's midline turns with it) and `offset_gaps` either side of the
point (a clear best inside the search, or none); the point moves onto it. The bone there is what is brighter than halfway between the body's
median HU and soft tissue (`soft_tissue_hu`), kept where its mirror image is bone too (an aorta
with contrast touches the body on one side only), cut at the canal's front along the midline (the
first `canal_gaps` without bone behind the point) and at `section_gaps` from it (vessels and organs
as dense as the cancellous bone may touch the cortex); the point moves to the centroid of the part
connected to it (the body's cross-section), unless that is more than `offset_gaps` from the point
(no clear body there); nothing moves across where less than `seen_fraction_across` of the slab
lies inside the scan. A point the nets put in the spinal canal (darker than muscle at the
midline's foot, mirror-symmetric bone within `canal_reach_gaps` both in front, the body's back
wall, and behind, the laminae, and no lung or gas beside it) is read again from inside the bone in
front of it. A foot as bright as muscle (the cord and the canal's walls blurred in, 40-55 HU, on
the chest CT in a spine-centred field of view) is the canal only where that bony ring closes round
it, small (`canal_ring_mm` on average: the canal is 12-22 mm across, a body 30-50), with a body in
front of it (`canal_body_gaps`): a faint body's marrow reads as bright, inside a ring of 14+ mm
with a vessel or fat in front of its cortex. On the real lumbar CT its points sat 4-5 mm to the
patient's right of the bodies; on the real chest CT the midline points were 1-2 mm off.

The column is smooth: between two adjacent levels a body lies near their midpoint (within 0.18 of
a gap in the real spines of `../shared/data`). Where the nets' point of a level lies far off its
neighbours' column (on the real chest CT under noise, T10 17 mm in front of its body, where no
body reading reaches) and its neighbours lie on it, the labelled point is read again from their
midpoint (`onto_column`, after `body_centres`).

Points are world LPS mm in chain order (cranial -> caudal); the frames are `ribs.chain_frames`,
with the local gap the shorter of the two spacings to the neighbours (a missed vertebra doubles
the other).
"""

from __future__ import annotations

import numpy as np

from .labels import LABELS, successors
from .options import DEFAULT_OPTIONS, BodyOptions
from .ribs import chain_frames, grown, slab_world
from .volume import Volume

METAL_HU = 2000.0  # above: metal (cortical bone stays under ~1900 HU)
NO_BODY = (LABELS["C1"], LABELS["C2"])  # not read: C1 has no body, C2's dens breaks the body's symmetry
LUNG_OR_GAS_HU = -150.0  # below, in a slab image (clipped at -200): lung or gas, never beside the spinal canal (fat is ~-100)


def period_mm(points_lps: np.ndarray) -> np.ndarray:
    """(n,) mm: the shorter spacing of each point (n, 3) mm, n >= 2, to its chain neighbours (the one spacing at the ends)."""
    spacing = np.linalg.norm(np.diff(points_lps, axis=0), axis=1)
    return np.minimum(np.r_[spacing[:1], spacing], np.r_[spacing, spacing[-1:]])


def axial_profile(volume: Volume, centre: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray],
                  along_mm: np.ndarray, radius_mm: float, rings: int = 3) -> np.ndarray:
    """(m,) mean HU (trilinear) over a disc of `radius_mm` across the spine at each of `along_mm`
    (m,) mm from `centre` (3,) along the frame's axis; NaN where part of the disc lies outside the
    scan or on metal (a pedicle screw's tip, whose streaks no symmetry survives). `frame` = (axis,
    lateral, posterior) unit vectors (3,) LPS."""
    per_ring = np.maximum(1, 6 * np.arange(rings + 1))  # samples about evenly spread over the disc
    r = np.repeat(radius_mm * np.arange(rings + 1) / rings, per_ring)
    phi = np.concatenate([2 * np.pi * np.arange(k) / k for k in per_ring])
    hu = volume.hu_linear(slab_world(centre, frame, along_mm, r * np.cos(phi), r * np.sin(phi)))  # (m, s)
    return np.where((hu > METAL_HU).any(axis=1), np.nan, hu.mean(axis=1))


def smoothed(profile: np.ndarray, sigma_samples: float) -> np.ndarray:
    """(m,) the profile convolved with a Gaussian of `sigma_samples`; NaN spreads to the samples it reaches."""
    half = int(3 * sigma_samples) + 1
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma_samples) ** 2)
    padded = np.pad(profile, half, mode="edge")
    return np.convolve(padded, kernel / kernel.sum(), mode="valid")


def body_offset(profile: np.ndarray, gap_mm: float, options: BodyOptions) -> float:
    """The body's centre in local gaps from the point, read from its `profile` (`axial_profile`,
    samples `options.step_mm` apart, centred on the point, reaching `search_gaps + mirror_gaps`
    either side); NaN where no centre of symmetry lies within `search_gaps` inside the scan."""
    o = options
    p = smoothed(profile, o.smooth_mm / o.step_mm)
    centre = len(p) // 2
    reach = int(o.search_gaps * gap_mm / o.step_mm)
    candidates = np.arange(centre - reach, centre + reach + 1)
    t = np.arange(1, int(o.mirror_gaps * gap_mm / o.step_mm) + 1)
    diff = np.abs(p[candidates[:, None] + t] - p[candidates[:, None] - t])  # NaN off the scan
    seen = np.isfinite(diff).sum(axis=1)
    asymmetry = np.where(seen >= o.seen_fraction * len(t), np.nansum(diff, axis=1) / np.maximum(seen, 1), np.nan)
    inner = asymmetry[1:-1]
    minima = 1 + np.flatnonzero((inner <= asymmetry[:-2]) & (inner <= asymmetry[2:]))  # NaN compares False
    if not len(minima):
        return float("nan")
    w = int(round(o.middle_gaps * gap_mm / o.step_mm))
    spread = [np.nanstd(p[c - w : c + w + 1]) for c in candidates[minima]]
    best = minima[int(np.argmin(spread))]
    if not asymmetry[best] < o.clear_symmetry * np.nanmedian(asymmetry):  # a uniform or shapeless profile
        return float("nan")
    return float((candidates[best] - centre) * o.step_mm / gap_mm)


def offset_at(volume: Volume, centre: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray], gap_mm: float,
              options: BodyOptions) -> float:
    """The body's centre in local gaps from `centre` (3,) LPS along the frame's axis (`body_offset` of
    the `axial_profile` there, sampled as it expects); NaN where none is read."""
    o = options
    reach = (o.search_gaps + o.mirror_gaps) * gap_mm + 4 * o.smooth_mm
    along = np.arange(-reach, reach + 1e-9, o.step_mm)
    return body_offset(axial_profile(volume, centre, frame, along, o.radius_gaps * gap_mm), gap_mm, o)


def bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """`image` (H, W) at fractional pixel positions (...), NaN outside it (or where a neighbour is NaN)."""
    h, w = image.shape
    r0 = np.clip(np.floor(rows).astype(np.int64), 0, h - 2)
    c0 = np.clip(np.floor(cols).astype(np.int64), 0, w - 2)
    fr, fc = rows - r0, cols - c0
    value = ((image[r0, c0] * (1 - fc) + image[r0, c0 + 1] * fc) * (1 - fr)
             + (image[r0 + 1, c0] * (1 - fc) + image[r0 + 1, c0 + 1] * fc) * fr)
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    return np.where(inside, value, np.nan)


def slab_image(volume: Volume, centre: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray],
               grid: tuple[np.ndarray, np.ndarray], along_mm: np.ndarray) -> np.ndarray:
    """(V, U) mean HU (trilinear) over planes at `along_mm` from `centre` (3,) along the frame's
    axis, each sampled at `grid` (across, front-back mm, (V, U) each); NaN where a plane leaves the
    scan. `frame` = (axis, lateral, posterior) unit vectors (3,) LPS."""
    return np.clip(volume.hu_linear(slab_world(centre, frame, along_mm, *grid)), -200.0, 1500.0).mean(axis=0)


def mirrored(image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], normal: np.ndarray,
             offset: float | np.ndarray, at: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """`image` (V, U) on `grid` (across, front-back mm, (V, U) each, 1 mm apart) reflected in the
    line {x . normal = offset}, at the points `at` = (across, front-back) mm (...); offsets (F, 1)
    against points (P,) give (F, P)."""
    u0, v0 = grid[0][0, 0], grid[1][0, 0]
    uu, vv = at
    d = uu * normal[0] + vv * normal[1] - offset
    return bilinear(image, vv - 2 * d * normal[1] - v0, uu - 2 * d * normal[0] - u0)


def midline(image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], gap_mm: float,
            o: BodyOptions) -> tuple[np.ndarray, float] | None:
    """The line of best mirror symmetry of a slab image (V, U) on `grid` (`slab_image`) around the
    point (across = front-back = 0): its
    unit normal (2,) in (lateral, posterior) and its offset mm along it; None where too little of
    the image lies in the scan, where the best lies on the search's border (the midline beyond
    it) or is not clear. Compared within `midline_gaps` of the line on every other pixel each way
    (a quarter of the work, the same lines on the benchmark's scans)."""
    uu, vv = (g[::2, ::2].ravel() for g in grid)
    values = image[::2, ::2].ravel()
    tilts = np.radians(np.arange(-o.tilt_deg, o.tilt_deg + 1e-9, o.tilt_step_deg))
    reach = o.offset_gaps * gap_mm
    offsets = np.arange(-reach, reach + 1e-9, 1.0)[:, None]  # (F, 1)
    table = np.full((len(tilts), len(offsets)), np.nan)
    for i, tilt in enumerate(tilts):
        normal = np.array([np.cos(tilt), -np.sin(tilt)])
        near = np.abs(uu * normal[0] + vv * normal[1] - offsets) <= o.midline_gaps * gap_mm  # (F, P)
        diff = np.abs(values - mirrored(image, grid, normal, offsets, (uu, vv)))
        seen = near & np.isfinite(diff)
        enough = seen.sum(axis=1) >= 0.7 * near.sum(axis=1)
        table[i] = np.where(enough, np.where(seen, diff, 0.0).sum(axis=1) / np.maximum(seen.sum(axis=1), 1), np.nan)
    if not np.isfinite(table).any():
        return None
    i, j = (int(x) for x in np.unravel_index(int(np.nanargmin(table)), table.shape))
    if i in (0, len(tilts) - 1) or j in (0, len(offsets) - 1):  # the best lies beyond the search
        return None
    if not table[i, j] < o.clear_symmetry * np.nanmedian(table):  # a shapeless slab
        return None
    return np.array([np.cos(tilts[i]), -np.sin(tilts[i])]), float(offsets[j, 0])


def within(grid: tuple[np.ndarray, np.ndarray], at: np.ndarray, radius_mm: float) -> np.ndarray:
    """(V, U) bool: the pixels of `grid` (across, front-back mm) within `radius_mm` of `at` (2,) mm."""
    return np.hypot(grid[0] - at[0], grid[1] - at[1]) <= radius_mm


def symmetric_bone(image: np.ndarray, threshold_hu: float, grid: tuple[np.ndarray, np.ndarray],
                   line: tuple[np.ndarray, float]) -> np.ndarray:
    """(V, U) bool: `image` above `threshold_hu` where its mirror image in the midline `line` (unit
    normal, offset mm) is too (a vessel on one side of the body is not bone)."""
    bone = np.nan_to_num(image, nan=-1000.0) > threshold_hu
    return bone & (np.nan_to_num(mirrored(bone.astype(float), grid, line[0], line[1], grid)) > 0.5)


def on_midline(mask: np.ndarray, grid: tuple[np.ndarray, np.ndarray], start: np.ndarray, direction: np.ndarray,
               length_mm: float) -> np.ndarray:
    """(m,) bool: `mask` (V, U) on `grid` every mm from `start` (2,) mm along the unit `direction` (2,)
    for `length_mm`."""
    walk = start + np.arange(0.0, length_mm, 1.0)[:, None] * direction
    return bilinear(mask.astype(float), walk[:, 1] - grid[1][0, 0], walk[:, 0] - grid[0][0, 0]) > 0.5


def ring_mm(bone: np.ndarray, grid: tuple[np.ndarray, np.ndarray], start: np.ndarray, back: np.ndarray,
            reach_mm: float, directions: int = 8) -> np.ndarray:
    """(directions,) mm from `start` (2,) mm to the first pixel of `bone` (V, U) on `grid`, looking
    every 360 / `directions` degrees from `back` (unit (2,)); inf where none lies within `reach_mm`."""
    out = np.full(directions, np.inf)
    for k, angle in enumerate(2 * np.pi * np.arange(directions) / directions):
        direction = np.cos(angle) * back + np.sin(angle) * np.array([-back[1], back[0]])
        hit = on_midline(bone, grid, start, direction, reach_mm)
        if hit.any():
            out[k] = float(np.argmax(hit))
    return out


def canal_front(image: np.ndarray, grid: tuple[np.ndarray, np.ndarray], line: tuple[np.ndarray, float],
                back: np.ndarray, gap_mm: float, o: BodyOptions, ring: bool = False) -> np.ndarray | None:
    """(2,) mm (lateral, posterior) of a point inside the body, where the midline's foot lies in the
    spinal canal: mirror-symmetric bone (> `canal_bone_hu`) on the midline both in front of the foot
    (the body's back wall) and behind it (the laminae), each within `canal_reach_gaps`; the point
    lies `middle_gaps` of a gap in front of the wall, and on bone brighter than soft tissue by
    `min_bone_contrast_hu`. None where the foot is not so enclosed (a point in front of the body
    has bone behind it only, one in a faint body lands in front of it). With `ring` (a foot as
    bright as muscle, which the canal's content may be and a faint body's marrow, or the tissue
    between a body and a vessel, is too): only where that bone closes round the foot, within
    `canal_reach_gaps` every 45 degrees and `canal_ring_mm` on average (the canal is 12-22 mm
    across, a body 30-50), and the bone in front of the wall, brighter than soft tissue by
    `min_bone_contrast_hu`, goes on for `canal_body_gaps` (a body; a faint body's cortex has a
    vessel or fat in front of it). `line` = (unit normal, offset mm) of the midline (`midline`),
    `back` the unit vector posterior along it; `image` (V, U) on `grid` as in `section_centre`."""
    foot = line[1] * line[0]
    reach = o.canal_reach_gaps * gap_mm
    if (image[within(grid, foot, reach)] < LUNG_OR_GAS_HU).any():
        return None  # lung or gut beside it: the mediastinum or the abdomen in front of the body, not the canal
    bone = symmetric_bone(image, o.canal_bone_hu, grid, line)
    front, behind = (on_midline(bone, grid, foot, direction, reach) for direction in (-back, back))  # body, laminae
    if not (front.any() and behind.any()):
        return None
    wall = foot - float(np.argmax(front)) * back
    if ring:
        around = ring_mm(bone, grid, foot, back, reach)
        solid = np.nan_to_num(image, nan=-1000.0) >= o.soft_tissue_hu + o.min_bone_contrast_hu
        body_in_front = on_midline(solid, grid, wall, -back, o.canal_body_gaps * gap_mm).all()
        if not (around.mean() <= o.canal_ring_mm and body_in_front):
            return None
    inside = wall - o.middle_gaps * gap_mm * back
    # the body's bone there: a body whose cancellous bone is as faint as soft tissue (osteoporosis)
    # also shows bone in front of and behind its middle, its cortex, with soft tissue beyond it
    body = np.nanmedian(image[within(grid, inside, 0.2 * gap_mm)])
    return inside if body - o.soft_tissue_hu >= o.min_bone_contrast_hu else None


def section_centre(volume: Volume, centre: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray],
                   gap_mm: float, options: BodyOptions, from_canal: bool = True) -> np.ndarray:
    """(2,) mm (lateral, posterior) from `centre` (3,) LPS to the centroid of the body's cross-section
    (module docstring): onto the midline, then to the bone in front of the canal; (0, 0) where the
    slab leaves the scan or shows no clear midline, the midline's foot where no section is read.
    A foot in the spinal canal (`canal_front`) is read again from inside the body in front of it
    (once: `from_canal`)."""
    o = options
    u = np.arange(-gap_mm, gap_mm + 1e-9, 1.0)
    v = np.arange(-gap_mm, 1.3 * gap_mm + 1e-9, 1.0)
    grid = uu, vv = np.meshgrid(u, v)
    along = np.linspace(-o.slab_gaps, o.slab_gaps, o.slab_planes) * gap_mm
    image = slab_image(volume, centre, frame, grid, along)
    if np.isnan(image).mean() > 1 - o.seen_fraction_across:  # a body at the scan's edge: too little to mirror
        return np.zeros(2)
    line = midline(image, grid, gap_mm, o)
    if line is None:
        return np.zeros(2)
    normal, offset = line
    foot = offset * normal
    back = np.array([-normal[1], normal[0]])  # along the midline
    back *= np.sign(back[1]) or 1.0  # ... posterior
    body = np.nanmedian(image[within(grid, foot, 0.2 * gap_mm)])
    if not body - o.soft_tissue_hu >= o.min_bone_contrast_hu:  # False for NaN too
        # darker than muscle: fluid, cord or fat, as in the canal; as bright as muscle: the cord and
        # the canal's walls blurred in, or a faint body's marrow, which only the bony ring tells apart
        ahead = (canal_front(image, grid, line, back, gap_mm, o, ring=not body < o.soft_tissue_hu)
                 if from_canal and np.isfinite(body) else None)
        if ahead is None:
            return foot
        inside = centre + ahead[0] * frame[1] + ahead[1] * frame[2]
        return ahead + section_centre(volume, inside, frame, gap_mm, o, from_canal=False)
    bone = symmetric_bone(image, (body + o.soft_tissue_hu) / 2, grid, line)
    on_bone = on_midline(bone, grid, foot, back, 1.3 * gap_mm)
    # the canal: the first run of `canal_gaps` without bone (a darker patch of cancellous bone is shorter)
    run = max(1, int(round(o.canal_gaps * gap_mm)))
    clear = np.convolve(~on_bone, np.ones(run), mode="valid") == run  # (m - run + 1,) a clear run starts here
    if not on_bone[0] or not clear.any():
        return foot
    front_of_canal = float(np.argmax(clear))  # mm behind the foot
    bone &= (uu - foot[0]) * back[0] + (vv - foot[1]) * back[1] < front_of_canal
    bone &= within(grid, foot, o.section_gaps * gap_mm)  # vessels and organs may touch the cortex
    seed = np.zeros_like(bone)
    seed[int(np.argmin(np.abs(v - foot[1]))), int(np.argmin(np.abs(u - foot[0])))] = True
    section = grown(bone, seed)
    if not section.any():
        return foot
    centroid = np.array([uu[section].mean(), vv[section].mean()])
    return centroid if np.linalg.norm(centroid) <= o.offset_gaps * gap_mm else foot


def on_section(volume: Volume, point: np.ndarray, frame: tuple[np.ndarray, np.ndarray, np.ndarray],
               gap_mm: float, options: BodyOptions) -> np.ndarray:
    """(3,) world LPS mm: `point` (3,) moved across the spine by `section_centre` in its `frame`
    (axis, lateral, posterior unit vectors (3,))."""
    across = section_centre(volume, point, frame, gap_mm, options)
    return point + across[0] * frame[1] + across[1] * frame[2]


def body_centres(volume: Volume, points_lps: np.ndarray, options: BodyOptions = DEFAULT_OPTIONS.body,
                 read: np.ndarray | None = None, through_body: bool = True) -> np.ndarray:
    """(n, 3) world LPS mm: each point (n, 3) of the chain moved across the spine onto its body's
    cross-section (`section_centre`), along it by the median of the body offsets (`body_offset`)
    read from there at the `2 * neighbours + 1` points nearest it, then across again at the body's
    middle; the guards are the module docstring's.
    `read` (n,) bool: the points whose bodies are read (C1 has none, C2's dens breaks the
    symmetry); all by default. `through_body` False: the profile along the spine read from the
    point itself, as the rib probe's points were measured (read through the body there, the chest
    CT's top labels moved both ways: benchmarks/RESULTS.md). Unchanged for fewer than two points
    (no frame)."""
    o = options
    p = np.asarray(points_lps, dtype=np.float64)
    if len(p) < 2:
        return p.copy()
    read = np.ones(len(p), bool) if read is None else np.asarray(read, bool)
    axis, lateral, posterior, _ = chain_frames(p)
    gaps = period_mm(p)
    # a voxel's length along the spine: where it is long against the gap, the discs blur away
    voxel_mm = np.abs(axis @ (volume.direction * volume.spacing)).sum(axis=1)
    along_read = read & (voxel_mm <= o.max_voxel_gaps * gaps)
    frames = [(axis[n], lateral[n], posterior[n]) for n in range(len(p))]
    start = p.copy()
    offsets = np.full(len(p), np.nan)
    for n in np.flatnonzero(along_read):
        # the profile along the spine is read through the body: a point beside or behind it (thick
        # slices, a narrow field of view) reads muscle, lung or the canal there
        if through_body:
            start[n] = on_section(volume, p[n], frames[n], float(gaps[n]), o)
        offsets[n] = offset_at(volume, start[n], frames[n], float(gaps[n]), o)
    out = p.copy()
    width = 2 * o.neighbours + 1
    everywhere = offsets[np.isfinite(offsets)]
    # a point spaced unlike its neighbours is off the chain's rhythm (a missed or stray level): its
    # error is its own, and only its own reading moves it along the spine
    ratio = gaps / np.minimum(np.r_[gaps[1:2], gaps[:-1]], np.r_[gaps[1:], gaps[-2:-1]])
    regular = (ratio >= 1 / o.regular_ratio) & (ratio <= o.regular_ratio)
    for n in np.flatnonzero(read):
        first = int(np.clip(n - o.neighbours, 0, max(0, len(p) - width)))  # at the ends: the nearest `width`
        near = offsets[first : first + width]
        near = near[np.isfinite(near)]
        if len(near) < 2:
            near = everywhere  # a run of unread levels (screws, a scan's edge): the chain's median
        if not regular[n]:
            near = offsets[n : n + 1] if np.isfinite(offsets[n]) else np.empty(0)
        if along_read[n] and len(near) >= (2 if regular[n] else 1):  # two readings, or an irregular point's own
            out[n] = start[n] + np.median(near) * gaps[n] * axis[n]
        out[n] = on_section(volume, out[n], frames[n], float(gaps[n]), o)
    return out


def _shifted(values: np.ndarray, k: int, fill: float | bool) -> np.ndarray:
    """`values` (n, ...) moved so that row i holds row i + k; `fill` where that leaves the chain."""
    out = np.full_like(values, fill)
    n = len(values)
    if k >= 0:
        out[: max(n - k, 0)] = values[k:]
    else:
        out[-k:] = values[: n + k]
    return out


def _pairs(values: np.ndarray, fill: float | bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each point's two neighbours either side: `values` at i - 1, i - 2, i + 1, i + 2 (n, ...)."""
    return tuple(_shifted(values, k, fill) for k in (-1, -2, 1, 2))  # type: ignore[return-value]


def column_predictions(points_lps: np.ndarray, labels: np.ndarray, options: BodyOptions = DEFAULT_OPTIONS.body,
                       read: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where its labelled neighbours put each point (n, 3) LPS mm of the chain, and how far off it
    may lie: (3, n, 3) and (3, n) mm, from (0) the two levels either side, (1) the two above, (2)
    the two below; NaN where those are not adjacent levels (`labels.successors`).

    Between two adjacent levels a body lies at their midpoint, off it by at most 0.18 of a gap in
    the real spines of `../shared/data` (the chest CT, the lumbar CT, VerSe's T9-L5): up to
    `column_gaps` of the half-distance; beyond two adjacent levels at the mirror image of the
    farther one in the nearer, off by up to 0.39 of a gap there (0.56 once: the column's curve):
    up to `column_end_gaps` of their distance. Points not `read` (n,) bool (C1 has no body, C2's dens
    lifts its centroid) place no other.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    labels = np.asarray(labels)
    read = np.ones(len(p), bool) if read is None else np.asarray(read, bool)
    # into[i]: point i is the level after point i - 1
    into = np.array([False] + [int(b) in successors(int(a)) for a, b in zip(labels[:-1], labels[1:])], bool)
    into &= read & _shifted(read, -1, False)
    prev, prev2, nxt, nxt2 = _pairs(p, np.nan)
    into_prev, _, out_of, out_of_next = _pairs(into, False)  # point i - 1 after i - 2, i + 1 after i, i + 2 after i + 1
    prediction = np.stack([(prev + nxt) / 2, 2 * prev - prev2, 2 * nxt - nxt2])
    tolerance = np.stack([
        options.column_gaps * np.linalg.norm(nxt - prev, axis=1) / 2,
        options.column_end_gaps * np.linalg.norm(prev - prev2, axis=1),
        options.column_end_gaps * np.linalg.norm(nxt2 - nxt, axis=1),
    ])
    known = np.stack([into & out_of, into & into_prev, out_of & out_of_next])
    return np.where(known[..., None], prediction, np.nan), np.where(known, tolerance, np.nan)


def _pair_ok(ok: np.ndarray) -> np.ndarray:
    """(3, n) bool: both points behind each of `column_predictions`' predictions are `ok` (n,)."""
    prev, prev2, nxt, nxt2 = _pairs(ok, False)
    return np.stack([prev & nxt, prev & prev2, nxt & nxt2])


def onto_column(volume: Volume, points_lps: np.ndarray, labels: np.ndarray,
                options: BodyOptions = DEFAULT_OPTIONS.body, read: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) world LPS mm: the points (n, 3) of a labelled chain (`body_centres`' output) that
    their neighbours misplace, read again at the midpoint of their two neighbours, across the spine
    by `section_centre`; `read` (n,) bool as in `body_centres`: the others stay.

    A point is placed where a pair of neighbours puts it within their tolerance
    (`column_predictions`), or where no pair judges it. Judged again by the pairs of placed points
    only (one misplaced vertebra would otherwise make both neighbours look misplaced), a point
    still not placed is misplaced; it moves where its neighbours on both sides are placed.
    Beyond the last two levels the column's curve puts a body up to 0.56 of a gap off their line
    (the chest CT's T10 from T11-T12): an end point is judged, never moved.
    """
    p = np.asarray(points_lps, dtype=np.float64)
    out = p.copy()
    if len(p) < 3:
        return out
    prediction, tolerance = column_predictions(p, labels, options, read)
    within = np.linalg.norm(p - prediction, axis=2) <= tolerance  # (3, n), False where not judged
    judged = np.isfinite(tolerance)
    first = ~judged.any(axis=0) | within.any(axis=0)
    usable = judged & _pair_ok(first)
    placed = ~usable.any(axis=0) | (within & usable).any(axis=0)
    movable = ~placed & judged[0] & _pair_ok(placed)[0]
    out[movable] = prediction[0, movable]
    if movable.any():
        axis, lateral, posterior, _ = chain_frames(out)
        gaps = period_mm(out)
        for i in np.flatnonzero(movable):
            out[i] = on_section(volume, out[i], (axis[i], lateral[i], posterior[i]), float(gaps[i]), options)
    return out
