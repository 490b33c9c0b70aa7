"""`vertedge-train data ...`: public datasets and a reader's corrections as training cases (VerSe layout).

    vertedge-train data verse19|verse20|ctspine1k|totalsegmentator --to DIR [--from FOLDER] [--url MIRROR]
    vertedge-train data add SCAN MARKUPS --to DIR [--id ID] [--force]

Parses and prints only; the work is in `download`, `layouts` and `corrections`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DATASETS = ("verse19", "verse20", "ctspine1k", "totalsegmentator")

HELP = """Lay out training data in the VerSe layout that `--verse DIR` (and the data code) reads:
DIR/rawdata/sub-<id>/sub-<id>_ct.nii.gz and DIR/derivatives/sub-<id>/sub-<id>_seg-subreg_ctd.json
(vertebral-body centroids, VerSe labels). CTs are hard-linked (symlinked across file systems), not copied.

  verse19, verse20, ctspine1k, totalsegmentator: with --from, index a folder you downloaded;
      without it, download into DIR/downloads/<dataset> (resumable, checked), then index that.
  add SCAN MARKUPS: a CT (NIfTI or DICOM folder) with the Slicer markups (.mrk.json) a reader
      corrected becomes one case; run it again after further corrections of the same scan."""


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the `data` command (and its sub-commands) on a `vertedge-train` sub-parser set."""
    p = subparsers.add_parser("data", help="public datasets and corrected scans as training cases", description=HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    for name in DATASETS:
        d = sub.add_parser(name, help=f"download (or index with --from) {name}")
        d.add_argument("--to", required=True, help="dataset folder to write (VerSe layout)")
        d.add_argument("--from", dest="source", default=None, help="folder holding the dataset as downloaded: index it, download nothing")
        d.add_argument("--url", default=None, help="mirror base URL replacing the servers' (also env VERTEDGE_DATA_MIRROR)")
        d.add_argument("--force", action="store_true", help="replace cases of the same id holding another scan")
    a = sub.add_parser("add", help="a CT and its corrected Slicer markups as one training case")
    a.add_argument("scan", help="CT file (NIfTI, NRRD, MHA, ...) or DICOM series folder")
    a.add_argument("markups", help="3D Slicer markups JSON (.mrk.json) of its vertebrae")
    a.add_argument("--to", required=True, help="dataset folder to write (VerSe layout)")
    a.add_argument("--id", default=None, help="case id (default: the scan's name)")
    a.add_argument("--force", action="store_true", help="replace a case of the same id holding another scan")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_data(args: argparse.Namespace) -> int:
    """Run `vertedge-train data ...`; 0 on success, 1 with a one-line message on stderr on failure."""
    from vertedge.errors import VertedgeError

    try:
        if args.data_command == "add":
            return _add(args)
        return _dataset(args)
    except VertedgeError as e:
        print(f"vertedge-train data: {e}", file=sys.stderr)
        return 1


def _add(args: argparse.Namespace) -> int:
    from vertedge.labels import SPINE_ORDER, name

    from .corrections import add_correction

    case = add_correction(args.scan, args.markups, args.to, case_id=args.id, force=args.force)
    labels = " ".join(name(lab) for lab in sorted(case.centroids, key=SPINE_ORDER.index))
    print(f"{case.case_id}: {len(case.centroids)} vertebrae ({labels}); CT {case.placed}: {case.ct}")
    return 0


def _dataset(args: argparse.Namespace) -> int:
    from vertedge.errors import VertedgeError

    from .download import download
    from .layouts import INDEXERS

    root = Path(args.to)
    if args.source is not None:
        src = Path(args.source)
        if not src.is_dir():
            raise VertedgeError(f"{src}: no such folder")
    else:
        src = download(args.data_command, root, args.url, log=_log)
    root.mkdir(parents=True, exist_ok=True)
    report = INDEXERS[args.data_command](src, root, force=args.force, log=_log)
    print(report.summary(args.data_command, root))
    if not report.cases:
        raise VertedgeError(f"{src}: no {args.data_command} case found there")
    return 0
