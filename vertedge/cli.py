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
