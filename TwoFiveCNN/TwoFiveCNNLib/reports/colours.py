"""Every colour of the project in one place, so the PNG reports and the Slicer scene agree.

Colours are ``0..255`` RGB tuples, the form PIL draws with; VTK and Slicer want ``0..1`` floats,
which :func:`unit_rgb` gives (``ACCENT_UNIT`` and ``STAGE_COLOURS_UNIT`` are the ones in use).
The lesion map overlay's colour table lives here too: the montage and Slicer's colour node share it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

RGB = tuple[int, int, int]
UnitRGB = tuple[float, float, float]

# Anchors of matplotlib's "inferno" (CC0) at 0, 0.1, ..., 1: perceptually uniform and warm, dark at
# the low end, so a faint lesion map fades into the dark lung and a strong one glows yellow on it.
_INFERNO_ANCHORS = np.array(
    [
        [0x00, 0x00, 0x04],
        [0x16, 0x0B, 0x39],
        [0x42, 0x0A, 0x68],
        [0x6A, 0x17, 0x6E],
        [0x93, 0x26, 0x67],
        [0xBC, 0x37, 0x54],
        [0xDD, 0x51, 0x3A],
        [0xF3, 0x78, 0x19],
        [0xFC, 0xA5, 0x0A],
        [0xF6, 0xD7, 0x46],
        [0xFC, 0xFF, 0xA4],
    ],
    dtype=np.float64,
)
OVERLAY_OPACITY = 0.7  # opacity of the lesion map overlay where the lesion map is 1

# Page colours: near-black ink rather than black, so text and frames do not shout over the data.
BACKGROUND: RGB = (255, 255, 255)
INK: RGB = (40, 40, 40)
INK_ON_DARK: RGB = (255, 255, 255)  # text on a dark cell of a heat map
MUTED: RGB = (110, 110, 110)  # ticks, frames, secondary text
GRID: RGB = (228, 228, 228)
ACCENT: RGB = (0, 114, 178)  # blue, distinct from every colour of the warm map
BAR: RGB = (175, 175, 175)  # bars that are context, not the point
# Okabe-Ito palette: distinguishable with the common colour-vision deficiencies.
STAGE_COLOURS: tuple[RGB, ...] = (
    ACCENT,
    (213, 94, 0),
    (0, 158, 115),
    (204, 121, 167),
    (230, 159, 0),
    (86, 180, 233),
)


def unit_rgb(colour: RGB) -> UnitRGB:
    """``colour`` as ``0..1`` floats, the form VTK and Slicer's plot and display nodes take."""
    red, green, blue = colour
    return red / 255, green / 255, blue / 255


ACCENT_UNIT: UnitRGB = unit_rgb(ACCENT)
STAGE_COLOURS_UNIT: tuple[UnitRGB, ...] = tuple(unit_rgb(colour) for colour in STAGE_COLOURS)


def lesion_map_lut(n: int = 256) -> np.ndarray:
    """The lesion map overlay's colour table as ``(n, 4)`` RGBA floats in 0..1, shared with Slicer.

    Alpha rises linearly with the value, so low values stay transparent and the anatomy
    underneath remains readable.
    """
    if n < 2:
        raise ValueError(f"a colour table needs at least 2 entries, got {n}.")
    position = np.linspace(0.0, 1.0, n)
    anchors = np.linspace(0.0, 1.0, len(_INFERNO_ANCHORS))
    rgb = np.stack([np.interp(position, anchors, _INFERNO_ANCHORS[:, c]) for c in range(3)], axis=1) / 255.0
    return np.concatenate([rgb, position[:, None]], axis=1)


@lru_cache(maxsize=1)
def _lut_uint8() -> np.ndarray:
    """The 256-entry RGB table behind :func:`colormap`, built once."""
    return np.round(lesion_map_lut(256)[:, :3] * 255.0).astype(np.uint8)


def colormap(values: np.ndarray | float) -> np.ndarray:
    """Map values in 0..1 (clipped; NaN counts as 0) to ``uint8`` RGB with shape ``values.shape + (3,)``."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    index = np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.intp)
    return _lut_uint8()[index]


# Lung HU bands (transforms.involvement's labels 1..5): what is involved stands out, what is normal
# stays see-through, so the band overlay reads like the lesion map.
BAND_COLOURS: dict[int, tuple[int, int, int, float]] = {
    1: (86, 180, 233, 0.6),  # emphysema: sky blue
    2: (0, 0, 0, 0.0),  # normally aerated: not drawn
    3: (230, 159, 0, 0.7),  # ground glass: orange
    4: (213, 94, 0, 0.9),  # consolidation: vermillion
    5: (110, 110, 110, 0.0),  # vessel: not drawn
}

# The lungs' segments (transforms.lungs' labels 1 right, 2 left): Okabe-Ito colours none of the bands use,
# so the lung outlines never read as a band.
LUNG_COLOURS: dict[int, RGB] = {
    1: (0, 158, 115),  # right lung: bluish green
    2: (204, 121, 167),  # left lung: reddish purple
}
