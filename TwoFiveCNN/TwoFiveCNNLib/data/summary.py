"""A dataset described before training: studies per class, and what might spoil the run.

Reads the index and the volume headers only (no voxels), so it answers in seconds even for a large
dataset; the Slicer training module shows it under "Show summary".
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .index import MIN_STUDIES_PER_CLASS, DatasetIndex

# Below this many studies a class's recall (and so the balanced accuracy) moves in big steps.
FEW_STUDIES_PER_CLASS = 10
# Slice thickness or pixel size varying more than this factor across a dataset deserves a look.
SPACING_RATIO_WARNING = 2.0
TEST_FRACTION_SHOWN = 0.15  # the default test share of ``twofivecnn train``: sets a recall step's size


def _spacing_from_header(path: Path) -> tuple[float, float, float] | None:
    """(x, y, z) spacing in mm read from the file header only (no voxels), None for DICOM folders."""
    if path.is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    spacing = reader.GetSpacing()
    return tuple(float(s) for s in spacing[:3]) if len(spacing) >= 3 else None


def dataset_summary_text(path: str | os.PathLike) -> str:
    """Studies per class plus warnings: tiny classes, unreadable headers, inconsistent voxel spacing."""
    index = DatasetIndex.load(path)
    lines = [index.summary()]
    counts = index.counts()
    present = [name for name, count in counts.items() if count]
    lines += [f"  note: {name} has only {count} studies; its recall will move in steps of "
              f"{1 / max(1, round(count * TEST_FRACTION_SHOWN)):.0%} on a {TEST_FRACTION_SHOWN:.0%} "
              f"test split."
              for name, count in counts.items() if MIN_STUDIES_PER_CLASS <= count < FEW_STUDIES_PER_CLASS]
    if len(present) < 2:
        lines.append("  warning: fewer than two classes: there is nothing to tell apart.")
    spacings, unread, dicom = [], [], 0
    for study in index.studies:
        try:
            spacing = _spacing_from_header(study.path)
        except RuntimeError:  # SimpleITK's error for a file it cannot read
            unread.append(study.study_id)
            continue
        if spacing is None:
            dicom += 1
        else:
            spacings.append(spacing)
    if spacings:
        array = np.array(spacings)
        in_plane, slices = array[:, :2].min(axis=1), array[:, 2]
        lines.append(f"  pixel size {in_plane.min():.2f}..{in_plane.max():.2f} mm, slice spacing "
                     f"{slices.min():.2f}..{slices.max():.2f} mm (median {np.median(slices):.2f})")
        for what, values in (("pixel size", in_plane), ("slice spacing", slices)):
            if values.min() > 0 and values.max() / values.min() > SPACING_RATIO_WARNING:
                lines.append(f"  warning: {what} varies more than {SPACING_RATIO_WARNING:g}-fold across "
                             f"studies; check that thin and thick reconstructions are not mixed by accident.")
    if dicom:
        lines.append(f"  ({dicom} DICOM series: spacing not checked)")
    if unread:
        lines.append(f"  warning: {len(unread)} file(s) with unreadable headers, e.g. {unread[0]}")
    return "\n".join(lines)
