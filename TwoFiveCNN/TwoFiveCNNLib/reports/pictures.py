"""Report pictures drawn with PIL alone: confusion matrix, attention montage, training curves,
accuracy against training-set size.

Matplotlib is not a dependency of the extension (Slicer's Python may lack it), so the few plot
primitives needed here (axes with ticks, lines, bars, a colour bar) are drawn directly. Every
file is written through :func:`atomic_path`, so a viewer never opens a half-written PNG.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..io.atomic import atomic_path

# Anchors of matplotlib's "inferno" (CC0) at 0, 0.1, ..., 1: perceptually uniform and warm, dark at
# the low end, so weak evidence fades into the dark lung and strong evidence glows yellow on it.
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
OVERLAY_OPACITY = 0.7  # opacity of the evidence overlay where the evidence is 1

WIDTH = 1200
MARGIN = 24
BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
MUTED = (110, 110, 110)
GRID = (228, 228, 228)
ACCENT = (0, 114, 178)  # blue, distinct from every colour of the warm map
BAR = (175, 175, 175)
# Okabe-Ito palette: distinguishable with the common colour-vision deficiencies.
STAGE_COLOURS = [(0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0), (86, 180, 233)]


def attention_lut(n: int = 256) -> np.ndarray:
    """The overlay colour table as ``(n, 4)`` RGBA floats in 0..1, shared with Slicer's colour node.

    Alpha rises linearly with the value, so weak evidence stays transparent and the anatomy
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
    return np.round(attention_lut(256)[:, :3] * 255.0).astype(np.uint8)


def colormap(values: np.ndarray | float) -> np.ndarray:
    """Map values in 0..1 (clipped; NaN counts as 0) to ``uint8`` RGB with shape ``values.shape + (3,)``."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0)
    index = np.round(np.clip(v, 0.0, 1.0) * 255.0).astype(np.intp)
    return _lut_uint8()[index]


# --------------------------------------------------------------------------- drawing primitives


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's bundled font at ``size`` px; older Pillow (< 10.1) only has a fixed bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


# ASCII stand-ins for characters PIL's bundled font lacks but report strings like to use.
_STAND_INS = {"\u2014": "-", "\u2013": "-", "\u2265": ">=", "\u2264": "<=", "\u00d7": "x", "\u2192": "->"}


def _glyph_pixels(char: str) -> bytes:
    """The rendered bitmap of one character, to compare against the font's missing-glyph box."""
    canvas = Image.new("L", (32, 32))
    try:
        ImageDraw.Draw(canvas).text((4, 4), char, font=_font(16), fill=255)
    except UnicodeEncodeError:  # the legacy bitmap font only encodes Latin-1
        return b""
    return canvas.tobytes()


@lru_cache(maxsize=512)
def _has_glyph(char: str) -> bool:
    """Whether the font draws ``char`` rather than its missing-glyph box (which reads as garbage)."""
    pixels = _glyph_pixels(char)
    return bool(pixels) and pixels != _glyph_pixels("\U0010fffd")


def _printable(text: str) -> str:
    """``text`` with every character the font cannot draw replaced: stand-in, accent-free base, or ``?``."""
    out = []
    for char in text:
        if _has_glyph(char):
            out.append(char)
        elif char in _STAND_INS:
            out.append(_STAND_INS[char])
        else:
            base = unicodedata.normalize("NFKD", char)[0]
            out.append(base if _has_glyph(base) else "?")
    return "".join(out)


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int,
    fill: tuple[int, int, int] = INK,
    align: str = "lt",
) -> None:
    """Draw ``text`` with ``xy`` at its left/middle/right (``l m r``) and top/middle/bottom (``t m b``).

    Placed from measured boxes rather than PIL anchors, which bitmap fonts do not support; the
    vertical extent comes from a reference string so labels in a row share one baseline.
    """
    font = _font(size)
    text = _printable(text)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[align[0]]
    y = xy[1] - {"t": top, "m": (top + bottom) / 2, "b": bottom}[align[1]]
    draw.text((round(x), round(y)), text, font=font, fill=fill)


def _vertical_text(image: Image.Image, centre: tuple[float, float], text: str, size: int) -> None:
    """Paste ``text`` rotated to read bottom-to-top, centred on ``centre`` (for y-axis labels)."""
    font = _font(size)
    text = _printable(text)
    left, top, right, bottom = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    label = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, font=font, fill=255)
    label = label.rotate(90, expand=True)
    ink = Image.new("RGB", label.size, INK)
    image.paste(ink, (round(centre[0] - label.width / 2), round(centre[1] - label.height / 2)), label)


def _nice_step(span: float, max_ticks: int, integer: bool) -> float:
    """A 1-2-5 tick step giving at most ``max_ticks`` intervals over ``span``; whole for integer axes."""
    raw = max(span, 1e-12) / max_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multipliers = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multipliers if m * magnitude >= raw * (1 - 1e-9))
    return max(1.0, round(step)) if integer else step


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of ``step`` inside ``[lo, hi]``."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def _nice_range(lo: float, hi: float, max_ticks: int = 5) -> tuple[float, float, list[float]]:
    """Widen ``[lo, hi]`` to whole tick steps so the data never touch an unlabelled frame edge."""
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.1, 0.1)
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, max_ticks, integer=False)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return lo, hi, _ticks(lo, hi, step)


def _tick_label(value: float) -> str:
    """Shortest faithful text of a tick value (``0.25``, ``1``, ``40``)."""
    return f"{value:g}"


Transform = Callable[[float, float], tuple[float, float]]


def _axes(
    image: Image.Image,
    box: tuple[int, int, int, int],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    x_ticks: Sequence[float],
    y_ticks: Sequence[float],
    x_label: str,
    y_label: str,
) -> Transform:
    """Draw a plot frame with grid, ticks and labels in ``box`` (pixel ``l, t, r, b``); return data->pixel."""
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    (x0, x1), (y0, y1) = x_range, y_range

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (right - left),
            bottom - (y - y0) / (y1 - y0) * (bottom - top),
        )

    for y in y_ticks:
        _, py = to_pixel(x0, y)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.line([(left - 5, py), (left, py)], fill=MUTED)
        _text(draw, (left - 8, py), _tick_label(y), 13, MUTED, "rm")
    for x in x_ticks:
        px, _ = to_pixel(x, y0)
        draw.line([(px, bottom), (px, bottom + 5)], fill=MUTED)
        _text(draw, (px, bottom + 8), _tick_label(x), 13, MUTED, "mt")
    draw.rectangle(box, outline=MUTED)
    _text(draw, ((left + right) / 2, bottom + 28), x_label, 14, INK, "mt")
    y_label_width = max((draw.textlength(_tick_label(y), font=_font(13)) for y in y_ticks), default=0)
    _vertical_text(image, (left - y_label_width - 24, (top + bottom) / 2), y_label, 14)
    return to_pixel


def _save(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically and return the final path."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)
    return Path(path)


# --------------------------------------------------------------------------- confusion matrix


def confusion_matrix_png(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
) -> Path:
    """Heat-map of a confusion matrix (rows true, columns predicted) with counts and row shares.

    Shading follows the row-normalised share, i.e. the recall of each true class, so a rare class
    is as visible as the majority one; the darkest cell of a row is where its studies went.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix shape {counts.shape} does not match {n} class names.")
    if np.any(counts < 0):
        raise ValueError("a confusion matrix holds non-negative counts.")
    row_totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    colours = colormap(1.0 - 0.9 * share)  # reversed: a full row share is dark, an empty cell pale

    cell = int(np.clip(560 // n, 56, 110))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    name_width = max(probe.textlength(_printable(name), font=_font(15)) for name in class_names)
    label_space = 30 + int(name_width) + 12  # the rotated "true" and the row names
    grid_width = label_space + n * cell
    width = max(grid_width, int(probe.textlength(_printable(title), font=_font(20)))) + 2 * MARGIN
    offset = (width - grid_width) // 2  # centred under a title wider than the grid
    left = offset + label_space
    top = MARGIN + (40 if title else 0)
    height = top + n * cell + 70 + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        _text(draw, (width / 2, MARGIN), title, 20, INK, "mt")

    for i in range(n):
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            colour = tuple(int(c) for c in colours[i, j])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=BACKGROUND, width=1)
            luminance = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
            ink = (255, 255, 255) if luminance < 128 else INK
            _text(draw, (x + cell / 2, y + cell / 2 - 2), str(counts[i, j]), max(14, cell // 4), ink, "mb")
            if row_totals[i, 0]:
                _text(
                    draw,
                    (x + cell / 2, y + cell / 2 + 4),
                    f"{share[i, j]:.0%}",
                    max(11, cell // 7),
                    ink,
                    "mt",
                )
    for k, name in enumerate(class_names):
        _text(draw, (left - 10, top + k * cell + cell / 2), name, 15, INK, "rm")
        _text(draw, (left + k * cell + cell / 2, top + n * cell + 8), name, 15, INK, "mt")
    _text(draw, (left + n * cell / 2, top + n * cell + 38), "predicted", 16, INK, "mt")
    _vertical_text(image, (offset + 10, top + n * cell / 2), "true", 16)
    return _save(image, path)


# --------------------------------------------------------------------------- attention montage


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
    _text(draw, (left - 8, top + bar_height / 2), label, 13, MUTED, "rm")
    _text(draw, (left, top + bar_height + 4), "0", 12, MUTED, "lt")
    _text(draw, (right, top + bar_height + 4), "1", 12, MUTED, "rt")


def _attention_strip(
    image: Image.Image, box: tuple[int, int, int, int], attention: np.ndarray, shown: Sequence[int]
) -> None:
    """Bars of the attention of every slice, the slices shown in the montage in the accent colour."""
    n = attention.size
    low, high = min(0.0, float(attention.min())), max(0.0, float(attention.max()))
    y_lo, y_top, y_ticks = _nice_range(low, high, max_ticks=3)
    y_hi = max(y_top, high + 0.18 * (high - low))  # room for the index labels above the tallest bars
    x_ticks = _ticks(0, n - 1, _nice_step(n - 1, 10, integer=True)) if n > 1 else [0]
    to_pixel = _axes(image, box, (-0.5, n - 0.5), (y_lo, y_hi), x_ticks, y_ticks, "slice", "attention")
    draw = ImageDraw.Draw(image)
    slot = (box[2] - box[0]) / n
    gap = 1 if slot >= 3 else 0
    marked = set(shown)
    label_anchors: dict[int, tuple[float, float]] = {}
    for k, value in enumerate(attention):
        x0, y_value = to_pixel(k - 0.5, float(value))
        _, y_zero = to_pixel(k, 0.0)
        x_left, x_right = round(x0) + gap, max(round(x0) + gap, round(x0 + slot) - 1 - gap)
        draw.rectangle(
            [x_left, min(y_value, y_zero), x_right, max(y_value, y_zero)], fill=ACCENT if k in marked else BAR
        )
        if k in marked:
            label_anchors[k] = ((x_left + x_right) / 2, min(y_value, y_zero) - 3)
    # Index labels of the shown slices, most attended first, skipping any that would overlap.
    taken: list[tuple[float, float]] = []
    for k in sorted(marked, key=lambda k: -attention[k]):
        centre, y = label_anchors[k]
        half = draw.textlength(str(k), font=_font(12)) / 2 + 2
        if all(centre + half < a or centre - half > b for a, b in taken):
            _text(draw, (centre, y), str(k), 12, INK, "mb")
            taken.append((centre - half, centre + half))


def attention_montage_png(
    slices: np.ndarray,
    evidence: np.ndarray,
    slice_attention: np.ndarray,
    path: str | os.PathLike,
    title: str,
    footer: str,
    top_k: int = 6,
    slice_labels: Sequence[str] | None = None,
) -> list[int]:
    """The ``top_k`` most-attended slices with their evidence overlay, and attention over all slices.

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

    _text(draw, (MARGIN, MARGIN), title, 20, INK, "lt")
    _text(
        draw,
        (MARGIN, MARGIN + 28),
        f"{len(shown)} of {n_slices} slices with the highest attention",
        14,
        MUTED,
    )
    _colour_bar(image, WIDTH - MARGIN, MARGIN + 6, "evidence")
    row_left = (WIDTH - (columns * tile_width + (columns - 1) * gap)) // 2
    for position, k in enumerate(shown):
        row, column = divmod(position, columns)
        x = row_left + column * (tile_width + gap)
        y = tiles_top + row * (tile_height + caption)
        image.paste(_overlay_tile(grey[k], heat[k], (tile_width, tile_height)), (x, y))
        draw.rectangle([x - 2, y - 2, x + tile_width + 1, y + tile_height + 1], outline=ACCENT, width=2)
        label = slice_labels[k] if slice_labels is not None else f"slice {k}"
        _text(draw, (x + tile_width / 2, y + tile_height + 6), label, 15, INK, "mt")
        _text(
            draw, (x + tile_width / 2, y + tile_height + 24), f"attention {attention[k]:.3f}", 13, MUTED, "mt"
        )

    strip_box = (MARGIN + 70, strip_top + 24, WIDTH - MARGIN - 10, strip_top + strip_height - 48)
    _text(draw, (strip_box[0], strip_top), "slice attention (shown slices in blue)", 14, INK, "lt")
    _attention_strip(image, strip_box, attention, shown)
    _text(draw, (WIDTH / 2, image_height - MARGIN), footer, 13, MUTED, "mb")
    _save(image, path)
    return shown


# --------------------------------------------------------------------------- training curves


def _series(history: Sequence[dict], key: str) -> dict[str, list[tuple[float, float]]]:
    """Per stage (in order of appearance), the finite ``(epoch, history[key])`` points."""
    stages: dict[str, list[tuple[float, float]]] = {}
    for entry in history:
        points = stages.setdefault(str(entry["stage"]), [])
        value = entry.get(key)
        if value is not None and math.isfinite(float(value)):
            points.append((float(entry["epoch"]), float(value)))
    return stages


def _plot_lines(
    image: Image.Image,
    to_pixel: Transform,
    series: dict[str, list[tuple[float, float]]],
    colours: dict[str, tuple[int, int, int]],
) -> None:
    """Polylines with dot markers, so a one-epoch stage still shows up as a point."""
    draw = ImageDraw.Draw(image)
    for stage, points in series.items():
        pixels = [to_pixel(x, y) for x, y in sorted(points)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colours[stage], width=2, joint="curve")
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[stage])


def curves_png(history: list[dict], path: str | os.PathLike) -> Path:
    """Training loss and validation balanced accuracy per epoch, one line per stage.

    Each entry of ``history`` holds ``stage`` (name or number), ``epoch``, ``train_loss`` and
    optionally ``val_balanced_accuracy`` (missing, None or NaN when not validated that epoch).
    The accuracy axis is fixed to 0..1 so runs can be compared picture to picture.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot.")
    for entry in history:
        missing = {"stage", "epoch", "train_loss"} - entry.keys()
        if missing:
            raise ValueError(f"history entry {entry} lacks {sorted(missing)}.")
    loss = _series(history, "train_loss")
    accuracy = _series(history, "val_balanced_accuracy")
    colours = {stage: STAGE_COLOURS[i % len(STAGE_COLOURS)] for i, stage in enumerate(loss)}
    epochs = [float(entry["epoch"]) for entry in history]
    e_lo, e_hi = min(epochs), max(epochs)
    if e_hi == e_lo:
        e_lo, e_hi = e_lo - 1, e_hi + 1
    epoch_ticks = _ticks(e_lo, e_hi, _nice_step(e_hi - e_lo, 8, integer=True))
    epoch_range = (e_lo - 0.03 * (e_hi - e_lo), e_hi + 0.03 * (e_hi - e_lo))

    image = Image.new("RGB", (WIDTH, 500), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (MARGIN, MARGIN), "training curves", 20, INK, "lt")
    x = MARGIN + 170
    for stage, colour in colours.items():
        draw.line([(x, MARGIN + 11), (x + 24, MARGIN + 11)], fill=colour, width=3)
        label = f"stage {stage}"
        _text(draw, (x + 30, MARGIN + 11), label, 15, INK, "lm")
        x += 30 + int(draw.textlength(_printable(label), font=_font(15))) + 24

    panel_top, panel_bottom, half = MARGIN + 70, 500 - MARGIN - 60, WIDTH // 2
    loss_values = [y for points in loss.values() for _, y in points]
    if loss_values:
        lo, hi, loss_ticks = _nice_range(min(loss_values), max(loss_values))
    else:
        lo, hi, loss_ticks = 0.0, 1.0, [0.0, 1.0]
    panels = (
        ((MARGIN + 70, panel_top, half - 30, panel_bottom), loss, (lo, hi), loss_ticks, "training loss"),
        (
            (half + 90, panel_top, WIDTH - MARGIN - 10, panel_bottom),
            accuracy,
            (0.0, 1.0),
            [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            "validation balanced accuracy",
        ),
    )
    for box, series, y_range, y_ticks, label in panels:
        _text(draw, (box[0], box[1] - 22), label, 15, INK, "lt")
        to_pixel = _axes(image, box, epoch_range, y_range, epoch_ticks, y_ticks, "epoch", label.split()[-1])
        if any(series.values()):
            _plot_lines(image, to_pixel, series, colours)
        else:
            _text(draw, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), "no data", 15, MUTED, "mm")
    return _save(image, path)


# --------------------------------------------------------------------------- accuracy against data size


def accuracy_vs_size_png(summary: dict, labels: dict[str, str], path: str | os.PathLike) -> Path:
    """Held-out balanced accuracy (mean over seeds, bars +- one sd) against training studies, per method.

    ``summary[size][method]["balanced_accuracy"]`` holds ``mean`` and ``std`` (see
    :func:`accuracy_study.summarise`); ``labels`` maps methods, in legend order, to their names.
    """
    sizes = sorted(int(size) for size in summary)
    if not sizes:
        raise ValueError("the summary is empty: nothing to plot.")
    image = Image.new("RGB", (WIDTH, 560), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _text(draw, (MARGIN, MARGIN), "held-out balanced accuracy against training-set size", 20, INK, "lt")
    lo, hi = min(sizes), max(sizes)
    pad = max(0.06 * (hi - lo), 5)
    box = (MARGIN + 70, MARGIN + 50, WIDTH - 300, 560 - MARGIN - 60)
    to_pixel = _axes(image, box, (lo - pad, hi + pad), (0.0, 1.0), sizes, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                     "training studies (phantoms, MosMed-like class imbalance)", "balanced accuracy")
    legend_y = box[1]
    for k, (method, label) in enumerate(labels.items()):
        colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
        offset = (k - (len(labels) - 1) / 2) * 0.008 * (hi - lo + 2 * pad)  # keep error bars apart
        points = [(size + offset, summary[str(size)][method]["balanced_accuracy"]) for size in sizes
                  if method in summary[str(size)]]
        for x, result in points:
            px, top = to_pixel(x, result["mean"] + result["std"])
            _, bottom = to_pixel(x, result["mean"] - result["std"])
            draw.line([(px, top), (px, bottom)], fill=colour, width=2)
        _plot_lines(image, to_pixel, {method: [(x, r["mean"]) for x, r in points]}, {method: colour})
        draw.line([(box[2] + 20, legend_y + 8), (box[2] + 44, legend_y + 8)], fill=colour, width=3)
        _text(draw, (box[2] + 50, legend_y + 8), label, 14, INK, "lm")
        legend_y += 26
    return _save(image, path)
