"""Downloads of the public spine datasets: resumable (HTTP Range into `<file>.part`), verified, with progress.

Where each comes from and how a download is checked (`SOURCES` and `HF_REPOS`, the one table of
URLs and checksums):

- verse19, verse20: the VerSe maintainers' S3 bucket as linked from github.com/anjany/verse (README,
  "Download"): `dataset-verse19{training,validation,test}.zip` and likewise `verse20` (the
  "complete", restructured release; CC BY-SA 4.0). **No checksum is published**: the size the
  server announces is checked, then every member's CRC-32 stored in the zip (`zipfile.testzip`),
  and the archive's SHA-256 is recorded in `downloads/<dataset>/checksums.json`.
- totalsegmentator: Zenodo record 10047292 (v2.0.1, `Totalsegmentator_dataset_v201.zip`, CC BY
  4.0), checked against the MD5 Zenodo publishes, `fe250e5718e0a3b5df4c4ea9d58a62fe`, and its size,
  23,581,218,285 bytes.
- ctspine1k: the authors publish the masks in a Google Drive folder and point to TCIA for the CTs
  (neither has direct-download URLs); the Hugging Face mirror `alexanderdann/CTSpine1K` (a
  third-party upload; CC BY-NC-SA) holds both as files. Each file is checked against the SHA-256
  the Hub lists for it (its Git LFS object id, from the Hub's tree API).

A download goes to `<file>.part` and is renamed to `<file>` only once verified, so a file without
`.part` is complete. An interrupted transfer resumes where it stopped (a `Range` request; a server
that ignores it starts over). A checksum or size mismatch removes the `.part` file and fails.

`mirror` (the `--url` option, or `VERTEDGE_DATA_MIRROR`) replaces the scheme and host of every URL,
keeping the path: a local copy of the servers, or a test server.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vertedge.atomic import write_json
from vertedge.errors import VertedgeError

CHUNK = 1 << 20  # bytes read per step
TIMEOUT_S = 60.0  # a stalled connection fails after this, and is resumed
RETRIES = 5  # resumed attempts after a broken transfer, per file
MIRROR_ENV = "VERTEDGE_DATA_MIRROR"
HF_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Source:
    """One file to download: its URL, the name it gets, and what is published to check it with."""

    url: str
    filename: str
    size: int | None = None  # bytes, when published
    md5: str | None = None  # hex, when published
    sha256: str | None = None  # hex, when published
    extract: bool = True  # a zip to unpack after download


_VERSE = "https://s3.bonescreen.de/public/VerSe-complete/dataset-{}.zip"
SOURCES: dict[str, tuple[Source, ...]] = {
    "verse19": tuple(Source(_VERSE.format(f"verse19{s}"), f"dataset-verse19{s}.zip") for s in ("training", "validation", "test")),
    "verse20": tuple(Source(_VERSE.format(f"verse20{s}"), f"dataset-verse20{s}.zip") for s in ("training", "validation", "test")),
    "totalsegmentator": (
        Source(
            "https://zenodo.org/records/10047292/files/Totalsegmentator_dataset_v201.zip",
            "Totalsegmentator_dataset_v201.zip",
            size=23_581_218_285,
            md5="fe250e5718e0a3b5df4c4ea9d58a62fe",
        ),
    ),
}
# Hugging Face dataset repositories: every file under these folders is listed by the Hub's tree API
# with its size and SHA-256 (Git LFS), then downloaded from `resolve/main/<path>`.
HF_REPOS: dict[str, tuple[str, tuple[str, ...]]] = {"ctspine1k": ("alexanderdann/CTSpine1K", ("rawdata",))}


def mirror(url: str, base: str | None) -> str:
    """`url` with its scheme and host replaced by those of `base` (None: unchanged)."""
    if not base:
        return url
    b, u = urllib.parse.urlsplit(base), urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + u.path, u.query, u.fragment))


class Progress:
    """Progress of one file on stderr: a line redrawn in place on a terminal, else a line per 10 %."""

    def __init__(self, name: str, total: int | None, done: int = 0, stream: IO[str] | None = None) -> None:
        self.name, self.total, self.done = name, total, done
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start, self.last, self.start_done = time.monotonic(), 0.0, done
        self.decile = -1

    def _line(self) -> str:
        mb = self.done / 1e6
        rate = (self.done - self.start_done) / 1e6 / max(time.monotonic() - self.start, 1e-6)
        if self.total:
            return f"{self.name}: {mb:,.1f}/{self.total / 1e6:,.1f} MB ({100 * self.done / self.total:.0f} %), {rate:.1f} MB/s"
        return f"{self.name}: {mb:,.1f} MB, {rate:.1f} MB/s"

    def update(self, n: int) -> None:
        """Count `n` more bytes."""
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last >= 0.5:
            self.stream.write("\r" + self._line())
            self.stream.flush()
            self.last = now
        elif not self.tty and self.total:
            decile = 10 * self.done // self.total
            if decile > self.decile:
                self.decile = decile
                print(self._line(), file=self.stream, flush=True)

    def close(self, note: str = "") -> None:
        """End the line (with `note`)."""
        line = self._line() + (f" {note}" if note else "")
        print(("\r" if self.tty else "") + line, file=self.stream, flush=True)


def _open(url: str, offset: int) -> Any:
    """A GET of `url` from byte `offset` (a Range request when > 0)."""
    req = urllib.request.Request(url, headers={"User-Agent": "vertedge-train", **({"Range": f"bytes={offset}-"} if offset else {})})
    return urllib.request.urlopen(req, timeout=TIMEOUT_S)


def _transfer(url: str, part: Path, progress_name: str, size: int | None) -> None:
    """Append the rest of `url` to `part` (resuming from its length); raises OSError on a broken transfer."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return
    try:
        resp = _open(url, have)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing after `have`: the part is whole (verified next)
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored Range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = size or (have + int(length) if length is not None else None)
        progress = Progress(progress_name, total, have)
        with open(part, "ab" if have else "wb") as f:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                progress.update(len(chunk))
        progress.close()
        if length is not None and part.stat().st_size != have + int(length):
            raise OSError(f"{progress_name}: the transfer stopped at {part.stat().st_size} bytes")


def file_digests(path: Path) -> tuple[str, str]:
    """(MD5, SHA-256) hex of a file, read once."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _verify(part: Path, src: Source) -> str:
    """Check a finished `.part` against `src` (size, MD5/SHA-256, else the zip's CRCs); returns its SHA-256."""
    if src.size is not None and part.stat().st_size != src.size:
        raise VertedgeError(f"{src.filename}: {part.stat().st_size} bytes, expected {src.size}")
    md5, sha = file_digests(part)
    if src.md5 and md5 != src.md5.lower():
        raise VertedgeError(f"{src.filename}: MD5 {md5} differs from the published {src.md5}")
    if src.sha256 and sha != src.sha256.lower():
        raise VertedgeError(f"{src.filename}: SHA-256 {sha} differs from the published {src.sha256}")
    if not (src.md5 or src.sha256) and src.filename.endswith(".zip"):
        try:
            with zipfile.ZipFile(part) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError) as e:
            raise VertedgeError(f"{src.filename}: not a whole zip archive") from e
        if bad is not None:
            raise VertedgeError(f"{src.filename}: member {bad} fails its CRC check")
    return sha


def fetch(src: Source, folder: Path, base: str | None = None, retries: int = RETRIES) -> Path:
    """Download `src` into `folder/src.filename`, resumably and verified; returns the path.

    A file already there without `.part` was verified before and is kept. A broken transfer is
    resumed up to `retries` times; a file that fails its check is removed (`VertedgeError`).
    """
    dest = folder / src.filename
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = mirror(src.url, base)
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, src.filename, src.size)
            break
        except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts are OSErrors; IncompleteRead is not
            if isinstance(e, urllib.error.HTTPError) and e.code < 500 and e.code != 408:
                raise VertedgeError(f"{url}: HTTP {e.code} {e.reason}") from e
            if attempt == retries:
                raise VertedgeError(f"{src.filename}: download broke off ({e}); run again to resume from {part}") from e
            print(f"{src.filename}: transfer broke off ({e}); resuming", file=sys.stderr, flush=True)
            time.sleep(min(2.0**attempt, 30.0))
    try:
        sha = _verify(part, src)
    except VertedgeError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    _record(folder, src.filename, sha)
    return dest


def _record(folder: Path, name: str, sha256: str) -> None:
    """Note a verified file's SHA-256 in `folder/checksums.json`."""
    path = folder / "checksums.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data[name] = {"sha256": sha256}
    write_json(path, data)


def hf_sources(repo: str, folders: tuple[str, ...], base: str | None = None) -> list[Source]:
    """Every file below `folders` of Hugging Face dataset `repo`, with the size and SHA-256 the Hub lists."""
    out: list[Source] = []
    for top in folders:
        url: str | None = mirror(f"{HF_ENDPOINT}/api/datasets/{repo}/tree/main/{top}?recursive=true", base)
        while url:
            try:
                with _open(url, 0) as resp:
                    entries = json.loads(resp.read())
                    url = _next_link(resp.headers.get("Link", ""))
            except (OSError, ValueError, http.client.HTTPException) as e:
                raise VertedgeError(f"{repo}: cannot list the files on the Hugging Face Hub ({e})") from e
            for entry in entries:
                if entry.get("type") != "file":
                    continue
                lfs = entry.get("lfs") or {}
                out.append(
                    Source(
                        mirror(f"{HF_ENDPOINT}/datasets/{repo}/resolve/main/{urllib.parse.quote(entry['path'])}", base),
                        entry["path"],
                        size=int(entry["size"]),
                        sha256=lfs.get("oid"),
                        extract=False,
                    )
                )
    if not out:
        raise VertedgeError(f"{repo}: the Hugging Face Hub lists no files under {', '.join(folders)}")
    return out


def _next_link(header: str) -> str | None:
    """The `rel="next"` URL of an HTTP Link header (the Hub pages long listings)."""
    for part in header.split(","):
        if 'rel="next"' in part:
            return part.split(";")[0].strip().strip("<>")
    return None


def _extract(archive: Path, log: Callable[[str], None]) -> Path:
    """Unpack a verified zip beside it into `<archive stem>/` once (a `.complete` marker says it was)."""
    out = archive.with_suffix("")
    marker = out / ".complete"
    if marker.exists():
        return out
    log(f"unpacking {archive.name} -> {out}")
    with zipfile.ZipFile(archive) as z:
        z.extractall(out)  # zipfile drops absolute paths and '..' from member names
    marker.write_text("")
    return out


def download(dataset: str, root: Path, base: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Download (and unpack) `dataset` into `root/downloads/<dataset>/`; returns that folder, to index."""
    base = base or os.environ.get(MIRROR_ENV) or None
    folder = root / "downloads" / dataset
    if dataset in HF_REPOS:
        repo, folders = HF_REPOS[dataset]
        sources = hf_sources(repo, folders, base)
    elif dataset in SOURCES:
        sources = list(SOURCES[dataset])
    else:
        raise VertedgeError(f"{dataset}: no download known (known: {', '.join(sorted([*SOURCES, *HF_REPOS]))})")
    total = sum(s.size or 0 for s in sources)
    log(f"{dataset}: {len(sources)} files" + (f", {total / 1e9:,.1f} GB" if total else "") + f" -> {folder}")
    for src in sources:
        path = fetch(src, folder, base)
        if src.extract and path.suffix == ".zip":
            _extract(path, log)
    return folder
