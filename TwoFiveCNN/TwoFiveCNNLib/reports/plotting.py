"""The few plot primitives the report pictures need, drawn with PIL: text, ticks, axes, lines, saving.

Slicer's embedded Python has no matplotlib and the extension draws the same pictures there as on the
command line; matplotlib would shorten the figures only if it could replace this code, but Slicer
would still need it, leaving two implementations. So this PIL one is the only one. Every file is
written through :func:`save_png`, so a viewer never opens a half-written PNG.
"""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..io.atomic import atomic_path
from .colours import GRID, INK, MUTED, RGB

WIDTH = 1200  # page width of the wide pictures, a screen's width at 1:1
MARGIN = 24

Transform = Callable[[float, float], tuple[float, float]]  # data (x, y) -> pixel (x, y)


# --------------------------------------------------------------------------- text


@lru_cache(maxsize=16)
def load_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
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
        ImageDraw.Draw(canvas).text((4, 4), char, font=load_font(16), fill=255)
    except UnicodeEncodeError:  # the legacy bitmap font only encodes Latin-1
        return b""
    return canvas.tobytes()


@lru_cache(maxsize=512)
def _has_glyph(char: str) -> bool:
    """Whether the font draws ``char`` rather than its missing-glyph box (which reads as garbage)."""
    pixels = _glyph_pixels(char)
    return bool(pixels) and pixels != _glyph_pixels("\U0010fffd")


def printable(text: str) -> str:
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


def text_width(draw: ImageDraw.ImageDraw, text: str, size: int) -> float:
    """Width in pixels of ``text`` as :func:`draw_text` would draw it, for laying out around it."""
    return draw.textlength(printable(text), font=load_font(size))


def draw_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    size: int,
    fill: RGB = INK,
    align: str = "lt",
) -> None:
    """Draw ``text`` with ``xy`` at its left/middle/right (``l m r``) and top/middle/bottom (``t m b``).

    Placed from measured boxes rather than PIL anchors, which bitmap fonts do not support; the
    vertical extent comes from a reference string so labels in a row share one baseline.
    """
    font = load_font(size)
    text = printable(text)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    _, top, _, bottom = draw.textbbox((0, 0), "Ag", font=font)
    x = xy[0] - {"l": left, "m": (left + right) / 2, "r": right}[align[0]]
    y = xy[1] - {"t": top, "m": (top + bottom) / 2, "b": bottom}[align[1]]
    draw.text((round(x), round(y)), text, font=font, fill=fill)


def draw_vertical_text(image: Image.Image, centre: tuple[float, float], text: str, size: int) -> None:
    """Paste ``text`` rotated to read bottom-to-top, centred on ``centre`` (for y-axis labels)."""
    font = load_font(size)
    text = printable(text)
    left, top, right, bottom = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    label = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(label).text((1 - left, 1 - top), text, font=font, fill=255)
    label = label.rotate(90, expand=True)
    ink = Image.new("RGB", label.size, INK)
    image.paste(ink, (round(centre[0] - label.width / 2), round(centre[1] - label.height / 2)), label)


# --------------------------------------------------------------------------- ticks


def nice_step(span: float, max_ticks: int, integer: bool) -> float:
    """A 1-2-5 tick step giving at most ``max_ticks`` intervals over ``span``; whole for integer axes."""
    raw = max(span, 1e-12) / max_ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    multipliers = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multipliers if m * magnitude >= raw * (1 - 1e-9))
    return max(1.0, round(step)) if integer else step


def tick_values(lo: float, hi: float, step: float) -> list[float]:
    """Multiples of ``step`` inside ``[lo, hi]``."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 10) for k in range(first, last + 1)]


def nice_range(lo: float, hi: float, max_ticks: int = 5) -> tuple[float, float, list[float]]:
    """Widen ``[lo, hi]`` to whole tick steps so the data never touch an unlabelled frame edge."""
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.1, 0.1)
        lo, hi = lo - pad, hi + pad
    step = nice_step(hi - lo, max_ticks, integer=False)
    lo, hi = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    return lo, hi, tick_values(lo, hi, step)


def _tick_label(value: float) -> str:
    """Shortest faithful text of a tick value (``0.25``, ``1``, ``40``)."""
    return f"{value:g}"


# --------------------------------------------------------------------------- axes and marks


def draw_axes(
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
        draw_text(draw, (left - 8, py), _tick_label(y), 13, MUTED, "rm")
    for x in x_ticks:
        px, _ = to_pixel(x, y0)
        draw.line([(px, bottom), (px, bottom + 5)], fill=MUTED)
        draw_text(draw, (px, bottom + 8), _tick_label(x), 13, MUTED, "mt")
    draw.rectangle(box, outline=MUTED)
    draw_text(draw, ((left + right) / 2, bottom + 28), x_label, 14, INK, "mt")
    y_label_width = max((text_width(draw, _tick_label(y), 13) for y in y_ticks), default=0)
    draw_vertical_text(image, (left - y_label_width - 24, (top + bottom) / 2), y_label, 14)
    return to_pixel


def draw_lines(
    image: Image.Image,
    to_pixel: Transform,
    series: dict[str, list[tuple[float, float]]],
    colours: dict[str, RGB],
) -> None:
    """Polylines with dot markers, so a series of a single point still shows up."""
    draw = ImageDraw.Draw(image)
    for name, points in series.items():
        pixels = [to_pixel(x, y) for x, y in sorted(points)]
        if len(pixels) > 1:
            draw.line(pixels, fill=colours[name], width=2, joint="curve")
        for px, py in pixels:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=colours[name])


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG atomically and return the final path. zlib level 1: a few milliseconds
    where the default level costs a third of a second for a study's montage, for a file ~20 % larger."""
    try:
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", compress_level=1)
    except OSError as error:
        raise OSError(error.errno, f"{path}: the picture could not be written ({error.strerror or error}); "
                                   f"free some space or write elsewhere") from None
    return Path(path)
