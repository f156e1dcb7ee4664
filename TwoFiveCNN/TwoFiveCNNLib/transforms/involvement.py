"""Quantitative lung involvement: HU bands inside the lung mask, per lung and per zone, and the
MosMed grade the involved share implies.

Bands (configurable, the defaults chest-CT quantification tools start from): emphysema below
-950 HU, normally aerated -950..-750, ground glass -750..-400, and dense tissue from -400 up.

- Dense tissue is consolidation or vessel, which overlap in HU; they are told apart by shape:
  thin structures, those an in-plane opening of ``vessel_width_mm`` removes, are vessels, and so is
  the partial-volume rim of ground-glass-range voxels touching them.
- Involvement is regional: a lung voxel is involved where, in the ``region_window_mm`` square
  around it, at least ``region_share`` of the voxels that are not vessel are ground glass or dense.
  Inside such a region, dense voxels are consolidation and all others ground glass (the vessels and
  aerated specks a lesion holds belong to it); outside, ground-glass-range specks are partial
  volume of vessel walls and noise, counted as aerated lung, and dense ones as vessel. That is the
  partial-volume allowance that keeps healthy lungs under the CT-0 cut-off.

Involved share = (ground glass + consolidation) / lung volume, both counted in voxels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .lungs import LEFT_LUNG, LUNG_NAMES, RIGHT_LUNG, LungSettings, segment_lungs_coarse, to_native
from .morphology import bounding_box, box_dilation, box_opening

# Band labels of the overlay (0 is outside the lungs).
EMPHYSEMA, AERATED, GROUND_GLASS, CONSOLIDATION, VESSEL = 1, 2, 3, 4, 5
BAND_NAMES = {EMPHYSEMA: "emphysema", AERATED: "aerated", GROUND_GLASS: "ground_glass",
              CONSOLIDATION: "consolidation", VESSEL: "vessel"}
INVOLVED_BANDS = (GROUND_GLASS, CONSOLIDATION)
ZONES = ("upper", "middle", "lower", "ventral", "dorsal")
# What the model's involvement part reads of a study: band shares of the lungs (see lung_features).
LUNG_FEATURES = ("emphysema", "ground_glass", "consolidation", "involved")
# MosMed's grades by involved share of the lungs; below ``normal_share`` a lung counts as normal.
MOSMED_UPPER_SHARES = (0.25, 0.50, 0.75)
# In-plane window of the voxel lesion map (see lesion_map).
LESION_WINDOW_MM = 5.0


@dataclass(frozen=True)
class InvolvementSettings:
    """HU band limits, the vessel width and the CT-0 cut-off (see the README for how each was set)."""

    emphysema_below: float = -950.0
    aerated_below: float = -750.0
    ground_glass_below: float = -400.0
    vessel_width_mm: float = 6.0  # dense structures thinner than this in-plane are vessels
    region_window_mm: float = 11.0  # in-plane window in which involvement is judged
    region_share: float = 0.5  # share of involved (non-vessel) voxels in the window that makes a region
    normal_share: float = 0.05  # involved shares below this are the noise floor of normal lungs: CT-0
    learned_max_hu: float = 200.0  # a lesion network's lesion voxels added to the lungs are less dense (not bone)
    # ... and lie in slices where their lung's HU mask covers at least this share of its largest slice:
    # beside a lung base's last tip (or gut gas the mask took for it) the network's voxels are abdomen.
    learned_min_slice_share: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)


# Bump when the lung mask or the bands change in code without a settings change (2: edge lesions'
# rims grown toward the chest wall), so results kept from the old method are not reused.
MEASUREMENT_METHOD = 2


def measurement_fingerprint() -> str:
    """Identifies how lung features are measured by default (method and settings): stored lung
    features are reused only when it matches."""
    data = {"method": MEASUREMENT_METHOD, "lungs": asdict(LungSettings()), "involvement": asdict(InvolvementSettings())}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def band_labels(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                settings: InvolvementSettings = InvolvementSettings()) -> np.ndarray:
    """uint8 band label of every lung voxel (0 outside the lungs), on ``hu``'s grid."""
    inside = lungs > 0
    bands = np.zeros(hu.shape, dtype=np.uint8)
    if not inside.any():
        return bands
    box = bounding_box(inside)
    values, region = hu[box], inside[box]
    out = np.zeros(region.shape, dtype=np.uint8)
    out[values < settings.ground_glass_below] = GROUND_GLASS
    out[values < settings.aerated_below] = AERATED
    out[values < settings.emphysema_below] = EMPHYSEMA
    dense = region & (values >= settings.ground_glass_below)
    size = (1, *(max(1, round(settings.vessel_width_mm / s)) for s in spacing_zyx[1:]))
    vessel = dense & ~box_opening(dense, size)
    vessel |= box_dilation(vessel, (1, 3, 3)) & (out == GROUND_GLASS)
    out[dense] = CONSOLIDATION
    out[vessel] = VESSEL
    out[~region] = 0
    window = (1, *(max(1, round(settings.region_window_mm / s)) | 1 for s in spacing_zyx[1:]))
    involved = ndimage.uniform_filter(((out == GROUND_GLASS) | (out == CONSOLIDATION)).astype(np.float32), window)
    counted = ndimage.uniform_filter(((out > 0) & (out != VESSEL)).astype(np.float32), window)
    lesion = region & (involved >= settings.region_share * np.maximum(counted, 1e-6))
    speck = ~lesion & region
    out[speck & (out == GROUND_GLASS)] = AERATED
    out[speck & (out == CONSOLIDATION)] = VESSEL
    out[lesion & (out != CONSOLIDATION)] = GROUND_GLASS
    bands[box] = out
    return bands


def _slice_and_row_counts(lungs: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Voxel counts per (canonical slice z, row y, lung label, band label): ``[z, y, side, band]``.

    One ``bincount`` per slab of slices over a combined index, inside the lungs' bounding box, so no
    coordinate arrays of the lungs' size are built; every zone's counts are sums of these."""
    n_bands = max(BAND_NAMES) + 1
    n_keys = (max(LUNG_NAMES) + 1) * n_bands
    counts = np.zeros((*lungs.shape[:2], max(LUNG_NAMES) + 1, n_bands), dtype=np.int64)
    if not lungs.any():
        return counts
    box = bounding_box(lungs > 0)
    sides, labels = lungs[box], bands[box]
    rows = sides.shape[1]
    slab = 8
    position = (np.arange(slab, dtype=np.int32)[:, None, None] * rows
                + np.arange(rows, dtype=np.int32)[None, :, None]) * n_keys
    for start in range(0, len(sides), slab):
        key = sides[start: start + slab].astype(np.int32) * n_bands
        key += labels[start: start + slab]
        key += position[: len(key)]
        part = np.bincount(key.ravel(), minlength=len(key) * rows * n_keys)
        counts[box[0].start + start: box[0].start + start + len(key), box[1]] = part.reshape(len(key), rows, -1, n_bands)
    return counts


def _zone_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Band counts per zone of one lung, from its counts per canonical slice and row (``[z, y, band]``):
    thirds of its head-to-feet extent (z grows to the head) and halves of its front-to-back extent
    (y to the back)."""
    per_slice, per_row = counts.sum(axis=1), counts.sum(axis=0)
    z = np.nonzero(per_slice.sum(axis=1))[0]
    y = np.nonzero(per_row.sum(axis=1))[0]
    third = (z.max() + 1 - z.min()) / 3
    height = np.minimum(((np.arange(len(per_slice)) - z.min()) / third).astype(np.int64), 2)  # 0 lower
    dorsal = np.arange(len(per_row)) >= (y.min() + y.max() + 1) / 2
    counts = {"upper": per_slice[height == 2].sum(axis=0), "middle": per_slice[height == 1].sum(axis=0),
              "lower": per_slice[height <= 0].sum(axis=0), "ventral": per_row[~dorsal].sum(axis=0),
              "dorsal": per_row[dorsal].sum(axis=0)}
    return {zone: counts[zone] for zone in ZONES}


def _figures(counts: np.ndarray, voxel_ml: float) -> dict:
    """Volumes and shares of a region from its band counts (index = band label)."""
    total = int(counts[1:].sum())
    record = {"volume_ml": round(total * voxel_ml, 2), "voxels": total,
              "bands_ml": {name: round(int(counts[b]) * voxel_ml, 2) for b, name in BAND_NAMES.items()},
              "bands_share": {name: (int(counts[b]) / total if total else 0.0) for b, name in BAND_NAMES.items()}}
    record["involved_share"] = sum(record["bands_share"][BAND_NAMES[b]] for b in INVOLVED_BANDS)
    return record


def grade_for_share(share: float, settings: InvolvementSettings = InvolvementSettings()) -> str:
    """MosMed grade of an involved share: CT-0 under the normal cut-off, then 25 % steps."""
    if share < settings.normal_share:
        return "CT-0"
    return f"CT-{1 + sum(share >= upper for upper in MOSMED_UPPER_SHARES)}"


def measure_involvement(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                        settings: InvolvementSettings = InvolvementSettings()) -> tuple[dict, np.ndarray]:
    """Lung volumes and band shares for both lungs together, each lung and each zone; and the band labels.

    Volumes are voxel counts times the voxel volume, so the bands add up to the lung volume exactly.
    """
    bands = band_labels(hu, lungs, spacing_zyx, settings)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000
    counts = _slice_and_row_counts(lungs, bands)
    report = {"lungs": _figures(counts[:, :, 1:].sum(axis=(0, 1, 2)), voxel_ml), "per_lung": {},
              "settings": settings.to_dict()}
    for value, name in LUNG_NAMES.items():
        side = counts[:, :, value]
        if not side.any():
            continue
        record = _figures(side.sum(axis=(0, 1)), voxel_ml)
        record["zones"] = {zone: _figures(c, voxel_ml) for zone, c in _zone_counts(side).items()}
        report["per_lung"][name] = record
    share = report["lungs"]["involved_share"]
    report["involved_share"] = share
    report["grade"] = grade_for_share(share, settings) if report["lungs"]["voxels"] else None
    return report, bands


@dataclass
class LungAnalysis:
    """The lungs of one study on its analysis grid (every ``factors``-th native voxel): right/left
    labels, band labels and the involvement report measured from them."""

    lungs: np.ndarray
    bands: np.ndarray
    report: dict
    factors: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]  # the analysis grid's


def analyse_lungs(hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                  settings: InvolvementSettings = InvolvementSettings(),
                  lung_settings: LungSettings | None = None) -> LungAnalysis:
    """Segment the lungs on the analysis grid and measure their involvement there."""
    lungs, factors = segment_lungs_coarse(hu, spacing_zyx, lung_settings or LungSettings())
    coarse_hu = hu[:: factors[0], :: factors[1], :: factors[2]]
    coarse_spacing = tuple(float(s) * f for s, f in zip(spacing_zyx, factors))
    report, bands = measure_involvement(coarse_hu, lungs, coarse_spacing, settings)
    report["analysis_spacing_mm"] = list(coarse_spacing)
    return LungAnalysis(lungs, bands, report, factors, coarse_spacing)


def learned_lung_additions(lungs: np.ndarray, hu: np.ndarray, learned_lesion: np.ndarray,
                           settings: InvolvementSettings = InvolvementSettings()) -> np.ndarray | None:
    """Right/left labels for the voxels a lesion network calls lesion that the HU lung mask left out
    (0 elsewhere), on the analysis grid; None when there are none.

    A consolidation that fills the lung out to the chest wall, or most of a lobe, is as dense as the
    wall and the heart: no threshold and no closing of the aerated lung can tell where the lung was.
    A network trained on lesion-inclusive lung masks can. Its voxels are added only where they are in
    a lesion's HU range (ground glass up to ``learned_max_hu``) and connected to a lung, whose side
    each added region takes (where one region touches both lungs, each voxel takes the nearer one's),
    and in slices where that lung's HU mask holds at least ``learned_min_slice_share`` of its largest
    slice (below the bases, the liver, spleen and bowel touch the last tips of the lungs).
    """
    candidates = learned_lesion & (lungs == 0) & (hu >= settings.aerated_below) & (hu < settings.learned_max_hu)
    if not candidates.any():
        return None
    box = bounding_box(candidates, margin=(1, 1, 1))
    sides, wanted = lungs[box], candidates[box]
    regions, count = ndimage.label(wanted | (sides > 0))
    in_lung = sides > 0
    touching = np.zeros((count + 1, 3), dtype=np.int64)  # voxels of each lung in each region
    np.add.at(touching, (regions[in_lung], sides[in_lung]), 1)
    side_of_region = np.where(touching[:, RIGHT_LUNG] >= touching[:, LEFT_LUNG], RIGHT_LUNG, LEFT_LUNG)
    side_of_region[touching[:, 1:].sum(axis=1) == 0] = 0  # not connected to a lung
    added_box = np.where(wanted, side_of_region.astype(np.uint8)[regions], 0).astype(np.uint8)
    both = np.nonzero((touching[:, RIGHT_LUNG] > 0) & (touching[:, LEFT_LUNG] > 0))[0]
    if both.size:  # a region joining the two lungs: each voxel takes the nearer lung's side
        joined = wanted & np.isin(regions, both)
        nearest = ndimage.distance_transform_edt(~in_lung, return_distances=False, return_indices=True)
        added_box[joined] = sides[tuple(axis[joined] for axis in nearest)]
    added = np.zeros(lungs.shape, dtype=np.uint8)
    added[box] = added_box
    for side in (RIGHT_LUNG, LEFT_LUNG):
        areas = (lungs == side).sum(axis=(1, 2))
        thin = np.nonzero(areas < settings.learned_min_slice_share * areas.max(initial=0))[0]
        added[thin] = np.where(added[thin] == side, 0, added[thin])
    return added if added.any() else None


def with_learned_lesions(analysis: LungAnalysis, hu: np.ndarray, learned_lesion: np.ndarray,
                         settings: InvolvementSettings = InvolvementSettings()) -> LungAnalysis:
    """``analysis`` with :func:`learned_lung_additions` in the lungs, measured again (itself when
    nothing is added). ``hu`` is the native array; ``learned_lesion`` is boolean on the analysis grid."""
    f = analysis.factors
    coarse_hu = hu[:: f[0], :: f[1], :: f[2]]
    added = learned_lung_additions(analysis.lungs, coarse_hu, learned_lesion, settings)
    if added is None:
        return analysis
    lungs = np.where(added > 0, added, analysis.lungs)
    report, bands = measure_involvement(coarse_hu, lungs, analysis.spacing_zyx, settings)
    report["analysis_spacing_mm"] = list(analysis.spacing_zyx)
    report["learned_added_ml"] = round(int((added > 0).sum()) * float(np.prod(analysis.spacing_zyx)) / 1000, 2)
    return LungAnalysis(lungs, bands, report, f, analysis.spacing_zyx)


def lung_involvement(hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                     settings: InvolvementSettings = InvolvementSettings(),
                     lung_settings: LungSettings | None = None) -> tuple[dict, np.ndarray]:
    """Segment the lungs and measure their involvement on the analysis grid; the band labels on ``hu``'s grid.

    The analysis grid is the lungs' grid: the native one, or every ``f``-th voxel where the native
    spacing is finer than ``lung_settings.grid_mm`` (thin slices, small pixels). Each analysis voxel
    stands for its block of native voxels, so volumes are its count times the block's volume, the
    shares are those of an even sample of the native voxels, and the band labels map back exactly.
    """
    report, bands, factors = lung_involvement_coarse(hu, spacing_zyx, settings, lung_settings)
    return report, to_native(bands, factors, hu.shape)


def lung_involvement_coarse(hu: np.ndarray, spacing_zyx: tuple[float, float, float],
                            settings: InvolvementSettings = InvolvementSettings(),
                            lung_settings: LungSettings | None = None) -> tuple[dict, np.ndarray, tuple[int, int, int]]:
    """:func:`lung_involvement` with the band labels left on the analysis grid, and its subsampling
    factors (``to_native`` maps them back): a fraction of the memory while other work runs."""
    analysis = analyse_lungs(hu, spacing_zyx, settings, lung_settings)
    return analysis.report, analysis.bands, analysis.factors


def lesion_map(bands: np.ndarray, spacing_zyx: tuple[float, float, float],
               window_mm: float = LESION_WINDOW_MM, beyond_lungs: np.ndarray | None = None) -> np.ndarray:
    """The voxel lesion map, float16 in 0..1: the share of involved lung (ground glass or consolidation)
    in the in-plane ``window_mm`` square around each voxel, on ``bands``' grid.

    It shows where the involvement figures found lesions, smoothed just enough that the vessels and
    aerated specks inside a lesion read as lesion and a lone speck outside one as little. Being the
    bands' own count, the picture and the numbers never disagree. (The CNN's class activation map,
    3 x 3 cells per slice, did not separate lesion from healthy lung: voxel AUC 0.50, see the README.)

    ``beyond_lungs``: lesion evidence for voxels outside the lung mask (the lesion network's, on the
    same grid), taken where it is higher: dense consolidation against the chest wall, which the HU
    lung mask leaves out.
    """
    out = np.zeros(bands.shape, dtype=np.float16)
    inside = bands > 0
    if beyond_lungs is not None:  # copies and boolean writes only: float16 arithmetic is slow in NumPy
        np.copyto(out, beyond_lungs)
        out[inside] = 0
    if inside.any():
        window = (1, *(max(1, round(window_mm / s)) | 1 for s in spacing_zyx[1:]))
        box = bounding_box(inside, margin=tuple(w // 2 for w in window))
        involved = np.isin(bands[box], INVOLVED_BANDS).astype(np.float32)
        shares = ndimage.uniform_filter(involved, window, mode="constant")
        if beyond_lungs is not None:
            np.maximum(shares, out[box], out=shares)
        out[box] = shares
    return out


def lung_features(report: dict) -> np.ndarray:
    """The :data:`LUNG_FEATURES` of an involvement report, float32: what the fused model's involvement part
    reads (all 0 when no lung was found)."""
    shares = report["lungs"]["bands_share"]
    return np.array([shares["emphysema"], shares["ground_glass"], shares["consolidation"],
                     report["involved_share"]], dtype=np.float32)
