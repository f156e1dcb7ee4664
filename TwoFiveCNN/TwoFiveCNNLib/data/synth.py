"""Realistic synthetic studies: COVID-19 lesions inserted into real chest CT (``twofivecnn synth``).

Phantoms (:mod:`.phantoms`) know their grade exactly but are not anatomy; real COVID-19 studies are
anatomy but their masks are scarce and cannot ship. Inserting lesions into real, normal chest CTs
gives both: real lungs, vessels, airways and chest wall around lesions whose extent, and so whose
MosMed grade, is known voxel for voxel. Per study, from one base CT:

1. the anatomy varies: a small in-plane affine (rotation, scale, shift) and a mild smooth elastic
   deformation, applied to the HU and to the base's lung labels with the same coordinates; thicker
   slices (never finer than the base, each new slice the average of the base slices it covers);
   a cropped field of view (the body may touch the edge, the lungs stay whole);
2. the lesion-inclusive lung mask is the base's own lungs (:func:`segment_lungs` on the untouched
   base), carried along by step 1, so lesions of any density lie in it by construction;
3. the lesion covers exactly a share of the lung voxels drawn within the grade's MosMed range: the
   top of a score (smooth multifocal blobs plus peripheral, posterior and basal predominance), in one
   lung or both;
4. inside it, ground glass that keeps the vessels, consolidation (more of it at higher grades) and
   crazy paving (ground glass under a reticular network), with edges blended over a voxel or two;
5. scanner noise, then the study is stored as LPS, RAS or feet-first (storage order and direction).

Everything is drawn from the seed, so the same seed and bases give the same bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.manifest import OutputManifest, refuse_overlap
from ..io.volume import (
    VOLUME_SUFFIXES,
    Geometry,
    VolumeError,
    canonical_axes,
    has_volume_suffix,
    is_hidden,
    read_volume,
    voxel_count,
    write_volume,
)
from ..transforms.lungs import LEFT_LUNG, RIGHT_LUNG, segment_lungs
from .generated_cohort import (
    CohortJournal,
    check_room,
    grade_of,
    present_files,
    study_number,
)
from .index import SYNTH_SUMMARY, base_patient
from .phantoms import _check_counts, check_grade_and_orientation, stretch_axis, study_seed
from .workers import map_in_order

SYNTH_VERSION = 1
# Involved share of the lung voxels per grade (CT-0..CT-4): MosMed's ranges, a point clear of each
# boundary so that the grade never hangs on rounding or on a measurement's small error.
INVOLVEMENT_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.06, 0.24), (0.26, 0.49), (0.51, 0.74), (0.76, 0.95),
)
# Share of the lesion that is consolidation, per grade: it rises as the disease progresses.
CONSOLIDATION_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.0, 0.15), (0.05, 0.3), (0.15, 0.45), (0.25, 0.6),
)
CRAZY_PAVING_CHANCE = (0.0, 0.25, 0.4, 0.5, 0.5)  # per grade: a study shows crazy paving at all
BILATERAL_CHANCE = (0.0, 0.6, 0.8, 0.95, 1.0)  # per grade; a share one lung cannot hold is bilateral anyway
GROUND_GLASS_HU = (-650.0, -450.0)  # the study's ground-glass level
CONSOLIDATION_HU = (-50.0, 50.0)
RETICULAR_HU = (150.0, 250.0)  # crazy paving: the lines stand this far above the ground glass
NOISE_HU = (0.0, 25.0)  # standard deviation of the scanner noise added to the whole study
ROTATION_DEG = 8.0
SCALE_RANGE = (0.92, 1.08)  # per in-plane axis
SHIFT_MM = 6.0
ELASTIC_MM = (0.0, 3.0)  # standard deviation of the elastic displacement at its control points
ELASTIC_GRID = (3, 5, 5)  # control points (z, y, x): a few, so the deformation stays smooth
MAX_CROP = 0.2  # of the in-plane size, per side, never into the lungs
SLICE_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)  # slice spacings to draw from (those not finer than the base)
# Stored orientations as index axes (k, j, i) reversed from the canonical LPS grid, with the direction
# following, exactly as an archive that stores the same CT otherwise would.
ORIENTATIONS: dict[str, tuple[bool, bool, bool]] = {
    "LPS": (False, False, False),  # identity direction, first slice at the feet
    "RAS": (False, True, True),  # rows and columns reversed: direction diag(-1, -1, 1)
    "feet-first": (True, False, False),  # slices reversed: direction z -1, first slice at the head
}
WALL_HU = 40.0  # soft tissue of the chest wall, for the partial-volume voxels at a lesion's pleural edge
PURE_AIR_HU = -700.0  # outside the lung mask and below this: airway or outside air, left alone
MIN_LUNG_ML = 100.0  # a base whose lungs are smaller is not a chest CT
HU_RANGE = (-1024.0, 3071.0)  # the stored range; padding outside the scanner's circle reads as air
# What a cohort in an output folder must share with the run asked for, to be resumed or repeated there.
SYNTH_SETTINGS_COMPARED = {"generator": "generator", "version": "generator version", "seed": "--seed",
                           "counts": "--counts", "prefix": "--prefix", "bases": "--base (file names)",
                           "base_bytes": "--base (file sizes)"}
# Disk per study, per voxel of its base: int16 HU with scanner noise compress little (1.02-1.14 bytes
# measured on CTChest4 and a 256 x 256 x 136 resampling of it), the two masks to about 0.03 bytes.
SYNTH_BYTES_PER_BASE_VOXEL = 1.2
# Peak memory of a process making studies, from its largest base: 189 MB for CTChest4 (0.56 M voxels),
# 503 MB for 8.9 M voxels, 760 MB for 17.8 M (512 x 512 x 68).
WORKER_BYTES, WORKER_BYTES_PER_VOXEL = 170e6, 38.0


@dataclass(frozen=True)
class BaseCT:
    """A normal chest CT that lesions are inserted into: canonical HU and its lung labels.

    The lung labels come from the untouched base, so they are what TwoFiveCNN's own lung segmentation
    finds on a normal chest; lesions are then placed inside them.
    """

    name: str  # file name, as synth.json records it
    hu: np.ndarray  # float32, canonical [z, y, x], clipped to HU_RANGE
    lungs: np.ndarray  # uint8 labels on the same grid: RIGHT_LUNG, LEFT_LUNG
    spacing_zyx: tuple[float, float, float]
    origin_lps: tuple[float, float, float]  # LPS position of canonical voxel [0, 0, 0]


@dataclass
class SynthStudy:
    """One synthetic study in its stored orientation, with its masks on the same grid and geometry."""

    array_kji: np.ndarray  # int16 HU, storage order
    lesion_kji: np.ndarray  # uint8: 1 lesion
    lungs_kji: np.ndarray  # uint8: 1 right lung, 2 left lung (lesion included)
    geometry: Geometry
    info: dict


# ------------------------------------------------------------------------------------------- bases


def find_bases(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The base volume files: files as given, folders expanded to their volume files (sorted by name).

    Every file's header is read here, so a bad base is refused before any study is made.
    """
    if not paths:
        raise VolumeError("--base: give at least one normal chest CT volume file, or a folder of them.")
    found: list[Path] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise VolumeError(f"--base {path}: no such file or folder. Give normal chest CT volume files "
                              f"({', '.join(VOLUME_SUFFIXES)}) or folders of them.")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not is_hidden(p)
                           and has_volume_suffix(p))
            if not files:
                raise VolumeError(f"--base {path}: the folder holds no volume files "
                                  f"({', '.join(VOLUME_SUFFIXES)}). Give a folder of normal chest CT volumes, "
                                  f"such as MosMedData's CT-0 folder, "
                                  f"or the files themselves.")
        else:
            if not has_volume_suffix(path):
                raise VolumeError(f"--base {path}: not a volume file. Give normal chest CT volume files "
                                  f"({', '.join(VOLUME_SUFFIXES)}) or folders of them (convert DICOM first).")
            files = [path]
        for file in files:
            if voxel_count(file) is None:
                raise VolumeError(f"--base {file}: cannot be read as an image (truncated, corrupt, or not "
                                  f"really a volume file). Re-export it, or leave it out of --base.")
        found.extend(files)
    return found


def load_base(path: str | os.PathLike) -> BaseCT:
    """Read a base CT into the canonical grid and find its lungs (refused if it has none)."""
    volume = read_volume(path)
    if volume.array.shape[0] < 2:
        raise VolumeError(f"--base {path}: a single axial slice; a base must be a whole chest CT volume.")
    lungs = segment_lungs(volume.array, volume.spacing_zyx)
    lung_ml = float(np.count_nonzero(lungs)) * float(np.prod(volume.spacing_zyx)) / 1000
    if lung_ml < MIN_LUNG_ML:
        raise VolumeError(f"--base {path}: no lungs found ({lung_ml:.0f} mL of lung); bases must be chest CTs "
                          f"in Hounsfield units that show the lungs. Leave this file out of --base.")
    hu = np.clip(volume.array, *HU_RANGE).astype(np.float32)
    return BaseCT(Path(path).name, hu, lungs, volume.spacing_zyx, _canonical_origin(volume.geometry))


def _canonical_origin(geometry: Geometry) -> tuple[float, float, float]:
    """LPS position of canonical voxel [0, 0, 0]: the stored voxel at the low end of every LPS axis.

    Studies are stored on axis-aligned grids from there, so an oblique base comes out straightened
    (the tilt is one more small rotation of the anatomy)."""
    source_axes, flips = canonical_axes(geometry.direction_matrix)
    ijk = np.zeros(3)
    for world in range(3):
        if flips[world]:
            ijk[source_axes[world]] = geometry.size[source_axes[world]] - 1
    return tuple(float(v) for v in (geometry.ijk_to_lps() @ np.append(ijk, 1.0))[:3])


# ------------------------------------------------------------------------------------------ anatomy


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing_zyx: Sequence[float],
                  octaves: Sequence[tuple[float, float]]) -> np.ndarray:
    """A smooth random field of unit variance on ``shape`` (float32): (sigma in mm, weight) octaves of
    filtered white noise, drawn on a coarse grid and stretched linearly, which costs far less than
    filtering the full grid."""
    cell = min(sigma for sigma, _ in octaves) / 2
    coarse = tuple(int(min(n, max(4, np.ceil(n * s / cell)))) for n, s in zip(shape, spacing_zyx))
    cell_mm = [n * s / c for n, s, c in zip(shape, spacing_zyx, coarse)]
    total = np.zeros(coarse, dtype=np.float32)
    for sigma, weight in octaves:
        noise = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32),
                                        [sigma / c for c in cell_mm], mode="reflect")
        total += weight * noise / max(float(noise.std()), 1e-6)
    total = (total - total.mean()) / max(float(total.std()), 1e-6)
    for axis in (2, 1, 0):  # the smallest intermediate arrays first
        if total.shape[axis] != shape[axis]:
            total = stretch_axis(total, axis, shape[axis])
    return total




def _slab_weights(z_mm: float, thickness: float, base_mm: float, n_base: int) -> tuple[int, np.ndarray]:
    """First base slice and weights that make a slice of ``thickness`` centred at ``z_mm``: the overlap
    of each base slice's extent with the new one. For equal thickness this is linear interpolation."""
    centres = np.arange(n_base) * base_mm
    overlap = np.clip(np.minimum(centres + base_mm / 2, z_mm + thickness / 2)
                      - np.maximum(centres - base_mm / 2, z_mm - thickness / 2), 0, None)
    nonzero = np.nonzero(overlap > 1e-6 * base_mm)[0]
    if not len(nonzero):  # the slice lies at the very end of the base
        nearest = int(np.clip(round(z_mm / base_mm), 0, n_base - 1))
        return nearest, np.ones(1)
    weights = overlap[nonzero[0]: nonzero[-1] + 1]
    return int(nonzero[0]), weights / weights.sum()


def _weighted_slices(volume: np.ndarray, first: int, weights: np.ndarray) -> np.ndarray:
    """Sum of ``weights`` times consecutive slices from ``first``, by plain arithmetic (BLAS products of
    such thin matrices are slow, and slower still when other processes share the cores)."""
    total = volume[first] * np.float32(weights[0])
    for offset, weight in enumerate(weights[1:], 1):
        total += volume[first + offset] * np.float32(weight)
    return total


def _deform(base: BaseCT, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict, tuple]:
    """The base's HU and lung labels on a new grid: affine and elastic in-plane, thicker slices, cropped.

    Returns HU (float32), labels (uint8), the parameters drawn, and the new canonical spacing and
    LPS origin. HU and labels are moved by the same coordinates; the labels as a signed map (right +1,
    left -1) interpolated linearly and cut at one half, so their edges follow the HU's partial volume.
    HU are interpolated in-plane by cubic splines: linear interpolation blurs vessel edges into the
    ground-glass range, and slicerio's normal CT then measures about 5 % involved instead of 3.6 %
    (cubic: about 4.3 %).
    """
    nz_b, ny, nx = base.hu.shape
    sz_b, sy, sx = base.spacing_zyx
    rotation = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    scale_y, scale_x = (float(s) for s in rng.uniform(*SCALE_RANGE, size=2))
    shift_y, shift_x = (float(s) for s in rng.uniform(-SHIFT_MM, SHIFT_MM, size=2))
    elastic_mm = float(rng.uniform(*ELASTIC_MM))
    control = rng.standard_normal((2, *ELASTIC_GRID)).astype(np.float32) * elastic_mm
    choices = sorted({round(sz_b, 4), *(s for s in SLICE_MM if s > sz_b + 1e-3)})
    slice_mm = float(choices[int(rng.integers(len(choices)))])
    z0 = float(rng.uniform(0, slice_mm - sz_b)) if slice_mm > sz_b + 1e-3 else 0.0  # where the first slice lies
    n_out = int(np.floor(((nz_b - 1) * sz_b - z0) / slice_mm + 1e-6)) + 1

    # Output pixel -> source pixel: p_src = M^-1 (p - shift) + elastic(p), in mm about the centre.
    theta = np.deg2rad(rotation)
    rotate = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    forward = rotate @ np.diag([scale_y, scale_x])
    inverse = np.linalg.inv(forward)
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    py = ((np.arange(ny) - cy) * sy - shift_y)[:, None]
    px = ((np.arange(nx) - cx) * sx - shift_x)[None, :]
    affine_y = inverse[0, 0] * py + inverse[0, 1] * px
    affine_x = inverse[1, 0] * py + inverse[1, 1] * px
    # Control displacements stretched in-plane (cubic: smooth) once per control layer, linear along z.
    stretch = (ny / ELASTIC_GRID[1], nx / ELASTIC_GRID[2])
    layers = np.stack([[ndimage.zoom(plane, stretch, order=3, mode="nearest") for plane in axis] for axis in control])
    signed = np.zeros(256, dtype=np.float32)  # lung labels as one signed map: right +1, left -1
    signed[RIGHT_LUNG], signed[LEFT_LUNG] = 1.0, -1.0

    hu = np.empty((n_out, ny, nx), dtype=np.float32)
    side = np.empty((n_out, ny, nx), dtype=np.float32)
    for k in range(n_out):
        z_mm = z0 + k * slice_mm
        first, weights = _slab_weights(z_mm, slice_mm, sz_b, nz_b)
        hu_slice = _weighted_slices(base.hu, first, weights)
        side_slice = _weighted_slices(signed[base.lungs[first: first + len(weights)]], 0, weights)
        t = z_mm / max((nz_b - 1) * sz_b, 1e-6) * (ELASTIC_GRID[0] - 1)
        low = min(int(t), ELASTIC_GRID[0] - 2)
        displacement = layers[:, low] + (t - low) * (layers[:, low + 1] - layers[:, low])
        coordinates = np.stack([(affine_y + displacement[0]) / sy + cy, (affine_x + displacement[1]) / sx + cx])
        ndimage.map_coordinates(hu_slice, coordinates, output=hu[k], order=3, mode="constant", cval=HU_RANGE[0])
        ndimage.map_coordinates(side_slice, coordinates, output=side[k], order=1, mode="constant", cval=0.0)
    lungs = np.where(side >= 0.5, RIGHT_LUNG, np.where(side <= -0.5, LEFT_LUNG, 0)).astype(np.uint8)

    # Field of view: random margins per side, never into the lungs (a cut lung would lose its lesions).
    ys = np.nonzero(lungs.any(axis=(0, 2)))[0]
    if not len(ys):
        raise VolumeError(f"--base {base.name}: the lungs left the field of view after deformation.")
    xs = np.nonzero(lungs.any(axis=(0, 1)))[0]
    limits = {"anterior": ys.min(), "posterior": ny - 1 - ys.max(), "right": xs.min(), "left": nx - 1 - xs.max()}
    crop = {}
    for name, free in limits.items():
        size = ny if name in ("anterior", "posterior") else nx
        crop[name] = int(rng.integers(0, max(0, min(int(MAX_CROP * size), int(free) - 2)) + 1))
    window = (slice(None), slice(crop["anterior"], ny - crop["posterior"]),
              slice(crop["right"], nx - crop["left"]))
    hu, lungs = np.ascontiguousarray(hu[window]), np.ascontiguousarray(lungs[window])

    spacing = (slice_mm, sy, sx)
    origin = (base.origin_lps[0] + crop["right"] * sx, base.origin_lps[1] + crop["anterior"] * sy,
              base.origin_lps[2] + z0)
    parameters = {"rotation_deg": round(rotation, 3), "scale_yx": [round(scale_y, 4), round(scale_x, 4)],
                  "shift_mm_yx": [round(shift_y, 2), round(shift_x, 2)], "elastic_mm": round(elastic_mm, 3),
                  "elastic_grid_zyx": list(ELASTIC_GRID), "slice_mm": slice_mm, "first_slice_mm": round(z0, 3),
                  "crop_voxels": crop}
    return hu, lungs, parameters, (spacing, origin)


# ------------------------------------------------------------------------------------------ lesions


def _standardised(values: np.ndarray) -> np.ndarray:
    return (values - values.mean()) / max(float(values.std()), 1e-6)


def _box(mask: np.ndarray, pad: int) -> tuple[slice, ...]:
    """The bounding box of ``mask`` with ``pad`` voxels around it, inside the array."""
    box = []
    for axis in range(mask.ndim):
        found = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        box.append(slice(max(0, found[0] - pad), min(mask.shape[axis], found[-1] + pad + 1)))
    return tuple(box)


def _top(score: np.ndarray, count: int) -> np.ndarray:
    """A mask of the ``count`` highest scores: exactly that many, even when scores tie."""
    chosen = np.zeros(score.shape, dtype=bool)
    if count > 0:
        chosen[np.argpartition(-score, count - 1)[:count]] = True
    return chosen


@dataclass(frozen=True)
class _LungBox:
    """Where lesions are drawn: the lungs' bounding box, its lung labels and which of its voxels are lung.

    Scores and masks over the lung are flat arrays over ``lung``'s voxels (``values[lung]``), which
    holds far fewer voxels than the box.
    """

    box: tuple[slice, ...]
    labels: np.ndarray  # uint8 lung labels on the box
    lung: np.ndarray  # bool: labels > 0
    spacing_zyx: tuple[float, float, float]

    @classmethod
    def around(cls, lungs: np.ndarray, spacing_zyx: tuple[float, float, float]) -> _LungBox:
        box = _box(lungs > 0, pad=2)
        return cls(box, lungs[box], lungs[box] > 0, spacing_zyx)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.labels.shape

    def on_box(self, values: np.ndarray) -> np.ndarray:
        """A mask over the lung voxels as a mask of the box."""
        full = np.zeros(self.shape, dtype=bool)
        full[self.lung] = values
        return full


def _predominance_score(rng: np.random.Generator,
                        region: _LungBox) -> tuple[np.ndarray, np.ndarray, dict[str, float], float]:
    """Where lesions go first, per lung voxel: multifocal blobs plus peripheral, posterior and basal
    predominance, each of unit spread over the lung and drawn weights.

    Returns the score, the posterior map (the consolidation favours it too), the weights and the
    peripheral reach in mm.
    """
    shape, lung, (_, sy, sx) = region.shape, region.lung, region.spacing_zyx
    blobs = _smooth_field(rng, shape, region.spacing_zyx, [(10.0, 0.6), (22.0, 1.0)])[lung]
    # Depth under the pleura, in-plane (slices may be far thicker than the pixels).
    depth_mm = np.stack([ndimage.distance_transform_edt(plane, sampling=(sy, sx)).astype(np.float32)
                         for plane in lung])[lung]
    reach_mm = float(rng.uniform(8.0, 20.0))
    y = np.broadcast_to(np.arange(shape[1], dtype=np.float32)[None, :, None], shape)[lung]
    z = np.broadcast_to(np.arange(shape[0], dtype=np.float32)[:, None, None], shape)[lung]
    weights = {"multifocal": 1.0, "peripheral": float(rng.uniform(0.5, 1.3)),
               "posterior": float(rng.uniform(0.4, 1.1)), "basal": float(rng.uniform(0.2, 0.8))}
    posterior = _standardised(y)
    score = (weights["multifocal"] * _standardised(blobs)
             + weights["peripheral"] * _standardised(np.exp(-depth_mm / np.float32(reach_mm)))
             + weights["posterior"] * posterior + weights["basal"] * _standardised(-z))
    return score, posterior, weights, reach_mm


def _confine_to_laterality(rng: np.random.Generator, score: np.ndarray, right: np.ndarray, n_lesion: int,
                           grade: int) -> str:
    """Shift ``score`` (in place) so the lesion is bilateral, one side somewhat worse at random, or
    in one lung only; a lesion one lung cannot hold is bilateral anyway. Returns the laterality."""
    side = rng.choice([RIGHT_LUNG, LEFT_LUNG])
    in_side = right if side == RIGHT_LUNG else ~right
    if rng.random() < BILATERAL_CHANCE[grade] or n_lesion > 0.85 * int(in_side.sum()):
        score += np.float32(rng.uniform(-0.4, 0.4)) * np.where(right, np.float32(1), np.float32(-1))
        return "bilateral"
    score[~in_side] -= 1e3
    return "right" if side == RIGHT_LUNG else "left"


def _lesion_patterns(rng: np.random.Generator, region: _LungBox, grade: int,
                     score: np.ndarray, posterior: np.ndarray,
                     involved: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consolidation in the dependent cores of the lesions, crazy paving in patches of the rest (the
    rest of ``involved`` is ground glass): the two masks over the lung voxels."""
    lung, n_lesion = region.lung, int(involved.sum())
    threshold = float(score[involved].min())
    cores = _smooth_field(rng, region.shape, region.spacing_zyx, [(12.0, 1.0)])[lung]
    n_cons = round(rng.uniform(*CONSOLIDATION_RANGES[grade]) * n_lesion)
    cons_score = _standardised(score - np.float32(threshold)) + 0.7 * posterior + 0.7 * cores
    consolidated = _top(np.where(involved, cons_score, np.float32(-np.inf)), n_cons)
    del cores, cons_score
    paving = rng.random() < CRAZY_PAVING_CHANCE[grade]
    n_paving = round(rng.uniform(0.2, 0.6) * (n_lesion - n_cons)) if paving else 0
    patches = _smooth_field(rng, region.shape, region.spacing_zyx, [(15.0, 1.0)])[lung]
    crazy = _top(np.where(involved & ~consolidated, patches, np.float32(-np.inf)), n_paving)
    return consolidated, crazy


def _lesion_levels(rng: np.random.Generator) -> dict[str, float]:
    """The study's ground-glass and consolidation levels, and how far crazy paving's lines rise (HU)."""
    ranges = {"ground_glass": GROUND_GLASS_HU, "consolidation": CONSOLIDATION_HU, "reticular": RETICULAR_HU}
    return {name: float(rng.uniform(*limits)) for name, limits in ranges.items()}


def _reticular_lines(rng: np.random.Generator, shape: tuple[int, ...],
                     spacing_zyx: tuple[float, float, float], height_hu: float) -> np.ndarray:
    """Crazy paving's reticular network (HU to add): thin lines where band-passed noise crosses zero,
    in-plane, enclosing polygons of about 15-25 mm like thickened septa around secondary lobules. Never
    finer than 1.5 voxels, which a coarse grid would draw as speckle rather than lines."""
    _, sy, sx = spacing_zyx
    noise = rng.standard_normal(shape, dtype=np.float32)
    fine = (0.0, max(3.0 / sy, 1.5), max(3.0 / sx, 1.5))
    band = ndimage.gaussian_filter(noise, fine)
    band -= ndimage.gaussian_filter(noise, tuple(2 * f for f in fine))
    del noise
    lines = np.clip(1 - np.abs(band) / np.float32(0.35 * max(float(band.std()), 1e-6)), 0, 1)
    lines *= np.float32(height_hu)
    return lines


def _blend_sigma(spacing_zyx: tuple[float, float, float]) -> tuple[float, float, float]:
    """Blends of about a voxel in-plane and the same mm across slices (none across slices so much
    thicker than the pixels that it would change nothing)."""
    sz, sy, _ = spacing_zyx
    return (0.8 * sy / sz if sy / sz > 0.6 else 0.0, 0.8, 0.8)


def _lesion_hu(rng: np.random.Generator, region: _LungBox, base: np.ndarray, levels: dict[str, float],
               cons_box: np.ndarray, crazy_box: np.ndarray | None) -> np.ndarray:
    """The lesion's own HU on the box (float32, in place where it saves a copy of the box): ground
    glass lifts the parenchyma to a level but keeps whatever is denser (vessels), with reticular lines
    on ``crazy_box`` (None: no crazy paving); consolidation replaces what was there and fades into the
    ground glass around it."""
    shape = region.shape
    variation = _smooth_field(rng, shape, region.spacing_zyx, [(6.0, 1.0)])
    grain = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), (0, 0.7, 0.7))
    grain *= np.float32(15 / max(float(grain.std()), 1e-6))
    ground_glass = variation * np.float32(40)
    ground_glass += grain
    ground_glass += np.float32(levels["ground_glass"])
    if crazy_box is not None:
        lines = _reticular_lines(rng, shape, region.spacing_zyx, levels["reticular"])
        ground_glass[crazy_box] += lines[crazy_box]
        del lines
    np.maximum(ground_glass, base, out=ground_glass)
    consolidation = variation
    consolidation *= np.float32(20)
    consolidation += grain
    consolidation += np.float32(levels["consolidation"])
    del grain
    cons_weight = ndimage.gaussian_filter(cons_box.astype(np.float32), _blend_sigma(region.spacing_zyx))
    cons_weight[cons_box] = 1
    consolidation -= ground_glass
    consolidation *= cons_weight
    target = ground_glass
    target += consolidation
    return target


def _blend_into_lung(base: np.ndarray, target: np.ndarray, region: _LungBox,
                     lesion_box: np.ndarray) -> np.ndarray:
    """The box with the lesion in it: ``target`` on the lesion, and the lung voxels next to it, and the
    partial-volume voxels at the pleura, moved part of the way towards the nearby lesion's values.
    ``target`` becomes the result (it saves a copy of the box)."""
    lung = region.lung
    sigma = _blend_sigma(region.spacing_zyx)
    reach = ndimage.gaussian_filter(lesion_box.astype(np.float32), sigma)
    lifted = target - base
    lifted[~lesion_box] = 0
    lifted = ndimage.gaussian_filter(lifted, sigma)
    lifted /= np.maximum(reach, np.float32(1e-6))
    np.maximum(lifted, 0, out=lifted)  # the nearby lesion's rise over the base
    blended = target
    blended[~lesion_box] = base[~lesion_box]
    edge = lung & ~lesion_box & (reach > 0.01)
    blended[edge] += (reach * lifted)[edge]
    # Voxels just outside the lung mask that are part lung, part chest wall (partial volume): their lung
    # part is lesion too. Left as they were, they draw a dark line between a lesion and the pleura.
    lung_hu = float(np.median(base[lung]))
    partial = ~lung & (reach > 0.1) & (base > PURE_AIR_HU) & (base < WALL_HU)
    air_part = np.clip((WALL_HU - base[partial]) / max(WALL_HU - lung_hu, 1.0), 0, 1)
    blended[partial] += air_part * lifted[partial]
    return blended


def _lesion_record(share: float, n_lung: int, involved: np.ndarray, right: np.ndarray, n_cons: int,
                   n_paving: int, levels: dict[str, float], laterality: str, weights: dict[str, float],
                   reach_mm: float) -> dict:
    """What was drawn for one study's lesions, as synth.json records it."""
    n_lesion = int(involved.sum())
    per_lung = {name: round(int((involved & voxels).sum()) / max(1, int(voxels.sum())), 4)
                for name, voxels in (("right", right), ("left", ~right))}
    return {"involved_share_drawn": round(share, 6), "involved_share_mask": round(n_lesion / n_lung, 6),
            "involved_share_per_lung": per_lung, "laterality": laterality,
            "patterns": {"ground_glass": round((n_lesion - n_cons - n_paving) / n_lesion, 4),
                         "crazy_paving": round(n_paving / n_lesion, 4),
                         "consolidation": round(n_cons / n_lesion, 4)},
            "ground_glass_hu": round(levels["ground_glass"], 1),
            "consolidation_hu": round(levels["consolidation"], 1),
            "reticular_hu": round(levels["reticular"], 1) if n_paving else None,
            "predominance_weights": {k: round(v, 3) for k, v in weights.items()},
            "peripheral_reach_mm": round(reach_mm, 2)}


def _insert_lesions(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float], grade: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Paint lesions into ``hu`` (canonical, in place) on exactly the drawn share of the lung voxels.

    Returns the lesion mask and what was drawn. Work is done on the lungs' bounding box only. The
    steps draw from ``rng`` in a fixed order, so a seed gives the same study.
    """
    lesion = np.zeros(hu.shape, dtype=bool)
    low, high = INVOLVEMENT_RANGES[grade]
    if high == 0:
        return lesion, {"involved_share_drawn": 0.0, "involved_share_mask": 0.0, "laterality": "none",
                        "patterns": {"ground_glass": 0.0, "crazy_paving": 0.0, "consolidation": 0.0}}
    share = float(rng.uniform(low, high))
    region = _LungBox.around(lungs, spacing_zyx)
    n_lung = int(region.lung.sum())
    n_lesion = max(1, round(share * n_lung))

    score, posterior, weights, reach_mm = _predominance_score(rng, region)
    right = region.labels[region.lung] == RIGHT_LUNG
    laterality = _confine_to_laterality(rng, score, right, n_lesion, grade)
    involved = _top(score, n_lesion)
    consolidated, crazy = _lesion_patterns(rng, region, grade, score, posterior, involved)
    del score, posterior
    n_cons, n_paving = int(consolidated.sum()), int(crazy.sum())
    lesion_box, cons_box = region.on_box(involved), region.on_box(consolidated)
    crazy_box = region.on_box(crazy) if n_paving else None
    levels = _lesion_levels(rng)
    info = _lesion_record(share, n_lung, involved, right, n_cons, n_paving, levels, laterality, weights,
                          reach_mm)
    del involved, consolidated, crazy, right

    base = hu[region.box].copy()
    lesion_hu = _lesion_hu(rng, region, base, levels, cons_box, crazy_box)
    hu[region.box] = _blend_into_lung(base, lesion_hu, region, lesion_box)
    lesion[region.box] = lesion_box
    return lesion, info


# ------------------------------------------------------------------------------------------- studies


def _store(canonical: np.ndarray, spacing_zyx: tuple[float, float, float],
           origin_lps: tuple[float, float, float], flips_kji: tuple[bool, bool, bool]) -> tuple[np.ndarray, Geometry]:
    """A canonical array in a stored orientation: index axes reversed and the direction and origin
    following, so every voxel keeps its place in the patient (as Testing/test_lungs.py's ``reoriented``)."""
    nz, ny, nx = canonical.shape
    size, spacing = (nx, ny, nz), tuple(float(s) for s in spacing_zyx[::-1])
    direction, origin = np.eye(3), np.array(origin_lps, dtype=float)
    array = canonical
    for axis_ijk, flip in enumerate(flips_kji[::-1]):
        if flip:
            origin += direction[:, axis_ijk] * spacing[axis_ijk] * (size[axis_ijk] - 1)
            direction[:, axis_ijk] *= -1
            array = np.flip(array, axis=2 - axis_ijk)
    geometry = Geometry(size, spacing, tuple(float(o) for o in origin),
                        tuple(float(d) for d in direction.ravel()))
    return np.ascontiguousarray(array), geometry


def synthesize_study(base: BaseCT, grade: int, seed: int, orientation: str | None = None,
                     insert_lesions: bool = True) -> SynthStudy:
    """One study of MosMed grade ``grade`` from ``base``, fully determined by ``seed``.

    Anatomy, lesions, noise and orientation draw from separate streams, so ``insert_lesions=False``
    gives the very same study without its lesions (what tests compare against), and a forced
    ``orientation`` (one of :data:`ORIENTATIONS`) stores the same study otherwise.
    """
    check_grade_and_orientation(grade, orientation, tuple(ORIENTATIONS))
    anatomy_rng, lesion_rng, noise_rng, store_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    hu, lungs, deformation, (spacing, origin) = _deform(base, anatomy_rng)
    if insert_lesions:
        lesion, lesion_info = _insert_lesions(hu, lungs, spacing, grade, lesion_rng)
    else:
        lesion, lesion_info = np.zeros(hu.shape, dtype=bool), {}
    noise_hu = float(noise_rng.uniform(*NOISE_HU))
    hu += noise_rng.standard_normal(hu.shape, dtype=np.float32) * noise_hu
    study = np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)
    drawn = str(store_rng.choice(list(ORIENTATIONS)))  # drawn even when forced: the stream stays the same
    orientation = orientation or drawn
    flips = ORIENTATIONS[orientation]
    array_kji, geometry = _store(study, spacing, origin, flips)
    lesion_kji, _ = _store(lesion.astype(np.uint8), spacing, origin, flips)
    lungs_kji, _ = _store(lungs, spacing, origin, flips)
    nz, ny, nx = study.shape
    info = {"base": base.name, "patient": base_patient(base.name), "grade": grade, "label": f"CT-{grade}", "seed": seed, **lesion_info,
            "lung_voxels": int(np.count_nonzero(lungs)), "lesion_voxels": int(np.count_nonzero(lesion)),
            "orientation": orientation, "direction": list(geometry.direction), "size": [nx, ny, nz],
            "spacing": list(geometry.spacing), "noise_hu": round(noise_hu, 2), "deformation": deformation}
    return SynthStudy(array_kji, lesion_kji, lungs_kji, geometry, info)


_LOADED_BASE: dict[Path, BaseCT] = {}  # per process: one base in memory at a time (bases can be large)


def _write_study(out: Path, base_path: Path, label: int, name: str, seed_n: int, n: int) -> tuple[int, dict]:
    """Make study ``n`` and write it with its masks (masks first: a study on disk always has its masks)."""
    if base_path not in _LOADED_BASE:
        _LOADED_BASE.clear()
        _LOADED_BASE[base_path] = load_base(base_path)
    study = synthesize_study(_LOADED_BASE[base_path], label, seed_n)
    study_path, lesion_path, lungs_path = _study_files(name, label)
    write_volume(study.lesion_kji, study.geometry, out / lesion_path)
    write_volume(study.lungs_kji, study.geometry, out / lungs_path)
    write_volume(study.array_kji, study.geometry, out / study_path)
    return n, {"path": study_path.as_posix(), "lesion_mask": lesion_path.as_posix(),
               "lung_mask": lungs_path.as_posix(), **study.info}


def _study_files(name: str, label: int) -> tuple[Path, Path, Path]:
    """The study's path and its lesion and lung masks' paths, relative to the output folder."""
    return (Path("studies", f"CT-{label}", f"{name}.nii.gz"),
            *(Path("masks", f"{name}_{kind}.nii.gz") for kind in ("lesion", "lungs")))


def _planned(relative: Path, counts: Sequence[int], prefix: str) -> bool:
    """Whether the cohort writes the file at ``relative`` (a study in its grade's folder, or a mask)."""
    if relative.parts[0] == "studies" and len(relative.parts) == 3:
        n = study_number(relative.name, prefix, ".nii.gz")
        return n is not None and relative.parent.name == f"CT-{grade_of(counts, n)}"
    if relative.parts[0] == "masks" and len(relative.parts) == 2:
        return any(grade_of(counts, study_number(relative.name, prefix, f"_{kind}.nii.gz") or 0) is not None
                   for kind in ("lesion", "lungs"))
    return False


def write_synth_cohort(bases: Sequence[str | os.PathLike], out_dir: str | os.PathLike, counts: Sequence[int],
                       seed: int, command: str = "", progress: Callable[..., None] | None = None,
                       prefix: str = "study", workers: int = 1) -> list[Path]:
    """Write ``out_dir/studies/CT-k/<prefix>_NNNN.nii.gz`` (int16 HU), the masks beside them in
    ``out_dir/masks/`` (``<prefix>_NNNN_lesion.nii.gz``, ``<prefix>_NNNN_lungs.nii.gz``: uint8 on the
    study's grid and storage order) and ``out_dir/synth.json``. ``prefix`` keeps study ids apart from
    another cohort's (MosMedData's are ``study_NNNN`` too) when the folders are indexed together.

    The masks stay outside ``studies/`` so that a dataset index never takes them for studies. Studies
    are numbered 0001.. across grades in order; study n draws its base and everything else from
    :func:`~.phantoms.study_seed` (seed, n), so it does not depend on how many others are made.
    ``progress(done, total, text)`` is called after each study. ``workers`` processes make studies side
    by side; the bytes are the same for any number.

    The cohort writes only what it owns (:mod:`.generated_cohort`): an output folder that is, holds or
    lies in a base is refused, and so is any file it would replace that twofivecnn did not write, or a
    cohort there made with other settings. Re-running the same command resumes a killed run: the
    studies already written are kept, the rest made.
    """
    counts = _check_counts(counts)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", prefix):
        raise ValueError(f"--prefix {prefix!r}: use letters, digits, '_' or '-' (it starts every study's file name).")
    paths = find_bases(bases)
    out = Path(out_dir)
    refuse_overlap([out], bases, "synth")
    voxels = [voxel_count(path) or 0 for path in paths]
    settings = {"generator": "TwoFiveCNNLib.data.synth", "version": SYNTH_VERSION, "seed": seed,
                "command": command, "counts": counts, "prefix": prefix, "bases": [p.name for p in paths],
                "base_bytes": [p.stat().st_size for p in paths],
                "involvement_ranges": [list(r) for r in INVOLVEMENT_RANGES],
                "consolidation_ranges": [list(r) for r in CONSOLIDATION_RANGES],
                "masks": "lesion: 1 = lesion; lungs: 1 right, 2 left (the lesion-inclusive lung mask)"}
    journal = CohortJournal.open(out, SYNTH_SUMMARY, settings, SYNTH_SETTINGS_COMPARED,
                                 command or "twofivecnn synth")
    present = present_files(out, ("studies", "masks"), lambda relative: _planned(relative, counts, prefix))
    total = sum(counts)
    workers = max(1, min(workers, total))
    check_room(out, total - journal.done_count, float(np.mean(voxels)) * SYNTH_BYTES_PER_BASE_VOXEL,
               f"the voxels of the {len(paths)} base CT(s)", WORKER_BYTES + WORKER_BYTES_PER_VOXEL * max(voxels),
               workers)
    manifest = OutputManifest.open(out, "synth")
    journal.begin(manifest, present, [out / "masks", *(out / "studies" / f"CT-{k}" for k, c in enumerate(counts) if c)])

    records: dict[int, dict] = {}

    def recorded(n: int, record: dict, how: str) -> None:
        records[n] = record
        if progress is not None:
            progress(len(records), total, f"{record['path']} {how}")

    def kept(n: int, record: dict) -> None:
        recorded(n, record, "kept (made by an earlier run)")

    def jobs() -> Iterator[tuple]:
        """The studies still to make, their files claimed before they are handed to a worker."""
        for n, label in journal.studies_to_make(counts, manifest, lambda n, label: _study_files(
                f"{prefix}_{n:04d}", label), kept):
            chosen = paths[int(np.random.default_rng([seed, n, 1]).integers(len(paths)))]
            yield out, chosen, label, f"{prefix}_{n:04d}", study_seed(seed, n), n

    try:
        with closing(map_in_order(_write_study, jobs(), workers)) as made:  # closed: the pool shut down
            for n, record in made:
                journal.add(record)
                recorded(n, record, f"from {record['base']}")
    finally:
        journal.close()
    journal.finish([records[n] for n in sorted(records)])
    return [out / records[n]["path"] for n in sorted(records)]
