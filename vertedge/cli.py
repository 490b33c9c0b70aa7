"""The `vertedge` command line: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

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
err = Console(stderr=True, highlight=False)
EXAMPLE_SEED = 7
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


def _print_vertebrae(result) -> None:
    """A table of the labelled vertebrae on stdout."""
    from rich.table import Table

    table = Table("label", "name", "x (L)", "y (P)", "z (S)", "confidence", "views", box=None)
    for v in result.vertebrae:
        table.add_row(str(v.label), v.name, *(f"{c:.1f}" for c in v.world_lps_mm), f"{v.confidence:.2f}", str(v.n_views))
    Console().print(table)


@app.command()
def run(
    scan: Annotated[Path, typer.Argument(help="CT file or DICOM series folder.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("."),
    views: Annotated[Optional[int], typer.Option("--views", "-k", min=2, max=360, help="Views K (default: the models').")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    models: Annotated[Optional[Path], typer.Option(help="Folder with localization.onnx and identification.onnx.")] = None,
    png: Annotated[bool, typer.Option("--png", help="Also write NAME.png: AP and lateral DRR with labels.")] = False,
) -> None:
    """Find and label every vertebra of a scan; write NAME.vertebrae.json, NAME_ctd.json, NAME.mrk.json."""
    from .outputs import scan_name, write_result
    from .pipeline import Labeler
    from .volume import load_volume

    labeler = Labeler(models, device=device, n_views=views)
    if device == "auto":
        err.print(labeler.device_note)
    volume = load_volume(scan)
    with err.status(f"labelling {scan}"):
        result = labeler(volume, keep_images=png)
    written = write_result(result, volume, out_dir, scan_name(scan), png=png)
    _print_vertebrae(result)
    total = sum(result.timings_ms.values())
    err.print(f"{len(result.vertebrae)} vertebrae in {total:.0f} ms ({result.device}); wrote {', '.join(p.name for p in written)}")


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
    from .device import cuda_status, onnx_providers
    from .models import Models

    providers = onnx_providers()
    print(f"onnxruntime providers: {', '.join(providers) if providers else 'onnxruntime not installed'}")
    ok, what = cuda_status()
    print(f"CUDA: {what if ok else 'not usable: ' + what}")
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
