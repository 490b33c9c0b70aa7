"""CT numbers (HU) of the phantom's tissues and its bone: the fixed ones, and how bone follows the seed's density.

The soft-tissue values are the usual unenhanced CT numbers of radiology tables (air -1000 by
definition of the Hounsfield scale, fat -100, muscle +50, blood +45, aerated lung about -850).
Contrast-enhanced blood and organs, discs and cartilage are drawn per seed (`PhantomParams`).
"""

from __future__ import annotations

from dataclasses import dataclass

AIR = -1000.0
FAT = -100.0
SOFT = 40.0  # generic soft tissue / unenhanced parenchyma
MUSCLE = 50.0
LUNG = -850.0  # aerated lung parenchyma at end inspiration (the seed shifts it by +-40 HU)
BLOOD = 45.0  # unenhanced blood

BRAIN = 35.0
URINE = 10.0
TOOTH = 2200.0  # enamel and dentine without fillings
MEDIASTINUM = SOFT - 10.0  # soft tissue with some fat between the lungs
STOMACH = SOFT - 10.0  # fluid-filled
BOWEL_CONTENT, BOWEL_WALL = SOFT - 15.0, SOFT + 10.0
MARROW = 20.0  # fatty marrow of the long bones

# The patient table: a curved carbon-fibre plate, dense skins around a foam core.
TABLE_SKIN, TABLE_CORE = 250.0, -850.0

# Bone density f (drawn in 0.15-1.5) sets cancellous and cortical HU linearly: cancellous 55-285 HU
# and the cortical shell 270-715 HU span osteoporotic to young-adult bone as clinical CT shows it
# (a thin cortex partial-volumed over a voxel or two). The slopes were matched to the real cases'
# vertebrae in the DRRs with benchmarks/realism.py, not taken from a reference.
CANCELLOUS_HU = (30.0, 170.0)  # (offset, slope per unit density)
CORTICAL_HU = (220.0, 330.0)

# Bone denser than the seed's cancellous HU (less marrow, more compact bone than a vertebral body),
# added to it; set by eye so that these parts show in the DRRs about as they do in real CT.
THIN_BONE_EXTRA = 40.0  # rib shafts, scapular spine, femoral and humeral heads
LATERAL_MASS_EXTRA = 50.0  # C1's lateral masses
SLENDER_EXTRA = 60.0  # dens, rib heads, clavicles, median sacral crest
ARCH_EXTRA = 80.0  # vertebral arches and the C1 ring
JAW_EXTRA = 100.0  # mandible
SKULL_BASE_EXTRA = 300.0
# Cortex of the skull and jaw (+200), humerus and forearm (+250), femur (+300): much thicker than
# the vertebral shell, so it reads denser after partial volume.
SKULL_CORTEX_EXTRA = 200.0
ARM_CORTEX_EXTRA = 250.0
FEMUR_CORTEX_EXTRA = 300.0
# Rib cortex: +350 (570-1065 HU). A rib is mostly compact bone; with the vertebral shell's HU the
# phantom's ribs peaked at 602 HU (359-695) 45-60 mm beside T2-T10, the real chest CT's at 919
# (824-975), and the rib probe tuned on real CT found them on a third to two thirds of the sides
# where it finds the real ones on all (benchmarks/realism.py, RESULTS "The ribs").
RIB_CORTEX_EXTRA = 350.0


@dataclass(frozen=True)
class BoneHU:
    """The seed's bone intensities: cancellous core and cortical shell, HU."""

    cancellous: float
    cortical: float

    @classmethod
    def for_density(cls, density: float) -> BoneHU:
        """Bone intensities for a relative bone density (1 = healthy adult; 0.15-1.5 are drawn)."""
        return cls(CANCELLOUS_HU[0] + CANCELLOUS_HU[1] * density, CORTICAL_HU[0] + CORTICAL_HU[1] * density)
