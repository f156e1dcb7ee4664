"""The lesion map montage: the most-attended slices under the lesion map overlay, and the slice attention.

Two words, two things: *slice attention* is the model's weight per slice (one number each, the
strip at the bottom); the *lesion map* is the 3D map drawn over the slices (the colour overlay).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


class LazySlices:
    """A ``(slices, height, width)`` stack whose slices are made when read: a montage shows six slices
    of a study, so a 400-slice study need not be windowed (or held in floats) whole."""

    def __init__(self, shape: tuple[int, int, int], make: Callable[[int], np.ndarray]) -> None:
        self.shape, self.ndim, self._make = tuple(shape), len(shape), make

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, k: int) -> np.ndarray:
        return self._make(int(k))


def _stack_shape(stack: np.ndarray | LazySlices, name: str) -> tuple[int, ...]:
    shape = tuple(stack.shape) if hasattr(stack, "shape") else np.shape(stack)
    if len(shape) != 3:
        raise ValueError(f"{name} must be (slices, height, width), got shape {shape}.")
    return shape


def _unit_tile(tile: np.ndarray) -> np.ndarray:
    """A slice as float in 0..1: clipped, NaN as 0, so a stray value cannot break the rendering."""
    return np.clip(np.nan_to_num(np.asarray(tile, dtype=np.float64), nan=0.0), 0.0, 1.0)


def _overlay_tile(grey: np.ndarray, lesion_map: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One greyscale slice under the lesion map's colour map, blended with the LUT's alpha ramp."""
    alpha = (OVERLAY_OPACITY * lesion_map)[..., None]
    rgb = (1.0 - alpha) * (grey[..., None] * 255.0) + alpha * colormap(lesion_map).astype(np.float64)
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


@dataclass(frozen=True)
class AttentionBars:
    """What the attention strip draws, left to right, in the reader's slice numbers (no pixels needed)."""

    numbers: list[int]  # slice number of each bar: 0, 1, 2, ... left to right
    values: list[float]  # attention of each bar
    highlighted: list[int]  # slice numbers of the bars in the accent colour: the montage's slices
    x_ticks: list[int]  # slice numbers under the axis ticks

    @property
    def tallest(self) -> int:
        """Slice number of the tallest bar (the first, on a tie)."""
        return self.numbers[int(np.argmax(self.values))]


def attention_bars(attention: np.ndarray, shown: Sequence[int], slice_numbers: np.ndarray) -> AttentionBars:
    """The bars of ``attention`` (one per array slice) placed and labelled by ``slice_numbers``.

    A slice is drawn at its number, so bar ``n`` is the slice the captions, the JSON and Slicer's
    table call ``n``, whatever order the array holds the slices in.
    """
    order = np.argsort(slice_numbers, kind="stable")
    n = len(order)
    return AttentionBars(
        numbers=[int(slice_numbers[k]) for k in order],
        values=[float(attention[k]) for k in order],
        highlighted=sorted(int(slice_numbers[k]) for k in shown),
        x_ticks=[int(t) for t in tick_values(0, n - 1, nice_step(n - 1, 10, integer=True))] if n > 1 else [0],
    )


def draw_attention_strip(image: Image.Image, box: tuple[int, int, int, int], bars: AttentionBars,
                         x_label: str = "slice") -> Callable[[float, float], tuple[float, float]]:
    """Bars of the attention of every slice, the highlighted ones (the slices a picture shows) in the
    accent colour and numbered; returns the strip's (slice, value) -> pixel mapping."""
    values = np.asarray(bars.values)
    n = values.size
    low, high = min(0.0, float(values.min())), max(0.0, float(values.max()))
    y_lo, y_top, y_ticks = nice_range(low, high, max_ticks=3)
    y_hi = max(y_top, high + 0.18 * (high - low))  # room for the number labels above the tallest bars
    to_pixel = draw_axes(image, box, (-0.5, n - 0.5), (y_lo, y_hi), bars.x_ticks, y_ticks, x_label, "attention")
    draw = ImageDraw.Draw(image)
    slot = (box[2] - box[0]) / n
    gap = 1 if slot >= 3 else 0
    marked = set(bars.highlighted)
    label_anchors: dict[int, tuple[float, float]] = {}
    for position, (number, value) in enumerate(zip(bars.numbers, bars.values)):
        x0, y_value = to_pixel(position - 0.5, value)
        _, y_zero = to_pixel(position, 0.0)
        x_left, x_right = round(x0) + gap, max(round(x0) + gap, round(x0 + slot) - 1 - gap)
        bar = [x_left, min(y_value, y_zero), x_right, max(y_value, y_zero)]
        draw.rectangle(bar, fill=ACCENT if number in marked else BAR)
        if number in marked:
            label_anchors[number] = ((x_left + x_right) / 2, min(y_value, y_zero) - 3)
    # Number labels of the shown slices, most attended first, skipping any that would overlap.
    value_of = dict(zip(bars.numbers, bars.values))
    taken: list[tuple[float, float]] = []
    for number in sorted(marked, key=lambda number: -value_of[number]):
        centre, y = label_anchors[number]
        half = text_width(draw, str(number), 12) / 2 + 2
        if all(centre + half < a or centre - half > b for a, b in taken):
            draw_text(draw, (centre, y), str(number), 12, INK, "mb")
            taken.append((centre - half, centre + half))
    return to_pixel


@dataclass(frozen=True)
class MontageLayout:
    """What :func:`lesion_map_montage_png` drew: the tiles' array indices, left to right, the bars and
    the size."""

    shown: list[int]
    bars: AttentionBars
    size: tuple[int, int]  # (width, height) in pixels


def lesion_map_montage_png(
    slices: np.ndarray | LazySlices,
    lesion_map: np.ndarray | LazySlices,
    slice_attention: np.ndarray,
    path: str | os.PathLike,
    title: str,
    footer: str,
    top_k: int = 6,
    slice_labels: Sequence[str] | None = None,
    slice_numbers: Sequence[int] | None = None,
) -> MontageLayout:
    """The ``top_k`` most-attended slices with their lesion map overlay, and the attention of all slices.

    ``slice_numbers`` (one per array slice, a permutation of 0..n-1; default the array index) is the
    number the reader knows each slice by, such as the input's own slice index while the arrays
    are on the canonical grid. Tiles and bars are both in ascending slice number, so the tiles
    follow the anatomy and the strip at the bottom shows where they sit, under the same numbers.
    ``slice_labels`` (one per slice) replaces the default ``slice i`` caption.
    """
    grey_shape, heat_shape = _stack_shape(slices, "slices"), _stack_shape(lesion_map, "lesion_map")
    attention = np.asarray(slice_attention, dtype=np.float64).reshape(-1)
    n_slices, height, width = grey_shape
    if heat_shape != grey_shape:
        raise ValueError(f"lesion_map shape {heat_shape} differs from slices shape {grey_shape}.")
    if attention.size != n_slices:
        raise ValueError(f"slice_attention has {attention.size} values for {n_slices} slices.")
    if not np.all(np.isfinite(attention)):
        raise ValueError("slice_attention holds NaN or infinite values.")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    if slice_labels is not None and len(slice_labels) != n_slices:
        raise ValueError(f"{len(slice_labels)} slice labels for {n_slices} slices.")
    numbers = np.arange(n_slices) if slice_numbers is None else np.asarray(slice_numbers).reshape(-1)
    if not np.array_equal(np.sort(numbers), np.arange(n_slices)):
        raise ValueError(f"slice_numbers must number the {n_slices} slices 0..{n_slices - 1}, once each.")

    top = np.argsort(-attention, kind="stable")[: min(top_k, n_slices)]
    shown = sorted(top.tolist(), key=lambda k: numbers[k])
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
    _colour_bar(image, WIDTH - MARGIN, MARGIN + 6, "lesion map")
    row_left = (WIDTH - (columns * tile_width + (columns - 1) * gap)) // 2
    for position, k in enumerate(shown):
        row, column = divmod(position, columns)
        x = row_left + column * (tile_width + gap)
        y = tiles_top + row * (tile_height + caption)
        tile = _overlay_tile(_unit_tile(slices[k]), _unit_tile(lesion_map[k]), (tile_width, tile_height))
        image.paste(tile, (x, y))
        draw.rectangle([x - 2, y - 2, x + tile_width + 1, y + tile_height + 1], outline=ACCENT, width=2)
        label = slice_labels[k] if slice_labels is not None else f"slice {numbers[k]}"
        centre = x + tile_width / 2
        draw_text(draw, (centre, y + tile_height + 6), label, 15, INK, "mt")
        draw_text(draw, (centre, y + tile_height + 24), f"attention {attention[k]:.3f}", 13, MUTED, "mt")

    strip_box = (MARGIN + 70, strip_top + 24, WIDTH - MARGIN - 10, strip_top + strip_height - 48)
    draw_text(draw, (strip_box[0], strip_top), "slice attention (shown slices in blue)", 14, INK, "lt")
    bars = attention_bars(attention, shown, numbers)
    draw_attention_strip(image, strip_box, bars)
    draw_text(draw, (WIDTH / 2, image_height - MARGIN), footer, 13, MUTED, "mb")
    save_png(image, path)
    return MontageLayout(shown=shown, bars=bars, size=image.size)
