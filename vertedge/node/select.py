"""Which received series are worth labelling, as MONAI Deploy's series selector decides it: by rules on
the headers of a complete series.

A series is labelled when it is an axial CT volume as acquired (ImageType ORIGINAL\\PRIMARY, CT
Image Storage, enough slices, slices within `max_tilt_deg` of axial); never a localizer (scout,
topogram), a dose report, a Secondary Capture or Structured Report, nor vertedge's own outputs
sent back to it. Of the series of one study that pass, the `series_per_study` with the thinnest
slices are labelled (then the most slices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.uid import CTImageStorage

from ..dicom_out import MANUFACTURER
from .config import SelectOptions

# SOP class UID prefixes of what is never a CT volume, named for the log
_NEVER = (
    ("1.2.840.10008.5.1.4.1.1.7", "a Secondary Capture"),
    ("1.2.840.10008.5.1.4.1.1.88.", "a Structured Report (a dose report, or a report like vertedge's)"),
    ("1.2.840.10008.5.1.4.1.1.104.", "an encapsulated document"),
)


@dataclass(frozen=True)
class SeriesInfo:
    """What the rules look at: a series' instance count and the header of one of its instances."""

    series_uid: str
    study_uid: str
    n_instances: int
    modality: str = ""
    sop_class_uid: str = ""
    image_type: tuple[str, ...] = ()
    description: str = ""
    manufacturer: str = ""
    orientation: tuple[float, ...] = ()  # ImageOrientationPatient: row then column direction cosines
    slice_thickness_mm: float | None = None

    @classmethod
    def from_header(cls, header: pydicom.Dataset, n_instances: int) -> SeriesInfo:
        """The summary of a series from one instance's header (pixels not needed)."""
        def number(keyword: str) -> float | None:
            try:
                value = float(header.get(keyword))
            except (TypeError, ValueError):
                return None
            return value if np.isfinite(value) and value > 0 else None

        try:
            orientation = tuple(float(c) for c in header.get("ImageOrientationPatient") or ())
        except (TypeError, ValueError):
            orientation = ()
        image_type = header.get("ImageType") or ()
        return cls(
            series_uid=str(header.get("SeriesInstanceUID", "")),
            study_uid=str(header.get("StudyInstanceUID", "")),
            n_instances=n_instances,
            modality=str(header.get("Modality", "")),
            sop_class_uid=str(header.get("SOPClassUID", "")),
            image_type=tuple(str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)),
            description=str(header.get("SeriesDescription", "")),
            manufacturer=str(header.get("Manufacturer", "")),
            orientation=orientation,
            slice_thickness_mm=number("SliceThickness"),
        )

    def tilt_deg(self) -> float | None:
        """Angle between the slice normal and the patient's S-I axis; None without a valid orientation."""
        if len(self.orientation) != 6:
            return None
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        size = np.linalg.norm(normal)
        if not 0.5 < size < 1.5:  # not unit cosines: no orientation to trust
            return None
        return float(np.degrees(np.arccos(min(1.0, abs(normal[2]) / size))))


def why_not(info: SeriesInfo, options: SelectOptions) -> str:
    """Why the rules refuse this series ('' when it may be labelled)."""
    if info.manufacturer.strip() == MANUFACTURER:
        return "vertedge's own output sent back"
    for prefix, what in _NEVER:
        if info.sop_class_uid.startswith(prefix):
            return what
    if "LOCALIZER" in info.image_type:
        return "a localizer (scout, topogram)"
    words = [w for w in options.exclude_descriptions if w.casefold() in info.description.casefold()]
    if words:
        return f"its description {info.description!r} says {words[0]!r}"
    if info.modality not in options.modalities:
        return f"modality {info.modality or 'missing'}, not {' or '.join(options.modalities)}"
    if info.sop_class_uid != CTImageStorage:
        return f"SOP class {info.sop_class_uid or 'missing'}, not CT Image Storage"
    missing = [t for t in options.image_type if t.upper() not in info.image_type]
    if missing:
        image_type = "\\".join(info.image_type) or "missing"
        return f"image type {image_type} lacks {', '.join(missing)}"
    if info.n_instances < options.min_slices:
        return f"{info.n_instances} slices, fewer than {options.min_slices}"
    tilt = info.tilt_deg()
    if tilt is None:
        return "no valid ImageOrientationPatient"
    if tilt > options.max_tilt_deg:
        return f"not axial: slices {tilt:.0f} degrees from axial (at most {options.max_tilt_deg:g})"
    return ""


def _preference(info: SeriesInfo) -> tuple[float, int, str]:
    """Sort key: thinnest slices first (unknown thickness last), then the most slices, then the UID (a fixed order)."""
    thickness = info.slice_thickness_mm if info.slice_thickness_mm is not None else float("inf")
    return thickness, -info.n_instances, info.series_uid


def choose(study: Sequence[SeriesInfo], options: SelectOptions, already_labelled: int = 0) -> list[tuple[SeriesInfo, str]]:
    """Each complete series of one study with why it is not labelled ('' for those to label).

    `already_labelled`: series of this study labelled earlier (they count towards `series_per_study`).
    """
    reasons = {s.series_uid: why_not(s, options) for s in study}
    eligible = sorted((s for s in study if not reasons[s.series_uid]), key=_preference)
    room = len(eligible) if options.series_per_study == 0 else max(0, options.series_per_study - already_labelled)
    for s in eligible[room:]:
        reasons[s.series_uid] = (
            f"series_per_study {options.series_per_study}: "
            + (f"{already_labelled} series of this study labelled earlier" if room == 0 else "a series of this study with thinner or more slices chosen")
        )
    return [(s, reasons[s.series_uid]) for s in study]
