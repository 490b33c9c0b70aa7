"""`vertedge serve`'s settings: one frozen object read from a TOML file, checked before anything starts.

A file names every section it sets; unknown keys are refused (a typo would otherwise silently fall
back to a default), and a wrong value ends the command with one line naming the file and the key.

    [node]
    ae_title = "VERTEDGE"
    port = 11112
    storage = "/var/lib/vertedge"
    calling_ae_titles = ["CT_SCANNER", "ORTHANC"]

    [[destinations]]
    ae_title = "ORTHANC"
    host = "pacs.example.org"
    port = 4242
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import VertedgeError
from ..tables import dataclass_from_table

# PS3.5 6.2: an AE title is at most 16 characters of the default repertoire without backslash or
# control characters; leading and trailing spaces are not significant
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def check_ae_title(title: str, what: str) -> None:
    """Raise ValueError unless `title` is a valid AE title (1-16 printable ASCII characters, no backslash)."""
    if not _AE_TITLE.match(title) or not title.strip():
        raise ValueError(f"{what} {title!r} is not an AE title (1 to 16 printable ASCII characters, no backslash)")


def _check_port(port: int, what: str) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"{what} {port} is not a TCP port (1 to 65535)")


@dataclass(frozen=True)
class Destination:
    """A DICOM node (PACS, viewer) that receives the Structured Report and the Secondary Capture by C-STORE."""

    ae_title: str
    host: str
    port: int
    name: str = ""  # in the logs; the AE title when empty

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "destination ae_title")
        _check_port(self.port, "destination port")
        if not self.host:
            raise ValueError("destination host is empty")

    @property
    def label(self) -> str:
        """The destination's name in logs and in the queue."""
        return self.name or self.ae_title


@dataclass(frozen=True)
class SelectOptions:
    """Which received series are labelled (`vertedge.node.select`)."""

    modalities: tuple[str, ...] = ("CT",)
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")  # values ImageType must hold (its first two, by the standard)
    min_slices: int = 30  # fewer: a localizer, a few reformats, or too short a stretch of spine to count on
    max_tilt_deg: float = 30.0  # slice normal within this angle of the patient's S-I axis: axial (gantry tilt included)
    # SeriesDescription words that mark what is never a diagnostic volume, matched without case
    exclude_descriptions: tuple[str, ...] = ("scout", "topogram", "localizer", "surview", "scanogram", "dose")
    series_per_study: int = 1  # the thinnest slices first; 0: every series that passes

    def __post_init__(self) -> None:
        if self.min_slices < 2:
            raise ValueError(f"select min_slices must be at least 2 (a 3D CT), got {self.min_slices}")
        if not 0 <= self.max_tilt_deg <= 90:
            raise ValueError(f"select max_tilt_deg must be 0 to 90, got {self.max_tilt_deg}")
        if self.series_per_study < 0:
            raise ValueError(f"select series_per_study must be 0 (all) or more, got {self.series_per_study}")


@dataclass(frozen=True)
class RetryOptions:
    """How sending to a destination that is down is retried: delays doubling from `first_delay_s` up to `max_delay_s`."""

    first_delay_s: float = 5.0
    max_delay_s: float = 300.0
    give_up_after_s: float = 7 * 24 * 3600.0  # then the send is recorded failed and logged as an error
    timeout_s: float = 30.0  # connecting, and waiting for each answer, before an attempt counts as failed

    def __post_init__(self) -> None:
        if not 0 < self.first_delay_s <= self.max_delay_s:
            raise ValueError(f"retry delays must satisfy 0 < first_delay_s <= max_delay_s, got {self.first_delay_s} and {self.max_delay_s}")
        if self.give_up_after_s <= 0 or self.timeout_s <= 0:
            raise ValueError("retry give_up_after_s and timeout_s must be positive")

    def delay(self, attempts: int) -> float:
        """Seconds to wait after `attempts` failed attempts (1, 2, ...)."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** min(attempts - 1, 60))


@dataclass(frozen=True)
class NodeOptions:
    """Everything `vertedge serve` is told: where it listens, whom it accepts, where it keeps and sends things."""

    storage: Path  # received instances, the queue (node.sqlite) and the outputs (outputs/) live below it
    calling_ae_titles: tuple[str, ...]  # only these callers may store; an empty list is refused
    ae_title: str = "VERTEDGE"
    port: int = 11112
    host: str = "0.0.0.0"  # the address to listen on
    series_quiet_s: float = 10.0  # a series is complete when no instance of it (or of its study) came for this long
    device: str = "auto"
    models: Path | None = None  # the shipped models when None
    png: bool = True  # also write NAME.png beside the other outputs
    select: SelectOptions = field(default_factory=SelectOptions)
    destinations: tuple[Destination, ...] = ()
    retry: RetryOptions = field(default_factory=RetryOptions)

    def __post_init__(self) -> None:
        check_ae_title(self.ae_title, "ae_title")
        _check_port(self.port, "port")
        if not self.calling_ae_titles:
            raise ValueError("calling_ae_titles is empty: name the AE titles allowed to send series")
        for title in self.calling_ae_titles:
            check_ae_title(title, "calling_ae_titles entry")
        if self.series_quiet_s <= 0:
            raise ValueError(f"series_quiet_s must be positive, got {self.series_quiet_s}")
        labels = [d.label for d in self.destinations]
        if len(set(labels)) < len(labels):
            raise ValueError(f"two destinations share the name {next(n for n in labels if labels.count(n) > 1)!r}; give them distinct names")


def node_options(doc: dict[str, Any]) -> NodeOptions:
    """NodeOptions from a parsed TOML document: [node] holds NodeOptions' own keys, [select], [retry] and
    [[destinations]] the rest. Raises ValueError or TypeError naming the key."""
    unknown = sorted(set(doc) - {"node", "select", "retry", "destinations"})
    if unknown:
        raise ValueError(f"unknown section{'s' * (len(unknown) > 1)} {', '.join(unknown)} (known: node, select, retry, destinations)")
    node = doc.get("node")
    if not isinstance(node, dict):
        raise ValueError("no [node] section")
    nested = {"select", "retry", "destinations"} & set(node)
    if nested:
        raise ValueError(f"[node] must not hold {', '.join(sorted(nested))}: give it its own section")
    table = {**node, **{k: doc[k] for k in ("select", "retry", "destinations") if k in doc}}
    try:
        return dataclass_from_table(NodeOptions, table, "")
    except TypeError as e:  # a required key missing: the dataclass says which
        missing = re.search(r"argument[s]?: (.*)$", str(e))
        raise ValueError(f"missing {missing.group(1).replace(chr(39), '') if missing else e}") from None


def load_config(path: Path) -> NodeOptions:
    """The node's options from TOML file `path`; a VertedgeError with one line for any problem."""
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise VertedgeError(f"{path}: cannot read the configuration ({e.strerror or e})") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VertedgeError(f"{path}: not valid TOML ({e})") from e
    try:
        options = node_options(doc)
    except (ValueError, TypeError) as e:
        raise VertedgeError(f"{path}: {e}") from e
    # relative paths from the file's folder, so that a service's working directory does not matter
    return _relative_to(options, Path(path).resolve().parent)


def _relative_to(options: NodeOptions, base: Path) -> NodeOptions:
    """`options` with relative `storage` and `models` taken from `base` (the configuration file's folder)."""
    models = options.models if options.models is None or options.models.is_absolute() else base / options.models
    return replace(options, storage=base / options.storage, models=models)  # base / an absolute path is that path
