"""A whole archive on a Ray cluster: CPU tasks read the scans, actors that each hold one Labeler label them.

The driver (this process) keeps the manifest, OUT/archive.sqlite, one row per scan. The actors
write each scan's result set into OUT with `outputs.write_result`, which is atomic (a killed
worker leaves no half set), so OUT and the scans must lie on storage that every node sees.

A scan is finished when its whole result set is in OUT, made from the same input (its
fingerprint), and the manifest says ok; a rerun labels every other scan and no finished one. A
result set made from the same input that the manifest does not call ok yet (a worker killed
between writing it and reporting it, or `vertedge run` into the same folder) is recorded ok, not
labelled again. A scan that failed `retries + 1` times stays failed on later runs until its input
changes (or with `retry_failed`).

Each labeller holds at most two scans: the one it labels and the next, read meanwhile by a task
on its node; so the cluster holds at most 2 x actors decoded volumes whatever the archive's size,
and a labeller never waits for a read unless reading is slower than labelling.

Ray is imported only inside the functions that use it: `import vertedge` stays lean.
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import socket
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .atomic import lock_exclusively
from .batch import (
    Outcome,
    Scan,
    expand_inputs,
    fingerprint_if_readable,
    finished_result,
    label_one,
    provenance,
    result_note,
    unique_names,
)
from .errors import VertedgeError
from .outputs import result_paths
from .pipeline import Labeler
from .volume import Volume

if TYPE_CHECKING:
    from ray.actor import ActorHandle
    from ray.exceptions import RayError

MANIFEST_FILE = "archive.sqlite"
LOCK_FILE = "archive.lock"
LIST_SUFFIXES = (".txt", ".csv")
SCANS_PER_LABELLER = 2  # the one being labelled and the next, read meanwhile
INSTALL_HINT = 'vertedge archive needs Ray: pip install "vertedge[cluster]"'

log = logging.getLogger(__name__)


# --- inputs ---------------------------------------------------------------------------------------


def listed_paths(path: Path) -> list[Path]:
    """The scans a list file names: one path per line of a .txt, the first column of a .csv.

    Blank lines and lines starting with '#' are skipped, and so is a .csv's header: a first row
    whose first cell is 'path' (any case). A relative path is taken from the list's folder.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise VertedgeError(f"{path}: cannot read this list of scans ({e})") from e
    if path.suffix.lower() == ".csv":
        cells = [row[0].strip() if row else "" for row in csv.reader(text.splitlines())]
        if cells and cells[0].casefold() == "path":
            cells = cells[1:]
    else:
        cells = [line.strip() for line in text.splitlines()]
    return [path.parent / c for c in cells if c and not c.startswith("#")]


def archive_scans(paths: list[Path]) -> list[Scan]:
    """The scans of files, DICOM folders, folders searched (as `vertedge run` takes them) and list files."""
    named = [p for path in paths for p in (listed_paths(path) if _is_list(path) else [path])]
    return expand_inputs(named)


def _is_list(path: Path) -> bool:
    """Whether `path` is a list of scans (a .txt or .csv file) rather than a scan."""
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


# --- the manifest ---------------------------------------------------------------------------------

COLUMNS = """
    name TEXT PRIMARY KEY,        -- the scan's output name: NAME.vertebrae.json, ...
    path TEXT NOT NULL,           -- absolute path of the file or DICOM folder
    series_id TEXT,               -- the DICOM SeriesInstanceUID when the folder holds several
    fingerprint TEXT NOT NULL,    -- vertedge.batch.fingerprint of the input ('' if unreadable)
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'ok', 'failed')),
    attempts INTEGER NOT NULL,    -- attempts that ended (ok, failed, worker died) since registered
    seconds REAL,                 -- read + label + write of the last ok attempt
    n_vertebrae INTEGER,
    message TEXT NOT NULL,        -- why the last attempt failed; when ok, the result's note
    worker TEXT NOT NULL,         -- the labeller of the last attempt (labeller-N@host)
    registered_at TEXT NOT NULL,  -- UTC, ISO 8601
    started_at TEXT,
    finished_at TEXT
"""


def _now() -> str:
    """The time as UTC ISO 8601, to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    """One scan's row of the manifest."""

    name: str
    path: str
    series_id: str | None
    fingerprint: str
    status: str
    attempts: int
    seconds: float | None
    n_vertebrae: int | None
    message: str
    worker: str
    registered_at: str
    started_at: str | None
    finished_at: str | None


class Manifest:
    """OUT/archive.sqlite, written by the driver alone: each change committed at once, or all of a `batch`.

    While it is open, OUT/archive.lock is locked: a second archive job on the same folder is
    refused, since both would label the same scans.
    """

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / MANIFEST_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = lock_exclusively(self.path.with_name(LOCK_FILE), f"{out_dir}: another vertedge archive is writing to this folder")
        self._batched = False
        try:
            self.db = sqlite3.connect(self.path)
            with self.db:
                self.db.execute(f"CREATE TABLE IF NOT EXISTS scans ({COLUMNS})")
        except sqlite3.DatabaseError as e:
            self.close()
            raise VertedgeError(f"{self.path}: cannot use this manifest ({e})") from e

    def close(self) -> None:
        """Close the database and release the folder."""
        if hasattr(self, "db"):
            self.db.close()
        self._lock.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the changes made inside once, at the end: one disk sync for a whole archive's rows."""
        self._batched = True
        try:
            yield
        finally:
            self._batched = False
            self.db.commit()

    def _commit(self) -> None:
        if not self._batched:
            self.db.commit()

    def entries(self) -> dict[str, Entry]:
        """Every row, by scan name."""
        cursor = self.db.execute(f"SELECT {', '.join(Entry.__dataclass_fields__)} FROM scans")
        return {row[0]: Entry(*row) for row in cursor}

    def register(self, name: str, scan: Scan, input_fingerprint: str) -> None:
        """A new pending row for `name`, replacing one about another input."""
        self.db.execute(
            "INSERT OR REPLACE INTO scans (name, path, series_id, fingerprint, status, attempts, message, worker,"
            " registered_at) VALUES (?, ?, ?, ?, 'pending', 0, '', '', ?)",
            (name, os.path.abspath(scan.path), scan.series_id, input_fingerprint, _now()),
        )
        self._commit()

    def update(self, name: str, **values: Any) -> None:
        """Set some columns of one row."""
        unknown = set(values) - set(Entry.__dataclass_fields__)
        if unknown:
            raise ValueError(f"no such manifest columns: {sorted(unknown)}")
        self.db.execute(f"UPDATE scans SET {', '.join(f'{k} = ?' for k in values)} WHERE name = ?", (*values.values(), name))
        self._commit()


# --- what to do -----------------------------------------------------------------------------------


@dataclass
class Job:
    """A scan to label."""

    scan: Scan
    name: str
    fingerprint: str
    attempts: int  # attempts that ended since its row was registered, over every run


def plan(
    manifest: Manifest, scans: list[Scan], out_dir: Path, png: bool, retry_failed: bool = False
) -> tuple[list[Job], list[Outcome]]:
    """The scans to label, and the outcomes of those an earlier run finished (ok: "skipped"; or failed).

    Each scan gets a manifest row. A row starts afresh (pending, no attempts) when it is about
    another input (path, series or fingerprint changed), when its ok result set is gone, and for a
    failed scan with `retry_failed`; a failed scan is otherwise not labelled again.
    """
    entries = manifest.entries()
    with manifest.batch():  # one commit: an archive's first run registers every scan
        planned = [_plan_one(manifest, scan, name, entries.get(name), out_dir, png, retry_failed)
                   for scan, name in zip(scans, unique_names(scans))]
    return [p for p in planned if isinstance(p, Job)], [p for p in planned if isinstance(p, Outcome)]


def _plan_one(
    manifest: Manifest, scan: Scan, name: str, entry: Entry | None, out_dir: Path, png: bool, retry_failed: bool
) -> Job | Outcome:
    """What to do with one scan (`plan`): a job, or the outcome of an earlier run."""
    fp = fingerprint_if_readable(scan)
    done = finished_result(out_dir, name, fp, png) if fp else None
    if (
        entry is None
        or (entry.path, entry.series_id, entry.fingerprint) != (os.path.abspath(scan.path), scan.series_id, fp)
        or (entry.status == "ok" and done is None)
        or (entry.status == "failed" and retry_failed)
    ):
        manifest.register(name, scan, fp)
        entry = None
    if done is not None:
        n = len(done.get("vertebrae", []))
        outputs = [str(p) for p in result_paths(out_dir, name, png)]
        if entry is not None and entry.status == "ok":
            return Outcome(str(scan), name, "skipped", n, entry.seconds, entry.message, outputs)
        # written, not recorded: a worker killed right after writing, or `vertedge run` into OUT
        manifest.update(name, status="ok", n_vertebrae=n, finished_at=_now())
        return Outcome(str(scan), name, "skipped", n, outputs=outputs)
    if entry is not None and entry.status == "failed":
        return Outcome(str(scan), name, "failed", message=entry.message)
    if entry is not None and entry.status == "running":  # its driver was killed: not an attempt
        manifest.update(name, status="pending")
    return Job(scan, name, fp, 0 if entry is None else entry.attempts)


# --- on the cluster -------------------------------------------------------------------------------


def read_scan(scan: Scan) -> tuple[Volume, float]:
    """The scan's volume and the seconds reading it took (run as a Ray task, on one CPU)."""
    t0 = time.perf_counter()
    volume = scan.load()
    return volume, time.perf_counter() - t0


def _writable(volume: Volume, voxels: bool) -> Volume:
    """`volume` with writable arrays (the voxels copied only with `voxels`).

    Ray's object store hands out read-only arrays, and the CPU DRR's Numba kernels, compiled and
    cached for writable ones, would compile a second set for them. The voxels (0.1-0.5 s to copy
    300 MiB) go to those kernels on the CPU only: CUDA uploads them as they are.
    """
    hu = np.array(volume.hu) if voxels else volume.hu
    return replace(volume, hu=hu, spacing=volume.spacing.copy(), origin=volume.origin.copy(), direction=volume.direction.copy())


class Labeller:
    """One labelling actor's state: a Labeler, built once, then scan after scan."""

    def __init__(self, make_labeler: Callable[[], Labeler], worker: str) -> None:
        self.worker = f"{worker}@{socket.gethostname()}"
        self.error = ""
        try:
            self.labeler: Labeler | None = make_labeler()
        except VertedgeError as e:  # raised by every call: one line, not a dead actor's traceback
            self.labeler, self.error = None, str(e)

    def where(self) -> tuple[str, str]:
        """This labeller's id and the id of the Ray node it runs on, where its scans are best read."""
        import ray

        if self.error:
            raise VertedgeError(self.error)
        return self.worker, ray.get_runtime_context().get_node_id()

    def label(
        self, loaded: tuple[Volume, float], scan: Scan, out_dir: Path, name: str, source: dict[str, Any], png: bool
    ) -> tuple[Outcome, str]:
        """Label one read scan and write its result set; its outcome and this labeller's id."""
        if self.labeler is None:
            raise VertedgeError(self.error)
        volume, read_seconds = loaded
        t0 = time.perf_counter()
        volume = _writable(volume, voxels=self.labeler.device == "cpu")
        result, written = label_one(self.labeler, scan, volume, out_dir, name, source, png)
        seconds = read_seconds + time.perf_counter() - t0
        outcome = Outcome(str(scan), name, "ok", len(result.vertebrae), seconds, result_note(result), [str(p) for p in written])
        return outcome, self.worker


@contextmanager
def connect(address: str, num_cpus: int | None = None, worker_logs: bool = False) -> Iterator[None]:
    """Connect to the Ray cluster at `address`, or start one on this machine for 'local' (`num_cpus` CPUs,
    default all); disconnect (and stop a local cluster) at the end.

    A process already connected to Ray (a notebook, the tests) keeps its connection. `worker_logs`
    shows the workers' own output on stderr.
    """
    try:
        import ray
    except ImportError:
        raise VertedgeError(INSTALL_HINT) from None
    if num_cpus is not None and address != "local":
        raise VertedgeError("--cpus applies to --ray local only (a cluster has the CPUs it was started with)")
    if ray.is_initialized():
        yield
        return
    # a hospital's archive is nobody else's business: no usage statistics from a cluster we start
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    where = {"num_cpus": num_cpus or os.cpu_count(), "include_dashboard": False} if address == "local" else {"address": address}
    try:
        ray.init(**where, logging_level=logging.WARNING, log_to_driver=worker_logs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise VertedgeError(f"--ray {address}: cannot connect to the Ray cluster ({str(e).splitlines()[0]})") from e
    try:
        yield
    finally:
        ray.shutdown()


def plan_actors(device: str, actors: int | None) -> tuple[int, bool]:
    """How many labellers, and whether each takes a GPU: one per GPU of the cluster (unless --device cpu),
    else one per two CPUs; each also takes one CPU, and at least one CPU must stay to read scans."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    gpu = gpus > 0 and device != "cpu"
    if device.startswith("cuda") and not gpus:
        raise VertedgeError(f"--device {device}: the Ray cluster has no GPU")
    if device.startswith("cuda:"):  # Ray shows each labeller its own GPU only, as cuda:0
        raise VertedgeError(f"--device {device}: Ray gives each labeller a GPU of its own; use --device cuda or auto")
    n = actors or (gpus if gpu else max(1, cpus // 2))
    if gpu and n > gpus:
        raise VertedgeError(f"--actors {n}: the Ray cluster has {gpus} GPUs, one per labeller")
    if n >= cpus:
        raise VertedgeError(
            f"--actors {n}: the Ray cluster has {cpus} CPUs; each labeller takes one and at least one must stay to read scans"
        )
    return n, gpu


@dataclass(frozen=True)
class Finished:
    """A scan this run finished: its outcome, the labeller of its last attempt and the attempts it took."""

    outcome: Outcome
    worker: str
    attempts: int


@dataclass
class _Slot:
    """A labeller and the scans it holds, in the order it takes them."""

    actor: ActorHandle
    worker: str  # labeller-N, then labeller-N@host once it has said where it runs
    where: Any  # the ObjectRef of its `Labeller.where` until known
    node: str | None = None
    jobs: deque[tuple[Job, Any]] = field(default_factory=deque)  # (job, ObjectRef of its label call)


def _reason(error: RayError) -> str:
    """One line on why a task failed: the scan's own error, else the exception or Ray's first line."""
    cause = getattr(error, "cause", None)  # RayTaskError: what the task raised
    if isinstance(cause, VertedgeError):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return str(error).strip().splitlines()[0]


def label_archive(
    todo: list[Job],
    manifest: Manifest,
    out_dir: Path,
    make_labeler: Callable[[], Labeler],
    *,
    actors: int,
    gpu: bool,
    retries: int = 2,
    png: bool = False,
) -> Iterator[Finished]:
    """Label the scans of `todo` on the connected Ray cluster, yielding each one as it is finished.

    `actors` labellers (on a GPU each with `gpu`) each build `make_labeler()` once. A scan whose
    read or labelling fails, or whose labeller dies, is tried again up to `retries` times, then
    recorded failed; a dead labeller is replaced. Every step is recorded in `manifest`.
    """
    return _Job(todo, manifest, Path(os.path.abspath(out_dir)), make_labeler, actors, gpu, retries, png).run()


class _Job:
    """The driver's side of `label_archive`: a queue of scans, labellers with at most two each."""

    def __init__(
        self, todo: list[Job], manifest: Manifest, out_dir: Path, make_labeler: Callable[[], Labeler],
        actors: int, gpu: bool, retries: int, png: bool,
    ) -> None:
        import ray

        self.queue = deque(todo)
        self.manifest, self.out_dir, self.make_labeler = manifest, out_dir, make_labeler
        self.actors, self.retries, self.png = actors, retries, png
        self.read = ray.remote(num_cpus=1, max_retries=0)(read_scan)  # attempts are counted here, not by Ray
        # Ray's stubs type a remote class as a union with the class itself: its handle is used dynamically
        self.labeller: Any = ray.remote(num_cpus=1, num_gpus=int(gpu), max_restarts=0)(Labeller)
        self.numbers = itertools.count()

    def run(self) -> Iterator[Finished]:
        """Keep every labeller supplied until the queue is empty and every scan finished."""
        import ray
        from ray.exceptions import RayActorError, RayError

        slots = [self._start() for _ in range(self.actors)]
        try:
            try:
                ray.get([s.where for s in slots])
            except RayError as e:  # the labellers cannot start (no models, say): nothing can be done
                raise VertedgeError(_reason(e)) from None
            while True:
                for slot in slots:
                    while self.queue and len(slot.jobs) < SCANS_PER_LABELLER:
                        self._dispatch(slot, self.queue.popleft())
                calls = [call for slot in slots for _, call in slot.jobs]
                if not calls:
                    return
                ray.wait(calls, num_returns=1)
                ready = set(ray.wait(calls, num_returns=len(calls), timeout=0)[0])
                for i, slot in enumerate(slots):
                    # a labeller takes its scans in order: the first ends first, or all at once when it dies
                    while slot.jobs and slot.jobs[0][1] in ready:
                        job, call = slot.jobs[0]
                        try:
                            outcome, worker = ray.get(call)
                        except RayActorError as e:
                            yield from self._died(slot, e)
                            slots[i] = self._start()
                            log.warning(f"labeller {slot.worker} died; {slots[i].worker} replaces it")
                            break
                        except RayError as e:
                            slot.jobs.popleft()
                            yield from self._failed(job, slot.worker, _reason(e))
                        else:
                            slot.jobs.popleft()
                            yield self._ok(job, outcome, worker)
        finally:
            for slot in slots:
                ray.kill(slot.actor)

    def _start(self) -> _Slot:
        """A new labeller."""
        worker = f"labeller-{next(self.numbers)}"
        actor = self.labeller.remote(self.make_labeler, worker)
        return _Slot(actor, worker, actor.where.remote())

    def _dispatch(self, slot: _Slot, job: Job) -> None:
        """Have `job` read on the labeller's node (once known) and then labelled by it."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if slot.node is None and ray.wait([slot.where], timeout=0)[0]:
            slot.worker, slot.node = ray.get(slot.where)
        near = NodeAffinitySchedulingStrategy(slot.node, soft=True) if slot.node else "DEFAULT"
        scan = replace(job.scan, path=Path(os.path.abspath(job.scan.path)))  # workers need not share our folder
        loaded = self.read.options(scheduling_strategy=near).remote(scan)
        source = provenance(job.scan, job.fingerprint)
        slot.jobs.append((job, slot.actor.label.remote(loaded, scan, self.out_dir, job.name, source, self.png)))
        self.manifest.update(job.name, status="running", worker=slot.worker, started_at=_now())

    def _ok(self, job: Job, outcome: Outcome, worker: str) -> Finished:
        """Record a labelled scan."""
        job.attempts += 1
        self.manifest.update(
            job.name, status="ok", attempts=job.attempts, seconds=outcome.seconds, n_vertebrae=outcome.n_vertebrae,
            message=outcome.message, worker=worker, finished_at=_now(),
        )
        return Finished(replace(outcome, scan=str(job.scan)), worker, job.attempts)

    def _failed(self, job: Job, worker: str, message: str) -> Iterator[Finished]:
        """Record a failed attempt: the scan goes again, or is finished as failed after its retries."""
        job.attempts += 1
        final = job.attempts > self.retries
        self.manifest.update(
            job.name, status="failed" if final else "pending", attempts=job.attempts, message=message,
            worker=worker, finished_at=_now(),
        )
        if final:
            yield Finished(Outcome(str(job.scan), job.name, "failed", message=message), worker, job.attempts)
        else:
            log.warning(f"{job.name}: attempt {job.attempts} of {self.retries + 1} failed, trying again: {message}")
            self.queue.append(job)

    def _died(self, slot: _Slot, error: RayError) -> Iterator[Finished]:
        """Sort out a dead labeller's scans, in the order it took them.

        Those whose whole result set is in OUT were labelled (the reply can die with the worker);
        the first other one was being labelled: a failed attempt; the rest only waited and go back
        to the front of the queue.
        """
        jobs = [job for job, _ in slot.jobs]
        slot.jobs.clear()
        charged, waited = False, []
        for job in jobs:
            done = finished_result(self.out_dir, job.name, job.fingerprint, self.png)
            if done is not None:
                paths = [str(p) for p in result_paths(self.out_dir, job.name, self.png)]
                n = len(done.get("vertebrae", []))
                yield self._ok(job, Outcome(str(job.scan), job.name, "ok", n, outputs=paths), slot.worker)
            elif not charged:
                charged = True
                yield from self._failed(job, slot.worker, f"labeller {slot.worker} died: {_reason(error)}")
            else:
                waited.append(job)
        for job in waited:
            self.manifest.update(job.name, status="pending")
        self.queue.extendleft(reversed(waited))


def run_report(finished: list[Finished], wall_seconds: float) -> dict[str, Any]:
    """This run's figures: counts, scans per minute, seconds per ok scan (median, p90, max), the
    failures with their reasons, and each labeller's share."""
    ok = [f for f in finished if f.outcome.status == "ok"]
    timed = np.array([f.outcome.seconds for f in ok if f.outcome.seconds is not None], float)
    quantiles = {"median": 50, "p90": 90, "max": 100}
    by_worker: dict[str, list[Finished]] = {}
    for f in ok:
        by_worker.setdefault(f.worker, []).append(f)
    minutes = max(wall_seconds, 1e-9) / 60
    return {
        "ok": len(ok),
        "failed": len(finished) - len(ok),
        "wall_seconds": wall_seconds,
        "scans_per_minute": len(ok) / minutes,
        "seconds": {k: float(np.percentile(timed, q)) for k, q in quantiles.items()} if timed.size else {},
        "failures": [(f.outcome.name, f.outcome.message) for f in finished if f.outcome.status == "failed"],
        "workers": {w: {"scans": len(fs), "scans_per_minute": len(fs) / minutes} for w, fs in sorted(by_worker.items())},
    }
