"""Lung segmentation on real chest CT: right and left lungs as separate labels, without the air
around the body, the trachea and main bronchi, or stomach and bowel gas, and with dense lesions at
the lung's edge included.

It works on the canonical array (``[z, y, x]``, LPS: x to the patient's left, y to the back, z to
the head) on a grid of at most 2 mm: every ``f``-th native voxel along each axis, so each coarse
voxel stands for one block of native voxels and the mask maps back exactly (:func:`to_native`).
Steps, each cheap enough for a 512 x 512 x 300 study in well under a second on two cores:

1. air-like voxels (below ``air_hu``) that a slice's body encloses: lungs, airways, gut gas;
2. airways: small, enclosed air regions traced from the top of the scan down, slice by slice,
   starting near the midline, until they open into a lung;
3. lungs: the largest remaining 3D regions, split into right and left at the mediastinum;
4. each lung closed on its own with a square "rolling ball" and its slice holes filled, so that
   consolidation at the lung's edge and vessels inside it belong to the lung, while nothing bridges
   the mediastinum to the other lung;
5. the outer layer of a consolidation against the chest wall, which no closing of the aerated lung
   reaches (nothing aerated lies beyond it), grown back out a few mm toward the chest wall.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from scipy import ndimage

from .morphology import bounding_box, box_closing, box_dilation, box_erosion, offset_slices

RIGHT_LUNG, LEFT_LUNG = 1, 2
LUNG_NAMES = {RIGHT_LUNG: "right", LEFT_LUNG: "left"}
_WORKERS = max(1, min(4, os.cpu_count() or 1))
# Within one axial slice only: a 2D structuring element for a 3D array.
_SLICEWISE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                       [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                       [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], dtype=bool)


@dataclass(frozen=True)
class LungSettings:
    """Thresholds and sizes, in HU and mm (the defaults suit clinical chest CT)."""

    grid_mm: float = 2.0  # the coarse grid's spacing is at most this (or the native one, if coarser)
    air_hu: float = -400.0  # lung parenchyma and air lie below; soft tissue above
    airway_max_area_mm2: float = 600.0  # a trachea or main bronchus cross-section is smaller
    airway_seed_offset_mm: float = 30.0  # the trachea starts this close to the body's midline
    closing_mm: float = 12.0  # in-plane half-width of the box that closes each lung (fills edge lesions)
    closing_z_mm: float = 20.0  # its half-height: a lesion the lung surrounds above and below is filled too
    closing_max_hu: float = 200.0  # closing adds no denser voxels (bone, contrast-filled vessels)
    rim_seed_depth_mm: float = 4.5  # dense lung this far in-plane from aerated lung, at the lung's edge, is a lesion
    rim_seed_spread_mm: float = 10.0  # ... and dense lung joined to it within this many mm along z (its thin caps)
    rim_mm: float = 6.0  # how far such a lesion is grown out toward the chest wall
    rim_outer_depth_share: float = 0.5  # ... only in the outer half of the body's depth (chest wall, not mediastinum)
    min_lung_ml: float = 30.0  # smaller air regions are not a lung


def coarse_factors(spacing_zyx: tuple[float, float, float], grid_mm: float) -> tuple[int, int, int]:
    """Integer subsampling per axis so that the coarse spacing stays at or under ``grid_mm``."""
    return tuple(max(1, int(np.floor(grid_mm / float(s) + 1e-6))) for s in spacing_zyx)


def to_native(coarse: np.ndarray, factors: tuple[int, int, int], shape: tuple[int, int, int]) -> np.ndarray:
    """A coarse label array (or map) back on the native grid: each coarse voxel fills its block exactly.

    Written into an output padded to whole blocks (the result is a view of it) a few coarse slices at
    a time, rows widened first so every copy runs along whole native rows: one pass over memory and
    no copy of the volume's size beside the output."""
    if tuple(factors) == (1, 1, 1) and coarse.shape == tuple(shape):
        return coarse
    (nz, ny, nx), (fz, fy, fx) = coarse.shape, factors
    blocks = np.empty((nz, fz, ny, fy, nx * fx), dtype=coarse.dtype)
    for start in range(0, nz, 16):
        rows = np.repeat(coarse[start: start + 16], fx, axis=2) if fx > 1 else coarse[start: start + 16]
        blocks[start: start + 16] = rows[:, None, :, None, :]
    return blocks.reshape(nz * fz, ny * fy, nx * fx)[: shape[0], : shape[1], : shape[2]]


def _enclosed_regions(mask: np.ndarray, want_labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Regions of each slice's ``mask`` that do not touch the slice's border (for air: inside the
    body) and, if wanted, the in-plane connected regions of every slice (labels unique across slices).
    Slabs are labelled and looked up in parallel: scipy and NumPy release the GIL."""
    workers = min(len(mask), _WORKERS)
    bounds = np.linspace(0, len(mask), workers + 1).astype(int)
    slabs = [slice(a, b) for a, b in pairwise(bounds)]
    labels = np.empty(mask.shape, dtype=np.int32)
    enclosed = np.empty(mask.shape, dtype=bool)

    def label_slab(slab: slice) -> int:
        count = ndimage.label(mask[slab], structure=_SLICEWISE, output=labels[slab])
        part = labels[slab]
        border = np.zeros(count + 1, dtype=bool)
        border[0] = True
        for edge in (part[:, 0, :], part[:, -1, :], part[:, :, 0], part[:, :, -1]):
            border[edge.ravel()] = True
        np.logical_not(border[part], out=enclosed[slab])
        return count

    def renumber(slab: slice, offset: int) -> None:
        part = labels[slab]
        part[part > 0] += offset

    with ThreadPoolExecutor(workers) as pool:
        counts = list(pool.map(label_slab, slabs))
        if not want_labels:
            return enclosed, None
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        list(pool.map(renumber, slabs[1:], offsets[1:]))
    return enclosed, labels


def label_sizes(labels: np.ndarray, chunk_slices: int = 16) -> np.ndarray:
    """Voxels per label (index 0 included), counted a few slices at a time: ``np.bincount`` casts its
    input to 64-bit integers, which for a whole study would be twice the label array again."""
    sizes = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.int64)
    for start in range(0, len(labels), chunk_slices):
        part = labels[start: start + chunk_slices].ravel()
        sizes[: int(part.max(initial=0)) + 1] += np.bincount(part)
    return sizes


def _airways(inside_air: np.ndarray, air_labels: np.ndarray, body: np.ndarray,
             spacing_zyx: tuple[float, float, float], settings: LungSettings) -> np.ndarray:
    """Trachea and main bronchi: small enclosed air regions traced from the top slice down.

    A region starts the trace when it lies near the body's midline in the first slices that have
    enclosed air (the trachea); below, a region continues it when it overlaps the airway of the
    slice above and is still small. A region that has grown to a lung's size stops the trace there.
    """
    areas = label_sizes(air_labels)  # regions that touch the border are never looked up below
    labels = air_labels
    pixel_mm2 = spacing_zyx[1] * spacing_zyx[2]
    max_pixels = settings.airway_max_area_mm2 / pixel_mm2
    airway = np.zeros_like(inside_air)
    previous = None
    columns = np.arange(inside_air.shape[2])
    for z in range(inside_air.shape[0] - 1, -1, -1):
        slice_labels = np.where(inside_air[z], labels[z], 0)
        if previous is None:
            present = np.unique(slice_labels[slice_labels > 0])
            if present.size == 0:
                continue
            body_columns = columns[body[z].any(axis=0)]
            if body_columns.size == 0:
                continue
            midline = (body_columns[0] + body_columns[-1]) / 2
            seeds = []
            for label in present:
                if areas[label] > max_pixels:
                    continue
                x = np.nonzero(slice_labels == label)[1].mean()
                if abs(x - midline) * spacing_zyx[2] <= settings.airway_seed_offset_mm:
                    seeds.append(label)
            if not seeds:
                if any(areas[label] > max_pixels for label in present):
                    return airway  # the lungs came first: no trachea in this scan
                continue
            chosen = seeds
        else:
            overlapping = np.unique(slice_labels[previous & (slice_labels > 0)])
            chosen = [label for label in overlapping if areas[label] <= max_pixels]
            if not chosen:
                break
        current = np.isin(slice_labels, chosen)
        airway[z] = current
        previous = current
    return airway


def _split_sides(lung: np.ndarray, components: np.ndarray, kept: list[int]) -> np.ndarray:
    """Right (x below the mediastinum) and left labels; a region spanning both is cut at the
    sagittal plane where it is thinnest near the middle."""
    labels = np.zeros(lung.shape, dtype=np.uint8)
    profile = lung.sum(axis=(0, 1))
    columns = np.nonzero(profile)[0]
    if columns.size == 0:
        return labels
    low, high = columns[0], columns[-1]
    middle = slice(low + (high - low) // 3, high - (high - low) // 3 + 1)
    cut = middle.start + int(np.argmin(profile[middle])) if middle.stop > middle.start else (low + high) // 2
    x = np.arange(lung.shape[2])
    for label in kept:
        region = components == label
        region_columns = np.nonzero(region.any(axis=(0, 1)))[0]
        right_share = (region_columns < cut).mean()
        if 0.2 < right_share < 0.8:  # both lungs in one region: cut it at the mediastinum
            labels[region & (x < cut)] = RIGHT_LUNG
            labels[region & (x >= cut)] = LEFT_LUNG
        else:
            labels[region] = RIGHT_LUNG if right_share >= 0.5 else LEFT_LUNG
    return labels


def _close_lung(lung: np.ndarray, hu: np.ndarray, allowed: np.ndarray, spacing_zyx: tuple[float, float, float],
                settings: LungSettings) -> np.ndarray:
    """One lung closed with a box (half-width ``closing_mm`` in-plane, ``closing_z_mm`` along z), slice
    holes filled, on its own bounding box (so it cannot reach the other lung), adding only ``allowed``
    voxels. The box's z extent stops at the lung's top and bottom slices: closing never grows a lung
    beyond its apex or base."""
    half = [round(settings.closing_z_mm / spacing_zyx[0])]
    half += [max(1, round(settings.closing_mm / s)) for s in spacing_zyx[1:]]
    box = bounding_box(lung, (0, half[1], half[2]))
    closed = box_closing(lung[box], tuple(2 * h + 1 for h in half))
    closed |= _enclosed_regions(~closed, want_labels=False)[0]
    closed &= allowed[box] & (hu[box] < settings.closing_max_hu)
    closed |= lung[box]
    out = np.zeros_like(lung)
    out[box] = closed
    return out


def segment_lungs_coarse(hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                         settings: LungSettings = LungSettings()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Right/left lung labels (uint8, 0 elsewhere) on the coarse grid, and the subsampling factors."""
    factors = coarse_factors(spacing_zyx, settings.grid_mm)
    coarse = hu[:: factors[0], :: factors[1], :: factors[2]]
    if np.issubdtype(hu.dtype, np.floating):  # integer CT is compared as stored: no float copy
        coarse = np.nan_to_num(coarse.astype(np.float32), nan=-1024.0, posinf=3071.0, neginf=-1024.0)
    spacing = tuple(float(s) * f for s, f in zip(spacing_zyx, factors))
    labels = np.zeros(coarse.shape, dtype=np.uint8)
    air = coarse < settings.air_hu
    if air.all():
        return labels, factors
    # Beyond the box around everything denser than air, each slice is air that reaches the image's
    # border: working inside that box (plus room to close) changes nothing and skips the empty field.
    margin = (0, *(max(1, round(max(settings.closing_mm, settings.rim_mm) / s)) for s in spacing[1:]))
    outer = bounding_box(~air, margin)
    coarse, air = coarse[outer], air[outer]
    inside_air, air_labels = _enclosed_regions(air)
    body = ~air | inside_air
    inside_air &= ~_airways(inside_air, air_labels, body, spacing, settings)
    del air_labels
    if not inside_air.any():
        return labels, factors
    # Everything after this happens around the enclosed air (lungs and gut gas), plus room to close.
    crop = bounding_box(inside_air, margin)
    lungs = np.zeros(coarse.shape, dtype=np.uint8)
    lungs[crop] = _lung_labels(coarse[crop], inside_air[crop], body[crop], spacing, settings)
    _grow_lesion_rims(lungs, coarse, body, crop, spacing, settings)
    labels[outer] = lungs
    return labels, factors


def _lung_labels(hu: np.ndarray, inside_air: np.ndarray, body: np.ndarray,
                 spacing: tuple[float, float, float], settings: LungSettings) -> np.ndarray:
    """Right and left lung labels from the enclosed air that is not airway: the largest 3D regions,
    split at the mediastinum, each closed on its own."""
    components, count = ndimage.label(inside_air)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    if count == 0:
        return labels
    voxel_ml = float(np.prod(spacing)) / 1000
    sizes = label_sizes(components)[1:] * voxel_ml
    order = np.argsort(sizes)[::-1]
    largest = sizes[order[0]]
    kept = [int(i) + 1 for i in order[:2] if sizes[i] >= max(settings.min_lung_ml, 0.1 * largest)]
    if not kept:
        return labels
    lung = np.isin(components, kept)
    labels = _split_sides(lung, components, kept)
    if len(kept) == 2 and len(set(np.unique(labels)) - {0}) < 2:
        # Two regions on one side: the smaller one is gut gas or a bulla below, not the other lung.
        labels[components == kept[1]] = 0
    del components
    allowed = body & ~inside_air | lung  # the body's tissue and the lungs, never other air pockets
    sides = [side for side in (RIGHT_LUNG, LEFT_LUNG) if (labels == side).any()]

    def close(side: int) -> np.ndarray:
        return _close_lung(labels == side, hu, allowed & (labels != 3 - side), spacing, settings)

    with ThreadPoolExecutor(max(1, min(len(sides), _WORKERS))) as pool:  # the lungs close independently
        closed_sides = list(pool.map(close, sides))
    closed = np.zeros_like(labels)
    for side, closed_side in zip(sides, closed_sides):
        closed[closed_side & (closed == 0)] = side
    return closed


def _grow_lesion_rims(labels: np.ndarray, hu: np.ndarray, body: np.ndarray, box: tuple[slice, slice, slice],
                      spacing: tuple[float, float, float], settings: LungSettings) -> None:
    """Grow, in place, each lung's edge lesions out toward the chest wall by up to ``rim_mm``; ``box``
    holds the lungs with at least ``rim_mm`` to spare in-plane.

    Closing fills a consolidation only as far as aerated lung surrounds it: where the lesion replaced
    the lung out to the pleura, its outer layer is as dense as the chest wall and outside the box's
    reach. A lesion is told from the pleura's partial volume and from vessels by its depth: a dense
    voxel on the lung's in-plane edge at least ``rim_seed_depth_mm`` from any aerated voxel of the
    lung. The seeds spread through dense lung by up to ``rim_seed_spread_mm`` along z (as many voxel
    steps in-plane) to the lung's edge: a lesion's caps in the slices above and below are too thin to
    be deep, yet they replaced lung out to the pleura as well. From there the lung grows into soft
    tissue (``air_hu`` up to ``closing_max_hu``) only outward (each step farther from the slice's
    body centre) and only in the outer part of the body (depth from the skin at most
    ``rim_outer_depth_share`` of the slice's deepest), so it can reach the chest wall but never the
    mediastinum, the heart or the other lung.
    """
    steps = round(settings.rim_mm / min(spacing[1:]))
    if steps == 0:
        return
    sub_labels, sub_hu = labels[box], hu[box]  # views: growing writes into ``labels``
    lungs = sub_labels > 0
    if not lungs.any():
        return
    reach = [max(1, round(settings.rim_seed_depth_mm / s)) for s in spacing[1:]]
    near_aerated = box_dilation(lungs & (sub_hu < settings.air_hu), (1, 2 * reach[0] + 1, 2 * reach[1] + 1))
    dense = lungs & (sub_hu >= settings.air_hu)
    edge = lungs & ~box_erosion(lungs, (1, 3, 3))
    seeds = edge & dense & ~near_aerated
    del lungs, near_aerated
    if settings.rim_seed_spread_mm > 0 and seeds.any():
        spread = seeds
        for _ in range(max(1, round(settings.rim_seed_spread_mm / spacing[0]))):
            spread = box_dilation(spread, (3, 3, 3)) & dense
        seeds |= spread & edge
    del dense, edge
    seed_slices = np.nonzero(seeds.any(axis=(1, 2)))[0]
    if seed_slices.size == 0:
        return
    # The depth gate and the body centre need the whole slice: the skin lies beyond the lungs' box.
    outer, gate_step, centres = _outer_body(body[box[0]][seed_slices], spacing[1:], settings.rim_outer_depth_share)
    row0, column0 = box[1].start, box[2].start
    for z, outer_z, centre in zip(seed_slices, outer, centres):
        rows, columns = np.nonzero(seeds[z])
        rows = np.arange(max(0, rows.min() - steps - 1), min(seeds.shape[1], rows.max() + steps + 2))
        columns = np.arange(max(0, columns.min() - steps - 1), min(seeds.shape[2], columns.max() + steps + 2))
        window = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
        rows, columns = rows + row0, columns + column0  # on the whole slice
        hu_window = sub_hu[z][window]
        open_tissue = (sub_labels[z][window] == 0) & (hu_window >= settings.air_hu) \
            & (hu_window < settings.closing_max_hu) & outer_z[np.ix_(rows // gate_step, columns // gate_step)]
        radius = np.hypot((rows[:, None] - centre[0]) * spacing[1], (columns[None, :] - centre[1]) * spacing[2])
        _grow_outward(sub_labels[z][window], seeds[z][window], open_tissue, radius, steps)


def _outer_body(body: np.ndarray, pixel_mm: tuple[float, float], share: float
                ) -> tuple[np.ndarray, int, np.ndarray]:
    """Per slice of ``body``: where the depth from the skin is at most ``share`` of the slice's deepest,
    on a grid of about 8 mm (a coarse gate; every ``step``-th voxel), with that step and the body's
    centre (row, column; from the same grid). The array's edge counts as skin: a field of view that
    cuts the body has its chest wall there."""
    step = max(1, round(8.0 / min(pixel_mm)))
    coarse = np.pad(body[:, ::step, ::step], ((0, 0), (1, 1), (1, 1)))
    outer = np.empty(coarse.shape, dtype=bool)
    for z, section in enumerate(coarse):
        depth = ndimage.distance_transform_edt(section, sampling=(pixel_mm[0] * step, pixel_mm[1] * step))
        outer[z] = depth <= share * depth.max()
    coarse = coarse[:, 1:-1, 1:-1]
    area = np.maximum(coarse.sum(axis=(1, 2)), 1)
    centres = step * np.stack([(coarse.sum(axis=2) * np.arange(coarse.shape[1])).sum(axis=1) / area,
                               (coarse.sum(axis=1) * np.arange(coarse.shape[2])).sum(axis=1) / area], axis=1)
    return outer[:, 1:-1, 1:-1], step, centres


def _grow_outward(labels: np.ndarray, seeds: np.ndarray, open_tissue: np.ndarray, radius: np.ndarray,
                  steps: int) -> None:
    """Grow each lung's ``seeds`` into ``open_tissue`` (2D, in place), ``steps`` 4-connected steps,
    each step only to voxels farther from the body centre (``radius``) than the voxel grown from."""
    # Per direction, the voxels one step outward of their neighbour that way: geometry alone, so the
    # steps are shifted boolean masks.
    outward = []
    for axis in (0, 1):
        for offset in (-1, 1):
            step_to, step_from = offset_slices(radius.shape, axis, offset)
            allowed = np.zeros(radius.shape, dtype=bool)
            allowed[step_to] = radius[step_to] > radius[step_from]
            outward.append((step_from, step_to, allowed))
    for side in (RIGHT_LUNG, LEFT_LUNG):
        front = seeds & (labels == side)
        for _ in range(steps):
            if not front.any():
                break
            reached = np.zeros_like(front)
            for step_from, step_to, allowed in outward:
                reached[step_to] |= front[step_from] & allowed[step_to]
            grown = reached & open_tissue
            labels[grown] = side
            open_tissue &= ~grown
            front = grown


def segment_lungs(hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                  settings: LungSettings = LungSettings()) -> np.ndarray:
    """Right (1) and left (2) lung labels, uint8, on the native canonical grid of ``hu``."""
    coarse, factors = segment_lungs_coarse(hu, spacing_zyx, settings)
    return to_native(coarse, factors, hu.shape)
