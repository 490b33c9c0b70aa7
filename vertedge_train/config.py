"""The training configuration as typed, frozen dataclasses, read from and written to the JSON configs.

`TrainConfig.from_dict` refuses a key it does not know (a misspelt setting must not be silently
ignored) and fills what a config leaves out with the defaults below; `to_dict` gives the JSON
form that goes into every checkpoint and run folder. Units: mm, degrees, pixels of the DRR.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from vertedge.geometry import Protocol
from vertedge.tables import dataclass_from_table


@dataclass(frozen=True)
class DataConfig:
    """Which scans are rendered into the DRR cache, and how."""

    train_seeds: tuple[int, int] = (1000, 1400)  # phantom seeds [lo, hi); 0-999 are held out
    verse_roots: tuple[str, ...] = ()  # extra real data in the VerSe layout
    variants_per_scan: int = 3  # rendered variants of a phantom (or VerSe case): the whole scan + random ones
    crop_prob: float = 0.5  # probability of a random S-I crop in a variant
    min_keep: float = 0.35  # a crop keeps at least this fraction of the scan
    # The random variants' anatomy scaled by a factor drawn log-uniformly in this range (a smaller or
    # larger patient than the phantom's stature draws: `data.sized_variant`); None: as drawn.
    size_range: tuple[float, float] | None = None
    cache: str | None = None  # cache root (default ~/.cache/vertedge-train or $VERTEDGE_TRAIN_CACHE)
    render_workers: int = 1
    refresh_every: int = 50  # steps between looks for newly rendered samples
    min_items: int = 30  # samples to wait for before training starts
    real_variants: int = 24  # fine-tuning: variants of a real case (random pose, FOV, slices, noise)
    real_fraction: float | None = None  # fine-tuning: share of every batch drawn from real scans
    real_cases: tuple[str, ...] = ()  # fine-tuning: the real training cases (recorded, not read)


@dataclass(frozen=True)
class AugmentConfig:
    """On-the-fly intensity augmentation of the normalized DRR crops."""

    gamma: float = 1.4  # gamma drawn log-uniformly in [1/gamma, gamma]
    contrast: float = 0.15
    offset: float = 0.05
    noise: float = 0.03  # Gaussian noise sigma drawn in [0, noise]
    blur_prob: float = 0.0
    blur: float = 1.0  # Gaussian blur sigma (pixels) drawn in [0.3, blur]
    # Identification crops: with this probability everything further than a half-width drawn in
    # `band_mm` (mm at the vertebrae's depth) from the spine's projection becomes air, so that the
    # net reads a level from the spine and the ribs beside it, not from the arms, shoulder girdle
    # and outer rib cage, where the phantom is least like a patient.
    band_prob: float = 0.0
    band_mm: tuple[float, float] = (60.0, 160.0)


@dataclass(frozen=True)
class HeatmapConfig:
    """Localization target: a Gaussian of `sigma_px` and `amplitude` at each projected body centroid."""

    sigma_px: float = 1.5
    amplitude: float = 1.0
    threshold: float = 0.5  # peak threshold as a fraction of the amplitude (exported as metadata)


@dataclass(frozen=True)
class NetConfig:
    """The U-Net encoder design shared by both task nets and SimSiam."""

    base: int = 16
    levels: int = 5
    kind: str = "unet"  # or "resnet50"


@dataclass(frozen=True)
class TaskConfig:
    """One training task: pretrain (SimSiam), loc or id. Fields a task does not use are ignored by it."""

    steps: int = 1000
    batch: int = 8
    crop: tuple[int, int] = (128, 128)  # rows, cols of a training crop
    optimizer: str = "adam"  # or "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"  # over max(step / steps, minutes / max_minutes); or "step"
    min_lr_frac: float = 0.01
    lr_gamma: float = 0.1  # "step": lr x lr_gamma every lr_step steps
    lr_step: int = 4000
    init: str = ""  # "pretrain" (the SimSiam encoder) or a checkpoint path
    checkpoint_every: int = 50
    log_every: int = 10
    max_minutes: float = 1e9
    freeze_bn: bool = False  # keep BatchNorm statistics and affine weights as initialised
    variant_boost: float = 1.0  # oversampling of scans with a T13 or L6
    fg_weight: float = 10.0  # loc: MSE weight 1 + fg_weight * target
    bg_weight: float = 0.1  # id: CE weight of background pixels
    seq_alpha: float = 0.1  # id: Sequence Loss (paper Eq. 1-3)
    seq_beta: float = 0.8
    seq_gamma: float = 1.0
    context_dilations: tuple[int, ...] = ()  # id: the row-context block
    proj_dim: int = 256  # pretrain: SimSiam projector and predictor
    pred_dim: int = 64


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run, a fine-tune or an export reads."""

    name: str = "unnamed"
    version: str | None = None  # the models' version (fine-tune: None = the source's + "+finetune")
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    protocol: Protocol = field(default_factory=Protocol.paper)  # fine-tunes replace it by the models' (finetune)
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    heatmap: HeatmapConfig = HeatmapConfig()
    net: NetConfig = NetConfig()
    square_mm: float = 22.0  # id target square side at the vertebra's depth
    focus: float = 0.8  # share of crops centred near a vertebra
    pretrain: TaskConfig = TaskConfig()
    loc: TaskConfig = TaskConfig()
    id: TaskConfig = TaskConfig()
    validation_seeds: tuple[int, ...] = ()
    source_models: dict[str, str] = field(default_factory=dict)  # fine-tune: the ONNX model ids it started from
    about: str = ""  # free text: what the config is for
    shipped_history: str = ""  # free text: how shipped models were made with it

    def task(self, name: str) -> TaskConfig:
        """The config of task 'pretrain', 'loc' or 'id'."""
        if name not in ("pretrain", "loc", "id"):
            raise ValueError(f"unknown task {name!r}")
        return getattr(self, name)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """From the JSON form; unknown keys raise ValueError naming them."""
        return dataclass_from_table(cls, d, "config")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrainConfig:
        """Read a JSON config file."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (tuples as lists)."""
        return json.loads(json.dumps(asdict(self)))

    def with_task(self, name: str, **changes: Any) -> TrainConfig:
        """A copy with fields of one task changed."""
        task: dict[str, Any] = {name: replace(self.task(name), **changes)}
        return replace(self, **task)


