"""A prediction as MRML nodes: severity table, lesion map overlay, slice-attention plot, saved scenes.

Only imported where MRML exists (3D Slicer, or the ``slicer-core`` wheel headless); no Qt here, so
the widget, the batch command line and the tests share one code path.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import slicer
import slicer.util
import vtk

from ..inference.prediction import DEMO_MODEL_NOTICE, Prediction
from ..io.atomic import temporary_path
from ..io.volume import Geometry, Volume, read_volume, unique_stem
from ..reports.colours import ACCENT_UNIT, BAND_COLOURS, lesion_map_lut
from ..transforms.involvement import BAND_NAMES
from .folders import place_results
from .segmentations import (
    band_segment_styles,
    fill_segmentation,
    lung_segment_styles,
    register_converter_rules,
    style_lung_display,
)

if TYPE_CHECKING:
    from ..inference.engines import Grader

# The console API, re-exported by the package (``TwoFiveCNNLib.scene``).
__all__ = ["NodePrediction", "PredictionNodes", "build_prediction_scene", "find_prediction_nodes",
           "predict_volume_node", "save_prediction_scene", "save_scene", "show_overlay", "volume_from_node",
           "write_prediction_nodes"]

ATTRIBUTE_PREFIX = "TwoFiveCNN."
COLOUR_NODE_NAME = "TwoFiveCNN lesion map colours"
BAND_COLOUR_NODE_NAME = "TwoFiveCNN lung band colours"
LESION_MAP_THRESHOLD = 0.05  # lesion map values below this are left transparent in the slice views
LUNG_WINDOW_LEVEL = (1500.0, -600.0)  # window, level (HU) for the saved input volume
PLOT_COLOUR = ACCENT_UNIT  # the reports' accent blue

# role: (MRML class, node name given the input's name). The role names the node reference on the input.
_NODES = {
    "table": ("vtkMRMLTableNode", "{} severity"),
    "lesion_map": ("vtkMRMLScalarVolumeNode", "{} lesion map"),
    "slice_table": ("vtkMRMLTableNode", "{} slice attention"),
    "plot_series": ("vtkMRMLPlotSeriesNode", "{} slice attention"),
    "plot_chart": ("vtkMRMLPlotChartNode", "{} attention chart"),
    "colour": ("vtkMRMLColorTableNode", COLOUR_NODE_NAME),
}
# Roles of the lung-involvement result, present when the prediction measured it.
_INVOLVEMENT_NODES = {
    "involvement": ("vtkMRMLTableNode", "{} lung involvement"),
    "bands": ("vtkMRMLLabelMapVolumeNode", "{} lung bands"),
    "band_colour": ("vtkMRMLColorTableNode", BAND_COLOUR_NODE_NAME),
    "involvement_segmentation": ("vtkMRMLSegmentationNode", "{} involvement"),
}
# The lungs the involvement was measured in, present when the prediction carries their labels.
_LUNG_NODES = {"lung_segmentation": ("vtkMRMLSegmentationNode", "{} lungs")}
_ALL_NODES = {**_NODES, **_INVOLVEMENT_NODES, **_LUNG_NODES}
# Colour tables every result shares: kept outside result folders and never removed with a result.
SHARED_ROLES = ("colour", "band_colour")


# legacy: remove after 0.3. Scenes saved by 0.2 and before refer to the lesion map under older roles and
# call it and its colours by older names: a re-run (or the panel) still finds those nodes, and a re-run
# gives them today's names and references.
LEGACY_ROLES = {"lesion_map": ("evidence", "attention")}
LEGACY_NODE_NAMES = {"lesion_map": ("{} evidence", "{} attention"),
                     "colour": ("TwoFiveCNN evidence colours", "TwoFiveCNN attention colours")}


@dataclass
class PredictionNodes:
    """The nodes showing one prediction; re-running on the same input updates these same nodes."""

    table_node: slicer.vtkMRMLTableNode
    lesion_map_node: slicer.vtkMRMLScalarVolumeNode
    slice_table_node: slicer.vtkMRMLTableNode
    plot_series_node: slicer.vtkMRMLPlotSeriesNode
    plot_chart_node: slicer.vtkMRMLPlotChartNode
    colour_node: slicer.vtkMRMLColorTableNode
    involvement_node: slicer.vtkMRMLTableNode | None = None
    bands_node: slicer.vtkMRMLLabelMapVolumeNode | None = None
    band_colour_node: slicer.vtkMRMLColorTableNode | None = None
    involvement_segmentation_node: slicer.vtkMRMLSegmentationNode | None = None
    lung_segmentation_node: slicer.vtkMRMLSegmentationNode | None = None

    def by_role(self) -> dict[str, slicer.vtkMRMLNode]:
        """Every node present, by role (the involvement nodes only when involvement was measured)."""
        nodes = {f.name.removesuffix("_node"): getattr(self, f.name) for f in fields(PredictionNodes)}
        return {role: node for role, node in nodes.items() if node is not None}

    # legacy: remove after 0.3. The lesion map node's names in 0.2 and before, for console scripts.
    @property
    def evidence_node(self) -> slicer.vtkMRMLScalarVolumeNode:
        return self.lesion_map_node

    @property
    def attention_node(self) -> slicer.vtkMRMLScalarVolumeNode:
        return self.lesion_map_node


# ---------------------------------------------------------------------------------------------- input


def _node_label(node: slicer.vtkMRMLNode) -> str:
    return f"{node.GetName()!r} ({node.GetID() or 'not in a scene'})"


def _check_volume_node(node: slicer.vtkMRMLNode | None) -> None:
    """Refuse anything the model cannot read as one greyscale CT, saying what to select instead."""
    if node is None:
        raise ValueError("No input volume selected: select the chest CT volume node.")
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(
            f"{_node_label(node)} is a {node.GetClassName()}, not a volume: select the chest CT "
            f"volume node (load the CT with Add Data or the DICOM module first)."
        )
    # Vector and tensor volumes derive from vtkMRMLScalarVolumeNode, labelmaps too: refuse them by name.
    if node.IsA("vtkMRMLTensorVolumeNode"):
        raise ValueError(
            f"{_node_label(node)} is a {node.GetClassName()} (several values per voxel); "
            f"convert it with the 'Vector to Scalar Volume' module or select the CT itself."
        )
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(
            f"{_node_label(node)} is a labelmap (segment labels), not a CT: select the CT volume."
        )
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise ValueError(
            f"{_node_label(node)} holds no voxels (its loading failed or it was never filled): "
            f"reload the CT and select it again."
        )
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(
            f"{_node_label(node)} has {image.GetNumberOfScalarComponents()} values per voxel; "
            f"TwoFiveCNN needs a greyscale CT in Hounsfield units."
        )


def _ijk_to_ras(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volume_from_node(volume_node: slicer.vtkMRMLScalarVolumeNode) -> Volume:
    """The node's voxels and geometry as a canonical :class:`Volume`, the same as reading its file.

    The array is copied, so neither the model nor later edits of the Volume can change the node.
    A parent transform is ignored (the model sees the voxel grid); it is reported in the warnings. A
    sheared grid (a tilted gantry's, which the results could not be mapped back onto) is refused.
    """
    _check_volume_node(volume_node)
    array_kji = np.array(slicer.util.arrayFromVolume(volume_node), copy=True)
    geometry = Geometry.from_ijk_to_ras(_ijk_to_ras(volume_node), size=array_kji.shape[::-1],
                                        source=_node_label(volume_node))
    warnings = []
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        warnings.append(
            f"{_node_label(volume_node)} is under the transform {transform.GetName()!r}, which the "
            f"prediction ignores; the results are shown under the same transform."
        )
    return Volume.from_original(array_kji, geometry, source=volume_node.GetName(), warnings=warnings)


def jump_to_slice_ras(
    input_node: slicer.vtkMRMLScalarVolumeNode, slice_index: int
) -> tuple[float, float, float]:
    """World RAS centre of input slice ``k``: where the widget moves the views (e.g. the most attended slice).

    World, not the node's own RAS, so the views land on the slice even under a parent transform.
    """
    _check_volume_node(input_node)
    dims = input_node.GetImageData().GetDimensions()
    if not 0 <= slice_index < dims[2]:
        raise ValueError(
            f"slice {slice_index} is outside {_node_label(input_node)}, which has slices 0..{dims[2] - 1}."
        )
    centre = _ijk_to_ras(input_node) @ np.array([(dims[0] - 1) / 2, (dims[1] - 1) / 2, slice_index, 1.0])
    point = tuple(float(c) for c in centre[:3])
    transform = input_node.GetParentTransformNode()
    if transform is not None:
        to_world = vtk.vtkGeneralTransform()
        transform.GetTransformToWorld(to_world)
        point = tuple(float(c) for c in to_world.TransformPoint(point))
    return point


def _check_prediction(prediction: Prediction, shape_kji: tuple[int, int, int]) -> None:
    """Refuse a prediction that does not fit the input before any node is touched."""
    lesion_map = np.asarray(prediction.lesion_map_kji)
    if lesion_map.shape != shape_kji:
        raise ValueError(
            f"lesion map has shape {lesion_map.shape} but the input volume has {shape_kji} "
            f"voxels (k, j, i): the prediction was made on another volume."
        )
    if not np.all(np.isfinite(lesion_map)) or lesion_map.min() < -1e-6 or lesion_map.max() > 1 + 1e-6:
        raise ValueError("lesion map must hold finite values in 0..1.")
    for what, labels in (("lung band", prediction.bands_kji), ("lung", prediction.lungs_kji)):
        if labels is not None and np.shape(labels) != shape_kji:
            raise ValueError(f"{what} labels have shape {np.shape(labels)} but the input volume has "
                             f"{shape_kji} voxels (k, j, i): the prediction was made on another volume.")
        if labels is not None and not prediction.involvement:
            raise ValueError(f"{what} labels without their involvement figures: the prediction is "
                             f"incomplete.")
    if len(prediction.slice_attention) != shape_kji[0]:
        raise ValueError(
            f"slice attention has {len(prediction.slice_attention)} weights but the input volume "
            f"has {shape_kji[0]} slices."
        )
    probabilities = np.array(list(prediction.probabilities.values()), dtype=float)
    if probabilities.size == 0 or prediction.label not in prediction.probabilities:
        raise ValueError(
            f"label {prediction.label!r} is not among the classes {list(prediction.probabilities)}."
        )
    if not np.all(np.isfinite(probabilities)) or abs(probabilities.sum() - 1.0) > 1e-3:
        raise ValueError(f"class probabilities must sum to 1, got {probabilities.sum():.4f}.")


# ---------------------------------------------------------------------------------------------- nodes


def _named_node(scene: slicer.vtkMRMLScene, class_name: str, name: str) -> slicer.vtkMRMLNode | None:
    for index in range(scene.GetNumberOfNodesByClass(class_name)):
        node = scene.GetNthNodeByClass(index, class_name)
        if node.GetClassName() == class_name and node.GetName() == name:
            return node
    return None


def _referenced_node(input_node: slicer.vtkMRMLNode, role: str) -> slicer.vtkMRMLNode | None:
    """The input's result node for ``role``, also under its legacy references (scenes saved by 0.2)."""
    for reference in (role, *LEGACY_ROLES.get(role, ())):
        node = input_node.GetNodeReference(ATTRIBUTE_PREFIX + reference)
        if node is not None:
            return node
    return None


def _find_or_add(
    scene: slicer.vtkMRMLScene, input_node: slicer.vtkMRMLNode, role: str, created: list[slicer.vtkMRMLNode]
) -> slicer.vtkMRMLNode:
    """This role's node from an earlier run (by reference, then name), or a new one noted in ``created``.

    A node found under a legacy name takes today's; one the user renamed keeps its name."""
    class_name, template = _ALL_NODES[role]
    input_name = input_node.GetName() or input_node.GetID()
    name = template.format(input_name)
    legacy_names = [legacy.format(input_name) for legacy in LEGACY_NODE_NAMES.get(role, ())]
    node = _referenced_node(input_node, role)
    if node is None or node.GetClassName() != class_name or not scene.IsNodePresent(node):
        named = (_named_node(scene, class_name, candidate) for candidate in [name, *legacy_names])
        node = next((found for found in named if found is not None), None)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
        created.append(node)
    elif node.GetName() in legacy_names:
        node.SetName(name)
    return node


def _add_to(
    scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode, created: list[slicer.vtkMRMLNode]
) -> slicer.vtkMRMLNode:
    scene.AddNode(node)
    created.append(node)
    return node


def _column(
    name: str, values: np.ndarray | list, array_type: type = vtk.vtkDoubleArray
) -> vtk.vtkAbstractArray:
    column = array_type()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(value)
    return column


def _fill_table(table: slicer.vtkMRMLTableNode, columns: list[vtk.vtkAbstractArray]) -> None:
    table.RemoveAllColumns()
    for column in columns:
        table.AddColumn(column)


def _fill_severity_table(table: slicer.vtkMRMLTableNode, prediction: Prediction) -> None:
    classes = list(prediction.probabilities)
    _fill_table(
        table,
        [
            _column("class", classes, vtk.vtkStringArray),
            _column("probability", [float(prediction.probabilities[c]) for c in classes]),
            _column("predicted", [int(c == prediction.label) for c in classes], vtk.vtkIntArray),
        ],
    )
    attributes = {
        "label": prediction.label,
        "model": prediction.model_name,
        "source": prediction.source,
        "warnings": "\n".join(prediction.warnings),
        "mostAttendedSlice": str(prediction.most_attended_slice),
        "notice": DEMO_MODEL_NOTICE if prediction.is_demo_model else "",
    }
    for key, value in attributes.items():
        if value:
            table.SetAttribute(ATTRIBUTE_PREFIX + key, value)
        else:  # a re-run must not keep the previous run's warnings or notice
            table.RemoveAttribute(ATTRIBUTE_PREFIX + key)


def _fill_colour_table(
    colour: slicer.vtkMRMLColorTableNode,
    entries: list[tuple[str, float, float, float, float]],
    description: str,
    scene: slicer.vtkMRMLScene,
    created: list[slicer.vtkMRMLNode],
) -> None:
    """A user colour table of ``(name, red, green, blue, alpha)`` entries (0..1), saved with the scene.

    It gets its own storage node and stays visible to editors: slicer-core's ``Commit()`` moves the
    file of a hidden colour table into ``<scene>_Private/``, away from the scene's data folder.
    """
    colour.SetTypeToUser()
    colour.SetHideFromEditors(False)
    colour.SetNumberOfColors(len(entries))
    for index, (name, red, green, blue, alpha) in enumerate(entries):
        colour.SetColor(index, name, red, green, blue, alpha)
    colour.SetDescription(description)
    if colour.GetStorageNode() is None:
        storage = _add_to(scene, colour.CreateDefaultStorageNode(), created)
        colour.SetAndObserveStorageNodeID(storage.GetID())


def _fill_colours(
    colour: slicer.vtkMRMLColorTableNode, scene: slicer.vtkMRMLScene, created: list[slicer.vtkMRMLNode]
) -> None:
    """The lesion map's colours from colours.lesion_map_lut, so the overlay matches the PNG reports."""
    lut = lesion_map_lut(256)
    entries = [(f"{index / (len(lut) - 1):.3f}", *rgba) for index, rgba in enumerate(lut)]
    _fill_colour_table(colour, entries, "TwoFiveCNN lesion map 0..1: inferno, opacity rising with the value",
                       scene, created)


def _fill_overlay_volume(
    node: slicer.vtkMRMLScalarVolumeNode,
    array_kji: np.ndarray,
    input_node: slicer.vtkMRMLScalarVolumeNode,
    colour: slicer.vtkMRMLColorTableNode,
    display_class: type,
    scene: slicer.vtkMRMLScene,
    created: list[slicer.vtkMRMLNode],
) -> slicer.vtkMRMLVolumeDisplayNode:
    """An overlay volume on the input's grid, under the input's own parent transform (so it stays on the
    input wherever that is moved), shown with ``colour``; returns its display node."""
    slicer.util.updateVolumeFromArray(node, array_kji)
    matrix = vtk.vtkMatrix4x4()
    input_node.GetIJKToRASMatrix(matrix)
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    display = node.GetDisplayNode()
    if display is None:
        display = _add_to(scene, display_class(), created)
        node.SetAndObserveDisplayNodeID(display.GetID())
    display.SetAndObserveColorNodeID(colour.GetID())
    return display


# The involvement table's headers, read as they are shown (Lung CT Analyzer's style): name and unit.
REGION_COLUMN, VOLUME_COLUMN, INVOLVED_COLUMN = "Region", "Volume (mL)", "Involved (%)"


def _band_column(band: str) -> str:
    """A band's share column: "ground_glass" -> "Ground glass (%)"."""
    return f"{band.replace('_', ' ').capitalize()} (%)"


def _fill_involvement(nodes: PredictionNodes, prediction: Prediction, input_node: slicer.vtkMRMLScalarVolumeNode,
                      scene: slicer.vtkMRMLScene, created: list[slicer.vtkMRMLNode]) -> None:
    """The lung-involvement table (both lungs, each lung, each zone) and the HU-band labelmap."""
    report = prediction.involvement
    regions = [("both lungs", report["lungs"])]
    for lung, record in report["per_lung"].items():
        regions.append((f"{lung} lung", record))
        regions += [(f"{lung} {zone}", figures) for zone, figures in record["zones"].items()]
    table = nodes.involvement_node
    _fill_table(
        table,
        [
            _column(REGION_COLUMN, [name for name, _ in regions], vtk.vtkStringArray),
            _column(VOLUME_COLUMN, [figures["volume_ml"] for _, figures in regions]),
            _column(INVOLVED_COLUMN, [100 * figures["involved_share"] for _, figures in regions]),
            *(_column(_band_column(band), [100 * figures["bands_share"][band] for _, figures in regions])
              for band in BAND_NAMES.values()),
        ],
    )
    table.SetColumnUnitLabel(VOLUME_COLUMN, "mL")
    for column in (INVOLVED_COLUMN, *map(_band_column, BAND_NAMES.values())):
        table.SetColumnUnitLabel(column, "%")
    table.SetColumnDescription(INVOLVED_COLUMN, "ground glass + consolidation, % of the region's volume")
    grade = report.get("grade") or ""
    table.SetAttribute(ATTRIBUTE_PREFIX + "involvementGrade", grade)
    table.SetAttribute(ATTRIBUTE_PREFIX + "involvedPercent", f"{100 * report['involved_share']:.2f}")
    # Lung volume the lesion network added to the HU mask (dense consolidation it leaves out), in mL.
    table.SetAttribute(ATTRIBUTE_PREFIX + "lesionNetworkAddedMl", f"{report.get('learned_added_ml', 0.0):.2f}")

    entries = [("background", 0.0, 0.0, 0.0, 0.0)]
    for value, name in BAND_NAMES.items():
        red, green, blue, alpha = BAND_COLOURS[value]
        entries.append((name, red / 255, green / 255, blue / 255, alpha))
    _fill_colour_table(nodes.band_colour_node, entries,
                       "TwoFiveCNN lung HU bands: emphysema, aerated, ground glass, consolidation, vessel",
                       scene, created)
    bands = np.ascontiguousarray(prediction.bands_kji, dtype=np.uint8)
    _fill_overlay_volume(nodes.bands_node, bands, input_node, nodes.band_colour_node,
                         slicer.vtkMRMLLabelMapVolumeDisplayNode, scene, created)
    _fill_segmentation(nodes.involvement_segmentation_node, bands, input_node,
                       band_segment_styles(nodes.band_colour_node), scene, created)


def _fill_segmentation(node: slicer.vtkMRMLSegmentationNode, labels_kji: np.ndarray,
                       input_node: slicer.vtkMRMLScalarVolumeNode, styles: dict, scene: slicer.vtkMRMLScene,
                       created: list[slicer.vtkMRMLNode]) -> slicer.vtkMRMLSegmentationDisplayNode:
    """``node``'s segments from ``labels_kji`` (segmentations.fill_segmentation), with a display node."""
    display = node.GetDisplayNode() or _add_to(scene, slicer.vtkMRMLSegmentationDisplayNode(), created)
    fill_segmentation(node, labels_kji, input_node, styles, display)
    return display


def _fill_lesion_map(nodes: PredictionNodes, prediction: Prediction, input_node: slicer.vtkMRMLScalarVolumeNode,
                     scene: slicer.vtkMRMLScene, created: list[slicer.vtkMRMLNode]) -> None:
    lesion_map = np.clip(prediction.lesion_map_kji, 0, 1).astype(np.float32)
    display = _fill_overlay_volume(nodes.lesion_map_node, lesion_map, input_node, nodes.colour_node,
                                   slicer.vtkMRMLScalarVolumeDisplayNode, scene, created)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.AutoThresholdOff()
    display.SetThreshold(LESION_MAP_THRESHOLD, 1.0)
    display.ApplyThresholdOn()
    display.SetInterpolate(True)


def _fill_plot(nodes: PredictionNodes, prediction: Prediction, input_name: str) -> None:
    weights = np.asarray(prediction.slice_attention, dtype=float)
    table = nodes.slice_table_node
    _fill_table(
        table,
        [
            _column("slice", range(len(weights)), vtk.vtkIntArray),
            _column("position_mm", prediction.slice_positions_mm()),
            _column("attention", weights),
        ],
    )
    table.SetColumnUnitLabel("position_mm", "mm")
    table.SetColumnDescription("attention", "share of the model's attention on this slice (sums to 1)")
    series = nodes.plot_series_node
    series.SetAndObserveTableNodeID(table.GetID())
    series.SetXColumnName("slice")
    series.SetYColumnName("attention")
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetColor(*PLOT_COLOUR)
    chart = nodes.plot_chart_node
    if not chart.HasPlotSeriesNodeID(series.GetID()):
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    chart.SetTitle(f"{input_name}: attention per slice ({prediction.label})")
    chart.SetXAxisTitle("slice (k index)")
    chart.SetYAxisTitle("attention weight")
    chart.SetLegendVisibility(False)


def _default_scene(scene: slicer.vtkMRMLScene | None) -> slicer.vtkMRMLScene:
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise ValueError(
            "No MRML scene: pass scene=..., or set slicer.mrmlScene when running outside Slicer."
        )
    return scene


def write_prediction_nodes(
    prediction: Prediction,
    input_node: slicer.vtkMRMLScalarVolumeNode,
    scene: slicer.vtkMRMLScene | None = None,
) -> PredictionNodes:
    """Show a prediction in the scene, updating the nodes of an earlier run on the same input.

    All or nothing: the prediction is checked before any node is touched, and a failure while
    building removes every node this call added. The input node only gains references to its
    result nodes (``TwoFiveCNN.<role>``), which is how a re-run finds them.
    """
    scene = _default_scene(scene)
    _check_volume_node(input_node)
    if not scene.IsNodePresent(input_node):
        raise ValueError(f"{_node_label(input_node)} is not in the scene the results should go to.")
    _check_prediction(prediction, tuple(input_node.GetImageData().GetDimensions())[::-1])
    created: list[slicer.vtkMRMLNode] = []
    try:
        register_converter_rules()  # before any segmentation node exists, or it never makes 3D surfaces
        roles = [*_NODES, *(_INVOLVEMENT_NODES if prediction.bands_kji is not None else ()),
                 *(_LUNG_NODES if prediction.lungs_kji is not None else ())]
        nodes = PredictionNodes(
            **{f"{role}_node": _find_or_add(scene, input_node, role, created) for role in roles}
        )
        _fill_severity_table(nodes.table_node, prediction)
        _fill_colours(nodes.colour_node, scene, created)
        _fill_lesion_map(nodes, prediction, input_node, scene, created)
        _fill_plot(nodes, prediction, input_node.GetName())
        if nodes.bands_node is not None:
            _fill_involvement(nodes, prediction, input_node, scene, created)
        if nodes.lung_segmentation_node is not None:
            lung_display = _fill_segmentation(nodes.lung_segmentation_node, prediction.lungs_kji, input_node,
                                              lung_segment_styles(), scene, created)
            style_lung_display(lung_display)
    except BaseException:
        for node in reversed(created):
            scene.RemoveNode(node)
        raise
    for role in set(_ALL_NODES) - set(roles) - set(SHARED_ROLES):  # an older run's roles this one lacks
        stale = _referenced_node(input_node, role)
        if stale is not None and scene.IsNodePresent(stale):
            _remove_with_helpers(scene, stale)
    for role in _ALL_NODES:  # a run without involvement leaves no stale references to an older one's
        input_node.RemoveNodeReferenceIDs(ATTRIBUTE_PREFIX + role)
    for role, node in nodes.by_role().items():
        input_node.SetNodeReferenceID(ATTRIBUTE_PREFIX + role, node.GetID())
    for legacy in (reference for references in LEGACY_ROLES.values() for reference in references):
        input_node.RemoveNodeReferenceIDs(ATTRIBUTE_PREFIX + legacy)
    place_results(scene, input_node,
                  [node for role, node in nodes.by_role().items() if role not in SHARED_ROLES])
    return nodes


def _remove_with_helpers(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> None:
    """Remove ``node`` with its display and storage nodes, which the scene would otherwise keep."""
    helpers = [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())] \
        if node.IsA("vtkMRMLDisplayableNode") else []
    if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is not None:
        helpers.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None:
            scene.RemoveNode(helper)


def show_overlay(
    input_node: slicer.vtkMRMLScalarVolumeNode,
    overlay_node: slicer.vtkMRMLScalarVolumeNode | None,
    visible: bool = True,
    opacity: float = 0.4,
    scene: slicer.vtkMRMLScene | None = None,
) -> int:
    """Show ``overlay_node`` over ``input_node`` in every slice view of the scene, or hide the overlay.

    Sets each slice view's composite node (what ``slicer.util.setSliceViewerLayers`` does), so the
    same code serves the application, headless scenes and rendered screenshots. Returns how many
    slice views it set (0 in a scene without views).
    """
    scene = scene if scene is not None else input_node.GetScene() or _default_scene(None)
    composites = [scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
                  for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]
    for composite in composites:
        if visible and overlay_node is not None:
            composite.SetBackgroundVolumeID(input_node.GetID())
            composite.SetForegroundVolumeID(overlay_node.GetID())
            composite.SetForegroundOpacity(opacity)
        else:
            composite.SetForegroundVolumeID(None)
    return len(composites)


# ---------------------------------------------------------------------------------------------- saving


def save_scene(scene: slicer.vtkMRMLScene, mrml_path: str | os.PathLike) -> Path:
    """Save a scene as ``<stem>.mrml`` beside a ``<stem>_data/`` folder holding every node's data.

    ``Commit()`` writes only the XML (and hidden colour tables): nodes without a storage node would
    reload empty, so every storable node saved with the scene gets one, pointing into the data folder.
    Data is written before the .mrml, so a .mrml never refers to files not yet written.
    """
    mrml_path = Path(mrml_path).resolve()
    data_dir = mrml_path.parent / f"{mrml_path.stem}_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    storable = [
        scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLStorableNode"))
    ]
    for node in storable:
        if not node.GetSaveWithScene():  # e.g. Slicer's built-in colour tables
            continue
        if node.GetAttribute(LINKED_ATTRIBUTE) == "1" and node.GetStorageNode() is not None:
            continue  # read from its source file (save_prediction_scene links the input CT)
        storage = node.GetStorageNode()
        if storage is None:
            storage = node.CreateDefaultStorageNode()
            if storage is None:  # a node type with no file format: nothing to write
                continue
            scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        path = data_dir / f"{unique_stem(node.GetName(), used)}.{storage.GetDefaultWriteFileExtension()}"
        storage.SetFileName(str(path))
        if not storage.WriteData(node):
            raise OSError(
                f"Could not write {_node_label(node)} to {path}: check the disk space and permissions "
                f"of {data_dir}."
            )
    scene.SetRootDirectory(str(mrml_path.parent))
    scene.SetURL(str(mrml_path))
    if not scene.Commit():
        raise OSError(f"Could not write the scene file {mrml_path}: check the permissions of its folder.")
    return mrml_path


def _add_input_volume(
    scene: slicer.vtkMRMLScene, volume: Volume, name: str
) -> slicer.vtkMRMLScalarVolumeNode:
    """The input as Slicer would load it: storage order, the file's own geometry, a lung window."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.geometry.ijk_to_ras()))
    slicer.util.updateVolumeFromArray(node, volume.to_original(volume.array))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(*LUNG_WINDOW_LEVEL)
    return node


LINKED_ATTRIBUTE = ATTRIBUTE_PREFIX + "linkedInput"  # a node whose data is its source file, not rewritten
LINKABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def _link_to_source(node: slicer.vtkMRMLScalarVolumeNode, volume: Volume, scene_folder: Path) -> bool:
    """Let the scene read the input from the file it came from instead of a copy in its data folder:
    a saved scene costs the outputs, not another copy of the CT. Only single volume files (not DICOM
    folders) that still hold what was read; returns whether the node was linked.

    The link is written relative to ``scene_folder``, where the .mrml will finally lie (it is
    written in a staging folder below it first), so the pair can move together."""
    source = Path(volume.source) if volume.source else None
    if source is None or not source.is_file() or not source.name.lower().endswith(LINKABLE_SUFFIXES):
        return False
    storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
    if storage is None:
        return False
    if storage.GetScene() is None:
        node.GetScene().AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    try:
        link = os.path.relpath(source.resolve(), Path(scene_folder).resolve())
    except ValueError:  # another drive (Windows): no relative link, so the scene keeps a copy
        return False
    storage.SetFileName(link)
    node.SetAttribute(LINKED_ATTRIBUTE, "1")
    return True


def _move_into(source_dir: Path, target_dir: Path) -> None:
    """Move every entry of ``source_dir`` onto ``target_dir``, folders first so the .mrml lands last."""
    for entry in sorted(source_dir.iterdir(), key=lambda p: (not p.is_dir(), p.name)):
        target = target_dir / entry.name
        if entry.is_dir() and target.exists():
            old = source_dir / f".old-{entry.name}"  # removed with source_dir by the caller
            os.replace(target, old)
        os.replace(entry, target)


def build_prediction_scene(
    prediction: Prediction, volume: Volume, name: str, scene: slicer.vtkMRMLScene | None = None
) -> tuple[slicer.vtkMRMLScene, slicer.vtkMRMLScalarVolumeNode, PredictionNodes]:
    """The input CT as Slicer would load it (lung window) and every result node, in ``scene`` or a new one.

    What :func:`save_prediction_scene` saves and what ``views`` renders are built here, once, so a
    picture of a prediction shows exactly the nodes of its saved scene. ``slicer.mrmlScene`` is
    never touched.
    """
    scene = scene if scene is not None else slicer.vtkMRMLScene()
    input_node = _add_input_volume(scene, volume, name)
    nodes = write_prediction_nodes(prediction, input_node, scene)
    return scene, input_node, nodes


def save_prediction_scene(
    prediction: Prediction,
    input_path_or_volume: str | os.PathLike | Volume,
    out_dir: str | os.PathLike,
    name: str,
) -> Path:
    """Write ``<out_dir>/<name>.mrml`` and ``<out_dir>/<name>_data/``: every result node, and the input
    CT as a link to its file when it came from a single volume file (else a copy in the data folder).

    Headless and independent of ``slicer.mrmlScene``: a new scene is built and written into a
    temporary folder inside ``out_dir``, then moved into place, so an interrupted run leaves the
    previous result (or nothing) rather than a scene referring to missing files.
    """
    if not name or name.startswith(".") or any(sep in name for sep in "/\\"):
        raise ValueError(f"scene name {name!r} must be a plain file name (no folders, not hidden).")
    volume = (
        input_path_or_volume
        if isinstance(input_path_or_volume, Volume)
        else read_volume(input_path_or_volume)
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scene, input_node, _nodes = build_prediction_scene(prediction, volume, name)
    _link_to_source(input_node, volume, out_dir)
    staging = temporary_path(out_dir / name, folder=True)
    try:
        save_scene(scene, staging / f"{name}.mrml")
        _move_into(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir / f"{name}.mrml"


@dataclass
class NodePrediction(PredictionNodes):
    """What :func:`predict_volume_node` returns: the scene nodes that show a prediction (``table_node``,
    ``lesion_map_node``, ``plot_chart_node``...), its grade and the full :class:`Prediction`."""

    label: str = ""
    probabilities: dict[str, float] = field(default_factory=dict)
    prediction: Prediction | None = None

    @property
    def nodes(self) -> PredictionNodes:
        return PredictionNodes(**{f.name: getattr(self, f.name) for f in fields(PredictionNodes)})


def predict_volume_node(volume_node: slicer.vtkMRMLScalarVolumeNode, model_path: str | os.PathLike | None = None,
                        scene: slicer.vtkMRMLScene | None = None, device: str = "auto",
                        model: Grader | None = None) -> NodePrediction:
    """Grade a volume node and show the result in the scene (re-running updates the same nodes).

    ``model_path`` None uses the bundled synthetic-data demo model; an already loaded ``model``
    saves reloading it for many volumes. The input node is never modified.
    """
    from ..inference.engines import load_model
    from ..inference.predict import predict_volume

    volume = volume_from_node(volume_node)
    if model is None:
        model = load_model(model_path, device)
    prediction = predict_volume(model, volume)
    nodes = write_prediction_nodes(prediction, volume_node, scene)
    return NodePrediction(**{f.name: getattr(nodes, f.name) for f in fields(PredictionNodes)},
                          label=prediction.label, probabilities=prediction.probabilities, prediction=prediction)


def find_prediction_nodes(input_node: slicer.vtkMRMLNode | None) -> PredictionNodes | None:
    """The result nodes of the last run on ``input_node`` (from its references), or None if it has none.

    Works on a reloaded scene too, since the references are saved with it; None when any node is
    missing (removed by the user), so callers treat a partial result as no result.
    """
    if input_node is None:
        return None
    found = {}
    for role, (class_name, _template) in _ALL_NODES.items():
        node = _referenced_node(input_node, role)
        if node is not None and node.IsA(class_name):
            found[f"{role}_node"] = node
        elif role in _NODES:
            return None
    return PredictionNodes(**found)
