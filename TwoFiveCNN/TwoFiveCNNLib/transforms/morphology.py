"""Box morphology with separable filters (time linear in the voxels, whatever the box), and the
bounding box of a mask: what the lung mask and the HU bands both need."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bounding_box(mask: np.ndarray, margin: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice]:
    """The smallest box holding every True voxel of a non-empty 3D mask, grown by ``margin`` per axis
    and clipped to the array."""
    box = []
    for axis, grow in enumerate(margin):
        other = tuple(a for a in range(3) if a != axis)
        present = np.nonzero(mask.any(axis=other))[0]
        box.append(slice(max(0, present[0] - grow), min(mask.shape[axis], present[-1] + grow + 1)))
    return tuple(box)


def box_closing(mask: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Dilation then erosion by a box; outside the array counts as background, so nothing is closed
    against the array's edge."""
    region = mask.astype(np.uint8)
    dilated = ndimage.maximum_filter(region, size=size, mode="constant")
    return ndimage.minimum_filter(dilated, size=size, mode="constant").astype(bool)


def _slide(mask: np.ndarray, size: int, axis: int, combine: np.ufunc) -> np.ndarray:
    """``combine`` (``np.logical_and`` or ``np.logical_or``) of each voxel's window of ``size`` voxels
    along ``axis``, placed as scipy.ndimage places it (``size // 2`` before the voxel), voxels beyond the
    array's edge left out: what ndimage's minimum/maximum filter give with mirrored edges. A few
    shifted boolean operations: far cheaper than a generic filter for the small windows used here."""
    out = mask.copy()
    length = mask.shape[axis]
    for offset in range(-(size // 2), size - size // 2):
        if offset == 0 or abs(offset) >= length:
            continue
        target, source = offset_slices(mask.shape, axis, offset)
        part = out[target]
        combine(part, mask[source], out=part)
    return out


def offset_slices(shape: tuple[int, ...], axis: int, offset: int) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Index pairs (target, source) that pair each voxel of an array of ``shape`` with the voxel
    ``offset`` steps along ``axis`` (both inside the array): shifted views for boolean steps."""
    length = shape[axis]
    target, source = [slice(None)] * len(shape), [slice(None)] * len(shape)
    target[axis] = slice(max(0, -offset), length - max(0, offset))
    source[axis] = slice(max(0, offset), length - max(0, -offset))
    return tuple(target), tuple(source)


def box_erosion(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Erosion by a box, edges mirrored (so the array's edge does not erode)."""
    for axis, width in enumerate(size):
        mask = _slide(mask, width, axis, np.logical_and)
    return mask


def box_dilation(mask: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Dilation by a box (the window placed as in :func:`box_erosion`)."""
    for axis, width in enumerate(size):
        mask = _slide(mask, width, axis, np.logical_or)
    return mask


def box_opening(mask: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Erosion then dilation by a box: what remains is at least the box wide. Edges are mirrored, so a
    structure is not thinned by the array's edge."""
    return box_dilation(box_erosion(mask.astype(bool, copy=False), size), size)
