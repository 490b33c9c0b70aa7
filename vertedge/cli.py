"""The `vertedge` command line: parses, calls the library, prints. Nothing else lives here."""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import __version__
from .errors import VertedgeError
from .options import DEFAULT_OPTIONS

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain click help: typer's rich panels print a type such as <bool> after every flag
    rich_markup_mode=None,
    help="Vertebra localization and identification in CT from multi-view DRRs.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
log = logging.getLogger("vertedge")
EXAMPLE_SEED = 4  # a held-out seed: training uses seeds from 1000 up
EXAMPLE_REGION = "thoracolumbar"
DEVICE_HELP = "auto, cpu, cuda or cuda:N (GPU N)."
MODELS_HELP = "Folder with localization.onnx and identification.onnx."
PNG_HELP = "Also write NAME.png: coronal and sagittal bone MIPs along the spine with the labels."
StartsOption = Annotated[
    int,
    typer.Option(
        "--starts", min=1, max=12,
        help="Runs per scan, their views started evenly over one view step; the result is their consensus "
        "and what they disagree on is flagged (1: a third of the time, labels that hang on where the views start).",
    ),
]


def _print_version(show: bool) -> None:
    """--version: the installed package's version, from its metadata."""
    if show:
        print(f"vertedge {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show Python tracebacks instead of one-line errors (anywhere on the line).")
    ] = False,
) -> None:
    """Vertebra localization and identification in CT from multi-view DRRs."""
    _setup_logging(verbose=0, quiet=False)


@app.command()
def phantom(
    out: Annotated[Path, typer.Argument(help="Output image (.nii.gz, .nrrd, .mha).")],
    seed: Annotated[int, typer.Option(help="Random seed; the phantom is a function of it.")] = 0,
    region: Annotated[
        str | None,
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
    views: Annotated[
        int | None, typer.Option("--views", "-k", min=1, max=360, help="Number of views K (default: the protocol's).")
    ] = None,
    protocol_name: Annotated[
        str,
        typer.Option(
            "--protocol",
            metavar="models|paper",
            help="models: what the models see (the protocol in their metadata); paper: Wu et al.'s (2 mm pixels, 1024 px).",
        ),
    ] = "models",
    models: Annotated[Path | None, typer.Option(help="Folder with the models whose protocol to render (default: the shipped ones).")] = None,
) -> None:
    """Render K cone-beam DRRs of a scan: view_XX.png, view_XX.npy (line integrals), views.json."""
    from .batch import check_out_dir
    from .drr import normalize, render
    from .geometry import Protocol, make_views
    from .onnx_models import Models
    from .outputs import write_drr_views
    from .volume import load_volume

    if protocol_name not in ("models", "paper"):
        raise VertedgeError(f"--protocol {protocol_name}: choose models or paper")
    if protocol_name == "paper" and models is not None:
        raise VertedgeError("--models applies to --protocol models only")
    check_out_dir(out_dir)
    base = Models(models, device="cpu").protocol if protocol_name == "models" else Protocol.paper()
    volume = load_volume(scan)
    protocol = base.with_views(views)
    geometry = make_views(volume, protocol)
    with err.status(f"rendering {views} views of {geometry.shape[0]}x{geometry.shape[1]} pixels"):
        line_integrals = render(volume, geometry, protocol)
    written = write_drr_views(out_dir, line_integrals, normalize(line_integrals, protocol), geometry, protocol)
    err.print(f"{len(written)} files in {out_dir}")


class _ConsoleHandler(logging.Handler):
    """Log records as plain lines on the stderr console (above a progress bar while one shows)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        err.print(prefix + self.format(record), markup=False, highlight=False)


def _setup_logging(verbose: int, quiet: bool) -> None:
    """The `vertedge` loggers' level: warnings and errors with -q, details (debug) with -v, else info."""
    logger = logging.getLogger("vertedge")
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    logger.handlers = [_ConsoleHandler()]
    logger.propagate = False


class _Progress:
    """A progress bar on a terminal, one plain line per scan otherwise; with `rates`, each also says
    the scans per minute, the time left and the failures so far."""

    def __init__(self, total: int, rates: bool = False) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.total, self.done, self.failed = total, 0, 0
        self.rates, self.started = rates, time.monotonic()
        self.bar = None
        if err.is_terminal and log.isEnabledFor(logging.INFO) and total > 1:
            last = TextColumn("{task.fields[rates]}") if rates else TimeRemainingColumn()
            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), last, console=err)
            self.task = self.bar.add_task("scans", total=total, rates="")

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _rates(self) -> str:
        """Scans per minute so far, the time left at that pace, and the failures."""
        per_minute = self.done / max((time.monotonic() - self.started) / 60, 1e-9)
        left = (self.total - self.done) / per_minute
        eta = f"{left * 60:.0f} s" if left < 1 else f"{left:.0f} min" if left < 90 else f"{left / 60:.1f} h"
        return f"{per_minute:.1f} scans/min, ETA {eta}, {self.failed} failed"

    def advance(self, outcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        rates = self._rates() if self.rates else ""
        if self.bar is not None:
            self.bar.update(self.task, advance=1, rates=rates)
        elif self.total > 1:
            took = f", {outcome.seconds:.1f} s" if outcome.seconds is not None else ""
            found = f", {outcome.n_vertebrae} vertebrae" if outcome.n_vertebrae is not None else ""
            status = "skipped (done earlier)" if outcome.status == "skipped" else outcome.status
            log.info(f"[{self.done}/{self.total}] {outcome.name}: {status}{found}{took}" + (f" ({rates})" if rates else ""))


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

    table = Table("label", "name", "x (L)", "y (P)", "z (S)", "confidence", "review", "views", box=None)
    for v in result.vertebrae:
        table.add_row(
            str(v.label), v.name, *(f"{c:.1f}" for c in v.world_lps_mm), f"{v.confidence:.2f}",
            "yes" if v.needs_review else "", str(v.n_views),
        )
    Console().print(table)


def _resume_command() -> str:
    """This command line with --skip-existing, to resume an interrupted batch."""
    args = sys.argv[1:]
    return shlex.join(["vertedge", *args, *([] if "--skip-existing" in args else ["--skip-existing"])])


@app.command()
def run(
    scans: Annotated[list[Path], typer.Argument(metavar="SCAN", help="CT files, DICOM series folders, or folders of them.")],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("."),
    views: Annotated[int | None, typer.Option("--views", "-k", min=2, max=360, help="Views K (default: the models').")] = None,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    models: Annotated[Path | None, typer.Option(help=MODELS_HELP)] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="On CUDA, run the fp16 models (about 1 ms faster, slightly less accurate).")] = False,
    starts: StartsOption = DEFAULT_OPTIONS.view_starts,
    png: Annotated[bool, typer.Option("--png", help=PNG_HELP)] = False,
    dicom: Annotated[
        bool,
        typer.Option(
            "--dicom",
            help="Also write NAME.sr.dcm (a DICOM Structured Report of the vertebrae) and NAME.sc.dcm (the "
            "NAME.png picture as a Secondary Capture) in the source's study (DICOM series inputs only).",
        ),
    ] = False,
    skip_existing: Annotated[
        bool,
        typer.Option(
            "--skip-existing",
            help="Skip scans whose whole result set is there and was made from the same input "
            "(with --png and --dicom: and their files).",
        ),
    ] = False,
    full_paths: Annotated[
        bool, typer.Option("--full-paths", help="Store the input's absolute path in the results (default: its file name).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print each result object as one JSON line on stdout.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
) -> None:
    """Find and label every vertebra; write NAME.vertebrae.json, NAME_ctd.json, NAME.mrk.json per scan.

    One scan that fails exits 2 with one line. Several scans (or a folder) run as a batch: a
    failed scan is reported and skipped, summary.json lists all, and the exit code is 1 if any failed.
    Ctrl-C stops a batch with its summary written (exit 130); --skip-existing resumes it.
    """
    from .batch import check_dicom_scans, check_out_dir, expand_inputs, run_batch, write_summary
    from .pipeline import Labeler

    _setup_logging(verbose, quiet)
    check_out_dir(out_dir)
    options = replace(DEFAULT_OPTIONS, view_starts=starts)
    labeler = Labeler(models, device=device, n_views=views, fp16=fp16, options=options)  # logs the device it chose
    if fp16 and labeler.device == "cpu":
        log.warning("--fp16 is ignored on the CPU (it selects the fp16 models on CUDA)")
    log.debug(f"models {labeler.models.ids['localization']}, {labeler.models.ids['identification']}; protocol {labeler.protocol.to_json()}")
    inputs = expand_inputs(list(scans))
    single = len(scans) == 1 and len(inputs) == 1 and inputs[0].path == scans[0] and inputs[0].series_id is None
    if not inputs:
        raise VertedgeError(f"{', '.join(map(str, scans))}: no scans found")
    if dicom:
        check_dicom_scans(inputs)

    finished = []
    try:
        with _Progress(len(inputs)) as progress:
            for outcome, result in run_batch(
                labeler, inputs, out_dir, png=png, dicom=dicom, skip_existing=skip_existing, full_paths=full_paths
            ):
                finished.append(outcome)
                if as_json and result is not None:
                    print(json.dumps(result.to_dict(), sort_keys=True), flush=True)
                elif result is not None and single:
                    _print_vertebrae(result)
                if outcome.status == "failed" and single:
                    raise VertedgeError(outcome.message)
                if outcome.status == "failed":
                    log.error(outcome.message)
                elif outcome.message and outcome.status == "ok":
                    log.warning(f"{outcome.scan}: {outcome.message}")
                progress.advance(outcome)
    except KeyboardInterrupt:
        if single:
            log.warning("interrupted: no output written")
        else:
            summary = write_summary(out_dir, finished)
            log.warning(
                f"interrupted: {len(finished)} of {len(inputs)} scans finished (listed in {summary}); "
                f"resume with: {_resume_command()}"
            )
        raise typer.Exit(130) from None
    except BaseException:
        if not single:  # whatever stops the batch, the scans that finished are listed
            write_summary(out_dir, finished)
        raise
    if not single:
        summary = write_summary(out_dir, finished)
        if not as_json:
            _print_summary(finished)
        log.info(f"summary in {summary}")
        if any(o.status == "failed" for o in finished):
            raise typer.Exit(1)


def _print_archive_report(report: dict, n_scans: int, n_earlier: int, n_failed_earlier: int) -> None:
    """What a run of `vertedge archive` did: counts, pace, time per scan, each labeller's share, failures."""
    from rich.table import Table

    out = Console(width=200)
    pace = f"; {report['scans_per_minute']:.1f} scans/min over {report['wall_seconds'] / 60:.1f} min" if report["ok"] else ""
    out.print(
        f"{n_scans} scans: {report['ok']} labelled, {report['failed']} failed in this run; {n_earlier} finished "
        f"earlier ({n_failed_earlier} of them failed){pace}",
        highlight=False,
    )
    if report["seconds"]:
        spread = report["seconds"]
        out.print(f"seconds per scan: median {spread['median']:.1f}, p90 {spread['p90']:.1f}, max {spread['max']:.1f}", highlight=False)
    workers = Table("labeller", "scans", "scans/min", box=None)
    for worker, share in report["workers"].items():
        workers.add_row(worker, str(share["scans"]), f"{share['scans_per_minute']:.1f}")
    if report["workers"]:
        out.print(workers)
    if report["failures"]:
        failures = Table("failed scan", "why", box=None)
        for name, why in report["failures"]:
            failures.add_row(name, why)
        out.print(failures)


@app.command()
def archive(
    scans: Annotated[
        list[Path],
        typer.Argument(
            metavar="SCAN",
            help="CT files, DICOM series folders, folders of them, or lists of them (.txt: a path per line; .csv: the first column).",
        ),
    ],
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder; OUT/archive.sqlite records every scan.")],
    ray_address: Annotated[
        str,
        typer.Option("--ray", metavar="local|ADDRESS", help="local: start a Ray cluster on this machine; else the address of a running one."),
    ] = "local",
    cpus: Annotated[int | None, typer.Option(min=2, help="With --ray local: the CPUs it may use (default: all).")] = None,
    actors: Annotated[
        int | None, typer.Option(min=1, help="Labellers (default: one per GPU of the cluster, else one per two CPUs).")
    ] = None,
    retries: Annotated[int, typer.Option(min=0, help="Attempts after the first before a scan is recorded failed.")] = 2,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Try again the scans an earlier run recorded failed.")] = False,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    models: Annotated[Path | None, typer.Option(help=MODELS_HELP)] = None,
    starts: StartsOption = DEFAULT_OPTIONS.view_starts,
    png: Annotated[bool, typer.Option("--png", help=PNG_HELP)] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr, the workers' own output too.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
) -> None:
    """Label a whole archive on a Ray cluster: the outputs of `vertedge run` per scan, resumable.

    CPU tasks read the scans, labellers (Ray actors, one GPU each when the cluster has GPUs) label
    them. A scan that fails is tried again --retries times, then recorded failed; the job goes on.
    Rerun the same command after a crash: it labels what is not finished, nothing twice. Exit code
    1 if any scan failed. Needs Ray: pip install "vertedge[cluster]".
    """
    from functools import partial

    from .archive import Manifest, archive_scans, connect, label_archive, plan, plan_actors, run_report
    from .batch import check_out_dir, write_summary
    from .pipeline import Labeler

    _setup_logging(verbose, quiet)
    check_out_dir(out_dir)
    inputs = archive_scans(list(scans))
    if not inputs:
        raise VertedgeError(f"{', '.join(map(str, scans))}: no scans found")
    finished = []
    wall = 0.0  # seconds labelling
    with Manifest(out_dir) as manifest:
        todo, earlier = plan(manifest, inputs, out_dir, png, retry_failed)
        try:
            if todo:
                with connect(ray_address, cpus, worker_logs=verbose > 0):
                    n, gpu = plan_actors(device, actors)
                    log.info(
                        f"{len(inputs)} scans: {len(earlier)} finished earlier, {len(todo)} to label by {n} "
                        f"labeller{'s' * (n > 1)} on {'GPU' if gpu else 'CPU'}"
                    )
                    started = time.perf_counter()
                    with _Progress(len(todo), rates=True) as progress:
                        for done in label_archive(
                            todo, manifest, out_dir, partial(Labeler, models, device=device, options=replace(DEFAULT_OPTIONS, view_starts=starts)),
                            actors=n, gpu=gpu, retries=retries, png=png,
                        ):
                            finished.append(done)
                            if done.outcome.status == "failed":
                                log.error(f"{done.outcome.name}: failed {done.attempts} times: {done.outcome.message}")
                            progress.advance(done.outcome)
                    wall = time.perf_counter() - started
        except KeyboardInterrupt:
            log.warning(f"interrupted: {len(finished)} of {len(todo)} scans finished; the same command resumes")
            raise typer.Exit(130) from None
        finally:  # whatever stops the job, the scans that finished are listed
            summary = write_summary(out_dir, [*earlier, *(f.outcome for f in finished)])
    failed_earlier = sum(o.status == "failed" for o in earlier)
    _print_archive_report(run_report(finished, wall), len(inputs), len(earlier), failed_earlier)
    log.info(f"summary in {summary}, every scan in {manifest.path}")
    if failed_earlier or any(f.outcome.status == "failed" for f in finished):
        raise typer.Exit(1)


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="The node's TOML configuration (see deploy/vertedge-serve.toml).")],
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr (-vv: pynetdicom's too).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")] = False,
) -> None:
    """Run a DICOM node: receive series (C-STORE), label the CT volumes, send the SR and the picture on.

    Every received instance is on the disk before it is acknowledged; the queue in STORAGE/node.sqlite
    lets a restarted node go on where it stopped. SIGTERM or Ctrl-C stops it after the series being
    labelled. Needs pynetdicom: pip install "vertedge[dicom]".
    """
    import signal
    import threading

    from .node.config import load_config
    from .node.server import Node

    _setup_logging(verbose, quiet)
    # pynetdicom logs every association at INFO: the node's own lines say what matters
    # (its warnings and errors, e.g. garbage on the port, on the same console)
    network = logging.getLogger("pynetdicom")
    network.setLevel(logging.DEBUG if verbose > 1 else logging.ERROR if quiet else logging.WARNING)
    network.handlers, network.propagate = [_ConsoleHandler()], False
    options = load_config(config)
    node = Node(options)
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: node.stop.set())
    node.run()


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("vertedge-demo"),
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
) -> None:
    """Run the shipped models on the built-in example scan and score them against its truth."""
    from .batch import check_out_dir, result_note
    from .metrics import format_table, score
    from .outputs import write_result
    from .phantom import make_phantom, save_phantom
    from .pipeline import Labeler

    check_out_dir(out_dir)
    labeler = Labeler(device=device)
    with err.status(f"building the example scan (phantom seed {EXAMPLE_SEED})"):
        example = make_phantom(EXAMPLE_SEED, EXAMPLE_REGION)
        save_phantom(example, out_dir / "example.nii.gz")
    with err.status("labelling the example scan"):
        result = labeler(example.volume)
    write_result(result, example.volume, out_dir, "example", png=True)
    _print_vertebrae(result)
    if note := result_note(result):
        log.warning(f"example: {note}")
    cut = {k for k, c in example.cut.items() if c}
    print(format_table(score(result.centroids(), example.centroids, exclude=cut)))
    err.print(f"outputs in {out_dir}")


@app.command("eval")
def evaluate(
    pred: Annotated[Path, typer.Argument(help="Prediction file or folder (*.vertebrae.json or VerSe *_ctd.json).")],
    gt: Annotated[
        Path,
        typer.Argument(help="Ground-truth file or folder (*_gt.json, CASE/ground_truth.json or VerSe *_ctd.json)."),
    ],
    image: Annotated[Path | None, typer.Option(help="The scan, needed to read VerSe *_ctd.json files.")] = None,
) -> None:
    """Id-Rate, L-Error (VerSe definitions) and extra predictions, per scan, per region and overall.

    Two folders are paired by scan name: a truth CASE (CASE_gt.json, CASE/ground_truth.json) takes
    the prediction named CASE, or CASE_<scan> as `vertedge run` names the scans of CASE/ folders.
    """
    from .metrics import evaluate_paths, format_cases, format_table

    result = evaluate_paths(pred, gt, image)
    if result.truth_without_prediction:
        log.warning(f"no prediction for (not scored): {', '.join(result.truth_without_prediction)}")
    if result.prediction_without_truth:
        log.warning(f"no ground truth for (not scored): {', '.join(result.prediction_without_truth)}")
    log.info(f"{len(result.cases)} scan(s) scored")
    print(format_cases(result.cases))
    print()
    print(format_table(result.pooled))
    print(
        f"extra predictions (labels with no ground-truth vertebra): {result.pooled.n_extra['all']} "
        f"in {sum(bool(s.extra_predictions) for _, s in result.cases)} of {len(result.cases)} scan(s)"
    )


@app.command()
def info() -> None:
    """What this installation can use: ONNX Runtime providers, GPU, CUDA, shipped models."""
    from .device import cuda_status, cuda_versions, onnx_providers
    from .onnx_models import Models

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
    if debug:  # accepted anywhere on the line; the app's own option must come before the command
        sys.argv = [sys.argv[0], "--debug", *(a for a in sys.argv[1:] if a != "--debug")]
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
