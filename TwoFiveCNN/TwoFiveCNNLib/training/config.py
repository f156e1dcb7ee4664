"""Every setting of a training run, recorded in the model file, and the seeded random streams."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from ..data.augment import AugmentConfig
from ..networks.severity_model import Architecture
from ..transforms.preprocess import PreprocessConfig

# One random stream per stage, so that changing one stage's settings leaves the others' draws alone.
STAGE_SEEDS = {"stage1": 1, "stage2": 2, "views": 3, "finetune": 4, "lesions": 5}


@dataclass
class TrainConfig:
    """Every setting of a run; recorded in the model file."""

    task: str = "severity"
    seed: int = 0
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    preprocess: PreprocessConfig = field(default_factory=lambda: PreprocessConfig(in_plane=96, n_slices=32))
    # The involvement part reads the involved share alone: on a held-out real CT, four band shares were
    # misread (their make-up differs between scans), the involved share itself was close to the truth.
    architecture: Architecture = field(default_factory=lambda: Architecture(involvement_features=("involved",),
                                                                            lesion_lungs=True))
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    pretrained: str | None = None
    allow_partial: bool = False  # train even if `pretrained` fills little of the backbone (see load_pretrained)
    stage1_epochs: int = 14
    stage1_batch: int = 64
    stage1_lr: float = 2e-3
    stage1_samples_per_epoch: int | None = None  # default: every training slice once
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    stage2_epochs: int = 150
    stage2_batch: int = 16
    stage2_lr: float = 1e-3
    stage2_views: int = 6  # augmented embedding views per training study
    # Stage 2: weight of a loss that draws each study's slice attention toward its per-slice lesion
    # share, where voxel masks exist (training.lesions.slice_lesion_shares); 0: labels alone.
    attention_supervision: float = 0.2
    finetune_epochs: int = 0  # optional end-to-end fine-tuning of backbone and head after stage 2
    finetune_lr: float = 1e-4
    lesion_epochs: int = 24  # the lesion network, trained when training studies have voxel masks (0: never)
    lesion_slices_per_epoch: int = 1024
    lesion_batch: int = 32
    lesion_lr: float = 3e-3
    # Share of the lesion network's training slices given a consolidation against the chest wall
    # (training.lesions.paint_pleural_consolidation); 0: the inserted lesions alone.
    lesion_pleural_consolidation: float = 0.3
    device: str = "auto"
    baselines: bool = False  # also train the pure-3D baselines (3D CNN, ACS-inflated) on the same split
    baseline_epochs: int = 30
    baseline_batch: int = 4
    baseline_lr: float = 1e-3
    name: str = ""
    demo: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data["augment"] = self.augment.to_dict()
        data["fractions"] = list(self.fractions)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        values = dict(data)
        values["preprocess"] = PreprocessConfig.from_dict(values["preprocess"])
        values["architecture"] = Architecture(**values["architecture"])
        values["augment"] = AugmentConfig.from_dict(values["augment"])
        values["fractions"] = tuple(values["fractions"])
        return cls(**values)


def epoch_generator(seed: int, stage: str, epoch: int) -> torch.Generator:
    """Random numbers for one epoch, independent of what ran before (so a resumed run matches)."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + STAGE_SEEDS[stage] * 10_007 + epoch)
    torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))  # dropout
    return generator
