"""From a canonical CT volume to the model grid: HU window, body crop, antialiased resampling.

Every parameter lives in :class:`PreprocessConfig`, which is saved inside the model file so a
model always sees its inputs prepared the way it was trained. Written in NumPy (the weights are
torch's, see :mod:`.resample`): preparing a study and mapping maps back need no torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from ..io.volume import Volume
from .resample import resize_axis0, resize_stack

SLAB_SLICES = 16  # slices resampled at a time: bounds the float memory a full-resolution study needs
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "default": (-1000.0, 400.0),  # the reference code's window: lung and soft tissue
    "lung": (-1350.0, 150.0),  # W 1500 / L -600
    "mediastinum": (-160.0, 240.0),  # W 400 / L 40
    "wide": (-1024.0, 1024.0),
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How a volume is turned into the model's input grid (``n_slices x in_plane x in_plane``, 0..1)."""

    window: tuple[float, float] = WINDOW_PRESETS["default"]
    in_plane: int = 128
    slice_mode: str = "count"  # "count": n_slices per study; "spacing": one slice per slice_spacing_mm
    n_slices: int = 64
    slice_spacing_mm: float = 5.0
    max_slices: int = 256  # bound for "spacing" mode so a huge study cannot exhaust memory
    crop_to_body: bool = True  # crop in-plane to the body so the field of view does not change lung size
    body_threshold_hu: float = -500.0
    antialias: bool = True

    def __post_init__(self) -> None:
        low, high = self.window
        if not high > low:
            raise ValueError(f"window {self.window}: the upper HU bound must exceed the lower one.")
        if self.slice_mode not in ("count", "spacing"):
            raise ValueError(f"slice_mode {self.slice_mode!r}: use 'count' or 'spacing'.")
        if self.in_plane < 8 or self.n_slices < 1 or self.slice_spacing_mm <= 0 or self.max_slices < 1:
            raise ValueError(f"invalid grid in {self}.")

    @classmethod
    def with_window(cls, window: str | tuple[float, float], **kwargs) -> PreprocessConfig:
        """Config with a named window preset (see ``WINDOW_PRESETS``) or a custom ``(low, high)`` in HU."""
        if isinstance(window, str):
            if window not in WINDOW_PRESETS:
                raise ValueError(f"unknown window preset {window!r}; choose from {sorted(WINDOW_PRESETS)}.")
            window = WINDOW_PRESETS[window]
        return cls(window=(float(window[0]), float(window[1])), **kwargs)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["window"] = list(self.window)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown preprocessing settings {sorted(unknown)}; the model may be from a newer version.")
        values = dict(data)
        if "window" in values:
            values["window"] = tuple(float(v) for v in values["window"])
        return cls(**values)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GridMapping:
    """Where the model grid sits in the canonical volume, so outputs can be mapped back."""

    canonical_shape: tuple[int, int, int]  # (z, y, x) of the canonical volume
    crop_yx: tuple[int, int, int, int]  # y0, y1, x0, x1 of the in-plane body crop
    grid_shape: tuple[int, int, int]  # (slices, in_plane, in_plane)

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> GridMapping:
        return cls(**{k: tuple(v) for k, v in data.items()})


def apply_window(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip HU to the window and scale to 0..1 as float32 (NaN becomes 0, +-inf the window's ends)."""
    array = np.asarray(array)
    if array.dtype in (np.dtype(np.int16), np.dtype(np.uint16)):  # how CT is stored: one table lookup per voxel
        return np.take(_window_table(array.dtype.str, tuple(window)), array.view(np.uint16))
    return _windowed(np.array(array, dtype=np.float32), window)  # always a copy


def _windowed(out: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return np.nan_to_num(out, copy=False, nan=0.0)


@functools.lru_cache(maxsize=8)
def _window_table(dtype: str, window: tuple[float, float]) -> np.ndarray:
    """The windowed value of every 16-bit integer, indexed by its bits read as uint16."""
    values = np.arange(2**16, dtype=np.uint16).view(np.dtype(dtype))
    return _windowed(values.astype(np.float32), window)


def body_crop(array: np.ndarray, threshold_hu: float, margin: int = 4) -> tuple[int, int, int, int]:
    """In-plane bounding box (y0, y1, x0, x1) of the largest body-like region, made square where possible."""
    _, height, width = array.shape
    with np.errstate(invalid="ignore"):  # fmax skips NaN, and all-NaN columns compare False
        projection = np.fmax.reduce(array[:: max(1, array.shape[0] // 16)], axis=0) > threshold_hu
    labels, count = ndimage.label(projection)
    if count == 0:
        return 0, height, 0, width
    sizes = ndimage.sum_labels(projection, labels, index=np.arange(1, count + 1))
    rows, cols = np.nonzero(labels == 1 + int(np.argmax(sizes)))
    y0, y1 = rows.min(), rows.max() + 1
    x0, x1 = cols.min(), cols.max() + 1
    side = max(y1 - y0, x1 - x0) + 2 * margin
    return (*_centred_span(y0, y1, side, height), *_centred_span(x0, x1, side, width))


def _centred_span(start: int, stop: int, length: int, limit: int) -> tuple[int, int]:
    """A span of ``length`` centred on [start, stop), shifted and clipped to [0, limit)."""
    length = min(length, limit)
    begin = (start + stop - length) // 2
    begin = min(max(begin, 0), limit - length)
    return int(begin), int(begin + length)


def target_slice_count(volume: Volume, config: PreprocessConfig) -> int:
    if config.slice_mode == "count":
        return config.n_slices
    extent = volume.array.shape[0] * volume.spacing_zyx[0]
    return int(np.clip(round(extent / config.slice_spacing_mm), 1, config.max_slices))


def to_model_grid(volume: Volume, config: PreprocessConfig) -> tuple[np.ndarray, GridMapping]:
    """Window, crop and resample a canonical volume to ``(slices, in_plane, in_plane)`` float32 in 0..1."""
    array = volume.array
    crop = body_crop(array, config.body_threshold_hu) if config.crop_to_body else (0, array.shape[1], 0,
                                                                                   array.shape[2])
    y0, y1, x0, x1 = crop
    size = (config.in_plane, config.in_plane)
    n_slices = target_slice_count(volume, config)
    # Window and resize in-plane a slab at a time (each slice on its own, so the result is the same):
    # no float copy of the whole study is ever made; two slabs at once (NumPy releases the GIL). Then
    # resample along z on the small grid.
    def slab(z: int) -> np.ndarray:
        return resize_stack(apply_window(array[z: z + SLAB_SLICES, y0:y1, x0:x1], config.window), size,
                            config.antialias)

    with ThreadPoolExecutor(2) as pool:
        in_plane = np.concatenate(list(pool.map(slab, range(0, array.shape[0], SLAB_SLICES))))
    grid = np.clip(resize_axis0(in_plane, n_slices, config.antialias), 0.0, 1.0)
    return np.ascontiguousarray(grid, dtype=np.float32), GridMapping(tuple(array.shape), crop, tuple(grid.shape))


def grid_slice_centres(mapping: GridMapping) -> np.ndarray:
    """Canonical z coordinate (in voxels) of each model slice's centre."""
    n_grid, n_canonical = mapping.grid_shape[0], mapping.canonical_shape[0]
    return (np.arange(n_grid) + 0.5) * n_canonical / n_grid - 0.5


def slice_values_to_canonical(values: np.ndarray, mapping: GridMapping) -> np.ndarray:
    """Interpolate one value per model slice onto every canonical z slice."""
    z = np.arange(mapping.canonical_shape[0], dtype=float)
    return np.interp(z, grid_slice_centres(mapping), np.asarray(values, dtype=float))


def grid_map_to_canonical(values: np.ndarray, mapping: GridMapping, dtype: np.dtype = np.float32,
                          factors: tuple[int, int, int] = (1, 1, 1)) -> np.ndarray:
    """Trilinear upsampling of a map on the model grid back into the canonical volume (zero outside the
    crop), as ``dtype``. Linear along z on the small grid first, then bilinear in-plane a slab at a
    time (trilinear is separable), so no float32 copy of the full volume is made for a smaller ``dtype``.
    ``factors``: onto every ``f``-th canonical voxel instead (the lungs' analysis grid)."""
    shape = tuple(-(-n // f) for n, f in zip(mapping.canonical_shape, factors))
    y0, y1, x0, x1 = (-(-v // factors[1 + i // 2]) for i, v in enumerate(mapping.crop_yx))
    out = np.zeros(shape, dtype=dtype)
    along_z = resize_axis0(np.asarray(values, dtype=np.float32), shape[0], antialias=False)
    for start in range(0, shape[0], SLAB_SLICES):
        slab = resize_stack(along_z[start: start + SLAB_SLICES], (y1 - y0, x1 - x0), antialias=False)
        out[start: start + SLAB_SLICES, y0:y1, x0:x1] = slab
    return out


def canonical_mask_to_grid(mask: np.ndarray, mapping: GridMapping) -> np.ndarray:
    """A mask (or labels, non-zero inside) on the canonical volume (e.g. the lungs) on the model grid: the share of each grid cell it
    covers, above one half. Subsampled to about twice the grid's resolution first, so no float copy
    of the full volume is made."""
    y0, y1, x0, x1 = mapping.crop_yx
    steps = [max(1, size // (2 * cells)) for size, cells in
             zip((mask.shape[0], y1 - y0, x1 - x0), mapping.grid_shape)]
    sample = (mask[:: steps[0], y0:y1:steps[1], x0:x1:steps[2]] > 0).astype(np.float32)
    import torch  # training only (the lesion network's targets)
    import torch.nn.functional as F

    with torch.inference_mode():
        share = F.interpolate(torch.from_numpy(sample)[None, None], size=tuple(mapping.grid_shape), mode="area")
    return share[0, 0].numpy() > 0.5
