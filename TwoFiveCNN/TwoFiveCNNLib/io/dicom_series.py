"""A DICOM series read as one volume whose geometry is where its slices really lie, or refused.

ITK stacks a series' slices as if they were evenly spaced: a missing slice stretches the spacing
and shifts every slice after it, a repeated position is stacked twice, and a tilted gantry's slant
is dropped. So each slice's ImagePositionPatient, read with its voxels in the same pass, is projected
onto the slice normal (from ImageOrientationPatient); the volume's geometry is built from those
positions, and a series they do not fit is refused, naming the slice. On request
(``allow_uneven_slices``), a series with missing or uneven slices is resampled onto an even grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .volume_checks import VolumeError, first_line, require_orthogonal

# A step between neighbouring slices over this many times the series' median step is a missing slice.
GAP_FACTOR = 1.5
# Slices closer than this share a position (mm; positions are written to 0.01 mm or finer).
DUPLICATE_MM = 0.01
# An even stack may put no slice further than this share of a step from where it really lies.
UNEVEN_TOLERANCE = 0.2

POSITION_TAG, ORIENTATION_TAG = "0020|0032", "0020|0037"  # ImagePositionPatient, ImageOrientationPatient
PATIENT_ID_TAG = "0010|0020"


def image_header(path: Path) -> sitk.ImageFileReader | None:
    """One image file's header, read by ITK without its voxels (size, spacing, origin, direction, tags);
    None when ITK cannot read it (not an image file: a DICOMDIR, a note)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def dicom_patient_id(folder: Path) -> str | None:
    """The PatientID of a DICOM series folder, from the header of its first readable file (no pixels are
    read, so indexing a large archive stays cheap); None when no file has a non-empty one."""
    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        header = image_header(file)
        if header is None:  # not an image file: the next one may be
            continue
        patient = header.GetMetaData(PATIENT_ID_TAG).strip() if header.HasMetaDataKey(PATIENT_ID_TAG) else ""
        return patient or None
    return None


@dataclass(frozen=True)
class SlicePositions:
    """Where a series' slices lie: files in order along the slice normal, and each one's distance along it."""

    files: tuple[str, ...]  # two or more
    order: np.ndarray  # for each of them, its index among the slices as read
    origin: np.ndarray  # the first slice's ImagePositionPatient (LPS, mm)
    direction: np.ndarray  # 3x3, columns: row direction, column direction, slice normal
    along: np.ndarray  # (n,) mm from the first slice along the slice normal, ascending

    @property
    def steps(self) -> np.ndarray:
        return np.diff(self.along)

    @property
    def median_step(self) -> float:
        return float(np.median(self.steps))

    def even_step(self) -> float:
        """The step of an even grid from the first slice to the last (their mean step)."""
        return float(self.along[-1] / (len(self.files) - 1))

    def unevenness(self) -> str | None:
        """What keeps the slices from an even grid, naming the slice, or None when they lie on one."""
        steps, median = self.steps, self.median_step
        gaps = np.flatnonzero(steps > GAP_FACTOR * median)
        if gaps.size:
            k = int(gaps[np.argmax(steps[gaps])])
            more = f" (and {gaps.size - 1} more gap{'s' * (gaps.size > 2)})" if gaps.size > 1 else ""
            return (f"a gap of {steps[k]:.2f} mm between slices {Path(self.files[k]).name} and "
                    f"{Path(self.files[k + 1]).name}, {steps[k] / median:.1f} times the series' "
                    f"{median:.2f} mm step: a slice is missing{more}")
        step = self.even_step()
        offsets = self.along - step * np.arange(len(self.files))
        k = int(np.argmax(np.abs(offsets)))
        if abs(offsets[k]) > UNEVEN_TOLERANCE * step:
            return (f"uneven slice steps ({steps.min():.2f} to {steps.max():.2f} mm): slice "
                    f"{Path(self.files[k]).name} lies {abs(offsets[k]):.2f} mm from where an even "
                    f"{step:.2f} mm stack puts it")
        return None


def _numbers(reader: sitk.ImageSeriesReader, index: int, tag: str, count: int) -> np.ndarray | None:
    """A slice's multi-valued decimal tag (``count`` values), or None when it is missing or malformed."""
    if not reader.HasMetaDataKey(index, tag):
        return None
    try:
        values = np.array([float(v) for v in reader.GetMetaData(index, tag).split("\\")])
    except ValueError:
        return None
    return values if values.shape == (count,) and np.isfinite(values).all() else None


def slice_positions(folder: Path, files: list[str], reader: sitk.ImageSeriesReader) -> SlicePositions | None:
    """The series' slices (two or more, as ``reader`` read them with their metadata) sorted along their
    normal; None when a slice lacks its position or orientation (then only ITK's own stacking is left).

    Refuses slices of differing orientations, two slices at one position, and a stack slanting off
    the slice normal (a tilted gantry: a sheared grid)."""
    positions, orientation = [], None
    for index, name in enumerate(files):
        position = _numbers(reader, index, POSITION_TAG, 3)
        cosines = _numbers(reader, index, ORIENTATION_TAG, 6)
        if position is None or cosines is None:
            return None
        if orientation is None:
            orientation = cosines
        elif np.abs(cosines - orientation).max() > 1e-3:
            raise VolumeError(f"{folder}: slice {Path(name).name} is oriented differently from "
                              f"{Path(files[0]).name}, so the series is not one volume; move the slices "
                              f"of other orientations (e.g. localisers) into another folder.")
        positions.append(position)
    row, column = (axis / np.linalg.norm(axis) for axis in (orientation[:3], orientation[3:]))
    normal = np.cross(row, column)
    positions = np.array(positions)
    order = np.argsort(positions @ normal, kind="stable")
    positions, files = positions[order], [files[k] for k in order]
    along = (positions - positions[0]) @ normal
    duplicates = np.flatnonzero(np.diff(along) < DUPLICATE_MM)
    if duplicates.size:
        k = int(duplicates[0])
        raise VolumeError(
            f"{folder}: slices {Path(files[k]).name} and {Path(files[k + 1]).name} lie at the same position "
            f"({along[k + 1] - along[k]:.3f} mm apart along the slice normal), {duplicates.size} such pair"
            f"{'s' * (duplicates.size > 1)} in all: the folder holds a slice twice, or two series that share "
            f"a series UID. Keep one copy of each slice (one series per folder).")
    slant = positions[-1] - positions[0]
    require_orthogonal(np.column_stack([row, column, slant / np.linalg.norm(slant)]), str(folder))
    return SlicePositions(tuple(files), order, positions[0], np.column_stack([row, column, normal]), along)


def resample_evenly(array_kji: np.ndarray, along: np.ndarray, count: int) -> np.ndarray:
    """Slices at ``along`` (mm, ascending) interpolated linearly onto ``count`` evenly spaced slices
    from the first to the last; integer voxels are rounded back to their type."""
    targets = np.linspace(along[0], along[-1], count)
    below = np.clip(np.searchsorted(along, targets, side="right") - 1, 0, len(along) - 2)
    weights = (targets - along[below]) / (along[below + 1] - along[below])
    resampled = np.empty((count, *array_kji.shape[1:]), dtype=array_kji.dtype)
    for k, (low, weight) in enumerate(zip(below, weights)):
        values = (1 - weight) * array_kji[low].astype(np.float32) + weight * array_kji[low + 1]
        resampled[k] = np.rint(values) if np.issubdtype(array_kji.dtype, np.integer) else values
    return resampled


def read_series_files(folder: Path, files: list[str], allow_uneven_slices: bool = False,
                      ) -> tuple[sitk.Image, list[str]]:
    """The DICOM series of ``files`` (in ``folder``) as one image on its slices' true positions, and warnings.

    A series with a missing slice or uneven steps is refused, naming the slice, unless
    ``allow_uneven_slices``: it is then resampled linearly onto an even grid from the first slice to the
    last, its step the median step (rounded to fit that span whole), and a warning says so; the image's
    geometry is that grid's. A slant (tilted gantry) or a repeated position is refused either way.
    """
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's position, read in the same pass as its voxels
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise VolumeError(f"{folder}: the DICOM series could not be read ({first_line(error)}).") from None
    if len(files) < 2 or image.GetDimension() != 3 or image.GetSize()[2] != len(files):
        return image, []  # one file (2D, or multi-frame): ITK's own geometry
    positions = slice_positions(folder, files, reader)
    del reader  # it shares the voxels: setting the geometry below would copy them while it lives
    if positions is None:
        return image, [(f"{folder}: slices without a position or orientation (ImagePositionPatient, "
                        f"ImageOrientationPatient); stacked as ITK orders them, their spacing unchecked.")]
    uneven, warnings = positions.unevenness(), []
    if uneven and not allow_uneven_slices:
        raise VolumeError(
            f"{folder}: {uneven}. Read as evenly spaced, the slices beyond it would lie in the wrong place. "
            f"Put back any missing slice, or resample the series onto an even grid with predict "
            f"--allow-uneven-slices (read_volume(..., allow_uneven_slices=True) in Python).")
    step, in_plane = positions.even_step(), image.GetSpacing()[:2]
    in_order = np.array_equal(positions.order, np.arange(len(files)))  # as GDCM sorts a series: no copy
    if uneven:
        count = max(2, round(float(positions.along[-1]) / positions.median_step) + 1)
        array = sitk.GetArrayViewFromImage(image)
        image = sitk.GetImageFromArray(resample_evenly(array if in_order else array[positions.order],
                                                       positions.along, count))
        step = float(positions.along[-1] / (count - 1))
        warnings.append(f"{folder}: {uneven}; resampled onto an even {step:.2f} mm grid of {count} slices, "
                        f"interpolated linearly between neighbouring slices (--allow-uneven-slices). The "
                        f"outputs lie on that grid, not on the series' own slices.")
    elif not in_order:
        image = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[positions.order])
    image.SetOrigin(tuple(float(v) for v in positions.origin))
    image.SetSpacing((*in_plane, step))
    image.SetDirection(tuple(float(v) for v in positions.direction.ravel()))
    return image, warnings
