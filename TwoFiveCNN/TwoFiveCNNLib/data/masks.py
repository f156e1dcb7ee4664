"""Voxel masks beside a dataset's studies: ``ROOT/masks/<study>_lesion.nii.gz`` and ``<study>_lungs.nii.gz``
(the lesion-inclusive lungs), as ``twofivecnn synth`` writes them, outside ``studies/`` so that no
index takes them for studies. Evaluation scores the lesion map against them; training fits the lesion
network on them.

Labels, as ``synth`` writes them: lesion 0 background, 1 lesion; lungs 0 outside, 1 right lung,
2 left lung. The lesion lies inside the lungs. Masks are checked before any work
(:func:`check_masks`): a mask of other labels, or one that covers the whole image, would turn every
figure measured against it into a confident wrong number.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..io.volume import read_volume, stored_geometry, study_name
from .index import DatasetError, Study

LESION_SUFFIX, LUNGS_SUFFIX = "_lesion.nii.gz", "_lungs.nii.gz"
# The labels each mask may hold, and what they mean (for the messages).
MASK_LABELS = {LESION_SUFFIX: ((0, 1), "0 background, 1 lesion"),
               LUNGS_SUFFIX: ((0, 1, 2), "0 outside the lungs, 1 right lung, 2 left lung, lesions included")}
SYNTH_HINT = "`twofivecnn synth` writes such masks"


def _paths_beside(study_path: str | os.PathLike) -> tuple[Path, Path] | None:
    """Where the lesion and lung masks of a study at ``ROOT/studies/CT-k/<study>`` are (``ROOT/masks``)."""
    path = Path(study_path)
    if len(path.parents) < 3 or path.parent.parent.name != "studies":
        return None
    folder = path.parent.parent.parent / "masks"
    return folder / f"{study_name(path)}{LESION_SUFFIX}", folder / f"{study_name(path)}{LUNGS_SUFFIX}"


def masks_dir_of(study_path: str | os.PathLike) -> Path | None:
    """``ROOT/masks`` for a study at ``ROOT/studies/CT-k/<study>`` when that folder holds its masks."""
    paths = _paths_beside(study_path)
    return paths[0].parent if paths is not None and all(p.is_file() for p in paths) else None


def read_masks(masks_dir: str | os.PathLike, study_path: str | os.PathLike, geometry) -> tuple[np.ndarray, np.ndarray]:
    """A study's lesion and lung masks (storage order), checked to lie on the study's own grid and to hold
    the labels of :data:`MASK_LABELS`, the lesion inside the lungs and the lungs not the whole image."""
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
        labels = volume.to_original(volume.array)
        _check_labels(labels, suffix, path, study_path)
        masks.append(labels > 0)
    lesion, lungs = masks
    if lungs.all():
        raise ValueError(f"{Path(masks_dir) / (name + LUNGS_SUFFIX)}: the lung mask of study {study_path} covers the "
                         f"whole image; a lung mask leaves out the body wall and the air around it. Give the "
                         f"study's own lung mask ({MASK_LABELS[LUNGS_SUFFIX][1]}; {SYNTH_HINT}).")
    outside = int(np.count_nonzero(lesion & ~lungs))
    if outside:
        raise ValueError(f"{Path(masks_dir) / (name + LESION_SUFFIX)}: {outside} lesion voxels of study {study_path} "
                         f"lie outside its lung mask ({name}{LUNGS_SUFFIX}), which includes the lesions; the two "
                         f"masks do not belong together. Give the study's own masks ({SYNTH_HINT}).")
    return lesion, lungs


def _check_labels(labels: np.ndarray, suffix: str, path: Path, study_path: str | os.PathLike) -> None:
    allowed, meaning = MASK_LABELS[suffix]
    unexpected = ~np.isin(labels, allowed)
    if unexpected.any():
        found = np.unique(labels[unexpected])
        shown = ", ".join(f"{v:g}" for v in found[:5]) + (" ..." if found.size > 5 else "")
        raise ValueError(f"{path}: the {suffix[1:-7]} mask of study {study_path} holds the label(s) {shown} "
                         f"({int(unexpected.sum())} voxels); a {suffix[1:-7]} mask holds {meaning}. Give the "
                         f"study's own mask with these labels ({SYNTH_HINT}).")


def check_masks(studies: Sequence[Study], masks_dir: str | os.PathLike | None = None,
                progress: Callable[[int, int], None] | None = None) -> int:
    """Check, before any work, the masks of ``studies`` in ``masks_dir`` (every study must have both), or
    without it the masks beside each study (``ROOT/masks``; a study with one of the two is refused).
    Returns how many studies have masks."""
    if masks_dir is not None and not Path(masks_dir).is_dir():
        raise DatasetError(f"{masks_dir}: no such folder of masks; --masks must be the masks/ folder "
                           f"`twofivecnn synth` wrote beside studies/.")
    checked = 0
    for done, study in enumerate(studies, start=1):
        folder = Path(masks_dir) if masks_dir is not None else _masks_beside(study)
        if folder is not None:
            read_masks(folder, study.path, stored_geometry(study.path))
            checked += 1
        if progress is not None:
            progress(done, len(studies))
    return checked


def _masks_beside(study: Study) -> Path | None:
    """``ROOT/masks`` when it holds both masks of the study; None when it holds neither; refused with one."""
    paths = _paths_beside(study.path)
    if paths is None:
        return None
    present = [p.is_file() for p in paths]
    if any(present) and not all(present):
        missing = paths[present[0]]
        raise DatasetError(f"{missing}: missing, though the other mask of study {study.study_id} ({study.path}) is "
                           f"there; training uses a study's masks only in pairs. Restore it, or remove the other.")
    return paths[0].parent if all(present) else None
