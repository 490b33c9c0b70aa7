"""The node's disk: received instances, the queue (STORAGE/node.sqlite) and the outputs (STORAGE/outputs/).

An instance is written to STORAGE/tmp/, flushed to the disk (fsync), renamed into
STORAGE/incoming/SERIES/SOP.dcm and that folder flushed too, then recorded in the queue, whose
commits reach the disk before they return (SQLite's synchronous=FULL): only then is the C-STORE
acknowledged. So whatever the sender was told is stored survives a crash or a power cut, and the
queue says what became of every series: a restarted node goes on where it stopped.

File and folder names come from UIDs only when they follow the DICOM UID grammar (digits and
dots, at most 64 characters), which can name nothing outside their folder; any other value is
replaced by a digest of it.

While a node runs, STORAGE/node.lock is locked: a second node on the same storage is refused.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import UID

from ..atomic import lock_exclusively
from ..errors import VertedgeError

QUEUE_FILE = "node.sqlite"
LOCK_FILE = "node.lock"

# receiving: instances arrive; queued: complete and chosen; labelling; sending: outputs written,
# C-STOREs pending; done; rejected: the selector said no; failed: labelling failed, or a send gave up
SERIES_STATES = ("receiving", "queued", "labelling", "sending", "done", "rejected", "failed")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    name TEXT NOT NULL,              -- the series' folder below incoming/ and its outputs' NAME
    status TEXT NOT NULL CHECK (status IN ({", ".join(f"'{s}'" for s in SERIES_STATES)})),
    reason TEXT NOT NULL DEFAULT '', -- why rejected or failed
    first_at REAL NOT NULL,          -- epoch seconds: first and last instance received
    last_at REAL NOT NULL,
    n_vertebrae INTEGER,
    label_seconds REAL,              -- reading and labelling
    labelled_at REAL,
    done_at REAL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    calling_ae TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_of_series ON instances (series_uid);
CREATE TABLE IF NOT EXISTS sends (
    series_uid TEXT NOT NULL,
    destination TEXT NOT NULL,       -- its name (Destination.label)
    file TEXT NOT NULL,              -- absolute path of the output to send
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,           -- epoch seconds: not tried again before
    created_at REAL NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (series_uid, destination, file)
);
"""


def safe_key(uid: str) -> str:
    """`uid` as a file name: itself when it is a valid DICOM UID, else 'x' and a digest of it
    (a UID like '../../x' or one with a slash names no folder)."""
    if UID(uid).is_valid:  # PS3.5 9.1: digits without leading zeros, dot-separated, <= 64 characters
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_queue(path: Path) -> sqlite3.Connection:
    """The queue's database, its tables created if new; usable from any thread (`NodeStore` serializes)."""
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # transactions are explicit
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a commit is on the disk when it returns
        db.executescript(SCHEMA)
    except sqlite3.DatabaseError as e:
        raise VertedgeError(f"{path}: cannot use this queue ({e})") from e
    return db


@dataclass(frozen=True)
class Series:
    """One row of the queue's series table."""

    series_uid: str
    study_uid: str
    name: str
    status: str
    reason: str
    first_at: float
    last_at: float
    n_vertebrae: int | None
    label_seconds: float | None
    labelled_at: float | None
    done_at: float | None


@dataclass(frozen=True)
class Send:
    """One output to send to one destination."""

    series_uid: str
    destination: str
    file: str
    status: str
    attempts: int
    next_at: float
    created_at: float
    error: str


class NodeStore:
    """The node's storage folder and its queue; safe to use from the association threads and the workers."""

    def __init__(self, storage: Path) -> None:
        self.root = Path(storage)
        self.incoming, self.tmp, self.outputs = self.root / "incoming", self.root / "tmp", self.root / "outputs"
        try:
            for folder in (self.incoming, self.tmp, self.outputs):
                folder.mkdir(parents=True, exist_ok=True)
            self._lock_file = lock_exclusively(self.root / LOCK_FILE, f"{self.root}: another vertedge serve uses this storage folder")
        except OSError as e:
            raise VertedgeError(f"{self.root}: cannot use this storage folder ({e.strerror or e})") from e
        for stale in self.tmp.iterdir():  # instances a crash left half written: never acknowledged
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        try:
            self.db = _open_queue(self.root / QUEUE_FILE)
        except VertedgeError:
            self._lock_file.close()
            raise

    def close(self) -> None:
        """Close the queue and release the storage folder."""
        self.db.close()
        self._lock_file.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one transaction, under the lock (one writer at a time)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # --- receiving --------------------------------------------------------------------------------

    def series_folder(self, name: str) -> Path:
        """The folder of a series' instances, by the series' name (its `safe_key`)."""
        return self.incoming / name

    def store_instance(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes, calling_ae: str) -> Path:
        """Put one instance (a DICOM Part 10 file's bytes) on the disk and in the queue; its path.

        Returns once both are on the disk. An instance received again replaces the first; an
        instance of a series that was finished opens it again (it is labelled anew with all its instances).
        """
        name = safe_key(series_uid)
        folder = self.series_folder(name)
        path = folder / f"{safe_key(sop_uid)}.dcm"
        if path.resolve().parent != folder.resolve() or folder.resolve().parent != self.incoming.resolve():
            raise VertedgeError(f"{path}: outside {self.incoming}")  # safe_key makes this impossible; never trust one check alone
        tmp = self.tmp / f"{threading.get_ident()}-{path.name}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        folder.mkdir(exist_ok=True)
        os.replace(tmp, path)
        _fsync_dir(folder)
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO instances (sop_uid, series_uid, calling_ae, received_at) VALUES (?, ?, ?, ?)",
                (sop_uid, series_uid, calling_ae, now),
            )
            db.execute(
                "INSERT INTO series (series_uid, study_uid, name, status, first_at, last_at) VALUES (?, ?, ?, 'receiving', ?, ?)"
                " ON CONFLICT (series_uid) DO UPDATE SET last_at = excluded.last_at,"
                # a series being labelled is left to its worker (labelled anew when it comes back
                # to this); any other goes on receiving: complete when its study is quiet again
                " status = CASE WHEN status = 'labelling' THEN status ELSE 'receiving' END,"
                " reason = CASE WHEN status = 'labelling' THEN reason ELSE '' END",
                (series_uid, study_uid, name, now, now),
            )
        return path

    # --- the queue --------------------------------------------------------------------------------

    def series(self, series_uid: str) -> Series | None:
        """One series' row."""
        with self._lock:
            row = self.db.execute(f"SELECT {', '.join(Series.__dataclass_fields__)} FROM series WHERE series_uid = ?", (series_uid,)).fetchone()
        return Series(*row) if row else None

    def all_series(self, status: str | None = None) -> list[Series]:
        """Every series' row (with `status` only), the longest waiting first."""
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(Series.__dataclass_fields__)} FROM series {where} ORDER BY last_at", args).fetchall()
        return [Series(*r) for r in rows]

    def n_instances(self, series_uid: str) -> int:
        """How many distinct instances of the series were received."""
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM instances WHERE series_uid = ?", (series_uid,)).fetchone()[0])

    def complete_studies(self, quiet_s: float, now: float) -> list[str]:
        """Studies with a series receiving, none of whose series received anything for `quiet_s` seconds."""
        with self._lock:
            rows = self.db.execute(
                "SELECT study_uid FROM series WHERE status = 'receiving' GROUP BY study_uid"
                " HAVING MAX(last_at) <= ? ORDER BY MAX(last_at)",
                (now - quiet_s,),
            ).fetchall()
        return [r[0] for r in rows]

    def study_series(self, study_uid: str) -> list[Series]:
        """Every series of a study."""
        with self._lock:
            rows = self.db.execute(
                f"SELECT {', '.join(Series.__dataclass_fields__)} FROM series WHERE study_uid = ? ORDER BY series_uid", (study_uid,)
            ).fetchall()
        return [Series(*r) for r in rows]

    def update(self, series_uid: str, **values: object) -> None:
        """Set some columns of one series' row."""
        unknown = set(values) - set(Series.__dataclass_fields__)
        if unknown:
            raise ValueError(f"no such series columns: {sorted(unknown)}")
        with self._transaction() as db:
            db.execute(f"UPDATE series SET {', '.join(f'{k} = ?' for k in values)} WHERE series_uid = ?", (*values.values(), series_uid))

    def next_to_label(self) -> Series | None:
        """The series to label next: one a killed node was labelling, else the longest queued."""
        with self._lock:
            row = self.db.execute(
                f"SELECT {', '.join(Series.__dataclass_fields__)} FROM series WHERE status IN ('labelling', 'queued')"
                " ORDER BY status = 'queued', last_at LIMIT 1"
            ).fetchone()
        return Series(*row) if row else None

    # --- sending ----------------------------------------------------------------------------------

    def labelled(self, series_uid: str, files: Sequence[Path], destinations: Sequence[str], **values: object) -> None:
        """Record a series labelled, with a send of each file to each destination (done at once without destinations)."""
        now = time.time()
        status = "sending" if destinations else "done"
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO sends (series_uid, destination, file, status, next_at, created_at) VALUES (?, ?, ?, 'pending', ?, ?)",
                [(series_uid, d, str(f), now, now) for d in destinations for f in files],
            )
            sets = {"status": status, "reason": "", "labelled_at": now, **values, **({"done_at": now} if status == "done" else {})}
            db.execute(f"UPDATE series SET {', '.join(f'{k} = ?' for k in sets)} WHERE series_uid = ?", (*sets.values(), series_uid))

    def due_sends(self, now: float) -> list[Send]:
        """Pending sends whose time has come, by destination then age."""
        with self._lock:
            rows = self.db.execute(
                f"SELECT {', '.join(Send.__dataclass_fields__)} FROM sends WHERE status = 'pending' AND next_at <= ? ORDER BY destination, created_at",
                (now,),
            ).fetchall()
        return [Send(*r) for r in rows]

    def next_send_at(self) -> float | None:
        """When the earliest pending send is due (None when nothing is pending)."""
        with self._lock:
            value = self.db.execute("SELECT MIN(next_at) FROM sends WHERE status = 'pending'").fetchone()[0]
        return None if value is None else float(value)

    def send_done(self, send: Send, status: str, error: str = "", next_at: float | None = None) -> None:
        """Record an attempt at `send`: 'sent', 'failed' (given up), or 'pending' again at `next_at`."""
        with self._transaction() as db:
            db.execute(
                "UPDATE sends SET status = ?, attempts = attempts + 1, error = ?, next_at = ? WHERE series_uid = ? AND destination = ? AND file = ?",
                (status, error, send.next_at if next_at is None else next_at, send.series_uid, send.destination, send.file),
            )

    def sends(self, series_uid: str) -> list[Send]:
        """Every send of a series."""
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(Send.__dataclass_fields__)} FROM sends WHERE series_uid = ?", (series_uid,)).fetchall()
        return [Send(*r) for r in rows]
