"""A prediction's lungs and lung bands as segmentation nodes: named, coloured segments that Slicer shows in
2D and 3D, measures (Segment Statistics) and exports (DICOM SEG), as Lung CT Analyzer's and
TotalSegmentator's results are.

Binary labelmaps are the source representation: one import of the label array, cheap enough for a batch.
Closed surfaces cost seconds per study, so they are built only when a user asks for 3D
(:func:`show_segmentations_3d`). Only static methods of ``vtkSlicerSegmentationsModuleLogic`` are used:
``slicer.util``'s segmentation helpers need ``slicer.modules``, which slicer-core lacks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..reports.colours import LUNG_COLOURS, unit_rgb
from ..transforms.involvement import BAND_NAMES
from ..transforms.lungs import LUNG_NAMES

CLOSED_SURFACE = "Closed surface"
LUNG_OPACITY_3D = 0.3  # the lungs in 3D: see-through, so the involvement inside them shows


@dataclass(frozen=True)
class SegmentStyle:
    """How the segment of one label looks: its name, colour (0..1 RGB) and whether it is shown at first."""

    name: str
    colour: tuple[float, float, float]
    visible: bool = True


def register_converter_rules() -> None:
    """The labelmap <-> closed-surface conversion rules, which the application's Segmentations module
    registers and slicer-core does not. A segmentation node created before they exist never makes a
    surface, so this runs before any result segmentation is created; registering twice is avoided."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    present = {rule.GetClassName() for rule in factory.GetConverterRules()}
    for rule_class in (slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule,
                       slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule):
        if rule_class.__name__ not in present:
            factory.RegisterConverterRule(rule_class())


def lung_segment_styles() -> dict[int, SegmentStyle]:
    """"right lung" and "left lung", in the lungs' colours."""
    return {label: SegmentStyle(f"{side} lung", unit_rgb(LUNG_COLOURS[label]))
            for label, side in LUNG_NAMES.items()}


def band_segment_styles(colour_node: slicer.vtkMRMLColorTableNode) -> dict[int, SegmentStyle]:
    """One style per band, named and coloured as in the bands' colour table, so the labelmap overlay and
    the segments agree. Bands the table leaves transparent start hidden: the aerated band, most of a
    healthy lung, and the vessels, so that the involvement shows (the user can show them)."""
    styles = {}
    for label in BAND_NAMES:
        rgba = [0.0] * 4
        colour_node.GetColor(label, rgba)
        styles[label] = SegmentStyle(colour_node.GetColorName(label).replace("_", " "), tuple(rgba[:3]),
                                     visible=rgba[3] > 0)
    return styles


def _labelmap_image(labels_kji: np.ndarray,
                    input_node: slicer.vtkMRMLScalarVolumeNode) -> slicer.vtkOrientedImageData:
    """``labels_kji`` (the input's storage order) as an oriented image on the input's grid. The image
    borrows the array's memory: keep the array alive while the image is used."""
    shape = labels_kji.shape
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels_kji.ravel(), deep=False,
                                                               array_type=vtk.VTK_UNSIGNED_CHAR))
    matrix = vtk.vtkMatrix4x4()
    input_node.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def fill_segmentation(node: slicer.vtkMRMLSegmentationNode, labels_kji: np.ndarray,
                      input_node: slicer.vtkMRMLScalarVolumeNode, styles: dict[int, SegmentStyle],
                      display: slicer.vtkMRMLSegmentationDisplayNode) -> None:
    """Replace the node's segments with one per label of ``labels_kji`` that has voxels, styled by ``styles``.

    The labels share one binary labelmap (the source representation), told apart by label value; the
    segmentation takes the input's grid as its reference, so editing it works on the CT's voxels.
    """
    labels_kji = np.ascontiguousarray(labels_kji, dtype=np.uint8)
    highest = int(labels_kji.max(initial=0))  # labels run 1..n: the largest tells (np.unique sorts: slow)
    if highest > max(styles):
        raise ValueError(f"label {highest} has no segment name; expected only {sorted(styles)}.")
    node.SetSourceRepresentationToBinaryLabelmap()
    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    node.SetReferenceImageGeometryParameterFromVolumeNode(input_node)
    image = _labelmap_image(labels_kji, input_node)
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, node, ""):
        raise RuntimeError(f"Slicer could not import the labels into {node.GetName()!r}.")
    node.SetAndObserveDisplayNodeID(display.GetID())
    for index in range(segmentation.GetNumberOfSegments()):
        segment, segment_id = segmentation.GetNthSegment(index), segmentation.GetNthSegmentID(index)
        style = styles[segment.GetLabelValue()]
        segment.SetName(style.name)
        segment.SetColor(*style.colour)
        display.SetSegmentVisibility(segment_id, style.visible)
    node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())


def style_lung_display(display: slicer.vtkMRMLSegmentationDisplayNode) -> None:
    """The lungs as outlines in the slice views and see-through in 3D: they frame the involvement, which
    is drawn inside them, instead of covering it."""
    display.SetVisibility2DFill(False)
    display.SetOpacity3D(LUNG_OPACITY_3D)


def _renew_converter(node: slicer.vtkMRMLSegmentationNode) -> None:
    """Give ``node`` a copy of its segmentation made now. A segmentation takes the converter rules that
    exist when it is made, so one made before :func:`register_converter_rules` (a scene loaded in
    slicer-core before this library was used) never converts; its copy, with the same segment IDs, does."""
    renewed = slicer.vtkSegmentation()
    renewed.DeepCopy(node.GetSegmentation())
    node.SetAndObserveSegmentation(renewed)


def show_segmentations_3d(nodes: list[slicer.vtkMRMLSegmentationNode]) -> None:
    """Build the closed surfaces of ``nodes`` and show them in the 3D views (the "Show 3D" action).

    Surfaces are made from the binary labelmaps, which stay the source representation, so editing a
    segment later updates its surface. Raises when a surface cannot be made.
    """
    register_converter_rules()
    for node in nodes:
        if node.GetSegmentation().GetNumberOfSegments() and not node.CreateClosedSurfaceRepresentation():
            _renew_converter(node)
            if not node.CreateClosedSurfaceRepresentation():
                raise RuntimeError(f"Slicer could not build the 3D surfaces of {node.GetName()!r}.")
        display = node.GetDisplayNode()
        if display is not None:
            display.SetPreferredDisplayRepresentationName3D(CLOSED_SURFACE)
            display.SetVisibility3D(True)
            display.SetVisibility(True)


def segments_ras_bounds(nodes: list[slicer.vtkMRMLSegmentationNode]) -> np.ndarray | None:
    """``[r_min, r_max, a_min, a_max, s_min, s_max]`` around every segment of ``nodes`` (None when empty):
    where the 3D view centres."""
    boxes = []
    for node in nodes:
        bounds = [0.0] * 6
        node.GetRASBounds(bounds)
        if bounds[0] <= bounds[1]:
            boxes.append(bounds)
    if not boxes:
        return None
    boxes = np.array(boxes)
    return np.ravel(np.stack([boxes[:, 0::2].min(axis=0), boxes[:, 1::2].max(axis=0)], axis=1))


def centre_3d_views(scene: slicer.vtkMRMLScene, nodes: list[slicer.vtkMRMLSegmentationNode]) -> int:
    """Point every 3D view's camera at the centre of ``nodes``' segments, keeping its direction and
    distance; returns how many cameras moved (0 in a scene without 3D views)."""
    bounds = segments_ras_bounds(nodes)
    if bounds is None:
        return 0
    centre = (bounds[0::2] + bounds[1::2]) / 2
    cameras = [scene.GetNthNodeByClass(i, "vtkMRMLCameraNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLCameraNode"))]
    for camera in cameras:
        offset = np.array(camera.GetPosition()) - np.array(camera.GetFocalPoint())
        camera.SetFocalPoint(*centre)
        camera.SetPosition(*(centre + offset))
    return len(cameras)
