"""Pictures of a prediction as Slicer shows it: axial, coronal and sagittal views from MRML's own slice logic.

``vtkMRMLSliceLogic`` reslices, windows, colours, thresholds and blends the layers exactly as the
application's slice views do, and its pipeline ends in an RGBA image before any OpenGL is involved.
So the same code draws the pictures of ``twofivecnn predict``, the extension's screenshots and the
tests' checks, headless with slicer-core, and what they show is what a user sees in Slicer, not a
drawing made to look like it. The attention plot and the result table beside the views are drawn
with the reports' PIL primitives, as every other picture of the project.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
from PIL import Image, ImageDraw
from scipy import ndimage
from vtk.util.numpy_support import vtk_to_numpy

from ..inference.prediction import DEMO_MODEL_NOTICE, Prediction
from ..io.volume import Volume
from ..reports.colours import ACCENT, BACKGROUND, BAND_COLOURS, BAR, INK, MUTED
from ..reports.montage import attention_bars, draw_attention_strip
from ..reports.plotting import (
    MARGIN,
    WIDTH,
    draw_text,
    save_png,
    text_width,
)
from ..transforms.involvement import BAND_NAMES, INVOLVED_BANDS
from .nodes import build_prediction_scene

__all__ = ["OVERLAYS", "VIEW_ORIENTATIONS", "SliceView", "focus_voxel", "render_slice_views", "render_views",
           "views_image", "write_views_png"]

VIEW_ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
# Slicer's own view of each orientation: its layout name and the colour of its controller bar.
_SLICER_VIEWS = {"Axial": ("Red", (243, 74, 51)), "Coronal": ("Green", (110, 176, 75)),
                 "Sagittal": ("Yellow", (237, 213, 76))}
# Slice nodes get names of their own, so rendering in the application's scene never moves its views.
_LAYOUT_PREFIX = "TwoFiveCNNViews"
OVERLAYS = ("lesion-map", "bands")
LESION_MAP_OPACITY = 0.4  # the inference module's default overlay opacity: the pictures show what it shows
LABEL_OPACITY = 1.0  # the band colour table carries each band's own opacity
_GREY = "vtkMRMLColorTableNodeGrey"  # the built-in table Slicer shows CT with
FOCUS_SMOOTHING_MM = 20.0  # the views centre on the strongest overlay over about this width, not on one voxel


@dataclass
class SliceView:
    """One rendered slice view: its pixels and where they lie.

    ``rgb`` is ``(rows, columns, 3)`` uint8, top row first, black outside the volume, as Slicer
    draws it. ``xy_to_ras`` maps a pixel ``(column, rows - 1 - row, 0, 1)`` to RAS in mm (VTK counts
    rows from the bottom), so callers can tell which voxel every pixel shows.
    """

    orientation: str
    rgb: np.ndarray
    xy_to_ras: np.ndarray
    offset_mm: float  # the slice logic's offset, along the slice normal (which points left in sagittal views)

    @property
    def label(self) -> str:
        """Where the plane lies, as Slicer's slice controller names it: ``Sagittal  L 31.0 mm``.

        The RAS coordinate of the view's centre along the axis its normal follows most, with the
        letter of that axis's side, rather than the raw offset, whose sign depends on the orientation.
        """
        rows, columns, _ = self.rgb.shape
        centre = self.xy_to_ras @ np.array([(columns - 1) / 2, (rows - 1) / 2, 0.0, 1.0])
        axis = int(np.argmax(np.abs(self.xy_to_ras[:3, 2])))
        side = ("RAS" if centre[axis] >= 0 else "LPI")[axis]
        return f"{self.orientation}  {side} {abs(centre[axis]):.1f} mm"


# ---------------------------------------------------------------------------------------------- rendering


def _application_logic(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLApplicationLogic:
    """The application logic slice logics need, with a colour logic so the built-in colour tables exist.

    In Slicer the application's own logic serves its scene; elsewhere a new one is made. A colour
    logic adds nothing to a scene that has the built-in colour tables already; to one without them
    (a plain ``vtkMRMLScene``) it adds them, and they stay, as they do in every Slicer scene.
    Display nodes made before then name the grey table without having found it, so they are
    pointed at it again: otherwise their volumes would be drawn with no lookup table at all.
    """
    app = getattr(slicer, "app", None)
    if scene is getattr(slicer, "mrmlScene", None) and hasattr(app, "applicationLogic"):
        return app.applicationLogic()
    had_colours = scene.GetNodeByID(_GREY) is not None
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    colours = slicer.vtkMRMLColorLogic()
    colours.SetMRMLScene(scene)
    logic.SetColorLogic(colours)
    if not had_colours:
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeDisplayNode")):
            display = scene.GetNthNodeByClass(index, "vtkMRMLVolumeDisplayNode")
            colour_id = display.GetColorNodeID()
            if colour_id and scene.GetNodeByID(colour_id) is not None:
                display.SetAndObserveColorNodeID("")
                display.SetAndObserveColorNodeID(colour_id)
    return logic


def _release(logic: slicer.vtkMRMLApplicationLogic) -> None:
    """Detach an application logic made by :func:`_application_logic` (never the application's own)."""
    if logic is getattr(getattr(slicer, "app", None), "applicationLogic", lambda: None)():
        return
    if logic.GetColorLogic() is not None:
        logic.GetColorLogic().SetMRMLScene(None)
    logic.SetMRMLScene(None)


def _matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def _blended_rgb(logic: slicer.vtkMRMLSliceLogic) -> np.ndarray:
    """The slice logic's blended layers as ``(rows, columns, 3)``, top row first.

    The blend's RGB is final (the foreground already mixed in by its opacity); its alpha is 0 only
    outside every volume, which the application's view shows black.
    """
    connection = logic.GetImageDataConnection()
    producer = connection.GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(connection.GetIndex())
    columns, rows, _ = image.GetDimensions()
    rgba = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)[::-1]
    rgb = rgba[..., :3].copy()
    rgb[rgba[..., 3] == 0] = 0
    return rgb


def _is_label(node: slicer.vtkMRMLNode | None) -> bool:
    return node is not None and node.IsA("vtkMRMLLabelMapVolumeNode")


def render_slice_views(
    scene: slicer.vtkMRMLScene,
    input_node: slicer.vtkMRMLScalarVolumeNode,
    overlay_node: slicer.vtkMRMLScalarVolumeNode | None = None,
    focus_ras: Sequence[float] | None = None,
    opacity: float | None = None,
    size: int = 376,
    orientations: Sequence[str] = VIEW_ORIENTATIONS,
    application_logic: slicer.vtkMRMLApplicationLogic | None = None,
) -> list[SliceView]:
    """Render ``input_node`` under ``overlay_node`` in one square view per orientation.

    A scalar overlay is the foreground layer (its display node's threshold keeps its zeros from
    tinting the view), a labelmap the label layer, as ``slicer.util.setSliceViewerLayers`` places
    them; ``opacity`` defaults to the inference module's for the lesion map and to the colour
    table's own for labels. Each view is fitted to the volume and, given ``focus_ras`` (world
    RAS, mm), moved along its normal to pass through that point, as "jump to" does in Slicer.
    The slice nodes and whatever else the logics add are removed afterwards, except Slicer's
    built-in colour tables, which a scene without them keeps (see :func:`_application_logic`).
    """
    unknown = [o for o in orientations if o not in _SLICER_VIEWS]
    if unknown:
        raise ValueError(f"orientations {unknown}: choose from {list(_SLICER_VIEWS)}.")
    if input_node is None or not scene.IsNodePresent(input_node):
        raise ValueError("the input volume node must be in the scene to render its views.")
    if overlay_node is not None and not scene.IsNodePresent(overlay_node):
        raise ValueError(f"overlay {overlay_node.GetName()!r} is not in the scene to render.")
    if opacity is None:
        opacity = LABEL_OPACITY if _is_label(overlay_node) else LESION_MAP_OPACITY
    present = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    own_logic = application_logic is None
    if own_logic:
        application_logic = _application_logic(scene)
    logics, views = [], []
    try:
        for orientation in orientations:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(application_logic)
            logic.SetMRMLScene(scene)
            logics.append(logic)
            slice_node = logic.AddSliceNode(_LAYOUT_PREFIX + _SLICER_VIEWS[orientation][0])
            slice_node.SetOrientation(orientation)
            slice_node.SetDimensions(size, size, 1)
            composite = logic.GetSliceCompositeNode()
            composite.SetBackgroundVolumeID(input_node.GetID())
            composite.SetForegroundVolumeID(None)
            composite.SetLabelVolumeID(None)
            if _is_label(overlay_node):
                composite.SetLabelVolumeID(overlay_node.GetID())
                composite.SetLabelOpacity(opacity)
            elif overlay_node is not None:
                composite.SetForegroundVolumeID(overlay_node.GetID())
                composite.SetForegroundOpacity(opacity)
            logic.FitSliceToAll()
            if focus_ras is not None:
                normal = _matrix(slice_node.GetSliceToRAS())[:3, 2]
                logic.SetSliceOffset(float(np.dot(normal, np.asarray(focus_ras, dtype=float))))
            views.append(SliceView(orientation, _blended_rgb(logic), _matrix(slice_node.GetXYToRAS()),
                                   float(logic.GetSliceOffset())))
    finally:
        for logic in logics:
            logic.SetMRMLScene(None)
        if own_logic:
            _release(application_logic)
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in reversed(added):
            if node.GetID() not in present and not node.IsA("vtkMRMLColorNode"):
                scene.RemoveNode(node)
    return views


def _tile(view: SliceView) -> Image.Image:
    """A view under a bar in its Slicer colour naming the orientation and the slice position."""
    bar = 22
    rows, columns, _ = view.rgb.shape
    tile = Image.new("RGB", (columns, rows + bar), _SLICER_VIEWS[view.orientation][1])
    draw_text(ImageDraw.Draw(tile), (6, bar / 2), view.label, 13, INK, "lm")
    tile.paste(Image.fromarray(view.rgb), (0, bar))
    return tile


def render_views(
    scene: slicer.vtkMRMLScene,
    input_node: slicer.vtkMRMLScalarVolumeNode,
    overlay_node: slicer.vtkMRMLScalarVolumeNode | None,
    out_png: str | os.PathLike,
    focus_ras: Sequence[float] | None = None,
    opacity: float | None = None,
    size: int = 376,
) -> Path:
    """Write the axial, coronal and sagittal views of ``input_node`` under ``overlay_node`` side by side.

    The plain three-plane picture, for any volume in any scene (the application's too); see
    :func:`render_slice_views` for the arguments. :func:`write_views_png` adds a prediction's
    attention plot and table.
    """
    views = render_slice_views(scene, input_node, overlay_node, focus_ras, opacity, size)
    gap = 4
    tiles = [_tile(view) for view in views]
    image = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), tiles[0].height), BACKGROUND)
    for index, tile in enumerate(tiles):
        image.paste(tile, (index * (tile.width + gap), 0))
    return save_png(image, out_png)


# ---------------------------------------------------------------------------------------------- focus


def _smoothed_peak(weights_kji: np.ndarray, spacing_kji: Sequence[float]) -> tuple[int, int, int] | None:
    """The voxel ``(k, j, i)`` at the centre of the heaviest region of ``weights_kji``, None if all zero."""
    weights = np.asarray(weights_kji, dtype=np.float32)
    if not np.any(weights > 0):
        return None
    width = [max(1, round(FOCUS_SMOOTHING_MM / s)) for s in spacing_kji]
    smoothed = ndimage.uniform_filter(weights, size=width, mode="constant")
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(smoothed)), smoothed.shape))


def focus_voxel(prediction: Prediction, overlay: str = "lesion-map") -> tuple[int, int, int]:
    """The input voxel ``(k, j, i)`` the views pass through.

    For the lesion map: in the most-attended slice (the one the module jumps to), the centre of its
    strongest lesion map values, so the coronal and sagittal views cut through a lung rather than the
    mediastinum. For the bands: the centre of the most involved region (ground glass and
    consolidation), else of the lungs. The volume's centre when the overlay is empty.
    """
    shape = np.shape(prediction.lesion_map_kji)
    spacing_kji = tuple(prediction.geometry.spacing[::-1])
    centre = tuple(n // 2 for n in shape)
    if overlay == "lesion-map":
        k = prediction.most_attended_slice
        peak = _smoothed_peak(np.asarray(prediction.lesion_map_kji)[k:k + 1], (1.0, *spacing_kji[1:]))
        return (k, *peak[1:]) if peak is not None else (k, *centre[1:])
    bands = np.asarray(prediction.bands_kji)
    for weights in (np.isin(bands, INVOLVED_BANDS), bands > 0):
        peak = _smoothed_peak(weights, spacing_kji)
        if peak is not None:
            return peak
    return centre


# ---------------------------------------------------------------------------------------------- the picture


def _attention_plot(image: Image.Image, box: tuple[int, int, int, int], attention: np.ndarray,
                    shown_k: int, most_attended: int) -> None:
    """One bar per input slice ``k`` (the numbering of the JSON and the scene's table), drawn as the
    montage draws them, the most attended highlighted; the slice the views show marked when it is another."""
    n = attention.size
    bars = attention_bars(attention, [most_attended], np.arange(n))
    to_pixel = draw_attention_strip(image, box, bars, x_label="input slice k")
    if shown_k != most_attended:
        draw = ImageDraw.Draw(image)
        x, _ = to_pixel(shown_k, 0.0)
        draw.line([(x, box[1]), (x, box[3])], fill=MUTED, width=1)
        draw_text(draw, (x + 4, box[1] + 4), f"views at k={shown_k}", 12, MUTED, "lt")


def _probability_table(draw: ImageDraw.ImageDraw, left: int, top: int, width: int,
                       prediction: Prediction) -> int:
    """Class, probability and a bar per class, the predicted class in the accent colour; returns the bottom."""
    row = 24
    draw_text(draw, (left, top), "severity", 15, INK, "lt")
    draw_text(draw, (left + width, top), "probability", 13, MUTED, "rt")
    y = top + 26
    bar_left, bar_right = left + 64, left + width - 56
    for name, probability in prediction.probabilities.items():
        colour = ACCENT if name == prediction.label else INK
        draw_text(draw, (left, y + row / 2), name, 14, colour, "lm")
        draw.rectangle([bar_left, y + 6, bar_right, y + row - 6], outline=BAR)
        filled = bar_left + (bar_right - bar_left) * float(probability)
        if filled > bar_left:
            draw.rectangle([bar_left, y + 6, filled, y + row - 6], fill=colour if name == prediction.label else BAR)
        draw_text(draw, (left + width, y + row / 2), f"{float(probability):.2f}", 14, colour, "rm")
        y += row
    return y


def _involvement_table(draw: ImageDraw.ImageDraw, left: int, top: int, width: int,
                       prediction: Prediction) -> int:
    """The lungs' volume, involved share and drawn bands with their overlay colours; returns the bottom."""
    report = prediction.involvement
    lungs = report["lungs"]
    draw_text(draw, (left, top), "lungs", 15, INK, "lt")
    draw_text(draw, (left + width, top), f"{lungs['volume_ml']:.0f} mL, "
              f"{100 * report['involved_share']:.1f} % involved ({report.get('grade') or '-'})", 13, MUTED, "rt")
    y = top + 26
    for value, name in BAND_NAMES.items():
        red, green, blue, alpha = BAND_COLOURS[value]
        if alpha == 0:  # bands the overlay does not draw
            continue
        draw.rectangle([left, y + 5, left + 14, y + 19], fill=(red, green, blue), outline=MUTED)
        draw_text(draw, (left + 22, y + 12), name.replace("_", " "), 14, INK, "lm")
        draw_text(draw, (left + width, y + 12), f"{lungs['bands_ml'][name]:.0f} mL", 14, INK, "rm")
        y += 24
    return y


def _wrapped(draw: ImageDraw.ImageDraw, text: str, size: int, width: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width`` (a longer word keeps its own line)."""
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(draw, f"{lines[-1]} {word}", size) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def views_image(prediction: Prediction, views: Sequence[SliceView], title: str, subtitle: str, overlay: str,
                shown_k: int) -> Image.Image:
    """The screenshot: the slice views on top, the slice attention and the result tables below."""
    gap = 12
    tiles = [_tile(view) for view in views]
    header, panel, footer = 56, 250, 30
    tiles_top = MARGIN + header
    panel_top = tiles_top + max(t.height for t in tiles) + 20
    height = panel_top + panel + footer + MARGIN
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw_text(draw, (MARGIN, MARGIN), title, 20, INK, "lt")
    draw_text(draw, (MARGIN, MARGIN + 28), subtitle, 14, MUTED, "lt")
    row_width = sum(t.width for t in tiles) + gap * (len(tiles) - 1)
    x = (WIDTH - row_width) // 2
    for tile in tiles:
        image.paste(tile, (x, tiles_top))
        x += tile.width + gap

    table_width = 300
    table_left = WIDTH - MARGIN - table_width
    plot_box = (MARGIN + 70, panel_top + 26, table_left - 48, panel_top + panel - 48)
    draw_text(draw, (plot_box[0], panel_top), "slice attention", 15, INK, "lt")
    _attention_plot(image, plot_box, np.asarray(prediction.slice_attention, dtype=float), shown_k,
                    prediction.most_attended_slice)
    bottom = _probability_table(draw, table_left, panel_top, table_width, prediction)
    if overlay == "bands":
        _involvement_table(draw, table_left, bottom + 14, table_width, prediction)
    elif prediction.involvement:
        for index, line in enumerate(_wrapped(draw, prediction.involvement_line(), 13, table_width)):
            draw_text(draw, (table_left, bottom + 14 + 18 * index), line, 13, MUTED, "lt")
    notice = DEMO_MODEL_NOTICE if prediction.is_demo_model else f"model: {prediction.model_name}"
    draw_text(draw, (WIDTH / 2, height - MARGIN), notice, 13, MUTED, "mb")
    return image


def write_views_png(
    prediction: Prediction,
    volume: Volume,
    path: str | os.PathLike,
    overlay: str = "lesion-map",
    name: str | None = None,
) -> Path:
    """Write the three-plane picture of a prediction (``twofivecnn predict --views``): Slicer's axial,
    coronal and sagittal views of the input under the ``"lesion-map"`` or ``"bands"`` overlay, through
    the most-attended slice (lesion map) or the most involved region (bands), above the slice
    attention and the class probabilities.

    The scene is the one ``--scene`` saves (:func:`nodes.build_prediction_scene`), built in a private
    scene that is discarded afterwards; ``slicer.mrmlScene`` is never touched.
    """
    if overlay not in OVERLAYS:
        raise ValueError(f"overlay {overlay!r}: choose one of {list(OVERLAYS)}.")
    if overlay == "bands" and prediction.bands_kji is None:
        raise ValueError("this prediction has no lung bands (its model did not measure the lungs): "
                         "use overlay='lesion-map'.")
    name = name or volume.name
    scene = slicer.vtkMRMLScene()
    application_logic = _application_logic(scene)  # first, so the input's grey colour table exists
    try:
        _, input_node, nodes = build_prediction_scene(prediction, volume, name, scene)
        overlay_node = nodes.lesion_map_node if overlay == "lesion-map" else nodes.bands_node
        k, j, i = focus_voxel(prediction, overlay)
        focus_ras = volume.geometry.ijk_to_ras() @ np.array([i, j, k, 1.0])
        views = render_slice_views(scene, input_node, overlay_node, focus_ras[:3],
                                   application_logic=application_logic)
        if overlay == "lesion-map":
            subtitle = (f"Slicer's slice views through the most-attended slice (k={k}) under the lesion map "
                        f"(the involved share of the lung around each voxel)")
        else:
            subtitle = "Slicer's slice views through the most involved region under the lung HU bands"
        return save_png(views_image(prediction, views, f"{name}: {prediction.label}", subtitle, overlay, k), path)
    finally:
        _release(application_logic)
        scene.Clear(1)
