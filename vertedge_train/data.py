"""Training data: multi-view DRRs rendered with the runtime's own DRR code, cached on disk, and targets.

One code path (DESIGN.md): every training image is
`vertedge.drr.normalize(vertedge.drr.render(volume, views, protocol), protocol)` with
`views = vertedge.geometry.make_views(volume, protocol)`, exactly what the runtime feeds the nets;
2D ground truth is `vertedge.geometry.project(views, centroids)`.

Sources of scans:
- phantoms by seed (`vertedge.phantom.make_phantom`); training seeds must be >= 1000 (0-999 are
  the held-out evaluation seeds and are refused here);
- real data in the VerSe layout: `<root>/rawdata/sub-*/*_ct.nii.gz` with
  `<root>/derivatives/sub-*/*_ctd.json` (read with `vertedge.verse.read_verse_ctd`, so the file's
  axis codes may differ from the image's; labels outside `SPINE_ORDER`, e.g. 26 sacrum, are dropped);
- real cases in vertedge's own layout (`<case>/ground_truth.json` beside `ct.nii.gz` or `dicom/`),
  for `vertedge-train finetune`, whose variants start from `everyday_variant` (pose, FOV, slices, noise).

Scan-level augmentation (before rendering, so it goes into the cache): a random start angle
(`Protocol.start_angle_deg` in [0, 360/K)), with `DataConfig.size_range` the anatomy scaled about
the spine's centre, and a random field-of-view crop along the S-I axis (the Volume's array is cut
and its origin shifted; centroids outside the kept box are dropped, a cut vertebra whose centroid
is still inside stays). Image-level augmentation (on the fly, cheap):
Gaussian blur, gamma, contrast/offset, Gaussian noise, random crops.

Cache: one `.npz` per (source, variant) under `cache_dir/<protocol hash>/`: images (K, H, W)
float16, points (K, N, 2) float32 (row, col), depth (K, N) float32 mm, labels (N,) int16,
cut (N,) bool, px_mm (K, N) float32 = mm covered by one pixel at the vertebra's depth, size () float32 =
the anatomy's scale (1 unless sized); a size range gets a folder of its own (`cache_folder`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vertedge import drr
from vertedge.atomic import atomic_path
from vertedge.boxes import square_half_px
from vertedge.geometry import Protocol, make_views, pixel_mm_at_depth, project
from vertedge.labels import SPINE_ORDER
from vertedge.phantom import PHANTOM_VERSION
from vertedge.volume import Volume

from .config import AugmentConfig, DataConfig, HeatmapConfig

CLASSES: tuple[int, ...] = tuple(SPINE_ORDER)  # id-net channel 1 + j is CLASSES[j]
HELD_OUT_SEEDS = range(1000)  # evaluation seeds: never used for training
DEFAULT_CACHE = Path(os.environ.get("VERTEDGE_TRAIN_CACHE", Path.home() / ".cache" / "vertedge-train"))


def protocol_hash(protocol: Protocol) -> str:
    """Short hash of the protocol without its start angle (the angle is an augmentation)."""
    d = replace(protocol, start_angle_deg=0.0).to_json()
    return hashlib.sha1(d.encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- scans


@dataclass(frozen=True, eq=False)
class Scan:
    """A CT with its body centroids (label -> world LPS mm) and cut flags."""

    name: str
    volume: Volume
    centroids: dict[int, np.ndarray]
    cut: dict[int, bool]


def phantom_scan(seed: int) -> Scan:
    """The phantom of a training seed (>= 1000)."""
    if int(seed) in HELD_OUT_SEEDS:
        raise ValueError(f"phantom seed {seed} is held out for evaluation (training seeds are >= 1000)")
    from vertedge.phantom import make_phantom

    ph = make_phantom(int(seed))
    return Scan(f"phantom_{int(seed)}", ph.volume, dict(ph.centroids), dict(ph.cut))


def find_verse_cases(root: str | os.PathLike[str]) -> list[tuple[Path, Path]]:
    """(ct, ctd) pairs of a VerSe-layout folder: rawdata/sub-*/*_ct.nii.gz + derivatives/sub-*/*_ctd.json.

    The centroid file of `<prefix>_ct.nii.gz` is the `*_ctd.json` in the same subject's derivatives
    folder whose name starts with `<prefix>_` (VerSe 2019 and 2020 naming), else the only one there.
    """
    root = Path(root)
    cases = []
    for ct in sorted(root.glob("rawdata/sub-*/*_ct.nii.gz")):
        prefix = ct.name[: -len("_ct.nii.gz")]
        deriv = root / "derivatives" / ct.parent.name
        ctds = sorted(deriv.glob("*_ctd.json"))
        match = [c for c in ctds if c.name.startswith(prefix + "_")]
        if not match and len(ctds) == 1:
            match = ctds
        if match:
            cases.append((ct, match[0]))
    return cases


def verse_scan(ct: Path, ctd: Path) -> Scan:
    """A VerSe case; only vertebra labels (SPINE_ORDER) kept; cut flags unknown (False)."""
    from vertedge.verse import read_verse_ctd
    from vertedge.volume import load_volume

    volume = load_volume(ct)
    cents = read_verse_ctd(ctd, volume)
    cents = {int(k): np.asarray(v, float) for k, v in cents.items() if int(k) in CLASSES}
    return Scan(ct.name[: -len("_ct.nii.gz")], volume, cents, {k: False for k in cents})


def case_scan_path(folder: Path) -> Path:
    """The scan of a case folder in the real-case layout: its `ct.nii.gz`, else its `dicom/` series."""
    nifti = Path(folder) / "ct.nii.gz"
    return nifti if nifti.exists() else Path(folder) / "dicom"


def find_cases(root: str | os.PathLike[str]) -> list[Path]:
    """Case folders of `root` in vertedge's real-case layout: `<case>/ground_truth.json` beside `ct.nii.gz`
    or a `dicom/` series (the layout of `../shared/data/real` and of the robustness benchmark)."""
    # resolved: a case reached through a link has one cache tag whichever folder links it
    return [t.parent.resolve() for t in sorted(Path(root).glob("*/ground_truth.json"))
            if case_scan_path(t.parent).exists()]


def case_scan(folder: Path) -> Scan:
    """A real case (`find_cases`): only vertebra labels kept, cut flags from the truth file."""
    from vertedge.metrics import read_points
    from vertedge.volume import load_volume

    folder = Path(folder)
    volume = load_volume(case_scan_path(folder))
    truth, cut = read_points(folder / "ground_truth.json")
    cents = {int(k): np.asarray(v, float) for k, v in truth.items() if int(k) in CLASSES}
    return Scan(folder.name, volume, cents, {k: k in cut for k in cents})


def data_sources(root: str | os.PathLike[str]) -> list[str]:
    """Training sources of a data folder: VerSe layout (`verse:<ct>::<ctd>`) or real-case layout (`case:<folder>`)."""
    sources = [f"verse:{ct}::{ctd}" for ct, ctd in find_verse_cases(root)] + [f"case:{c}" for c in find_cases(root)]
    if not sources:
        raise ValueError(f"{root}: no cases (neither rawdata/sub-*/*_ct.nii.gz with derivatives/sub-*/*_ctd.json "
                         "nor */ground_truth.json beside ct.nii.gz or dicom/)")
    return sources


# Everyday variations drawn for a real scan's training variants: they span the robustness
# benchmark's range (tilt to 15 degrees, roll to 30, in-plane air and FOV, thick slices, noise) so
# that a pose or field of view the benchmark tries is inside what training saw.
TILT_DEG, ROLL_DEG, YAW_DEG = 15.0, 30.0, 5.0
P_PAD, PAD_MM = 0.25, (10.0, 40.0)
P_FOV, FOV_MM = 0.25, (160.0, 280.0)
P_THICK, THICK_MM = 0.3, (2.5, 5.0)
P_NOISE, NOISE_HU = 0.5, (5.0, 60.0)


def everyday_variant(scan: Scan, rng: np.random.Generator) -> Scan:
    """`scan` with a random patient pose (about the spine's centre; the centroids move with it), and
    at random in-plane air padding or a spine-centred field of view, thick slices, noise."""
    from . import variations

    labels = list(scan.centroids)
    pts = np.array([scan.centroids[k] for k in labels], float).reshape(-1, 3)
    centre = pts.mean(0)
    rot = variations.rotation(rng.uniform(-TILT_DEG, TILT_DEG), rng.uniform(-ROLL_DEG, ROLL_DEG), rng.uniform(-YAW_DEG, YAW_DEG))
    vol = variations.rotated(scan.volume, rot, centre)
    pts = variations.turn_points(pts, rot, centre)
    if rng.random() < P_PAD:
        vol = variations.pad_in_plane(vol, rng.uniform(*PAD_MM))
    elif rng.random() < P_FOV:
        vol = variations.in_plane_window(vol, centre, rng.uniform(*FOV_MM))
    if rng.random() < P_THICK:
        vol = variations.thick_slices(vol, rng.uniform(*THICK_MM))
    if rng.random() < P_NOISE:
        vol = variations.with_noise(vol, rng.uniform(*NOISE_HU), rng)
    kept, cut = variations.inside(vol, pts)
    return Scan(scan.name, vol, {k: p for k, p, keep in zip(labels, pts, kept) if keep},
                {k: bool(c) or scan.cut.get(k, False) for k, c, keep in zip(labels, cut, kept) if keep})


def sized_variant(scan: Scan, factor: float) -> Scan:
    """`scan` with its anatomy `factor` times its size about the spine's centre (`variations.scaled_patient`)."""
    from . import variations

    return Scan(scan.name, *variations.scaled_patient(scan.volume, scan.centroids, factor), dict(scan.cut))


def crop_si(scan: Scan, lo_frac: float, hi_frac: float) -> Scan:
    """The scan cut to [lo_frac, hi_frac) of its S-I index axis (array cut, origin shifted).

    Centroids outside the kept box are dropped; those inside whose vertebra may now be cut stay.
    """
    vol = scan.volume
    a, _ = vol.si_axis()
    n = vol.shape_ijk[a]
    lo = int(np.clip(np.floor(lo_frac * n), 0, n - 2))
    hi = int(np.clip(np.ceil(hi_frac * n), lo + 2, n))
    sl = [slice(None)] * 3
    sl[2 - a] = slice(lo, hi)  # hu is (k, j, i)
    start = np.zeros(3)
    start[a] = lo
    cropped = Volume(
        hu=np.ascontiguousarray(vol.hu[tuple(sl)]),
        spacing=vol.spacing.copy(),
        origin=vol.index_to_world(start),
        direction=vol.direction.copy(),
        meta=dict(vol.meta),
    )
    shape = np.array(cropped.shape_ijk)
    cents, cut = {}, {}
    for lab, c in scan.centroids.items():
        ijk = cropped.world_to_index(c)
        if np.all(ijk >= -0.5) and np.all(ijk <= shape - 0.5):
            cents[lab] = c
            cut[lab] = scan.cut.get(lab, False) or bool(lo > 0 or hi < n)
    return Scan(scan.name, cropped, cents, cut)


def render_scan(scan: Scan, protocol: Protocol, size: float = 1.0) -> dict[str, np.ndarray]:
    """Normalized DRRs and projected ground truth of one scan (the runtime's code path); `size`: the
    anatomy's scale against the scan it was drawn from (`sized_variant`), for the targets' squares."""
    views = make_views(scan.volume, protocol)
    images = drr.normalize(drr.render(scan.volume, views, protocol), protocol)
    labels = np.array(sorted(scan.centroids, key=CLASSES.index), dtype=np.int16)
    pts = np.array([scan.centroids[int(lab)] for lab in labels], float).reshape(-1, 3)
    rc, depth = project(views, pts)
    return {
        "images": images.astype(np.float16),
        "points": rc.astype(np.float32),
        "depth": depth.astype(np.float32),
        "px_mm": pixel_mm_at_depth(views, depth).astype(np.float32),
        "labels": labels,
        "cut": np.array([scan.cut.get(int(lab), False) for lab in labels], bool),
        "angles": views.angles_deg.astype(np.float32),
        "size": np.array(size, np.float32),
    }


def scan_variants(scan: Scan, protocol: Protocol, n_variants: int, rng: np.random.Generator,
                  crop_prob: float = 0.5, min_keep: float = 0.35, everyday: bool = False,
                  size_range: tuple[float, float] | None = None) -> list[dict[str, np.ndarray]]:
    """`n_variants` rendered variants: variant 0 the whole scan, others random angle and S-I crop
    (with `everyday`, after an `everyday_variant` of the scan; with `size_range`, the anatomy scaled
    by a factor drawn log-uniformly in it, `sized_variant`)."""
    out = []
    step = 360.0 / protocol.n_views
    for v in range(n_variants):
        s, p, size = scan, protocol, 1.0
        if v > 0:
            p = replace(protocol, start_angle_deg=float(rng.uniform(0, step)))
            if size_range is not None:
                size = float(np.exp(rng.uniform(*np.log(size_range))))
                s = sized_variant(s, size)
            if everyday:
                s = everyday_variant(s, rng)
            if rng.random() < crop_prob:
                keep = rng.uniform(min_keep, 0.9)
                lo = rng.uniform(0, 1 - keep)
                s = crop_si(s, lo, lo + keep)
        out.append(render_scan(s, p, size))
    return out


# ----------------------------------------------------------------------------- cache


def cache_folder(cache_dir: str | os.PathLike[str] | None, protocol: Protocol,
                 size_range: tuple[float, float] | None = None) -> Path:
    """Folder of the cached samples of one protocol, phantom version and anatomy size range."""
    base = Path(os.path.expanduser(str(cache_dir))) if cache_dir else DEFAULT_CACHE
    sized = "" if size_range is None else f"-size{size_range[0]:g}-{size_range[1]:g}"
    return base / f"{protocol_hash(protocol)}-phantom{PHANTOM_VERSION}{sized}"


def _save_npz(path: Path, sample: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        np.savez(tmp, **sample)


def scan_of(source: str) -> Scan:
    """The scan of a source: 'phantom:<seed>', 'verse:<ct>::<ctd>' or 'case:<folder>'."""
    kind, _, spec = source.partition(":")
    if kind == "phantom":
        return phantom_scan(int(spec))
    if kind == "verse":
        ct, _, ctd = spec.partition("::")
        return verse_scan(Path(ct), Path(ctd))
    if kind == "case":
        return case_scan(Path(spec))
    raise ValueError(f"unknown source {source!r}")


def source_tag(source: str, everyday: bool = False) -> str:
    """The cache file prefix of a source: `phantom_<seed>`, or `<kind>_<hash of its path>` (+ `_everyday`)."""
    kind, _, spec = source.partition(":")
    if kind == "phantom":
        return f"phantom_{int(spec)}" + ("_everyday" if everyday else "")
    if kind not in ("verse", "case"):
        raise ValueError(f"unknown source {source!r}")
    return f"{kind}_{hashlib.sha1(spec.encode()).hexdigest()[:10]}" + ("_everyday" if everyday else "")


def render_to_cache(source: str, protocol: Protocol, folder: Path, n_variants: int, seed: int,
                    crop_prob: float = 0.5, min_keep: float = 0.35, everyday: bool = False,
                    size_range: tuple[float, float] | None = None) -> int:
    """Render `n_variants` of one source ('phantom:<seed>', 'verse:<ct>::<ctd>' or 'case:<folder>') into `folder`.

    Skips variants already there; returns how many were written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tag = source_tag(source, everyday)
    paths = [folder / f"{tag}_v{v}.npz" for v in range(n_variants)]
    if all(p.exists() for p in paths):
        return 0
    scan = scan_of(source)
    rng = np.random.default_rng([seed, int(hashlib.sha1(tag.encode()).hexdigest()[:8], 16)])
    written = 0
    for path, sample in zip(paths, scan_variants(scan, protocol, n_variants, rng, crop_prob, min_keep, everyday,
                                                     size_range)):
        if not path.exists():
            _save_npz(path, sample)
            written += 1
    return written


def _render_worker(args: tuple) -> tuple[str, int, float]:
    source, protocol_json, folder, n_variants, seed, crop_prob, min_keep, everyday, size_range = args
    import numba

    numba.set_num_threads(1)
    t = time.time()
    n = render_to_cache(source, Protocol.from_dict(json.loads(protocol_json)), Path(folder),
                        n_variants, seed, crop_prob, min_keep, everyday, size_range)
    return source, n, time.time() - t


def prerender(sources: list[str], protocol: Protocol, folder: Path, n_variants: int, seed: int = 0,
              crop_prob: float = 0.5, min_keep: float = 0.35, workers: int = 1, log=print, everyday: bool = False,
              size_range: tuple[float, float] | None = None) -> None:
    """Render every source into the cache (multiprocessing with `workers` processes); crops keep >= `min_keep` of a scan;
    `everyday`: variants after `everyday_variant` (pose, field of view, slices, noise); `size_range`:
    the anatomy scaled in the random variants (`scan_variants`)."""
    args = [(s, protocol.to_json(), str(folder), n_variants, seed, crop_prob, min_keep, everyday, size_range)
            for s in sources]
    t0 = time.time()
    results: Iterator[tuple[str, int, float]]
    with contextlib.ExitStack() as stack:
        if workers <= 1:
            results = map(_render_worker, args)
        else:
            import multiprocessing as mp

            results = stack.enter_context(mp.get_context("spawn").Pool(workers)).imap_unordered(_render_worker, args)
        for i, (src, n, dt) in enumerate(results, 1):
            log(f"[render] {i}/{len(args)} {src}: {n} new variants in {dt:.1f}s (total {time.time() - t0:.0f}s)")


def sources_from_config(data_cfg: DataConfig) -> list[str]:
    """Training sources: phantom seeds [lo, hi) (>= 1000) and VerSe cases under `verse_roots`."""
    lo, hi = data_cfg.train_seeds
    if lo < 1000:
        raise ValueError("training phantom seeds must be >= 1000 (0-999 are held out)")
    out = [f"phantom:{s}" for s in range(lo, hi)]
    for root in data_cfg.verse_roots:
        out += [f"verse:{ct}::{ctd}" for ct, ctd in find_verse_cases(root)]
    return out


class Pool:
    """The cached samples in memory (float16 images); `refresh()` picks up newly rendered files."""

    def __init__(self, folder: Path, max_items: int | None = None, tags: set[str] | None = None) -> None:
        self.folder = Path(folder)
        self.items: list[dict[str, np.ndarray]] = []
        self.tags: list[str] = []  # the source tag of each item (`source_tag`)
        self._seen: set[str] = set()
        self.max_items = max_items
        self.only = tags  # load only these sources' files (a fine-tune must not see a held-out case)
        self.refresh()

    def refresh(self) -> int:
        """Load files not loaded yet; returns how many were added."""
        added = 0
        for f in sorted(glob.glob(str(self.folder / "*_v*.npz"))):
            tag = Path(f).name.rsplit("_v", 1)[0]
            if f in self._seen or ".part-" in f or (self.only is not None and tag not in self.only):
                continue
            if self.max_items is not None and len(self.items) >= self.max_items:
                break
            try:
                with np.load(f) as z:
                    item = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError, KeyError):  # a file being written by another process
                continue
            self._seen.add(f)
            self.items.append(item)
            self.tags.append(tag)
            added += 1
        return added

    def __len__(self) -> int:
        return len(self.items)


# ----------------------------------------------------------------------------- targets


def heatmap_target(shape: tuple[int, int], points: np.ndarray, sigma: float, amplitude: float) -> np.ndarray:
    """(H, W) float32: max over points (N, 2) (row, col) of amplitude * exp(-d^2 / (2 sigma^2))."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    rad = int(np.ceil(3 * sigma)) + 1
    for r, c in np.asarray(points, float).reshape(-1, 2):
        r0, r1 = max(int(np.floor(r)) - rad, 0), min(int(np.ceil(r)) + rad + 1, h)
        c0, c1 = max(int(np.floor(c)) - rad, 0), min(int(np.ceil(c)) + rad + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        rr = np.arange(r0, r1)[:, None] - r
        cc = np.arange(c0, c1)[None, :] - c
        g = amplitude * np.exp(-(rr**2 + cc**2) / (2 * sigma**2))
        np.maximum(out[r0:r1, c0:c1], g.astype(np.float32), out=out[r0:r1, c0:c1])
    return out


def id_target(shape: tuple[int, int], points: np.ndarray, class_idx: np.ndarray, half_px: np.ndarray) -> np.ndarray:
    """(H, W) int64: 1 + class index inside each vertebra's square, 0 (background) elsewhere.

    Pixel (i, j) is in the square of point (r, c) when |i - r| <= half and |j - c| <= half; where
    squares overlap, the point nearest in Chebyshev distance (relative to its half side) wins.
    """
    h, w = shape
    out = np.zeros((h, w), np.int64)
    best = np.full((h, w), np.inf)
    for (r, c), k, hp in zip(np.asarray(points, float).reshape(-1, 2), class_idx, half_px):
        r0, r1 = max(int(np.ceil(r - hp)), 0), min(int(np.floor(r + hp)) + 1, h)
        c0, c1 = max(int(np.ceil(c - hp)), 0), min(int(np.floor(c + hp)) + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue
        d = np.maximum(np.abs(np.arange(r0, r1)[:, None] - r), np.abs(np.arange(c0, c1)[None, :] - c)) / hp
        sub_best = best[r0:r1, c0:c1]
        win = d < sub_best
        sub_best[win] = d[win]
        out[r0:r1, c0:c1][win] = 1 + int(k)
    return out


def square_boxes(points: np.ndarray, half_px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) int [r0, r1, c0, c1) boxes of the squares, clipped to the image (may be empty)."""
    h, w = shape
    p = np.asarray(points, float).reshape(-1, 2)
    hp = np.asarray(half_px, float)
    r0 = np.clip(np.ceil(p[:, 0] - hp), 0, h).astype(int)
    r1 = np.clip(np.floor(p[:, 0] + hp) + 1, 0, h).astype(int)
    c0 = np.clip(np.ceil(p[:, 1] - hp), 0, w).astype(int)
    c1 = np.clip(np.floor(p[:, 1] + hp) + 1, 0, w).astype(int)
    return np.stack([r0, r1, c0, c1], axis=1)


# ----------------------------------------------------------------------------- batches


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2D image (edges replicated); sigma in pixels."""
    if sigma <= 0.05:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            acc += w * (p[i : i + n] if axis == 0 else p[:, i : i + n])
        out = acc
    return out


def augment_intensity(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Blur (p=`blur_prob`, sigma <= `blur`), gamma, contrast/offset and Gaussian noise on a normalized view."""
    x = np.maximum(img.astype(np.float32), 0.0)
    if rng.random() < cfg.blur_prob:
        x = gaussian_blur(x, float(rng.uniform(0.3, cfg.blur)))
    g = np.exp(rng.uniform(-1, 1) * np.log(cfg.gamma))
    x = x**g
    x = x * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    x = x + rng.uniform(-cfg.offset, cfg.offset)
    sigma = rng.uniform(0, cfg.noise)
    if sigma > 0:
        x = x + rng.normal(0, sigma, x.shape).astype(np.float32)
    return x.astype(np.float32)


def spine_band(shape: tuple[int, int], points_rc: np.ndarray, half_px: float) -> np.ndarray:
    """(H, W) bool: pixels within `half_px` columns of the spine's projection in each row.

    The spine's column is interpolated along rows between the projected centroids `points_rc` (n, 2)
    pixels (any order) and held at the end ones beyond them; all True without a point.
    """
    h, w = shape
    p = np.asarray(points_rc, float).reshape(-1, 2)
    if not len(p):
        return np.ones(shape, bool)
    order = np.argsort(p[:, 0])
    column = np.interp(np.arange(h), p[order, 0], p[order, 1])
    return np.abs(np.arange(w)[None, :] - column[:, None]) <= half_px


def _crop_origin(item: dict, k: int, crop: tuple[int, int], rng: np.random.Generator, focus: float) -> tuple[int, int]:
    """Top-left (r0, c0) of a crop of view k: near a random vertebra with prob `focus`, else uniform."""
    _, h, w = item["images"].shape
    ch, cw = crop
    pts = item["points"][k]
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < h) & (pts[:, 1] >= 0) & (pts[:, 1] < w)
    if len(pts) and inside.any() and rng.random() < focus:
        r, c = pts[rng.choice(np.flatnonzero(inside))]
        r0 = round(r - ch / 2 + rng.uniform(-0.4, 0.4) * ch)
        c0 = round(c - cw / 2 + rng.uniform(-0.25, 0.25) * cw)
    else:
        r0 = int(rng.integers(min(0, h - ch), max(0, h - ch) + 1))
        c0 = int(rng.integers(min(0, w - cw), max(0, w - cw) + 1))
    r0 = int(np.clip(r0, min(0, h - ch), max(0, h - ch)))
    c0 = int(np.clip(c0, min(0, w - cw), max(0, w - cw)))
    return r0, c0


def crop_view(img: np.ndarray, r0: int, c0: int, crop: tuple[int, int]) -> np.ndarray:
    """(ch, cw) window of img (H, W) at (r0, c0), zero (air) outside the image."""
    h, w = img.shape
    ch, cw = crop
    out = np.zeros(crop, np.float32)
    rs, re = max(r0, 0), min(r0 + ch, h)
    cs, ce = max(c0, 0), min(c0 + cw, w)
    if rs < re and cs < ce:
        out[rs - r0 : re - r0, cs - c0 : ce - c0] = img[rs:re, cs:ce]
    return out


@dataclass(frozen=True)
class BatchSettings:
    """What `sample_batch` needs of a training config."""

    augment: AugmentConfig = AugmentConfig()
    heatmap: HeatmapConfig = HeatmapConfig()
    square_mm: float = 22.0
    focus: float = 0.8  # share of crops centred near a vertebra
    variant_boost: float = 1.0  # oversampling of scans with a T13 or L6
    real_fraction: float | None = None  # share of real scans in a batch (None: as they come)


def sample_batch(pool: Pool, batch: int, crop: tuple[int, int], rng: np.random.Generator,
                 task: str, cfg: BatchSettings) -> dict[str, np.ndarray | list]:
    """A batch of random view crops with targets.

    task 'loc': heatmap (B, 1, h, w); 'id': target (B, h, w) int64 and, per image, the class
    indices, the square boxes (cranial -> caudal) for the Sequence Loss; 'pair': two views of the
    same scan at the same S-I window (x1, x2) for SimSiam.
    """
    aug, hm, focus = cfg.augment, cfg.heatmap, cfg.focus
    xs, x2s, hms, tgts, boxes, cls = [], [], [], [], [], []
    boost, real_fraction = cfg.variant_boost, cfg.real_fraction
    weights = None
    if boost != 1.0:  # oversample scans with the rare T13 / L6 variants
        weights = np.array([boost if np.isin(it["labels"], (25, 28)).any() else 1.0 for it in pool.items])
    if real_fraction is not None:  # real scans drawn with this probability, phantoms with the rest
        real = np.array([not t.startswith("phantom_") for t in pool.tags])
        if real.any() and not real.all():
            share = np.where(real, float(real_fraction) / real.sum(), (1.0 - float(real_fraction)) / (~real).sum())
            weights = share if weights is None else weights * share
    if weights is not None:
        weights = weights / weights.sum()
    for _ in range(batch):
        item = pool.items[int(rng.choice(len(pool), p=weights)) if weights is not None else int(rng.integers(len(pool)))]
        n_views = item["images"].shape[0]
        k = int(rng.integers(n_views))
        r0, c0 = _crop_origin(item, k, crop, rng, focus)
        img = crop_view(item["images"][k].astype(np.float32), r0, c0, crop)
        pts = item["points"][k] - np.array([r0, c0], np.float32)  # the projected centroids in the crop
        # no draw at band_prob 0: recipes without the band keep their random stream
        if task == "id" and aug.band_prob > 0 and rng.random() < aug.band_prob:
            half_px = rng.uniform(*aug.band_mm) / float(np.median(item["px_mm"][k]))
            img = np.where(spine_band(crop, pts, half_px), img, 0.0)
        xs.append(augment_intensity(img, rng, aug))
        if task == "pair":
            k2 = int((k + rng.integers(1, n_views)) % n_views)
            _, _h, w = item["images"].shape
            c2 = int(rng.integers(min(0, w - crop[1]), max(0, w - crop[1]) + 1))
            img2 = crop_view(item["images"][k2].astype(np.float32), r0, c2, crop)
            x2s.append(augment_intensity(img2, rng, aug))
            continue
        if task == "loc":
            hms.append(heatmap_target(crop, pts, hm.sigma_px, hm.amplitude))
        else:
            idx = np.array([CLASSES.index(int(lab)) for lab in item["labels"]], int)
            # the square is a vertebra's size: it shrinks and grows with the anatomy (`sized_variant`)
            half = square_half_px(item["px_mm"][k], cfg.square_mm * float(item.get("size", 1.0)))
            tgts.append(id_target(crop, pts, idx, half))
            inside = (pts[:, 0] >= 0) & (pts[:, 0] < crop[0]) & (pts[:, 1] >= 0) & (pts[:, 1] < crop[1])
            bx = square_boxes(pts, half, crop)
            boxes.append(bx[inside])  # labels are in spine order already: cranial -> caudal
            cls.append(idx[inside])
    out: dict[str, Any] = {"x": np.stack(xs)[:, None]}
    if task == "pair":
        out["x2"] = np.stack(x2s)[:, None]
    elif task == "loc":
        out["heatmap"] = np.stack(hms)[:, None]
    else:
        out["target"] = np.stack(tgts)
        out["boxes"] = boxes
        out["classes"] = cls
    return out
