"""DICOM beside the scanner: the labelled vertebrae as a DICOM Structured Report of the source series,
and the overview picture as a Secondary Capture in the same study (`overview_sc`).

The report is a TID 1500 Imaging Measurement Report in a Comprehensive 3D SR. Each vertebra is one
TID 1410 measurement group:

- its body centroid: an SCOORD3D POINT (Image Region) in patient coordinates (LPS, mm) of the
  source series' Frame of Reference, the frame vertedge's world coordinates already are in;
- what it is: the finding type, a SNOMED CT code (`VERTEBRA_CODES`), and the tracking identifier,
  its name ("L1", "T13");
- its confidence: a numeric measurement "Certainty of Finding" (DCM 111012), unitless (UCUM "1");
- whether a reader must check it: a qualitative evaluation (`NEEDS_REVIEW`) answered Yes or No
  (SNOMED CT 373066001 / 373067005);
- the algorithm: vertedge's version and the two model ids (TID 4019 Algorithm Identification).

A scan without vertebrae gets a report saying so (see `vertebra_groups`).

Patient and study attributes come from the source instances, which the report lists as evidence.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from . import __version__
from .errors import VertedgeError
from .labels import NAMES
from .pipeline import Result

# SNOMED CT codes of the vertebrae C1 ... L5 with the code meanings of DICOM PS3.16 CID 7603
# "Vertebra" (the same concepts as pydicom's `codes.SCT.C1Vertebra` ...).
VERTEBRA_CODES: dict[int, Code] = {
    label: Code(value, "SCT", f"{NAMES[label]} vertebra")
    for label, value in zip(
        range(1, 25),
        (
            "14806007", "39976000", "113205007", "5329002", "36978003", "36054005", "87391001",  # C1-C7
            "64864005", "53733008", "1626008", "73071006", "56401006", "45296009",  # T1-T6
            "62487009", "11068009", "82687006", "7610001", "12989004", "23215003",  # T7-T12
            "66794005", "14293000", "36470004", "11994002", "49668003",  # L1-L5
        ),
    )
}
# SNOMED CT has no concept for a 13th thoracic or a 6th lumbar vertebra (transitional anatomy):
# T13 and L6 get the concept of their region, and the group's tracking identifier ("T13", "L6")
# names the vertebra in free text.
VERTEBRA_CODES[28] = Code("35769007", "SCT", "Bone structure of thoracic vertebra")  # T13
VERTEBRA_CODES[25] = Code("73903008", "SCT", "Bone structure of lumbar vertebra")  # L6

# No standard code says "a reader must check this label"; a private coding scheme does
# (DICOM private schemes start with "99").
PRIVATE_SCHEME = "99VERTEDGE"
NEEDS_REVIEW = Code("needs-review", PRIVATE_SCHEME, "Needs review")
CONFIDENCE = codes.DCM.CertaintyOfFinding
NO_UNITS = Code("1", "UCUM", "no units")

MANUFACTURER = "vertedge"
SR_SERIES_NUMBER = 9901  # high, so viewers list the derived series after the scanner's own
SC_SERIES_NUMBER = 9902
# A UID derived from the name alone: every vertedge installation is the same observer device
DEVICE_UID = pydicom.uid.generate_uid(entropy_srcs=["vertedge observer device"])


def read_source_headers(files: Sequence[str | os.PathLike[str]]) -> list[pydicom.Dataset]:
    """The headers (no pixel data) of a DICOM series' instances, checked to share one study,
    series and Frame of Reference: the report's evidence and the frame its points are in."""
    try:
        headers: list[pydicom.Dataset] = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except (OSError, pydicom.errors.InvalidDicomError) as e:
        raise VertedgeError(f"{e.filename if isinstance(e, OSError) else files[0]}: cannot read the DICOM header") from e
    if not headers:
        raise VertedgeError("no DICOM source instances to refer to")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(h.get(keyword, "")) for h in headers}
        if "" in values or len(values) > 1:
            raise VertedgeError(
                f"{os.path.dirname(os.fspath(files[0])) or '.'}: the DICOM series has "
                f"{'no' if '' in values else 'more than one'} {keyword}; the DICOM outputs need one"
            )
    return headers


def algorithm(result: Result) -> hd.sr.AlgorithmIdentification:
    """vertedge's version with the ids of the models that labelled this result."""
    return hd.sr.AlgorithmIdentification(
        name=MANUFACTURER,
        version=__version__,
        parameters=[f"{role} model {model_id}" for role, model_id in sorted(result.models.items())],
        manufacturer=MANUFACTURER,
    )


def vertebra_groups(
    result: Result, frame_of_reference_uid: str
) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] | list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per vertebra: its centroid (LPS mm) as a point, code, confidence and review state.

    A scan without vertebrae gets one TID 1501 group saying so (Vertebra: Absent): a report needs
    at least one group, and a reader learns that the scan was looked at.
    """
    algorithm_id = algorithm(result)
    if not result.vertebrae:
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="no vertebra detected"),
                finding_type=codes.SCT.Vertebra,
                algorithm_id=algorithm_id,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.Vertebra, codes.SCT.Absent)],
            )
        ]
    return [
        hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=v.name),
            referenced_region=hd.sr.ImageRegion3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=np.array([v.world_lps_mm]),
                frame_of_reference_uid=frame_of_reference_uid,
            ),
            finding_type=VERTEBRA_CODES[v.label],
            finding_category=codes.SCT.AnatomicalStructure,
            geometric_purpose=codes.DCM.Center,
            algorithm_id=algorithm_id,
            measurements=[hd.sr.Measurement(name=CONFIDENCE, value=v.confidence, unit=NO_UNITS)],
            qualitative_evaluations=[
                hd.sr.QualitativeEvaluation(NEEDS_REVIEW, codes.SCT.Yes if v.needs_review else codes.SCT.No)
            ],
        )
        for v in result.vertebrae
    ]


def vertebrae_sr(result: Result, sources: Sequence[pydicom.Dataset]) -> hd.sr.Comprehensive3DSR:
    """The report of `result` on the source series whose headers are `sources` (see `read_source_headers`).

    A new series in the source's study; patient and study attributes are copied from `sources`.
    """
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=__version__
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=vertebra_groups(result, str(sources[0].FrameOfReferenceUID)),
        title=codes.DCM.ImagingMeasurementReport,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=sources,
        content=report,
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="vertedge vertebrae",
        software_versions=__version__,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="vertedge codes", responsible_organization=MANUFACTURER
            )
        ],
    )


def overview_sc(picture: np.ndarray, sources: Sequence[pydicom.Dataset]) -> hd.sc.SCImage:
    """The overview picture (H, W, 3) uint8 RGB as a Secondary Capture in the source's study (a new series).

    PatientOrientation is that of the coronal panel on the left: along a row towards the patient's
    left (L), down a column towards the feet (F); along the sagittal panel's rows the picture goes
    to posterior, as its letters say.
    """
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=sources[0],
        pixel_array=picture,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=hd.UID(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        series_description="vertedge vertebrae overview",
        software_versions=__version__,
    )
    # an unpaired body part: the series needs no Laterality (dciodvfy asks for one without it)
    sc.BodyPartExamined = "SPINE"
    return sc


def write_dicom(path: str | os.PathLike[str], dataset: pydicom.Dataset) -> None:
    """Write a DICOM dataset as a Part 10 file (preamble and file meta) to `path`."""
    dataset.save_as(path, enforce_file_format=True)
