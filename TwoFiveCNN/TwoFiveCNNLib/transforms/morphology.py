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


def box_opening(mask: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Erosion then dilation by a box: what remains is at least the box wide. Edges are mirrored, so a
    structure is not thinned by the array's edge."""
    region = mask.astype(np.uint8)
    return ndimage.maximum_filter(ndimage.minimum_filter(region, size=size), size=size) > 0
