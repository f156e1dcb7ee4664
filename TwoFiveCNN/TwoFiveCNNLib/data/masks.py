"""Voxel masks beside a dataset's studies: ``ROOT/masks/<study>_lesion.nii.gz`` and ``<study>_lungs.nii.gz``
(the lesion-inclusive lungs), as ``twofivecnn synth`` writes them, outside ``studies/`` so that no
index takes them for studies. Evaluation scores evidence against them; training fits the lesion
network on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io.volume import read_volume, study_name

LESION_SUFFIX, LUNGS_SUFFIX = "_lesion.nii.gz", "_lungs.nii.gz"


def masks_dir_of(study_path: str | os.PathLike) -> Path | None:
    """``ROOT/masks`` for a study at ``ROOT/studies/CT-k/<study>`` when that folder holds its masks."""
    path = Path(study_path)
    if len(path.parents) < 3 or path.parent.parent.name != "studies":
        return None
    folder = path.parent.parent.parent / "masks"
    name = study_name(path)
    return folder if all((folder / f"{name}{suffix}").is_file() for suffix in (LESION_SUFFIX, LUNGS_SUFFIX)) else None


def read_masks(masks_dir: str | os.PathLike, study_path: str | os.PathLike, geometry) -> tuple[np.ndarray, np.ndarray]:
    """A study's lesion and lung masks (storage order), checked to lie on the study's own grid."""
    name = study_name(study_path)
    masks = []
    for suffix in (LESION_SUFFIX, LUNGS_SUFFIX):
        path = Path(masks_dir) / f"{name}{suffix}"
        if not path.is_file():
            raise ValueError(f"{path}: no {suffix[1:-7]} mask for study {study_path}; --masks must be the "
                             f"folder `twofivecnn synth` wrote beside studies/ (masks/).")
        volume = read_volume(path)
        if volume.geometry.size != geometry.size or not np.allclose(
                [*volume.geometry.spacing, *volume.geometry.origin, *volume.geometry.direction],
                [*geometry.spacing, *geometry.origin, *geometry.direction], atol=1e-4):
            raise ValueError(f"{path}: its grid differs from its study's ({study_path}); masks must be on the "
                             f"study's own grid.")
        masks.append(volume.to_original(volume.array) > 0)
    return masks[0], masks[1]
