"""Reading a scan from disk: vertedge's fast readers against SimpleITK, nibabel and pydicom alone.

Usage:
    python benchmarks/decode.py [--shape 512x512x600] [--repeats 3] [--markdown decode.md]

A `spine_phantom` of that shape (int16) is written as .nii.gz (SimpleITK, zlib level 6), .nii,
an uncompressed DICOM series and an RLE Lossless one (pydicom's encoder). "SimpleITK path
(before)" is load_volume with the fast readers switched off, as it read every file until now. Every reader of one
format runs once per round, the rounds `--repeats` times (peers share the machine's load
alike); the table gives the median and each reader's ratio to SimpleITK. The 1-minute load
average is recorded before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import gzip
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import SimpleITK as sitk
from latency import machine, parse_shape, spine_phantom


def write_dicom(volume, folder: Path, rle: bool) -> Path:
    """`volume` as a CT DICOM series, one file per k slice (pydicom's RLE Lossless if `rle`)."""
    import pydicom
    from pydicom.uid import RLELossless

    from vertedge.volume import to_sitk

    image = to_sitk(volume)
    cosines = "\\".join(f"{v:.9f}" for v in volume.direction[:, :2].T.ravel())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir()
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.1.2"), ("0020|0037", cosines),
                           ("0020|0032", "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0020|0013", str(k)), ("0008|0060", "CT")):
            s.SetMetaData(tag, value)
        path = folder / f"slice{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(s)
        if rle:
            ds = pydicom.dcmread(path)
            ds.compress(RLELossless)
            ds.save_as(path)
    return folder


def size_mib(path: Path) -> float:
    """A file's or a folder's size in MiB."""
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 2**20, 1)


def sitk_series(folder: Path) -> np.ndarray:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def pydicom_alone(folder: Path, threads: int) -> np.ndarray:
    """pydicom alone (dcmread, pixel_array) on `threads` threads, files sorted by name (the writer's slice order)."""
    import pydicom

    with ThreadPoolExecutor(threads) as pool:
        return np.stack(list(pool.map(lambda f: pydicom.dcmread(f).pixel_array, sorted(folder.iterdir()))))


def readers_for(kind: str, path: Path) -> dict[str, Callable[[], object]]:
    """The readers compared on one file or folder: vertedge's (fast and, as it was, SimpleITK's) and the peers."""
    from vertedge import readers
    from vertedge.volume import load_volume

    def vertedge_without_fast_path() -> object:
        with mock.patch.object(readers, "nifti_voxels", lambda *a: None), \
                mock.patch.object(readers, "dicom_slices", lambda *a: None):
            return load_volume(path)

    out: dict[str, Callable[[], object]] = {
        "vertedge load_volume": lambda: load_volume(path),
        "vertedge, SimpleITK path (before)": vertedge_without_fast_path,
    }
    if kind in ("nii.gz", "nii"):
        import nibabel as nib

        out["SimpleITK"] = lambda: sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        out["nibabel"] = lambda: np.asanyarray(nib.load(str(path)).dataobj)
    if kind == "nii.gz":
        from isal import igzip

        out["inflate only: stdlib gzip"] = lambda: gzip.open(path).read()
        out["inflate only: isal"] = lambda: igzip.open(path).read()
        try:
            import rapidgzip

            out["inflate only: rapidgzip (2 threads)"] = lambda: rapidgzip.open(str(path), parallelization=2).read()
        except ImportError:
            pass
    if kind.startswith("DICOM"):
        out["SimpleITK"] = lambda: sitk_series(path)
        out["pydicom alone, 1 thread"] = lambda: pydicom_alone(path, 1)
        out["pydicom alone, 2 threads"] = lambda: pydicom_alone(path, 2)
    return out


def measure(readers: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (s) of each reader; one warm-up round (page cache, imports), then round-robin rounds."""
    for read in readers.values():
        read()
    times: dict[str, list[float]] = {name: [] for name in readers}
    for _ in range(repeats):
        for name, read in readers.items():
            t0 = time.perf_counter()
            read()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="512x512x600")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--markdown", type=Path, default=None)
    args = ap.parse_args()
    from vertedge.volume import save_volume

    shape = parse_shape(args.shape)
    volume = spine_phantom(shape).volume
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # each file in its own folder: nifticlib reads x.nii's voxels when asked for x.nii.gz beside it
        paths = {"nii.gz": Path(tmp) / "gz" / "scan.nii.gz", "nii": Path(tmp) / "nii" / "scan.nii"}
        for p in paths.values():
            p.parent.mkdir()
            save_volume(volume, p)
        paths["DICOM"] = write_dicom(volume, Path(tmp) / "dicom", rle=False)
        paths["DICOM RLE"] = write_dicom(volume, Path(tmp) / "rle", rle=True)
        for kind, path in paths.items():
            medians = measure(readers_for(kind, path), args.repeats)
            for name, sec in medians.items():
                rows.append((kind, size_mib(path), name, sec, sec / medians["SimpleITK"]))
            print(f"{kind}: done", flush=True)
    load_after = os.getloadavg()[0]
    m = machine()
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores; {time.strftime('%Y-%m-%d')}; {args.shape} int16 phantom; "
        f"median of {args.repeats} rounds; 1-min load average {load_before:.2f} before, {load_after:.2f} after",
        "",
        "| format | on disk MiB | reader | median s | / SimpleITK |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {k} | {mib:.0f} | {name} | {sec:.2f} | {ratio:.2f} |" for k, mib, name, sec, ratio in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
