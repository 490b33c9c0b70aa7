"""Public spine datasets as downloaded, read and laid out as training cases in the VerSe layout.

Every dataset becomes `DIR/rawdata/sub-<id>/sub-<id>_ct.nii.gz` (the CT, linked, not copied) and
`DIR/derivatives/sub-<id>/sub-<id>_seg-subreg_ctd.json` (VerSe centroid JSON of the vertebral-body
centroids, `vertedge.verse.write_verse_ctd`), which `vertedge_train.data.find_verse_cases` and
`verse_scan` read. VerSe cases keep their own file names and official centroid file.

Readers (one per layout; each finds its files anywhere below the folder the user gives):
- VerSe 2019/2020 ("complete" restructured release): every `rawdata/` folder below is a VerSe
  root (`find_verse_cases`); the CT is linked, the official `*_ctd.json` copied unchanged.
- CTSpine1K: one multi-label mask `<name>_seg.nii.gz` per CT `<name>.nii.gz` (the Hugging Face
  mirror keeps them under `rawdata/volumes/<source>/` and `rawdata/labels/<source>/`; matched by
  name wherever they are). Its labels are VerSe's numbers: 1-7 C1-C7, 8-19 T1-T12, 20-24 L1-L5,
  25 L6 (the CTSpine1K nnU-Net task evaluates labels 1-25 jointly with VerSe; its README lists the
  L6 lumbarisation cases).
- TotalSegmentator (v1, Zenodo 6802614, and v2, Zenodo 10047292): `<case>/ct.nii.gz` with one
  binary mask per structure, `<case>/segmentations/vertebrae_C1.nii.gz` ... `vertebrae_L5.nii.gz`
  (both versions name them so; v2 adds `vertebrae_S1`, a sacral segment, ignored). It labels no
  transitional vertebra (T13, L6): those are skipped in its counting.

Masks give whole vertebrae; `body.body_centroids` turns them into body centroids. A vertebra whose
mask touches the border of the scan is cut by the field of view; like VerSe, which annotates only
whole vertebrae, the case leaves it out. A case with no whole vertebra is skipped.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from vertedge.atomic import atomic_path, write_json
from vertedge.errors import VertedgeError
from vertedge.labels import LABELS
from vertedge.verse import write_verse_ctd
from vertedge.volume import Volume, from_sitk

from .body import body_centroids

CT_SUFFIX = "_ct.nii.gz"
CTD_SUFFIX = "_seg-subreg_ctd.json"
MANIFEST = "vertedge-data.json"  # DIR/MANIFEST: where each case came from and how its centroids were made
GEOMETRY_TOL_MM = 1e-3  # mask and CT grids must agree to this (origin, spacing) and 1e-4 (direction cosines)
# TotalSegmentator's structure file of each VerSe label it segments
TOTALSEG_FILES: dict[int, str] = {LABELS[n]: f"vertebrae_{n}.nii.gz" for n in LABELS if n not in ("T13", "L6")}


def safe_id(name: str) -> str:
    """A case id `sub-<name>` for file names: characters other than letters, digits, '.' and '-' become '-'."""
    core = re.sub(r"[^A-Za-z0-9.-]+", "-", name.removeprefix("sub-")).strip("-.")
    if not core:
        raise VertedgeError(f"{name!r}: no letters or digits to make a case id of")
    return f"sub-{core}"


def case_paths(root: Path, case_id: str, prefix: str | None = None) -> tuple[Path, Path]:
    """(CT, centroid file) paths of case `case_id` in the VerSe layout under `root`; file names start with `prefix` (default the id)."""
    prefix = prefix or case_id
    return (root / "rawdata" / case_id / f"{prefix}{CT_SUFFIX}", root / "derivatives" / case_id / f"{prefix}{CTD_SUFFIX}")


def _same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` are one file (a link of it) or hold the same bytes."""
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def place_file(src: Path, dst: Path, fallback: str) -> str:
    """Put `src` at `dst` without copying where possible: a hard link, else `fallback` ("symlink" or "copy").

    Atomic (a temporary sibling renamed into place). Returns how: "hardlink", "symlink", "copy".
    """
    with atomic_path(dst) as tmp:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            how = "hardlink"
        except OSError:  # another file system, or links not allowed there
            if fallback == "symlink":
                os.symlink(Path(src).resolve(), tmp)
                how = "symlink"
            else:
                shutil.copyfile(src, tmp)
                how = "copy"
    return how


@dataclass
class IndexReport:
    """What an indexing run did: cases written, skipped (reason -> count), vertebrae, how CTs were placed."""

    cases: int = 0
    vertebrae: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    placed: Counter[str] = field(default_factory=Counter)
    dropped_cut: int = 0
    methods: Counter[str] = field(default_factory=Counter)

    def summary(self, dataset: str, root: Path) -> str:
        """One paragraph for the user."""
        how = ", ".join(f"{n} {k}" for k, n in sorted(self.placed.items())) or "none"
        lines = [f"{dataset}: {self.cases} cases, {self.vertebrae} vertebrae in {root} (CTs placed: {how})"]
        if self.methods:
            lines.append("  body centroids: " + ", ".join(f"{n} {k}" for k, n in sorted(self.methods.items())))
        if self.dropped_cut:
            lines.append(f"  {self.dropped_cut} vertebrae cut by the field of view left out")
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped {n}: {reason}")
        return "\n".join(lines)


def check_free(ct_dst: Path, ct_src: Path, case_id: str, force: bool) -> None:
    """Refuse to put another scan where case `case_id` already has one (unless `force`)."""
    if ct_dst.exists() and not force and not _same_file(ct_src, ct_dst):
        raise VertedgeError(f"{ct_dst}: case {case_id} already holds another scan (use --force to replace it)")


def write_case(
    root: Path, case_id: str, ct_src: Path, centroids: Callable[[Path], None], force: bool, fallback: str, prefix: str | None = None
) -> str:
    """Lay out one case: the CT placed (`place_file`) and its centroid file written by `centroids(path)`.

    Both appear or neither: the centroid file is written to a temporary sibling first (a failure there
    leaves nothing), then the CT is placed and the centroid file renamed into place. Returns how the
    CT was placed ("present" when the same file was there already).
    """
    ct_dst, ctd_dst = case_paths(root, case_id, prefix)
    check_free(ct_dst, ct_src, case_id, force)
    with atomic_path(ctd_dst) as tmp:
        centroids(tmp)
        if ct_dst.exists() and _same_file(ct_src, ct_dst):
            how = "present"
        else:
            how = place_file(ct_src, ct_dst, fallback)
    return how


def update_manifest(root: Path, dataset: str, source: Path | str, cases: dict[str, dict[str, object]]) -> None:
    """Merge `cases` (id -> provenance) into `root/MANIFEST`, atomically (nothing to merge: untouched)."""
    import json

    if not cases:
        return
    path = root / MANIFEST
    data: dict[str, object] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            data = {}
    entries = dict(data.get("cases", {}))  # type: ignore[call-overload]
    for cid, info in cases.items():
        entries[cid] = {"dataset": dataset, "source": str(source), **info}
    write_json(path, {"layout": "VerSe", "centroids": "vertebral body, world LPS via VerSe ctd JSON", "cases": entries})


# ----------------------------------------------------------------------------- readers


def verse_cases(src: Path) -> list[tuple[Path, Path]]:
    """(CT, ctd) pairs of every VerSe root (a folder holding `rawdata/`) at or below `src`."""
    from vertedge_train.data import find_verse_cases

    roots = sorted({p.parent for p in [src / "rawdata", *src.rglob("rawdata")] if p.is_dir()})
    return [pair for r in roots for pair in find_verse_cases(r)]


def ctspine1k_pairs(src: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(CT, mask) pairs of CTSpine1K below `src`, matched by name (`X.nii.gz` with `X_seg.nii.gz`), and the masks without a CT."""
    masks: list[Path] = []
    cts: dict[str, Path] = {}
    for p in sorted(src.rglob("*.nii.gz")):
        if p.name.endswith("_seg.nii.gz"):
            masks.append(p)
        else:
            cts.setdefault(p.name, p)
    pairs, lonely = [], []
    for m in masks:
        ct = cts.get(m.name[: -len("_seg.nii.gz")] + ".nii.gz")
        if ct is None:
            lonely.append(m)
        else:
            pairs.append((ct, m))
    return pairs, lonely


def totalseg_cases(src: Path) -> list[Path]:
    """Case folders of TotalSegmentator below `src`: those holding `ct.nii.gz` and `segmentations/`."""
    return sorted(p.parent for p in src.rglob("ct.nii.gz") if (p.parent / "segmentations").is_dir())


def _ct_geometry(path: Path) -> tuple[tuple[int, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(size, spacing, origin, direction) of an image file from its header alone."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return (
        tuple(reader.GetSize()),
        np.array(reader.GetSpacing()),
        np.array(reader.GetOrigin()),
        np.array(reader.GetDirection()),
    )


def same_grid(mask: sitk.Image, ct: Path) -> bool:
    """Whether `mask` lies on the voxel grid of the CT file `ct` (size, spacing, origin, direction)."""
    size, spacing, origin, direction = _ct_geometry(ct)
    return (
        tuple(mask.GetSize()) == size
        and np.allclose(mask.GetSpacing(), spacing, atol=GEOMETRY_TOL_MM)
        and np.allclose(mask.GetOrigin(), origin, atol=GEOMETRY_TOL_MM)
        and np.allclose(mask.GetDirection(), direction, atol=1e-4)
    )


def _read_label_image(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise VertedgeError(f"{path}: cannot read as an image") from e


def totalseg_mask(case: Path) -> sitk.Image | None:
    """One VerSe-label mask of a TotalSegmentator case from its per-vertebra files (None if it has none)."""
    combined: np.ndarray | None = None
    ref: sitk.Image | None = None
    for label, name in TOTALSEG_FILES.items():
        p = case / "segmentations" / name
        if not p.exists():
            continue
        image = _read_label_image(p)
        arr = sitk.GetArrayViewFromImage(image)
        if ref is None:
            ref, combined = image, np.zeros(arr.shape, np.int16)
        elif arr.shape != combined.shape:  # type: ignore[union-attr]
            raise VertedgeError(f"{p}: not on the grid of the case's other masks")
        combined[arr > 0] = label  # type: ignore[index]
    if ref is None or combined is None:
        return None
    out = sitk.GetImageFromArray(combined)
    out.CopyInformation(ref)
    return out


# ----------------------------------------------------------------------------- indexers


def _mask_case(
    root: Path, case_id: str, ct: Path, mask: sitk.Image | None, report: IndexReport, force: bool, fallback: str
) -> dict[str, object] | None:
    """Body centroids of one mask written as a case with its CT; None (and a reason counted) when skipped."""
    if mask is None:
        report.skipped["no vertebra masks"] += 1
        return None
    if not same_grid(mask, ct):
        report.skipped["mask not on the CT's voxel grid"] += 1
        return None
    volume: Volume = from_sitk(mask)
    found = body_centroids(volume)
    whole = {lab: c for lab, c in found.items() if not c.cut}
    report.dropped_cut += len(found) - len(whole)
    if not whole:
        report.skipped["no vertebra inside the field of view"] += 1
        return None
    cents = {lab: c.body_lps for lab, c in whole.items()}
    how = write_case(root, case_id, ct, lambda p: write_verse_ctd(p, cents, volume), force, fallback)
    report.cases += 1
    report.vertebrae += len(cents)
    report.placed[how] += 1
    report.methods.update(c.method for c in whole.values())
    return {"ct": str(ct), "centroids": {str(lab): c.method for lab, c in sorted(whole.items())}, "cut_left_out": sorted(set(found) - set(whole))}


def _progress(items: list, what: str, log: Callable[[str], None]) -> Iterator:
    """Iterate `items`, logging every 10 % (at least every 50)."""
    step = max(1, min(50, len(items) // 10))
    for n, item in enumerate(items):
        if n and n % step == 0:
            log(f"  {what}: {n}/{len(items)}")
        yield item


def index_verse(src: Path, root: Path, force: bool = False, fallback: str = "symlink", log: Callable[[str], None] = print) -> IndexReport:
    """Lay out the VerSe cases found below `src` in `root` (CT linked, official centroid file copied)."""
    report = IndexReport()
    manifest: dict[str, dict[str, object]] = {}
    pairs = verse_cases(src)
    for ct, ctd in _progress(pairs, "cases", log):
        case_id = ct.parent.name
        prefix = ct.name[: -len(CT_SUFFIX)]
        how = write_case(root, case_id, ct, partial(shutil.copyfile, ctd), force, fallback, prefix)
        report.cases += 1
        report.placed[how] += 1
        manifest[f"{case_id}/{prefix}"] = {"ct": str(ct), "ctd": str(ctd), "centroids": "official"}
    update_manifest(root, "verse", src, manifest)
    return report


def index_ctspine1k(src: Path, root: Path, force: bool = False, fallback: str = "symlink", log: Callable[[str], None] = print) -> IndexReport:
    """Lay out the CTSpine1K cases found below `src` in `root`, body centroids from their masks."""
    report = IndexReport()
    pairs, lonely = ctspine1k_pairs(src)
    if lonely:
        report.skipped["mask without its CT"] += len(lonely)
    manifest: dict[str, dict[str, object]] = {}
    for ct, seg in _progress(pairs, "cases", log):
        case_id = safe_id(ct.name[: -len(".nii.gz")])
        info = _mask_case(root, case_id, ct, _read_label_image(seg), report, force, fallback)
        if info is not None:
            manifest[case_id] = {**info, "mask": str(seg)}
    update_manifest(root, "ctspine1k", src, manifest)
    return report


def index_totalseg(src: Path, root: Path, force: bool = False, fallback: str = "symlink", log: Callable[[str], None] = print) -> IndexReport:
    """Lay out the TotalSegmentator cases found below `src` in `root`, body centroids from their vertebra masks."""
    report = IndexReport()
    manifest: dict[str, dict[str, object]] = {}
    for case in _progress(totalseg_cases(src), "cases", log):
        case_id = safe_id(case.name)
        info = _mask_case(root, case_id, case / "ct.nii.gz", totalseg_mask(case), report, force, fallback)
        if info is not None:
            manifest[case_id] = info
    update_manifest(root, "totalsegmentator", src, manifest)
    return report


INDEXERS: dict[str, Callable[..., IndexReport]] = {
    "verse19": index_verse,
    "verse20": index_verse,
    "ctspine1k": index_ctspine1k,
    "totalsegmentator": index_totalseg,
}
