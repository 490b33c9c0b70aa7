"""What a seed chooses: anatomy, spine variant, curvature, intensities, implants, orientation.

`PhantomParams.draw` takes every random number of the parameters from the seed's generator in one
fixed order: reordering, adding or skipping a draw changes every phantom after it (bump
`PHANTOM_VERSION` if that is meant). `to_dict` is the record stored in `Phantom.params` and in
`<stem>_gt.json`; `from_dict` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ..errors import VertedgeError
from .tissue import BLOOD, BoneHU

# Bumped whenever make_phantom(seed) changes its output; training caches are keyed by it, so DRRs
# rendered from an older phantom are never mixed into training. 2: realistic bone density.
# 3: pedicles, transverse processes and rib heads and necks in the upper half of the body.
# 4: the ribs' cortex denser than the vertebrae's (`tissue.RIB_CORTEX_EXTRA`).
# 5: the organs and shoulders at the seed's own levels along the spine (`ORGAN_SHIFT_MM`); the iliac
#    crest falls behind its middle, clear of L5's transverse processes (`pelvis.CREST_FALL`).
PHANTOM_VERSION = 5
REGIONS = ("full", "cervical", "thoracic", "lumbar", "cervicothoracic", "thoracolumbar")
ORIENTATIONS = ("LPS", "RAS", "permuted")
VARIANTS = ("normal", "T13", "L6")  # T13: 13 thoracic vertebrae; L6: 6 lumbar (VerSe labels 28, 25)
CONTRASTS = ("none", "arterial", "venous")

# How often each choice is drawn: the scan mix of a clinical archive, weighted toward the regions and
# anomalies the labeller finds hard; chosen, not measured.
REGION_P = (0.3, 0.15, 0.15, 0.2, 0.1, 0.1)
ORIENTATION_P = (0.4, 0.35, 0.25)
VARIANT_P = (0.8, 0.1, 0.1)
CONTRAST_P = (0.4, 0.3, 0.3)
SCOLIOSIS_P, DOUBLE_CURVE_P = 0.3, 0.5
METAL_P, DENTAL_METAL_P, CUPPING_P = 0.15, 0.2, 0.5
METAL_HU = (3071.0, 4000.0, 8000.0)  # metal as scanners store it: clipped at 3071, or extended HU scales
FOV_PAD_HU = (-1024.0, -2048.0, -3024.0)  # value outside the reconstruction circle, vendor dependent
FOV_PAD_P = (0.6, 0.2, 0.2)
# How far (mm, + cranial) the lung apices, the diaphragm (with the lung bases, liver, spleen,
# stomach and kidneys under it), the mediastinum (heart, airways) and the shoulders (clavicles,
# scapulae, arms) lie from their usual levels along the spine, each drawn on its own: breathing
# moves the diaphragm by 3-5 cm, posture the shoulders, habitus all of them. A phantom with every
# organ pinned to a vertebra teaches a net to name levels from the organs, which a patient's do not
# follow (phantoms 500 and 749 lost every label to a 25 mm shift: benchmarks/RESULTS.md).
ORGAN_SHIFT_MM = {"apex": (-20.0, 30.0), "diaphragm": (-45.0, 25.0), "mediastinum": (-30.0, 30.0), "shoulders": (-25.0, 25.0)}

# Unenhanced values per compartment, and fixed enhancement where the phase is not drawn (HU).
VENOUS_HU = {"none": 40.0, "arterial": 60.0}  # inferior vena cava; drawn 130-180 in the venous phase
ORGAN_HU = {"none": 45.0, "arterial": 70.0, "venous": 100.0}  # liver, spleen
KIDNEY_HU = {"none": 30.0, "arterial": 180.0, "venous": 160.0}  # cortex enhances first, strongly


@dataclass(frozen=True)
class PhantomParams:
    """One seed's choices (lengths mm, angles deg, intensities HU, world LPS mm)."""

    region: str  # one of REGIONS: what the field of view covers
    variant: str  # one of VARIANTS
    orientation: str  # one of ORIENTATIONS: how the grid is stored
    stature: float  # length scale of the whole skeleton (1 = an average adult)
    habitus: float  # width scale of the torso
    obesity: float  # scale of the abdomen's depth
    fat_mm: float  # subcutaneous fat thickness at the chest, mm
    head_scale: float
    bone_density: float  # relative (1 = healthy adult), sets `bone`
    disc_hu: float
    cartilage_hu: float  # costal cartilage
    lung_offset: float  # HU added to LUNG
    lordosis_c: float  # cervical lordosis, deg
    kyphosis: float  # thoracic kyphosis, deg
    lordosis_l: float  # lumbar lordosis, deg
    sacral_tilt: float  # deg
    scoliosis: tuple[tuple[float, float, float], ...]  # curves (amplitude mm, start mm, end mm of arc length from C1)
    scoliosis_rotation: float  # axial rotation at the apex of a 20 mm curve, deg
    contrast: str  # one of CONTRASTS
    blood_hu: float  # aorta, heart
    venous_hu: float  # inferior vena cava
    organ_hu: float
    kidney_hu: float
    arms: str  # "down" (at the sides) or "up" (raised above the head)
    bowel_loops: int
    visceral_hu: float  # mesenteric fat and bowel, mixed
    metal: bool  # pedicle screws and rods
    metal_levels: tuple[int, ...]  # VerSe labels of the instrumented vertebrae
    metal_hu: float
    dental_metal: bool
    noise_sigma: float  # HU
    cupping_hu: float  # beam-hardening darkening at the centre of the field of view
    fov_pad_hu: float
    anchor_lps: tuple[float, float, float]  # world LPS mm of the top of the spine curve
    noise_seed: int
    organ_shift_mm: tuple[float, float, float, float]  # apex, diaphragm, mediastinum, shoulders (`ORGAN_SHIFT_MM`)

    @classmethod
    def draw(cls, rng: np.random.Generator, region: str | None, orientation: str | None) -> PhantomParams:
        """The seed's parameters; `region`/`orientation` None = drawn. Raises VertedgeError on unknown names."""
        if region is None:
            region = str(rng.choice(REGIONS, p=REGION_P))
        if region not in REGIONS:
            raise VertedgeError(f"unknown phantom region {region!r}; expected one of {', '.join(REGIONS)}")
        if orientation is None:
            orientation = str(rng.choice(ORIENTATIONS, p=ORIENTATION_P))
        if orientation not in ORIENTATIONS:
            raise VertedgeError(f"unknown orientation {orientation!r}; expected one of {', '.join(ORIENTATIONS)}")
        variant = str(rng.choice(VARIANTS, p=VARIANT_P))
        scol: list[tuple[float, float, float]] = []
        if rng.random() < SCOLIOSIS_P:  # a primary curve of 8-30 mm, sometimes a compensating one below it
            amp = float(rng.uniform(8, 30) * rng.choice([-1, 1]))
            s0 = float(rng.uniform(120, 260))
            scol.append((amp, s0, s0 + float(rng.uniform(180, 300))))
            if rng.random() < DOUBLE_CURVE_P:
                s1 = scol[0][2] - 60.0
                scol.append((-amp * float(rng.uniform(0.4, 0.8)), s1, s1 + float(rng.uniform(150, 220))))
        contrast = str(rng.choice(CONTRASTS, p=CONTRAST_P))
        metal = rng.random() < METAL_P
        first = int(rng.integers(16, 22))  # top instrumented level: T9 to L2 (VerSe labels 16-21)
        u = rng.uniform
        # Adult variation, ranges chosen by eye (normal-looking spines and bodies), not fitted to
        # measurements; the curvatures are the peak tangent angles of the spine curve (spine.py).
        stature, habitus, obesity, fat_mm = float(u(0.88, 1.12)), float(u(0.85, 1.2)), float(u(0.9, 1.35)), float(u(5, 35))
        head_scale, bone_density = float(u(0.92, 1.08)), float(u(0.15, 1.5))
        disc_hu, cartilage_hu, lung_offset = float(u(70, 110)), float(u(100, 250)), float(u(-40, 40))
        lordosis_c, kyphosis, lordosis_l, sacral_tilt = float(u(5, 25)), float(u(20, 45)), float(u(25, 50)), float(u(35, 55))
        scoliosis_rotation = float(u(5, 20))
        # both enhanced blood values are drawn whatever the phase, to keep the draw order fixed
        blood = {"none": BLOOD, "arterial": float(u(250, 400)), "venous": float(u(140, 200))}
        venous = {**VENOUS_HU, "venous": float(u(130, 180))}
        arms = str(rng.choice(["down", "up"]))
        bowel_loops, visceral_hu = int(rng.integers(15, 35)), float(u(-90, -30))
        metal_levels = tuple(range(first, first + int(rng.integers(2, 5)))) if metal else ()
        metal_hu = float(rng.choice(METAL_HU))
        dental_metal = bool(rng.random() < DENTAL_METAL_P)
        noise_sigma = float(u(8, 30))
        cupping_hu = float(u(0, 40)) if rng.random() < CUPPING_P else 0.0
        fov_pad_hu = float(rng.choice(FOV_PAD_HU, p=FOV_PAD_P))
        anchor = (float(u(-30, 30)), float(u(-80, 80)), float(u(-200, 1200)))
        noise_seed = int(rng.integers(0, 2**62))
        # from a generator of its own, so that every other draw (and the bowel, grid and field of
        # view drawn after the parameters) stays what it was in version 4
        own = np.random.default_rng([noise_seed, PHANTOM_VERSION])
        apex, diaphragm, mediastinum, shoulders = (float(own.uniform(lo, hi)) for lo, hi in ORGAN_SHIFT_MM.values())
        organ_shift = (apex, diaphragm, mediastinum, shoulders)
        return cls(
            region=region, variant=variant, orientation=orientation, stature=stature, habitus=habitus, obesity=obesity,
            fat_mm=fat_mm, head_scale=head_scale, bone_density=bone_density, disc_hu=disc_hu, cartilage_hu=cartilage_hu,
            lung_offset=lung_offset, lordosis_c=lordosis_c, kyphosis=kyphosis, lordosis_l=lordosis_l,
            sacral_tilt=sacral_tilt, scoliosis=tuple(scol), scoliosis_rotation=scoliosis_rotation, contrast=contrast,
            blood_hu=blood[contrast], venous_hu=venous[contrast], organ_hu=ORGAN_HU[contrast],
            kidney_hu=KIDNEY_HU[contrast], arms=arms, bowel_loops=bowel_loops, visceral_hu=visceral_hu,
            metal=bool(metal), metal_levels=metal_levels, metal_hu=metal_hu, dental_metal=dental_metal,
            noise_sigma=noise_sigma, cupping_hu=cupping_hu, fov_pad_hu=fov_pad_hu, anchor_lps=anchor,
            noise_seed=noise_seed, organ_shift_mm=organ_shift,
        )

    @property
    def shifts(self) -> dict[str, float]:
        """`organ_shift_mm` by part: "apex", "diaphragm", "mediastinum", "shoulders" (mm, + cranial)."""
        return dict(zip(ORGAN_SHIFT_MM, self.organ_shift_mm))

    @property
    def last_thoracic(self) -> int:
        """VerSe label of the lowest thoracic vertebra: 28 (T13) in the T13 variant, else 19 (T12)."""
        return 28 if self.variant == "T13" else 19

    @property
    def bone(self) -> BoneHU:
        """Cancellous and cortical HU for this seed's bone density."""
        return BoneHU.for_density(self.bone_density)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists), in field order."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PhantomParams:
        """Read back `to_dict` (or a phantom's `params` record; its other keys are ignored)."""
        values = {f.name: record[f.name] for f in fields(cls)}
        values["scoliosis"] = tuple(tuple(float(v) for v in curve) for curve in values["scoliosis"])
        values["metal_levels"] = tuple(int(v) for v in values["metal_levels"])
        values["anchor_lps"] = tuple(float(v) for v in values["anchor_lps"])
        values["organ_shift_mm"] = tuple(float(v) for v in values["organ_shift_mm"])
        return cls(**values)


def _jsonable(obj: Any) -> Any:
    """Tuples, lists and NumPy values -> plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
