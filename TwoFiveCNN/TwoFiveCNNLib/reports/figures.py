"""Report figures: confusion matrix, training curves, accuracy against training-set size."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .colours import BACKGROUND, INK, INK_ON_DARK, MUTED, RGB, STAGE_COLOURS, colormap
from .plotting import (
    MARGIN,
    WIDTH,
    draw_axes,
    draw_lines,
    draw_text,
    draw_vertical_text,
    nice_range,
    nice_step,
    save_png,
    text_width,
    tick_values,
)

_UNIT_TICKS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]  # accuracy axes stay 0..1: pictures compare at a glance

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
    name_width = max(text_width(probe, name, 15) for name in class_names)
    label_space = 30 + int(name_width) + 12  # the rotated "true" and the row names
    grid_width = label_space + n * cell
    width = max(grid_width, int(text_width(probe, title, 20))) + 2 * MARGIN
    offset = (width - grid_width) // 2  # centred under a title wider than the grid
    left = offset + label_space
    top = MARGIN + (40 if title else 0)
    height = top + n * cell + 70 + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if title:
        draw_text(draw, (width / 2, MARGIN), title, 20, INK, "mt")

    for i in range(n):
        for j in range(n):
            x, y = left + j * cell, top + i * cell
            colour = tuple(int(c) for c in colours[i, j])
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=BACKGROUND, width=1)
            luminance = 0.2126 * colour[0] + 0.7152 * colour[1] + 0.0722 * colour[2]
            ink = INK_ON_DARK if luminance < 128 else INK
            draw_text(
                draw, (x + cell / 2, y + cell / 2 - 2), str(counts[i, j]), max(14, cell // 4), ink, "mb"
            )
            if row_totals[i, 0]:
                share_text = f"{share[i, j]:.0%}"
                draw_text(draw, (x + cell / 2, y + cell / 2 + 4), share_text, max(11, cell // 7), ink, "mt")
    for k, name in enumerate(class_names):
        draw_text(draw, (left - 10, top + k * cell + cell / 2), name, 15, INK, "rm")
        draw_text(draw, (left + k * cell + cell / 2, top + n * cell + 8), name, 15, INK, "mt")
    draw_text(draw, (left + n * cell / 2, top + n * cell + 38), "predicted", 16, INK, "mt")
    draw_vertical_text(image, (offset + 10, top + n * cell / 2), "true", 16)
    return save_png(image, path)


# --------------------------------------------------------------------------- training curves


# What each stage of a run trains, as a reader names it (history keys are ``stage1``, ``stage2``, ...).
STAGE_TITLES = {
    "stage1": "Stage 1: 2D slice CNN",
    "stage2": "Stage 2: attention head",
    "finetune": "Fine-tuning: slice CNN and head end to end",
}
_CURVE_ROW_HEIGHT = 280  # one stage: its title, then loss and accuracy panels with their axis labels


def stage_title(stage: object) -> str:
    """``"stage1"`` or ``1`` -> ``"Stage 1: 2D slice CNN"``; other stages by their own name."""
    key = f"stage{stage}" if str(stage).isdigit() else str(stage)
    return STAGE_TITLES.get(key, f"Stage {stage}" if str(stage).isdigit() else str(stage))


@dataclass(frozen=True)
class CurvePanel:
    """One stage's row of the training-curves picture: what :func:`curves_png` draws, testable as data."""

    stage: str
    title: str
    colour: RGB
    epochs: int
    epoch_range: tuple[float, float]
    epoch_ticks: list[float]
    loss: list[tuple[float, float]]
    accuracy: list[tuple[float, float]]


def _finite_points(entries: Sequence[dict], key: str) -> list[tuple[float, float]]:
    """The ``(epoch, entry[key])`` points whose value is present and finite."""
    return [(float(e["epoch"]), float(e[key])) for e in entries
            if e.get(key) is not None and math.isfinite(float(e[key]))]


def curve_panels(history: Sequence[dict]) -> list[CurvePanel]:
    """Per stage, in order of appearance, its title, colour, own epoch axis and points.

    Each stage gets its own epoch axis: stage 2's 150 cheap epochs drawn over stage 1's 14 on one
    axis hid stage 1 in the left tenth. Colours follow the order of appearance, as in the live plot
    of Slicer's training module, so a stage has one colour everywhere.
    """
    if not history:
        raise ValueError("history is empty: nothing to plot.")
    stages: dict[str, list[dict]] = {}
    for entry in history:
        missing = {"stage", "epoch", "train_loss"} - entry.keys()
        if missing:
            raise ValueError(f"history entry {entry} lacks {sorted(missing)}.")
        stages.setdefault(str(entry["stage"]), []).append(entry)
    panels = []
    for k, (stage, entries) in enumerate(stages.items()):
        epochs = [float(e["epoch"]) for e in entries]
        lo, hi = min(epochs), max(epochs)
        if hi == lo:
            lo, hi = lo - 1, hi + 1
        panels.append(CurvePanel(
            stage=stage, title=stage_title(entries[0]["stage"]), colour=STAGE_COLOURS[k % len(STAGE_COLOURS)],
            epochs=len(entries),
            epoch_range=(lo - 0.03 * (hi - lo), hi + 0.03 * (hi - lo)),
            epoch_ticks=tick_values(lo, hi, nice_step(hi - lo, 8, integer=True)),
            loss=_finite_points(entries, "train_loss"), accuracy=_finite_points(entries, "val_balanced_accuracy"),
        ))
    return panels


def curves_png(history: list[dict], path: str | os.PathLike) -> Path:
    """Training loss and validation balanced accuracy per epoch: one row per stage, each on its own axis.

    Each entry of ``history`` holds ``stage`` (name or number), ``epoch``, ``train_loss`` and
    optionally ``val_balanced_accuracy`` (missing, None or NaN when not validated that epoch).
    The accuracy axis is fixed to 0..1 so runs can be compared picture to picture; each stage's loss
    axis is its own (a slice loss and a study loss are different quantities).
    """
    rows = curve_panels(history)
    height = MARGIN + 40 + len(rows) * _CURVE_ROW_HEIGHT + MARGIN
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw_text(draw, (MARGIN, MARGIN), "training curves", 20, INK, "lt")
    half = WIDTH // 2
    for k, row in enumerate(rows):
        top = MARGIN + 40 + k * _CURVE_ROW_HEIGHT
        draw.line([(MARGIN, top + 9), (MARGIN + 24, top + 9)], fill=row.colour, width=3)  # the line's key
        draw_text(draw, (MARGIN + 30, top + 9), row.title, 17, INK, "lm")
        draw_text(draw, (MARGIN + 40 + text_width(draw, row.title, 17), top + 9),
                  f"{row.epochs} epoch{'s' * (row.epochs != 1)}", 14, MUTED, "lm")
        panel_top, panel_bottom = top + 56, top + _CURVE_ROW_HEIGHT - 56
        if row.loss:
            lo, hi, loss_ticks = nice_range(min(y for _, y in row.loss), max(y for _, y in row.loss), 4)
        else:
            lo, hi, loss_ticks = 0.0, 1.0, [0.0, 1.0]
        panels = (
            ((MARGIN + 70, panel_top, half - 30, panel_bottom), row.loss, (lo, hi), loss_ticks, "training loss"),
            ((half + 90, panel_top, WIDTH - MARGIN - 10, panel_bottom), row.accuracy, (0.0, 1.0),
             _UNIT_TICKS, "validation balanced accuracy"),
        )
        for box, points, y_range, y_ticks, label in panels:
            draw_text(draw, (box[0], box[1] - 22), label, 15, INK, "lt")
            to_pixel = draw_axes(image, box, row.epoch_range, y_range, row.epoch_ticks, y_ticks, "epoch",
                                 label.split()[-1])
            if points:
                draw_lines(image, to_pixel, {row.stage: points}, {row.stage: row.colour})
            else:
                draw_text(draw, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), "no data", 15, MUTED, "mm")
    return save_png(image, path)


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
    draw_text(draw, (MARGIN, MARGIN), "held-out balanced accuracy against training-set size", 20, INK, "lt")
    lo, hi = min(sizes), max(sizes)
    pad = max(0.06 * (hi - lo), 5)
    box = (MARGIN + 70, MARGIN + 50, WIDTH - 300, 560 - MARGIN - 60)
    x_label = "training studies (phantoms, MosMed-like class imbalance)"
    to_pixel = draw_axes(
        image, box, (lo - pad, hi + pad), (0.0, 1.0), sizes, _UNIT_TICKS, x_label, "balanced accuracy"
    )
    legend_y = box[1]
    for k, (method, label) in enumerate(labels.items()):
        colour = STAGE_COLOURS[k % len(STAGE_COLOURS)]
        offset = (k - (len(labels) - 1) / 2) * 0.008 * (hi - lo + 2 * pad)  # keep error bars apart
        points = [
            (size + offset, summary[str(size)][method]["balanced_accuracy"])
            for size in sizes
            if method in summary[str(size)]
        ]
        for x, result in points:
            px, top = to_pixel(x, result["mean"] + result["std"])
            _, bottom = to_pixel(x, result["mean"] - result["std"])
            draw.line([(px, top), (px, bottom)], fill=colour, width=2)
        draw_lines(image, to_pixel, {method: [(x, r["mean"]) for x, r in points]}, {method: colour})
        draw.line([(box[2] + 20, legend_y + 8), (box[2] + 44, legend_y + 8)], fill=colour, width=3)
        draw_text(draw, (box[2] + 50, legend_y + 8), label, 14, INK, "lm")
        legend_y += 26
    return save_png(image, path)
