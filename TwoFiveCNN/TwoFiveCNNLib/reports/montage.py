"""The evidence montage: the most-attended slices under the evidence overlay, and the slice attention.

Two words, two things: *slice attention* is the model's weight per slice (one number each, the
strip at the bottom); *evidence* is the 3D map drawn over the slices (the colour overlay).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .colours import ACCENT, BACKGROUND, BAR, INK, MUTED, OVERLAY_OPACITY, colormap
from .plotting import (
    MARGIN,
    WIDTH,
    draw_axes,
    draw_text,
    nice_range,
    nice_step,
    save_png,
    text_width,
    tick_values,
)


def _unit_image(array: np.ndarray, name: str) -> np.ndarray:
    """``array`` as float in 0..1: clipped, NaN as 0, so a stray value cannot break the rendering."""
    values = np.asarray(array, dtype=np.float64)
    if values.ndim != 3:
        raise ValueError(f"{name} must be (slices, height, width), got shape {values.shape}.")
    return np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)


def _overlay_tile(grey: np.ndarray, evidence: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One greyscale slice under the evidence colour map, blended with the LUT's alpha ramp."""
    alpha = (OVERLAY_OPACITY * evidence)[..., None]
    rgb = (1.0 - alpha) * (grey[..., None] * 255.0) + alpha * colormap(evidence).astype(np.float64)
    tile = Image.fromarray(np.round(rgb).astype(np.uint8), mode="RGB")
    return tile.resize(size, Image.Resampling.LANCZOS)


def _colour_bar(image: Image.Image, right: int, top: int, label: str) -> None:
    """A small horizontal legend of the overlay colours ending at ``right``."""
    draw = ImageDraw.Draw(image)
    bar_width, bar_height = 160, 12
    ramp = colormap(np.linspace(0.0, 1.0, bar_width))[None].repeat(bar_height, axis=0)
    left = right - bar_width
    image.paste(Image.fromarray(ramp, mode="RGB"), (left, top))
    draw.rectangle([left - 1, top - 1, right, top + bar_height], outline=MUTED)
    draw_text(draw, (left - 8, top + bar_height / 2), label, 13, MUTED, "rm")
    draw_text(draw, (left, top + bar_height + 4), "0", 12, MUTED, "lt")
    draw_text(draw, (right, top + bar_height + 4), "1", 12, MUTED, "rt")


def _attention_strip(
    image: Image.Image, box: tuple[int, int, int, int], attention: np.ndarray, shown: Sequence[int]
) -> None:
    """Bars of the attention of every slice, the slices shown in the montage in the accent colour."""
    n = attention.size
    low, high = min(0.0, float(attention.min())), max(0.0, float(attention.max()))
    y_lo, y_top, y_ticks = nice_range(low, high, max_ticks=3)
    y_hi = max(y_top, high + 0.18 * (high - low))  # room for the index labels above the tallest bars
    x_ticks = tick_values(0, n - 1, nice_step(n - 1, 10, integer=True)) if n > 1 else [0]
    to_pixel = draw_axes(image, box, (-0.5, n - 0.5), (y_lo, y_hi), x_ticks, y_ticks, "slice", "attention")
    draw = ImageDraw.Draw(image)
    slot = (box[2] - box[0]) / n
    gap = 1 if slot >= 3 else 0
    marked = set(shown)
    label_anchors: dict[int, tuple[float, float]] = {}
    for k, value in enumerate(attention):
        x0, y_value = to_pixel(k - 0.5, float(value))
        _, y_zero = to_pixel(k, 0.0)
        x_left, x_right = round(x0) + gap, max(round(x0) + gap, round(x0 + slot) - 1 - gap)
        bar = [x_left, min(y_value, y_zero), x_right, max(y_value, y_zero)]
        draw.rectangle(bar, fill=ACCENT if k in marked else BAR)
        if k in marked:
            label_anchors[k] = ((x_left + x_right) / 2, min(y_value, y_zero) - 3)
    # Index labels of the shown slices, most attended first, skipping any that would overlap.
    taken: list[tuple[float, float]] = []
    for k in sorted(marked, key=lambda k: -attention[k]):
        centre, y = label_anchors[k]
        half = text_width(draw, str(k), 12) / 2 + 2
        if all(centre + half < a or centre - half > b for a, b in taken):
            draw_text(draw, (centre, y), str(k), 12, INK, "mb")
            taken.append((centre - half, centre + half))


def evidence_montage_png(
    slices: np.ndarray,
    evidence: np.ndarray,
    slice_attention: np.ndarray,
    path: str | os.PathLike,
    title: str,
    footer: str,
    top_k: int = 6,
    slice_labels: Sequence[str] | None = None,
) -> list[int]:
    """The ``top_k`` most-attended slices with their evidence overlay, and the attention of all slices.

    Tiles are shown in ascending slice order (cranio-caudal on the canonical grid) so the reader
    can follow the anatomy; the strip at the bottom shows where they sit in the whole study.
    ``slice_labels`` (one per slice) replaces the default ``slice i`` caption. Returns the indices
    of the shown slices, ascending.
    """
    grey = _unit_image(slices, "slices")
    heat = _unit_image(evidence, "evidence")
    attention = np.asarray(slice_attention, dtype=np.float64).reshape(-1)
    n_slices, height, width = grey.shape
    if heat.shape != grey.shape:
        raise ValueError(f"evidence shape {heat.shape} differs from slices shape {grey.shape}.")
    if attention.size != n_slices:
        raise ValueError(f"slice_attention has {attention.size} values for {n_slices} slices.")
    if not np.all(np.isfinite(attention)):
        raise ValueError("slice_attention holds NaN or infinite values.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    if slice_labels is not None and len(slice_labels) != n_slices:
        raise ValueError(f"{len(slice_labels)} slice labels for {n_slices} slices.")

    shown = sorted(np.argsort(-attention, kind="stable")[: min(top_k, n_slices)].tolist())
    columns = min(len(shown), 6)
    rows = math.ceil(len(shown) / columns)
    gap = 12
    tile_width = min(360, (WIDTH - 2 * MARGIN - (columns - 1) * gap) // columns)
    tile_height = max(1, round(tile_width * height / width))
    header, caption, strip_height, footer_height = 56, 44, 200, 36
    tiles_top = MARGIN + header
    strip_top = tiles_top + rows * (tile_height + caption) + 16
    image_height = strip_top + strip_height + footer_height + MARGIN
    image = Image.new("RGB", (WIDTH, image_height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    draw_text(draw, (MARGIN, MARGIN), title, 20, INK, "lt")
    subtitle = f"{len(shown)} of {n_slices} slices with the highest attention"
    draw_text(draw, (MARGIN, MARGIN + 28), subtitle, 14, MUTED)
    _colour_bar(image, WIDTH - MARGIN, MARGIN + 6, "evidence")
    row_left = (WIDTH - (columns * tile_width + (columns - 1) * gap)) // 2
    for position, k in enumerate(shown):
        row, column = divmod(position, columns)
        x = row_left + column * (tile_width + gap)
        y = tiles_top + row * (tile_height + caption)
        image.paste(_overlay_tile(grey[k], heat[k], (tile_width, tile_height)), (x, y))
        draw.rectangle([x - 2, y - 2, x + tile_width + 1, y + tile_height + 1], outline=ACCENT, width=2)
        label = slice_labels[k] if slice_labels is not None else f"slice {k}"
        centre = x + tile_width / 2
        draw_text(draw, (centre, y + tile_height + 6), label, 15, INK, "mt")
        draw_text(draw, (centre, y + tile_height + 24), f"attention {attention[k]:.3f}", 13, MUTED, "mt")

    strip_box = (MARGIN + 70, strip_top + 24, WIDTH - MARGIN - 10, strip_top + strip_height - 48)
    draw_text(draw, (strip_box[0], strip_top), "slice attention (shown slices in blue)", 14, INK, "lt")
    _attention_strip(image, strip_box, attention, shown)
    draw_text(draw, (WIDTH / 2, image_height - MARGIN), footer, 13, MUTED, "mb")
    save_png(image, path)
    return shown
