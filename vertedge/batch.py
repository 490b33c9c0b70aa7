"""Many scans, unattended: expand inputs, read the next scan while labelling this one, go on past failures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import VertedgeError
from .outputs import scan_name, write_result
from .pipeline import Labeler, Result
from .volume import Volume, dicom_series_files, load_volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Outcome:
    """What became of one scan of a batch."""

    scan: str
    name: str
    status: str  # "ok", "failed" or "skipped"
    n_vertebrae: int | None = None
    seconds: float | None = None
    message: str = ""
    outputs: list[str] = field(default_factory=list)


def _is_image_file(path: Path) -> bool:
    """Whether a file name has a 3D image extension."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Scans named by `paths`: files as given; a DICOM series folder as itself; other folders searched.

    A path that does not exist is kept, so that it is reported as a failed scan.
    """
    scans: list[Path] = []
    for path in paths:
        if not path.is_dir() or dicom_series_files(path):
            scans.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs.sort()
            here = Path(root)
            scans += [here / f for f in sorted(files) if _is_image_file(here / f)]
            if here != path and dicom_series_files(here):
                scans.append(here)
    return scans


def unique_names(scans: list[Path]) -> list[str]:
    """Output names for the scans; a repeated name gets its parent folders' names in front."""
    names = [scan_name(s) for s in scans]
    for i, n in enumerate(names):
        if names.count(n) > 1:
            parts = scans[i].resolve().parent.parts[-2:]
            names[i] = "_".join((*parts, n))
    return names


def _prefetched(scans: list[Path]) -> Iterator[tuple[Path, Future[Volume]]]:
    """Each scan with its loading future; the next scan is read while the caller works on this one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vertedge-read") as pool:
        pending = [pool.submit(load_volume, s) for s in scans[:1]]
        for i, scan in enumerate(scans):
            future = pending.pop(0)
            if i + 1 < len(scans):
                pending.append(pool.submit(load_volume, scans[i + 1]))
            yield scan, future


def result_path(out_dir: Path, name: str) -> Path:
    """The file whose presence marks a scan as done."""
    return Path(out_dir) / f"{name}.vertebrae.json"


def run_batch(
    labeler: Labeler,
    scans: list[Path],
    out_dir: Path,
    *,
    png: bool = False,
    skip_existing: bool = False,
    on_result: Callable[[Outcome, Result | None], None] = lambda outcome, result: None,
) -> list[Outcome]:
    """Label every scan into `out_dir`; failures are recorded, not raised."""
    names = unique_names(scans)
    todo = [(s, n) for s, n in zip(scans, names) if not (skip_existing and result_path(out_dir, n).exists())]
    outcomes = {
        n: Outcome(str(s), n, "skipped", message="already done")
        for s, n in zip(scans, names)
        if skip_existing and result_path(out_dir, n).exists()
    }
    for outcome in outcomes.values():
        on_result(outcome, None)
    todo_names = dict(todo)
    for scan, future in _prefetched([s for s, _ in todo]):
        name = todo_names[scan]
        t0 = time.perf_counter()
        try:
            volume = future.result()
            result = labeler(volume, keep_images=png)
            written = write_result(result, volume, out_dir, name, png=png)
        except VertedgeError as e:
            outcome, result = Outcome(str(scan), name, "failed", seconds=time.perf_counter() - t0, message=str(e)), None
        else:
            n = len(result.vertebrae)
            outcome = Outcome(
                str(scan),
                name,
                "ok",
                n_vertebrae=n,
                seconds=time.perf_counter() - t0,
                message="" if n else "no spine found: no vertebra detected",
                outputs=[str(p) for p in written],
            )
        outcomes[name] = outcome
        on_result(outcome, result)
    return [outcomes[n] for n in names]


def write_summary(out_dir: Path, outcomes: list[Outcome]) -> Path:
    """Write summary.json: one entry per scan and the counts per status."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "failed", "skipped")}
    path = Path(out_dir) / "summary.json"
    doc: dict[str, Any] = {"counts": counts, "scans": [asdict(o) for o in outcomes]}
    write_json(path, doc)
    return path
