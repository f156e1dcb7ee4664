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

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .lungs import LUNG_NAMES

# Band labels of the overlay (0 is outside the lungs).
EMPHYSEMA, AERATED, GROUND_GLASS, CONSOLIDATION, VESSEL = 1, 2, 3, 4, 5
BAND_NAMES = {EMPHYSEMA: "emphysema", AERATED: "aerated", GROUND_GLASS: "ground_glass",
              CONSOLIDATION: "consolidation", VESSEL: "vessel"}
INVOLVED_BANDS = (GROUND_GLASS, CONSOLIDATION)
ZONES = ("upper", "middle", "lower", "ventral", "dorsal")
# MosMed's grades by involved share of the lungs; below ``normal_share`` a lung counts as normal.
MOSMED_UPPER_SHARES = (0.25, 0.50, 0.75)


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

    def to_dict(self) -> dict:
        return asdict(self)


def band_labels(hu: np.ndarray, lungs: np.ndarray, spacing_zyx: tuple[float, float, float],
                settings: InvolvementSettings = InvolvementSettings()) -> np.ndarray:
    """uint8 band label of every lung voxel (0 outside the lungs), on ``hu``'s grid."""
    inside = lungs > 0
    bands = np.zeros(hu.shape, dtype=np.uint8)
    if not inside.any():
        return bands
    zs, ys, xs = (np.nonzero(inside.any(axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    values, region = hu[box], inside[box]
    out = np.zeros(region.shape, dtype=np.uint8)
    out[values < settings.ground_glass_below] = GROUND_GLASS
    out[values < settings.aerated_below] = AERATED
    out[values < settings.emphysema_below] = EMPHYSEMA
    dense = region & (values >= settings.ground_glass_below)
    size = (1, *(max(1, round(settings.vessel_width_mm / s)) for s in spacing_zyx[1:]))
    thick = ndimage.maximum_filter(ndimage.minimum_filter(dense.view(np.uint8), size=size), size=size) > 0
    vessel = dense & ~thick
    vessel |= (ndimage.maximum_filter(vessel.view(np.uint8), size=(1, 3, 3)) > 0) & (out == GROUND_GLASS)
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


def _zone_masks(lung: np.ndarray) -> dict[str, np.ndarray]:
    """Thirds of the lung's head-to-feet extent and halves of its front-to-back extent (canonical axes:
    z grows to the head, y to the back)."""
    zs = np.nonzero(lung.any(axis=(1, 2)))[0]
    ys = np.nonzero(lung.any(axis=(0, 2)))[0]
    z = np.arange(lung.shape[0])[:, None, None]
    y = np.arange(lung.shape[1])[None, :, None]
    z_low, z_high = zs[0], zs[-1] + 1
    third = (z_high - z_low) / 3
    y_mid = (ys[0] + ys[-1] + 1) / 2
    return {"lower": lung & (z < z_low + third), "middle": lung & (z >= z_low + third) & (z < z_low + 2 * third),
            "upper": lung & (z >= z_low + 2 * third), "ventral": lung & (y < y_mid), "dorsal": lung & (y >= y_mid)}


def _figures(bands_in_region: np.ndarray, voxel_ml: float) -> dict:
    counts = np.bincount(bands_in_region, minlength=max(BAND_NAMES) + 1)
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
    report = {"lungs": _figures(bands[lungs > 0], voxel_ml), "per_lung": {}, "settings": settings.to_dict()}
    for value, name in LUNG_NAMES.items():
        lung = lungs == value
        if not lung.any():
            continue
        record = _figures(bands[lung], voxel_ml)
        record["zones"] = {zone: _figures(bands[mask], voxel_ml) for zone, mask in _zone_masks(lung).items()}
        report["per_lung"][name] = record
    share = report["lungs"]["involved_share"]
    report["involved_share"] = share
    report["grade"] = grade_for_share(share, settings) if report["lungs"]["voxels"] else None
    return report, bands
