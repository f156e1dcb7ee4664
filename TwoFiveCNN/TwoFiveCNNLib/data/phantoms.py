"""Synthetic chest CT phantoms graded like MosMed (CT-0..CT-4), for tests and smoke training.

Real COVID-19 CT cannot ship with the extension, yet the pipeline (reading, reorientation,
preprocessing, training, grading) needs studies whose class is known exactly. Each phantom is
a simplified chest (body, fat, muscle, ribs, spine, heart, aorta, trachea, two lungs with
vessels) whose lesions involve a chosen share of the lung parenchyma, so its MosMed class
holds by construction:

    CT-0: 0 %, CT-1: (0, 25) %, CT-2: [25, 50) %, CT-3: [50, 75) %, CT-4: >= 75 %.

Lesions are placed by thresholding a smooth random field plus posterior, basal and
peripheral biases at the quantile that involves exactly the target fraction of lung voxels,
which mimics the typical distribution of COVID-19 pneumonia. Studies vary in grid size,
spacing and stored orientation so readers are exercised the way real archives exercise them;
the physical anatomy does not depend on the stored orientation.

Anatomy is laid out in coordinates relative to the field of view (in-plane millimetres around
the centre, and a 0..1 feet-to-head position along z), so it always fills the scan whatever
the slice count and slice spacing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.manifest import OutputManifest
from ..io.volume import VOLUME_SUFFIXES, Geometry, write_volume
from .generated_cohort import (
    CohortJournal,
    check_room,
    grade_of,
    present_files,
    study_number,
)

GENERATOR_VERSION = 1
N_CLASSES = 5

# Involved share of lung sampled per class: MosMed's ranges with a margin from the boundaries
# so a class never depends on rounding.
FRACTION_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.03, 0.22), (0.28, 0.47), (0.53, 0.72), (0.78, 0.95),
)
# Share of the involved lung that is consolidation rather than ground glass, per class.
CONSOLIDATION_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (0.0, 0.12), (0.08, 0.25), (0.15, 0.35), (0.25, 0.5),
)
# Stored orientations: the patient direction in which index i, j and k increase, and whether
# that flips the canonical (LPS, feet-to-head) x, y and z axes.
ORIENTATIONS: dict[str, tuple[bool, bool, bool]] = {
    "LPS": (False, False, False),  # identity direction, slices feet first
    "RAS": (True, True, False),  # x and y flipped (RAS-aligned storage)
    "LPI": (False, False, True),  # slices stored head first
    "RAI": (True, True, True),
}
COARSE_XY = 56  # in-plane cells of the grid random fields are drawn on (about 6..9 mm each)
COARSE_Z = 24
PHANTOMS_SUMMARY = "phantoms.json"
# What a cohort in an output folder must share with the run asked for, to be resumed or repeated there.
PHANTOM_SETTINGS_COMPARED = {"generator": "generator", "version": "generator version", "seed": "--seed",
                             "counts": "--counts", "suffix": "file type (suffix)"}
PHANTOM_BYTES = 2.5e6  # disk per phantom (.nii.gz): 2.2 MB on average over ten measured
PHANTOM_PROCESS_BYTES = 350e6  # peak memory of `twofivecnn phantoms`: 336 MB measured


@dataclass
class Phantom:
    """One synthetic study: HU voxels in storage order, their geometry, and ground truth.

    The masks are on the canonical ``[z, y, x]`` grid (what :func:`io.volume.read_volume`
    returns), so tests can check the class and the lesion distribution without reorienting.
    ``info`` holds label, involved_fraction (lesion voxels / lung voxels), consolidation_share
    (of the lesions), size ([x, y] voxels), slices, spacing ([x, y, z] mm), orientation and seed.
    """

    array_kji: np.ndarray  # int16 HU, storage order
    geometry: Geometry
    info: dict
    lung_mask_zyx: np.ndarray = field(repr=False)
    lesion_mask_zyx: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class _Grid:
    """Canonical grid: in-plane coordinates in mm from the FOV centre, z as 0 (feet)..1 (head)."""

    x: np.ndarray  # (1, 1, nx), mm, + = patient left
    y: np.ndarray  # (1, ny, 1), mm, + = posterior
    t: np.ndarray  # (nz, 1, 1), 0..1, + = superior
    spacing: tuple[float, float, float]  # x, y, z in mm

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t.shape[0], self.y.shape[1], self.x.shape[2]


def parse_counts(text: str) -> list[int]:
    """Studies per class from ``"20,40,16,10,6"`` (CT-0 first), as a command line gives them."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        counts = [int(part) for part in parts]
    except ValueError:
        raise ValueError(
            f"counts {text!r}: expected up to {N_CLASSES} comma-separated whole numbers of studies per "
            f"class CT-0..CT-4, e.g. '20,40,16,10,6'."
        ) from None
    return _check_counts(counts)


def _check_counts(counts: Sequence[int]) -> list[int]:
    """Counts padded to five classes; a clear error rather than an empty or negative cohort."""
    counts = list(counts)
    if not 1 <= len(counts) <= N_CLASSES:
        raise ValueError(
            f"counts {counts}: give 1 to {N_CLASSES} numbers of studies, one per class CT-0..CT-4.")
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in counts):
        raise ValueError(f"counts {counts}: numbers of studies must be whole numbers.")
    if any(c < 0 for c in counts):
        raise ValueError(f"counts {counts}: numbers of studies cannot be negative.")
    if sum(counts) == 0:
        raise ValueError(
            f"counts {counts}: all zero, so there is nothing to generate; ask for at least one study.")
    return [int(c) for c in counts] + [0] * (N_CLASSES - len(counts))


def study_seed(seed: int, index: int) -> int:
    """Seed of study ``index`` in a cohort: independent streams, stable when counts change."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _sample_grid(rng: np.random.Generator, shape_zyx: tuple[int, int, int] | None = None) -> _Grid:
    """Grid size and spacing like downsampled clinical CT: 512-matrix spacing scaled to the matrix.

    ``shape_zyx`` fixes the size (benchmarks want clinical 512 x 512 studies); the draws are made
    either way, so the same seed gives the same spacing and patient."""
    nx = int(rng.integers(160, 257))
    ny = nx if rng.random() < 0.8 else int(np.clip(round(nx * rng.uniform(0.8, 1.2)), 160, 256))
    nz = int(rng.integers(24, 81))
    if shape_zyx is not None:
        nz, ny, nx = (int(n) for n in shape_zyx)
    sxy = round(rng.uniform(0.6, 1.0) * 512 / nx, 4)
    sz = round(rng.uniform(1.0, 5.0) * 4) / 4
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sxy
    y = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sxy
    t = np.linspace(0.0, 1.0, nz, dtype=np.float32)
    return _Grid(x[None, None, :], y[None, :, None], t[:, None, None], (sxy, sxy, sz))


def check_grade_and_orientation(grade: int, orientation: str | None,
                                orientations: Collection[str] = tuple(ORIENTATIONS), name: str = "grade") -> None:
    """A MosMed grade 0..4 (the caller's argument ``name``) and a stored orientation among
    ``orientations`` (or None: drawn), or a clear error."""
    if grade not in range(N_CLASSES):
        raise ValueError(f"{name} {grade!r}: MosMed classes are 0..{N_CLASSES - 1} (CT-0..CT-4).")
    if orientation is not None and orientation not in orientations:
        raise ValueError(f"orientation {orientation!r}: choose one of {sorted(orientations)} or None.")


def stretch_axis(array: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` to ``n_out`` samples, ends aligned.

    Plain gathers and arithmetic rather than BLAS products: threaded BLAS on tiny matrices
    slows down badly when other processes share the cores.
    """
    n_in = array.shape[axis]
    position = np.linspace(0.0, n_in - 1, n_out, dtype=np.float32)
    low = np.minimum(position.astype(np.intp), n_in - 2)
    weight_shape = [1] * array.ndim
    weight_shape[axis] = n_out
    weight = (position - low).reshape(weight_shape)
    below = np.take(array, low, axis=axis)
    return below + weight * (np.take(array, low + 1, axis=axis) - below)


def _smooth_fields(rng: np.random.Generator, shape: tuple[int, int, int],
                   scales: Sequence[Sequence[tuple[float, float]]]) -> list[np.ndarray]:
    """Smooth unit-variance random fields on the full grid, one per list of (sigma, weight) octaves.

    Noise is filtered on a coarse grid and stretched by separable linear interpolation,
    which is far cheaper than filtering the full volume.
    """
    nz, ny, nx = shape
    coarse = (COARSE_Z, max(8, round(COARSE_XY * ny / nx)), COARSE_XY)
    fields = []
    for octaves in scales:
        total = np.zeros(coarse, dtype=np.float32)
        for sigma, weight in octaves:
            noise = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma, mode="wrap")
            total += weight * (noise - noise.mean()) / noise.std()
        total = (total - total.mean()) / total.std()
        fields.append(stretch_axis(stretch_axis(stretch_axis(total, 2, nx), 1, ny), 0, nz))
    return fields


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    """Squared normalised radius: < 1 inside the ellipse."""
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2


def _anatomy(grid: _Grid, rng: np.random.Generator
             ) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray, dict[str, np.ndarray]]:
    """HU volume without lesions, plus the in-plane box inside the fat layer, the lung mask
    in that box and the lung-relative coordinates lesions need there.

    Only the subcutaneous fat and the air around lie outside the box, so the costly 3D work
    is done on the box alone.
    """
    x, y = grid.x, grid.y
    _, ny, nx = grid.shape
    fov_x, fov_y = nx * grid.spacing[0], ny * grid.spacing[1]

    # Body: ellipse well inside the FOV, leaving room behind it for the table.
    a = rng.uniform(0.32, 0.43) * fov_x
    b = min(a * rng.uniform(0.65, 0.8), 0.41 * fov_y)
    cx0, cy0 = rng.uniform(-0.03, 0.03) * fov_x, -rng.uniform(0.0, 0.04) * fov_y
    fat, muscle = rng.uniform(4, 15), rng.uniform(6, 12)
    body = _ellipse(x, y, cx0, cy0, a, b) < 1
    inner = _ellipse(x, y, cx0, cy0, a - fat, b - fat) < 1
    table_top = cy0 + b + rng.uniform(2, 6)
    table = (y > table_top) & (y < table_top + 8) & (np.abs(x) < 0.42 * fov_x)
    hu = np.empty(grid.shape, dtype=np.float32)
    hu[:] = np.where(table, 150.0, -1000.0) + np.where(body, 900.0, 0.0)  # fat -100 in the body
    rows, cols = np.nonzero(inner[0])
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    hu_box = hu[(slice(None), *box)]
    hu_box[:] = np.where(inner[0][box], 45.0, hu_box)  # muscle
    grid = _Grid(x[..., box[1]], y[:, box[0]], grid.t, grid.spacing)
    lung, coords = _thorax(hu_box, grid, rng, (cx0, cy0), (a - fat - muscle, b - fat - muscle), muscle)
    return hu, box, lung, coords


def _thorax(hu: np.ndarray, grid: _Grid, rng: np.random.Generator, centre: tuple[float, float],
            cavity_axes: tuple[float, float], muscle: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Paint the thoracic cavity, its organs and the ribs into ``hu`` (on ``grid``); return the lung mask
    and the lung-relative coordinates lesions need."""
    x, y, t = grid.x, grid.y, grid.t
    cx0, cy0 = centre
    ac, bc = cavity_axes
    xb, yb = x - cx0, y - cy0  # body-centred in-plane coordinates, 2D by broadcasting
    cavity_r2 = _ellipse(xb, yb, 0, 0, ac, bc)
    cavity = cavity_r2 < 1
    hu[:, cavity[0]] = -60.0  # mediastinal fat until organs are painted over it

    # Lungs: two ellipses per slice that shrink towards the apex; the diaphragm domes up
    # under each lung so the bases keep only their posterior and lateral recesses.
    t_base, t_apex = rng.uniform(0.04, 0.12), rng.uniform(0.9, 0.98)
    tau = (t - t_base) / (t_apex - t_base)  # 0 at the lung base, 1 at the apex
    taper = np.clip((1 - tau) / 0.55, 1e-3, 1.0) ** 0.55
    half_med = rng.uniform(0.09, 0.14) * ac
    ax_l, ay_l = (ac - half_med) / 2 * rng.uniform(1.02, 1.12), bc * rng.uniform(0.95, 1.05)
    cy_l = bc * rng.uniform(0.0, 0.06)
    wobble, texture = _smooth_fields(rng, hu.shape, [[(4.0, 1.0)], [(1.5, 1.0)]])
    lung_r2 = np.full(hu.shape, np.inf, dtype=np.float32)
    lung = np.zeros(hu.shape, dtype=bool)
    hila_x = []
    for side in (-1, 1):  # patient right (x < 0), then left
        cx_l = side * (half_med + ax_l) + cx0
        hila_x.append(side * (half_med + 0.4 * ax_l) + cx0)
        r2_flat = _ellipse(x, y, cx_l, cy0 + cy_l, ax_l, ay_l)
        r2 = ((x - cx_l) / (ax_l * taper)) ** 2 + ((y - cy0 - cy_l) / (ay_l * taper**0.7)) ** 2
        dome = rng.uniform(0.1, 0.2) + (0.05 if side < 0 else 0.0)  # the liver lifts the right dome
        diaphragm = t_base + dome * np.clip(1 - r2_flat, 0, 1)
        lung |= (r2 + 0.12 * wobble < 1) & (t > diaphragm) & (tau < 1)
        lung_r2 = np.minimum(lung_r2, r2)
        abdomen = cavity & (t <= diaphragm) & ((xb * side) > 0)
        hu[abdomen] = 60.0 if side < 0 else 40.0  # liver on the right, spleen and stomach left

    hu += np.where(cavity & ~lung, 25 * texture, 0)

    heart = (_ellipse(xb, yb, 0.12 * ac, -0.3 * bc, 0.36 * ac, 0.42 * bc) + ((tau - 0.2) / 0.24) ** 2) < 1
    aorta = (_ellipse(xb, yb, 0.14 * ac, 0.48 * bc, 0.08 * ac, 0.08 * ac) < 1) & (tau < 0.75)
    trachea_r2 = np.where(tau > 0.62, _ellipse(xb, yb, 0, 0.18 * bc, 9.0, 9.0), np.inf)
    spine = _ellipse(xb, yb, 0, bc * 0.92, 0.15 * bc, 0.14 * bc)
    canal = _ellipse(xb, yb, 0, bc * 0.92 + 0.2 * bc, 0.06 * bc, 0.05 * bc) < 1
    n_vertebrae = rng.uniform(10, 13)
    disc = ((t * n_vertebrae + rng.random()) % 1) > 0.82
    vertebra = (spine < 1) & ~disc
    sternum = (_ellipse(xb, yb, 0, -bc - muscle / 2, 14.0, 6.0) < 1) & (tau > 0.1) & (tau < 0.9)

    # Ribs: a shell just outside the cavity cut into oblique bands that run down anteriorly.
    v = yb / bc
    rib_phase = (tau * rng.uniform(9, 11) + 0.9 * (1 - v) / 2 + rng.random()) % 1
    ribs = ((cavity_r2 > 1.02) & (_ellipse(xb, yb, 0, 0, ac + 9, bc + 9) < 1) & (rib_phase < 0.28)
            & (tau > -0.1) & (tau < 1.02) & ~((np.abs(xb) < 0.25 * ac) & (v < 0)))

    lung &= ~heart & ~aorta & ~(spine < 1.4) & ~(trachea_r2 < 2.5) & (cavity_r2 < 0.97)
    hu[heart] = 40.0
    hu[aorta] = 45.0
    hu[(spine < 1) & disc] = 80.0
    hu[vertebra] = 250.0
    hu[vertebra & (spine > 0.7)] = 700.0
    hu[np.broadcast_to(canal, hu.shape)] = 20.0
    hu[np.broadcast_to(sternum, hu.shape)] = 400.0
    hu[ribs] = 600.0
    hu[np.broadcast_to(trachea_r2 < 1.5, hu.shape)] = 20.0  # tracheal wall
    hu[np.broadcast_to(trachea_r2 < 1, hu.shape)] = -1000.0

    # Parenchyma: slightly denser posteriorly (gravity), faint texture.
    posterior = np.clip((y - cy0 - cy_l) / ay_l, -1, 1)
    hu[lung] = (-860 + 25 * texture + 30 * posterior)[lung]

    # Vessels: tubes where two smooth fields both cross zero, thicker towards the hila.
    f1, f2 = _smooth_fields(rng, hu.shape, [[(1.0, 1.0)], [(1.0, 1.0)]])
    hilum_x = np.minimum(*[np.abs(x - c) for c in hila_x]) / ax_l
    hilum_r2 = hilum_x**2 + ((y - cy0 - cy_l) / ay_l) ** 2 + ((tau - 0.55) / 0.6) ** 2
    closeness = np.clip(1.1 - np.sqrt(hilum_r2), 0.3, 1.0)
    width = rng.uniform(0.3, 0.38) * closeness
    vessels = lung & (np.abs(f1) < width) & (np.abs(f2) < width)
    hu[vessels] = (40 + 140 * closeness)[vessels]

    coords = {"tau": tau, "posterior": posterior, "peripheral": np.clip(lung_r2, 0, 1),
              "side": np.sign(x - cx0), "texture": texture}
    return lung, coords


def _values_in(mask: np.ndarray, array: np.ndarray) -> np.ndarray:
    """Values of a (possibly broadcast) coordinate array at the voxels of ``mask``."""
    return np.broadcast_to(array, mask.shape)[mask]


def _lesions(hu: np.ndarray, lung: np.ndarray, coords: dict[str, np.ndarray], label: int,
             rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
    """Paint ground glass and consolidation on exactly the target share of lung voxels.

    Returns the lesion mask, the involved fraction and the consolidation share of the lesions.
    """
    low, high = FRACTION_RANGES[label]
    n_lung = int(lung.sum())
    n_involved = round(rng.uniform(low, high) * n_lung)
    if n_involved == 0:
        return np.zeros_like(lung), 0.0, 0.0
    (patches,) = _smooth_fields(rng, hu.shape, [[(3.0, 0.6), (1.5, 0.35), (0.8, 0.2)]])
    score = (patches[lung]
             + rng.uniform(0.9, 1.5) * _values_in(lung, coords["posterior"])
             + rng.uniform(0.3, 0.8) * (1 - np.clip(_values_in(lung, coords["tau"]), 0, 1))
             + rng.uniform(0.5, 1.0) * _values_in(lung, coords["peripheral"])
             + rng.uniform(-0.3, 0.3) * _values_in(lung, coords["side"]))
    # Partitioning by rank gives the exact voxel count even if scores tie.
    ranked = np.argpartition(-score, n_involved - 1)
    involved = np.zeros(n_lung, dtype=bool)
    involved[ranked[:n_involved]] = True
    threshold = score[ranked[n_involved - 1]]
    cons_share = rng.uniform(*CONSOLIDATION_RANGES[label])
    n_cons = round(cons_share * n_involved)
    consolidated = np.zeros(n_lung, dtype=bool)
    if n_cons:
        top = ranked[:n_involved][np.argpartition(-score[ranked[:n_involved]], n_cons - 1)[:n_cons]]
        consolidated[top] = True
        cons_threshold = score[top].min()
    else:
        cons_threshold = score.max()
    # Ground glass grows denser towards the consolidated cores.
    depth = np.clip((score - threshold) / max(cons_threshold - threshold, 1e-6), 0, 1)
    tex_lung = coords["texture"][lung]
    ggo = np.clip(-700 + 250 * depth**0.7 + 50 * tex_lung, -750, -380)
    consolidation = np.clip(-40 + 35 * tex_lung, -100, 50)
    values = hu[lung]
    is_vessel = values > -300  # vessels stay visible inside ground glass
    values = np.where(involved & ~is_vessel, ggo, values)
    values = np.where(consolidated, np.maximum(values, consolidation), values)
    hu[lung] = values
    mask = np.zeros_like(lung)
    mask[lung] = involved
    return mask, n_involved / n_lung, n_cons / n_involved


def _embed(mask_box: np.ndarray, box: tuple[slice, slice], shape: tuple[int, int, int]) -> np.ndarray:
    """A mask computed on the in-plane box, placed on the full grid."""
    mask = np.zeros(shape, dtype=bool)
    mask[(slice(None), *box)] = mask_box
    return mask


def _store(canonical: np.ndarray, grid: _Grid, orientation: str,
           z_origin: float) -> tuple[np.ndarray, Geometry]:
    """Flip the canonical array into the stored orientation with a geometry that keeps the anatomy in place.

    A flipped index axis runs backwards in LPS, so its origin moves to the far end of the axis.
    """
    flips_xyz = ORIENTATIONS[orientation]
    nz, ny, nx = canonical.shape
    origin = [float(grid.x[0, 0, 0]), float(grid.y[0, 0, 0]), z_origin]
    for axis, (flip, n) in enumerate(zip(flips_xyz, (nx, ny, nz))):
        if flip:
            origin[axis] += (n - 1) * grid.spacing[axis]
    flip_axes = [2 - axis for axis in range(3) if flips_xyz[axis]]  # numpy axis of LPS axis
    array_kji = np.ascontiguousarray(np.flip(canonical, flip_axes) if flip_axes else canonical)
    direction = np.diag([-1.0 if flip else 1.0 for flip in flips_xyz])
    geometry = Geometry((nx, ny, nz), grid.spacing, tuple(origin), tuple(float(d) for d in direction.ravel()))
    return array_kji, geometry


def generate_phantom(label: int, seed: int, orientation: str | None = None,
                     shape_zyx: tuple[int, int, int] | None = None) -> Phantom:
    """One synthetic chest CT of MosMed class ``label`` (0..4), fully determined by ``seed``.

    The grid, the anatomy, the lesions and the orientation draw from separate random streams,
    so the same seed gives the same patient at every grade and in every ``orientation``
    (one of :data:`ORIENTATIONS`; drawn from the seed when None). ``shape_zyx`` fixes the number
    of slices, rows and columns (drawn from the seed when None).
    """
    check_grade_and_orientation(label, orientation, name="label")
    grid_rng, anatomy_rng, lesion_rng, store_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    grid = _sample_grid(grid_rng, shape_zyx)
    hu, box, lung, coords = _anatomy(grid, anatomy_rng)
    hu_box = hu[(slice(None), *box)]
    lesions, fraction, cons_share = _lesions(hu_box, lung, coords, label, lesion_rng)
    # Light in-plane blur for partial volume inside the body wall, then scanner noise.
    hu_box[:] = ndimage.gaussian_filter(hu_box, (0, 0.6, 0.6), truncate=2.5)
    hu += store_rng.standard_normal(hu.shape, dtype=np.float32) * store_rng.uniform(8, 25)
    canonical = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    drawn = str(store_rng.choice(sorted(ORIENTATIONS)))  # drawn even when forced, so the origin stays put
    orientation = orientation or drawn
    z_origin = round(float(store_rng.uniform(-400, -100)), 2)
    array_kji, geometry = _store(canonical, grid, orientation, z_origin)
    nz, ny, nx = canonical.shape
    info = {"label": label, "involved_fraction": fraction, "consolidation_share": cons_share,
            "size": [nx, ny], "slices": nz, "spacing": list(grid.spacing), "orientation": orientation,
            "seed": seed}
    return Phantom(array_kji, geometry, info, _embed(lung, box, hu.shape), _embed(lesions, box, hu.shape))


def write_cohort(out_dir: str | Path, counts: Sequence[int], seed: int,
                 progress: Callable[[int, int], None] | None = None, suffix: str = ".nii.gz",
                 command: str = "") -> list[Path]:
    """Write a MosMed-style cohort ``out_dir/studies/CT-k/study_NNNN<suffix>`` plus ``phantoms.json``.

    ``counts`` gives studies per class from CT-0 (missing classes have none). Studies are
    numbered 0001.. across classes in order; study n uses :func:`study_seed` (seed, n), so a
    cohort is reproducible and each study does not depend on how many others are made.
    ``progress(done, total)`` is called after each study. As ``synth`` (:mod:`.generated_cohort`), it
    writes only what it owns and refuses a cohort there made with other settings; re-running the same
    settings resumes a killed run (``command``, the command line, goes into the refusal's message).
    """
    counts = _check_counts(counts)
    if suffix not in VOLUME_SUFFIXES or suffix in (".nhdr", ".mhd"):
        raise ValueError(f"suffix {suffix!r}: use one of .nii.gz, .nii, .nrrd or .mha.")
    out = Path(out_dir)

    def planned(relative: Path) -> bool:
        n = study_number(relative.name, "study", suffix)
        return len(relative.parts) == 3 and n is not None and relative.parent.name == f"CT-{grade_of(counts, n)}"

    settings = {"generator": "TwoFiveCNNLib.data.phantoms", "version": GENERATOR_VERSION, "seed": seed,
                "counts": counts, "suffix": suffix, "fraction_ranges": [list(r) for r in FRACTION_RANGES],
                "consolidation_ranges": [list(r) for r in CONSOLIDATION_RANGES]}
    journal = CohortJournal.open(out, PHANTOMS_SUMMARY, settings, PHANTOM_SETTINGS_COMPARED,
                                 command or "twofivecnn phantoms")
    present = present_files(out, ("studies",), planned)
    total = sum(counts)
    study_bytes = PHANTOM_BYTES * (2 if suffix == ".nii" else 1)  # .nii alone is written uncompressed
    check_room(out, total - journal.done_count, study_bytes, "the phantoms' mean size", PHANTOM_PROCESS_BYTES, 1)
    manifest = OutputManifest.open(out, "phantoms")
    journal.begin(manifest, present, [out / "studies" / f"CT-{k}" for k, count in enumerate(counts) if count])
    records: dict[int, dict] = {}

    def recorded(n: int, record: dict) -> None:
        records[n] = record
        if progress is not None:
            progress(len(records), total)

    def study_path(n: int, label: int) -> Path:
        return Path("studies", f"CT-{label}", f"study_{n:04d}{suffix}")

    try:
        for n, label in journal.studies_to_make(counts, manifest, lambda n, label: [study_path(n, label)],
                                                recorded):
            phantom = generate_phantom(label, study_seed(seed, n))
            relative = study_path(n, label)
            write_volume(phantom.array_kji, phantom.geometry, out / relative)
            record = {"path": relative.as_posix(), **phantom.info}
            journal.add(record)
            recorded(n, record)
    finally:
        journal.close()
    journal.finish([records[n] for n in sorted(records)])
    return [out / records[n]["path"] for n in sorted(records)]
