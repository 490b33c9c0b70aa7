"""Many scans, unattended: expand inputs, read the next scan while labelling this one, go on past failures."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .atomic import write_json
from .errors import VertedgeError
from .outputs import result_paths, scan_name, write_result
from .pipeline import Labeler, Result
from .volume import Volume, dicom_series_files, dicom_series_ids, load_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
SUMMARY_FILE = "summary.json"
SERIES_DESCRIPTION, SERIES_UID = "0008|103e", "0020|000e"
MAX_LABEL_CHARS = 64

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scan:
    """One scan of a batch: an image file, a DICOM series folder, or one series of a folder holding several."""

    path: Path
    series_id: str | None = None  # GDCM's series id (the SeriesInstanceUID) when `path` holds several
    series_label: str = ""  # that series in output names: its SeriesDescription, else its UID
    folders: tuple[str, ...] = ()  # folders between the searched input folder and the scan

    @property
    def base_name(self) -> str:
        """Its name in outputs unless another scan's clashes: folders, file or folder name, series label."""
        series = (self.series_label,) if self.series_id is not None else ()
        return "_".join((*self.folders, scan_name(self.path), *series))

    def __str__(self) -> str:
        return str(self.path) if self.series_id is None else f"{self.path} [series {self.series_label}]"

    def load(self) -> Volume:
        """The scan's volume in HU."""
        return load_volume(self.path, self.series_id)


@dataclass(frozen=True)
class Outcome:
    """What became of one scan of a batch."""

    scan: str
    name: str
    status: str  # "ok", "failed", or "skipped" (done by an earlier run; its figures are that run's)
    n_vertebrae: int | None = None
    seconds: float | None = None
    message: str = ""
    outputs: list[str] = field(default_factory=list)


def _is_image_file(path: Path) -> bool:
    """Whether a file name has a 3D image extension."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def safe_label(text: str) -> str:
    """`text` as a portable file name part: runs of other characters than [A-Za-z0-9._-] become '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:MAX_LABEL_CHARS]


def _series_tag(files: list[str], tag: str) -> str:
    """A DICOM tag of a series' first file, without DICOM's padding ('' when absent)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    reader.ReadImageInformation()
    return reader.GetMetaData(tag).strip(" \0") if reader.HasMetaDataKey(tag) else ""


def dicom_scans(folder: Path, folders: tuple[str, ...] = ()) -> list[Scan]:
    """The DICOM series directly in `folder`: the folder itself for one, one Scan per series for several.

    A series is named by its SeriesDescription (made file-name safe) when that is set and unique in
    the folder, else by its SeriesInstanceUID.
    """
    ids = dicom_series_ids(folder)
    if len(ids) <= 1:
        return [Scan(folder, folders=folders)] if ids else []
    descriptions = [safe_label(_series_tag(dicom_series_files(folder, s), SERIES_DESCRIPTION)) for s in ids]
    return [
        Scan(folder, s, d if d and descriptions.count(d) == 1 else safe_label(s), folders)
        for s, d in zip(ids, descriptions)
    ]


def expand_inputs(paths: list[Path]) -> list[Scan]:
    """Scans named by `paths`: files as given; DICOM series folders by series; other folders searched.

    A scan found below a searched folder keeps the folders in between in its name
    (`cases/c1/ct.nii.gz` found in `cases` is `c1_ct`).

    A path that does not exist is kept, so that it is reported as a failed scan; a scan named twice
    is labelled once.
    """
    scans: list[Scan] = []
    for path in paths:
        series = dicom_scans(path) if path.is_dir() else [Scan(path)]
        if series or not path.is_dir():
            scans += series
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            here = Path(root)
            below = here.relative_to(path).parts
            scans += [Scan(here / f, folders=below) for f in sorted(files) if _is_image_file(here / f)]
            if here != path:
                scans += dicom_scans(here, below[:-1])
    unique = {(os.path.abspath(s.path), s.series_id): s for s in reversed(scans)}
    return [s for s in scans if unique[(os.path.abspath(s.path), s.series_id)] is s]


def _duplicates(names: list[str]) -> set[int]:
    """Indices of names that another one equals, ignoring case (some file systems do)."""
    folded = [n.casefold() for n in names]
    return {i for i, n in enumerate(folded) if folded.count(n) > 1}


def unique_names(scans: list[Scan]) -> list[str]:
    """Output names for the scans, distinct (ignoring case) and the same on every run of the same inputs.

    A scan's name is its `Scan.base_name`; scans sharing one get their path below the folder the
    group shares (`a/ct.nii.gz` and `b/ct.nii.gz` give `a_ct` and `b_ct`); names still shared get
    a digest of the scan's path.
    """
    base = [s.base_name for s in scans]
    names = list(base)
    clash = _duplicates(names)
    for i in clash:
        group = [os.path.abspath(scans[j].path.parent) for j in clash if base[j].casefold() == base[i].casefold()]
        below = Path(os.path.abspath(scans[i].path.parent)).relative_to(os.path.commonpath(group))
        names[i] = "_".join((*below.parts, base[i]))
    for width in (8, 64):  # sha256 hex digits: 8 are enough unless two digests share them
        for i in _duplicates(names):
            key = f"{os.path.abspath(scans[i].path)}\0{scans[i].series_id or ''}"
            names[i] = f"{names[i]}-{hashlib.sha256(key.encode()).hexdigest()[:width]}"
    return names


def fingerprint(scan: Scan) -> str:
    """A digest of the scan's file name(s), sizes and modification times (never its path).

    For a DICOM folder it covers every file directly in the folder and the series id. A result
    carries it, so a rerun trusts only outputs made from this very input.
    """
    path = scan.path
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    listing = [(p.name, st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    doc = json.dumps({"files": listing, "series": scan.series_id})
    return "sha256:" + hashlib.sha256(doc.encode()).hexdigest()


def fingerprint_if_readable(scan: Scan) -> str:
    """The scan's fingerprint, or '' when it cannot be listed (then it fails when read)."""
    try:
        return fingerprint(scan)
    except OSError:
        return ""


def _read_json(path: Path) -> Any:
    """Parsed JSON of `path`, or None when it is absent or unreadable (then it is not trusted)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finished_result(
    out_dir: Path, name: str, input_fingerprint: str, png: bool, dicom: bool = False
) -> dict[str, Any] | None:
    """The result of an earlier run when its whole set (with the files `png` and `dicom` ask for) is
    there and was made from the input with `input_fingerprint`."""
    paths = result_paths(out_dir, name, png, dicom)
    if not all(p.is_file() for p in paths):
        return None
    doc = _read_json(paths[0])
    if not isinstance(doc, dict) or doc.get("input", {}).get("fingerprint") != input_fingerprint:
        return None
    return doc


def earlier_outcomes(out_dir: Path) -> dict[str, dict[str, Any]]:
    """Entries of the summary.json an earlier run left in `out_dir`, by scan name (empty if none)."""
    doc = _read_json(Path(out_dir) / SUMMARY_FILE)
    scans = doc.get("scans") if isinstance(doc, dict) else None
    return {s["name"]: s for s in scans if isinstance(s, dict) and "name" in s} if isinstance(scans, list) else {}


def _prefetched(scans: list[Scan]) -> Iterator[tuple[Scan, Future[Volume]]]:
    """Each scan with its loading future; the next scan is read while the caller works on this one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vertedge-read") as pool:
        pending = [pool.submit(s.load) for s in scans[:1]]
        try:
            for i, scan in enumerate(scans):
                future = pending.pop(0)
                if i + 1 < len(scans):
                    pending.append(pool.submit(scans[i + 1].load))
                yield scan, future
        finally:
            for f in pending:  # stopped early (Ctrl-C): do not read a scan nobody will label
                f.cancel()


def provenance(scan: Scan, input_fingerprint: str, full_paths: bool = False) -> dict[str, Any]:
    """What a result records of its input: file name (absolute path with `full_paths`), fingerprint, series id."""
    doc = {"source": str(Path(os.path.abspath(scan.path))) if full_paths else scan.path.name}
    doc["fingerprint"] = input_fingerprint
    if scan.series_id is not None:
        doc["series_instance_uid"] = scan.series_id
    return doc


def label_one(
    labeler: Labeler,
    scan: Scan,
    volume: Volume,
    out_dir: Path,
    name: str,
    provenance: dict[str, Any],
    png: bool,
    dicom: bool = False,
) -> tuple[Result, list[Path]]:
    """Label one loaded scan and write its result set (with NAME.png for `png`, the DICOM outputs for `dicom`)."""
    log.debug(
        "%s: %s voxels of %s mm, %s",
        scan,
        "x".join(map(str, volume.shape_ijk)),
        "x".join(f"{s:g}" for s in volume.spacing),
        "".join(volume.axcodes()),
    )
    result = labeler(volume)
    result = replace(result, input={**result.input, **provenance})
    try:
        written = write_result(result, volume, out_dir, name, png=png, dicom=dicom)
    except OSError as e:
        raise VertedgeError(f"{out_dir}: cannot write the outputs of {name} ({e.strerror or e})") from e
    log.debug("%s: %s ms; wrote %s", name, {k: round(v) for k, v in result.timings_ms.items()}, ", ".join(p.name for p in written))
    return result, written


def result_note(result: Result) -> str:
    """One line on what a user must know of a result: no spine, or labels to check; else ''."""
    if not result.vertebrae:
        return "no spine found: no vertebra detected"
    doubtful = [v.name for v in result.vertebrae if v.needs_review]
    if not doubtful:
        return ""
    which = f"all {len(doubtful)} labels" if len(doubtful) == len(result.vertebrae) else ", ".join(doubtful)
    return (f"check {which} (needs_review: no count from C1 under the skull or from the sacrum reaches "
            "them, the identification is unsure, the runs from different view starts disagree, or the "
            "nets missed the vertebra and it was read from the CT)")


def run_batch(
    labeler: Labeler,
    scans: list[Scan],
    out_dir: Path,
    *,
    png: bool = False,
    dicom: bool = False,
    skip_existing: bool = False,
    full_paths: bool = False,
) -> Iterator[tuple[Outcome, Result | None]]:
    """Label every scan into `out_dir`, yielding each outcome (with its result) as it is done.

    Failures are yielded, not raised. With `skip_existing`, a scan whose whole result set (with
    NAME.png when `png`, the DICOM outputs when `dicom`) is there and was made from the same input (its fingerprint) is skipped:
    its outcome carries the earlier run's figures. The result's `input` records the input's file
    name (its absolute path with `full_paths`), its fingerprint and its DICOM series id.
    """
    names = unique_names(scans)
    prints = {n: fingerprint_if_readable(s) for s, n in zip(scans, names)}
    earlier = earlier_outcomes(out_dir) if skip_existing else {}
    todo = []
    for scan, name in zip(scans, names):
        done = finished_result(out_dir, name, prints[name], png, dicom) if skip_existing and prints[name] else None
        if done is None:
            todo.append((scan, name))
            continue
        before = earlier.get(name, {})
        yield (
            Outcome(
                str(scan),
                name,
                "skipped",
                n_vertebrae=len(done.get("vertebrae", [])),
                seconds=before.get("seconds"),
                message=before.get("message", ""),
                outputs=[str(p) for p in result_paths(out_dir, name, png, dicom)],
            ),
            None,
        )
    todo_names = dict(todo)
    for scan, future in _prefetched([s for s, _ in todo]):
        name = todo_names[scan]
        t0 = time.perf_counter()
        try:
            result, written = label_one(
                labeler, scan, future.result(), out_dir, name, provenance(scan, prints[name], full_paths), png, dicom
            )
        except VertedgeError as e:
            yield Outcome(str(scan), name, "failed", seconds=time.perf_counter() - t0, message=str(e)), None
            continue
        n = len(result.vertebrae)
        outcome = Outcome(
            str(scan),
            name,
            "ok",
            n_vertebrae=n,
            seconds=time.perf_counter() - t0,
            message=result_note(result),
            outputs=[str(p) for p in written],
        )
        yield outcome, result


def write_summary(out_dir: Path, outcomes: list[Outcome]) -> Path:
    """Write summary.json: one entry per scan and the counts per status.

    Merged with the summary an earlier run left: this run's entries replace those of the same
    scans, the others are kept (after this run's).
    """
    entries = {o.name: asdict(o) for o in outcomes}
    kept = [e for name, e in earlier_outcomes(out_dir).items() if name not in entries]
    scans = [*entries.values(), *kept]
    counts = {s: sum(e.get("status") == s for e in scans) for s in ("ok", "failed", "skipped")}
    path = Path(out_dir) / SUMMARY_FILE
    try:
        write_json(path, {"counts": counts, "scans": scans})
    except OSError as e:
        raise VertedgeError(f"{path}: cannot write the summary ({e.strerror or e})") from e
    return path


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that cannot be created or written in, before any work; creates nothing."""
    target = Path(os.path.abspath(out_dir))
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise VertedgeError(f"-o {out_dir}: cannot create the output folder: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VertedgeError(f"-o {out_dir}: cannot create the output folder: no permission to write in {existing}")


def check_dicom_scans(scans: list[Scan]) -> None:
    """Refuse `--dicom` before any work when a scan is not a DICOM series folder: its DICOM outputs
    would have no source series to belong to."""
    other = [s for s in scans if not s.path.is_dir()]
    if other:
        more = f" (and {len(other) - 1} more)" if len(other) > 1 else ""
        raise VertedgeError(
            f"--dicom: {other[0].path}{more} is not a DICOM series folder; DICOM outputs are written only "
            "for scans read from DICOM (run those without --dicom)"
        )
