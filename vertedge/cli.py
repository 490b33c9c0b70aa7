"""The `vertedge` command line: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import VertedgeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Vertebra localization and identification in CT from multi-view DRRs.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
EXAMPLE_SEED = 4  # a held-out seed: training uses seeds from 1000 up
EXAMPLE_REGION = "thoracolumbar"


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Output image (.nii.gz, .nrrd, .mha).")],
    seed: Annotated[int, typer.Option(help="Random seed; the phantom is a function of it.")] = 0,
    region: Annotated[
        Optional[str],
        typer.Option(help="full, cervical, thoracic, lumbar, cervicothoracic or thoracolumbar."),
    ] = None,
) -> None:
    """Write a synthetic spine CT with its true vertebral-body centroids beside it."""
    from .phantom import REGIONS, make_phantom, save_phantom

    if region is not None and region not in REGIONS:
        raise VertedgeError(f"--region {region}: choose one of {', '.join(REGIONS)}")
    with err.status(f"building phantom seed {seed}"):
        ph = make_phantom(seed, region)
        written = save_phantom(ph, out)
    shape = "x".join(map(str, ph.volume.shape_ijk))
    err.print(f"phantom seed {seed}: {shape} voxels, {len(ph.centroids)} vertebrae")
    for p in written:
        print(p)


@app.command()
def drr(
    scan: Annotated[Path, typer.Argument(help="CT file or DICOM series folder.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")],
    views: Annotated[int, typer.Option("--views", "-k", min=1, max=360, help="Number of views K.")] = 10,
) -> None:
    """Render K cone-beam DRRs of a scan: view_XX.png, view_XX.npy (line integrals), views.json."""
    from .drr import normalize, render
    from .geometry import Protocol, make_views
    from .outputs import write_drr_views
    from .volume import load_volume

    volume = load_volume(scan)
    protocol = Protocol().with_views(views)
    geometry = make_views(volume, protocol)
    with err.status(f"rendering {views} views of {geometry.shape[0]}x{geometry.shape[1]} pixels"):
        line_integrals = render(volume, geometry, protocol)
    written = write_drr_views(out_dir, line_integrals, normalize(line_integrals, protocol), geometry, protocol)
    err.print(f"{len(written)} files in {out_dir}")


class _Log:
    """Messages on stderr at the chosen level: -q warnings and errors only, -v details."""

    def __init__(self, verbose: int = 0, quiet: bool = False) -> None:
        self.level = -1 if quiet else verbose

    def info(self, message: str) -> None:
        if self.level >= 0:
            err.print(message)

    def debug(self, message: str) -> None:
        if self.level >= 1:
            err.print(message)

    def warn(self, message: str) -> None:
        err.print(f"warning: {message}")

    def error(self, message: str) -> None:
        err.print(f"error: {message}")


class _Progress:
    """A progress bar on a terminal, one plain line per scan otherwise."""

    def __init__(self, total: int, log: _Log) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.total, self.done, self.log = total, 0, log
        self.bar = None
        if err.is_terminal and log.level >= 0 and total > 1:
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err)
            self.task = self.bar.add_task("scans", total=total)

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, outcome) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        elif self.total > 1:
            took = f", {outcome.seconds:.1f} s" if outcome.seconds is not None else ""
            found = f", {outcome.n_vertebrae} vertebrae" if outcome.n_vertebrae is not None else ""
            self.log.info(f"[{self.done}/{self.total}] {outcome.name}: {outcome.status}{found}{took}")


def _print_summary(outcomes) -> None:
    """A table of the batch: scan, vertebrae found, time, status."""
    from rich.table import Table

    table = Table("scan", "vertebrae", "time s", "status", box=None)
    for o in outcomes:
        vertebrae = "-" if o.n_vertebrae is None else str(o.n_vertebrae)
        took = "-" if o.seconds is None else f"{o.seconds:.1f}"
        status = o.status if o.status != "failed" else f"failed: {o.message}"
        table.add_row(o.name, vertebrae, took, status)
    Console(width=200).print(table)


def _print_vertebrae(result) -> None:
    """A table of the labelled vertebrae on stdout."""
    from rich.table import Table

    table = Table("label", "name", "x (L)", "y (P)", "z (S)", "confidence", "views", box=None)
    for v in result.vertebrae:
        table.add_row(str(v.label), v.name, *(f"{c:.1f}" for c in v.world_lps_mm), f"{v.confidence:.2f}", str(v.n_views))
    Console().print(table)


@app.command()
def run(
    scans: Annotated[list[Path], typer.Argument(help="CT files, DICOM series folders, or folders of them.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("."),
    views: Annotated[Optional[int], typer.Option("--views", "-k", min=2, max=360, help="Views K (default: the models').")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    models: Annotated[Optional[Path], typer.Option(help="Folder with localization.onnx and identification.onnx.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="On CUDA, run the fp16 models (about 1 ms faster, slightly less accurate).")] = False,
    png: Annotated[bool, typer.Option("--png", help="Also write NAME.png: AP and lateral DRR with labels.")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip scans whose NAME.vertebrae.json exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each result object as one JSON line on stdout.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
) -> None:
    """Find and label every vertebra; write NAME.vertebrae.json, NAME_ctd.json, NAME.mrk.json per scan.

    One scan that fails exits 2 with one line. Several scans (or a folder) run as a batch: a
    failed scan is reported and skipped, summary.json lists all, and the exit code is 1 if any failed.
    """
    from .batch import expand_inputs, run_batch, write_summary
    from .pipeline import Labeler

    log = _Log(verbose=verbose, quiet=quiet)
    labeler = Labeler(models, device=device, n_views=views, fp16=fp16)
    if device == "auto" and labeler.device == "cpu":
        log.info(labeler.device_note)
    inputs = expand_inputs(list(scans))
    single = len(scans) == 1 and len(inputs) == 1 and inputs[0] == scans[0]
    if not inputs:
        raise VertedgeError(f"{', '.join(map(str, scans))}: no scans found")

    def report(outcome, result) -> None:
        if as_json and result is not None:
            print(json.dumps(result.to_dict(), sort_keys=True), flush=True)
        elif result is not None and single:
            _print_vertebrae(result)
        if outcome.status == "failed" and single:
            raise VertedgeError(outcome.message)
        if outcome.message and outcome.status != "failed":
            log.warn(f"{outcome.scan}: {outcome.message}")
        elif outcome.status == "failed":
            log.error(outcome.message)
        progress.advance(outcome)

    with _Progress(len(inputs), log) as progress:
        outcomes = run_batch(labeler, inputs, out_dir, png=png, skip_existing=skip_existing, on_result=report)
    if not single:
        summary = write_summary(out_dir, outcomes)
        if not as_json:
            _print_summary(outcomes)
        log.info(f"summary in {summary}")
        if any(o.status == "failed" for o in outcomes):
            raise typer.Exit(1)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("vertedge-demo"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Run the shipped models on the built-in example scan and score them against its truth."""
    from .metrics import format_table, score
    from .outputs import write_result
    from .phantom import make_phantom, save_phantom
    from .pipeline import Labeler

    labeler = Labeler(device=device)
    with err.status(f"building the example scan (phantom seed {EXAMPLE_SEED})"):
        example = make_phantom(EXAMPLE_SEED, EXAMPLE_REGION)
        save_phantom(example, out_dir / "example.nii.gz")
    with err.status("labelling the example scan"):
        result = labeler(example.volume, keep_images=True)
    write_result(result, example.volume, out_dir, "example", png=True)
    _print_vertebrae(result)
    cut = {k for k, c in example.cut.items() if c}
    print(format_table(score(result.centroids(), example.centroids, exclude=cut)))
    err.print(f"outputs in {out_dir}")


@app.command("eval")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Prediction file or folder (*.vertebrae.json or VerSe *_ctd.json).")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth file or folder (*_gt.json, ground_truth.json or VerSe *_ctd.json).")],
    image: Annotated[Optional[Path], typer.Option(help="The scan, needed to read VerSe *_ctd.json files.")] = None,
) -> None:
    """Id-Rate and L-Error (VerSe definitions), per region and overall, for one pair or two folders."""
    from .metrics import evaluate_paths, format_table

    scores, pairs = evaluate_paths(pred, gt, image)
    err.print(f"{pairs} scan(s) scored")
    print(format_table(scores))


@app.command()
def info() -> None:
    """What this installation can use: ONNX Runtime providers, GPU, CUDA, shipped models."""
    from .device import cuda_status, cuda_versions, onnx_providers
    from .models import Models

    providers = onnx_providers()
    print(f"onnxruntime providers: {', '.join(providers) if providers else 'onnxruntime not installed'}")
    ok, what = cuda_status()
    versions = cuda_versions()
    print(f"CUDA: {what if ok else 'not usable: ' + what}" + (f" (CUDA {versions})" if versions else ""))
    try:
        m = Models(device="cpu")
        print(f"models: {m.ids['localization']}, {m.ids['identification']}")
        print(f"protocol: {m.protocol.to_json()}")
    except VertedgeError as e:
        print(f"models: {e}")


def main() -> None:
    """Console entry point: a VertedgeError becomes one line on stderr and exit code 2."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    try:
        app()
    except VertedgeError as e:
        if debug:
            raise
        print(f"vertedge: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("vertedge: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
