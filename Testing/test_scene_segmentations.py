"""Issue 28's results on the real MRML library (slicer-core): the lungs and the involvement as segmentations,
every result of one input in one subject-hierarchy folder under its study, surfaces only when asked."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")
from helpers import add_chest_node, node_named, reload
from TwoFiveCNNLib.inference.predict import predict_volume
from TwoFiveCNNLib.inference.prediction import Prediction
from TwoFiveCNNLib.io.volume import Volume, read_volume
from TwoFiveCNNLib.scene import folders, segmentations
from TwoFiveCNNLib.scene import nodes as scene_module
from TwoFiveCNNLib.transforms.involvement import BAND_NAMES
from vtk.util import numpy_support

LABELMAP = "Binary labelmap"
pytestmark = pytest.mark.usefixtures("mrml_scene")  # a fresh application scene per test (conftest)


@pytest.fixture(scope="module")
def chest_prediction(chest: Volume, demo_model) -> Prediction:
    return predict_volume(demo_model, chest)


def add_chest_in_study(volume: Volume) -> tuple:
    """The CT under a patient and a study, as the DICOM module loads it; returns (node, study item)."""
    node = add_chest_node(volume)
    hierarchy = folders.subject_hierarchy(node.GetScene())
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient 1")
    study = hierarchy.CreateStudyItem(patient, "CT 2020")
    hierarchy.CreateItem(study, node)
    return node, study


def segments(node) -> dict[str, object]:
    segmentation = node.GetSegmentation()
    return {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegment(i)
            for i in range(segmentation.GetNumberOfSegments())}


def segment_volume_ml(segment) -> float:
    """The segment's volume counted from its binary labelmap (a shared labelmap: voxels of its label)."""
    image = segment.GetRepresentation(LABELMAP)
    voxels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    voxel_ml = abs(np.linalg.det(slicer.util.arrayFromVTKMatrix(matrix)[:3, :3])) / 1000
    return int(np.count_nonzero(voxels == segment.GetLabelValue())) * voxel_ml


def table_rows(table_node) -> dict[str, list]:
    table = table_node.GetTable()
    return {table.GetValue(row, 0).ToString(): [table.GetValue(row, c).ToDouble()
                                                for c in range(1, table.GetNumberOfColumns())]
            for row in range(table.GetNumberOfRows())}


def result_nodes(nodes) -> dict[str, object]:
    return {role: node for role, node in nodes.by_role().items() if role not in scene_module.SHARED_ROLES}


def test_segments_of_the_lungs_and_bands_match_the_involvement_table(chest: Volume, demo_model):
    node, _study = add_chest_in_study(chest)
    result = scene_module.predict_volume_node(node, model=demo_model)
    lungs, involvement = result.lung_segmentation_node, result.involvement_segmentation_node
    assert lungs.GetName() == "CTChest4 lungs" and involvement.GetName() == "CTChest4 involvement"
    assert set(segments(lungs)) == {"right lung", "left lung"}
    rows = table_rows(result.involvement_node)
    per_lung = result.prediction.involvement["per_lung"]
    for side in ("right", "left"):
        volume = segment_volume_ml(segments(lungs)[f"{side} lung"])
        assert volume == pytest.approx(per_lung[side]["volume_ml"], rel=0.01)
        assert volume == pytest.approx(rows[f"{side} lung"][0], rel=0.01)  # the table's "Volume (mL)"
    bands = np.asarray(result.prediction.bands_kji)
    present = [label for label in BAND_NAMES if (bands == label).any()]
    assert len(present) >= 3  # a real CT: aerated, vessel and some emphysema at least
    colours = result.band_colour_node
    by_name = segments(involvement)
    assert sorted(by_name) == sorted(colours.GetColorName(label).replace("_", " ") for label in present)
    display, shown = involvement.GetDisplayNode(), set()
    for name, segment in by_name.items():
        label = segment.GetLabelValue()
        rgba = [0.0] * 4
        colours.GetColor(label, rgba)
        assert segment.GetColor() == pytest.approx(rgba[:3])
        if display.GetSegmentVisibility(involvement.GetSegmentation().GetSegmentIdBySegment(segment)):
            shown.add(name)
        shown_ml = segment_volume_ml(segment)
        band = BAND_NAMES[label]
        expected_ml = result.prediction.involvement["lungs"]["bands_ml"][band]
        assert shown_ml == pytest.approx(expected_ml, rel=0.01, abs=0.05)
    # What the colour table draws is shown; the aerated lung and the vessels (transparent there) start hidden.
    assert {"ground glass", "consolidation"} <= shown and not shown & {"aerated", "vessel"}
    for node in (lungs, involvement):  # labelmaps are the source; no surface before the user asks for 3D
        segmentation = node.GetSegmentation()
        assert segmentation.GetSourceRepresentationName() == LABELMAP
        assert not segmentation.ContainsRepresentation(segmentations.CLOSED_SURFACE)


def test_every_result_is_in_one_folder_under_the_study_and_a_rerun_keeps_it(chest: Volume,
                                                                           chest_prediction: Prediction):
    scene = slicer.mrmlScene
    node, study = add_chest_in_study(chest)
    hierarchy = folders.subject_hierarchy(scene)
    nodes = scene_module.write_prediction_nodes(chest_prediction, node)
    results = result_nodes(nodes)
    assert {"lung_segmentation", "involvement_segmentation", "lesion_map", "bands", "table"} <= set(results)
    parents = {hierarchy.GetItemParent(hierarchy.GetItemByDataNode(n)) for n in results.values()}
    assert len(parents) == 1
    folder = parents.pop()
    assert hierarchy.GetItemName(folder) == folders.FOLDER_NAME.format("CTChest4") == "TwoFiveCNN: CTChest4"
    assert hierarchy.GetItemParent(folder) == study
    children = vtk.vtkIdList()
    hierarchy.GetItemChildren(folder, children)
    assert children.GetNumberOfIds() == len(results)  # nothing else in it
    for shared in (nodes.colour_node, nodes.band_colour_node):  # shared tables stay outside
        item = hierarchy.GetItemByDataNode(shared)
        assert not item or hierarchy.GetItemParent(item) != folder

    count, ids = scene.GetNumberOfNodes(), {r: n.GetID() for r, n in nodes.by_role().items()}
    again = scene_module.write_prediction_nodes(dataclasses.replace(chest_prediction, label="CT-1"), node)
    assert scene.GetNumberOfNodes() == count
    assert {r: n.GetID() for r, n in again.by_role().items()} == ids
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(again.lung_segmentation_node)) == folder
    assert set(segments(again.lung_segmentation_node)) == {"right lung", "left lung"}  # replaced, not added

    # Deleting the folder deletes the results, and only them.
    hierarchy.RemoveItem(folder, True, True)
    for removed in results.values():
        assert not scene.IsNodePresent(removed)
    assert scene.IsNodePresent(node) and scene.IsNodePresent(nodes.colour_node)
    assert scene_module.find_prediction_nodes(node) is None


def test_without_a_study_the_folder_is_beside_the_input(chest: Volume, chest_prediction: Prediction):
    node = add_chest_node(chest)  # slicer-core gives it no subject-hierarchy item: one is made
    hierarchy = folders.subject_hierarchy(slicer.mrmlScene)
    nodes = scene_module.write_prediction_nodes(chest_prediction, node)
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(nodes.table_node))
    assert hierarchy.GetItemName(folder) == "TwoFiveCNN: CTChest4"
    assert hierarchy.GetItemParent(folder) == hierarchy.GetItemParent(hierarchy.GetItemByDataNode(node))


def test_a_rerun_removes_the_roles_it_no_longer_produces(chest: Volume, chest_prediction: Prediction):
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    full = scene_module.write_prediction_nodes(chest_prediction, node)
    gone = [full.involvement_node, full.bands_node, full.involvement_segmentation_node,
            full.lung_segmentation_node]
    without = dataclasses.replace(chest_prediction, involvement={}, bands_kji=None, lungs_kji=None)
    count = scene.GetNumberOfNodes()
    again = scene_module.write_prediction_nodes(without, node)
    assert again.lung_segmentation_node is None and again.involvement_node is None
    for stale in gone:
        assert not scene.IsNodePresent(stale)
    assert scene.GetNumberOfNodes() < count - len(gone)  # their display and storage nodes went too
    assert scene.IsNodePresent(full.band_colour_node)  # shared: kept for other results
    assert again.table_node.GetID() == full.table_node.GetID()


def test_save_and_reload_keep_segmentations_and_hierarchy(chest: Volume, chest_prediction: Prediction,
                                                          tmp_path: Path):
    node, _study = add_chest_in_study(chest)
    nodes = scene_module.write_prediction_nodes(chest_prediction, node)
    expected = {name: segment_volume_ml(s) for name, s in segments(nodes.lung_segmentation_node).items()}
    bands_expected = sorted(segments(nodes.involvement_segmentation_node))
    mrml = scene_module.save_scene(slicer.mrmlScene, tmp_path / "graded.mrml")

    scene = slicer.vtkMRMLScene()
    scene.SetURL(str(mrml))
    assert scene.Import() == 1
    volumes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    reloaded_input = next(v for v in volumes if v.GetName() == "CTChest4")
    found = scene_module.find_prediction_nodes(reloaded_input)
    assert found.lung_segmentation_node is not None
    reloaded = {name: segment_volume_ml(s) for name, s in segments(found.lung_segmentation_node).items()}
    assert reloaded == pytest.approx(expected)
    assert sorted(segments(found.involvement_segmentation_node)) == bands_expected

    hierarchy = folders.subject_hierarchy(scene)
    input_item = hierarchy.GetItemByDataNode(reloaded_input)
    study = hierarchy.GetItemParent(input_item)
    assert hierarchy.GetItemName(study) == "CT 2020" and hierarchy.GetItemLevel(study) == "Study"
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(found.involvement_segmentation_node))
    assert hierarchy.GetItemName(folder) == "TwoFiveCNN: CTChest4"
    assert hierarchy.GetItemParent(folder) == study
    parents = {hierarchy.GetItemParent(hierarchy.GetItemByDataNode(n)) for n in result_nodes(found).values()}
    assert parents == {folder}

    # A re-run on the reloaded scene updates its nodes in the same folder.
    count = scene.GetNumberOfNodes()
    again = scene_module.write_prediction_nodes(chest_prediction, reloaded_input, scene)
    assert scene.GetNumberOfNodes() == count
    assert again.lung_segmentation_node.GetID() == found.lung_segmentation_node.GetID()
    assert hierarchy.GetItemParent(hierarchy.GetItemByDataNode(again.lung_segmentation_node)) == folder


def test_show_3d_builds_closed_surfaces_and_centres_the_view(chest: Volume, chest_prediction: Prediction):
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    nodes = scene_module.write_prediction_nodes(chest_prediction, node)
    camera = scene.AddNewNodeByClass("vtkMRMLCameraNode")
    camera.SetFocalPoint(0, 0, 0)
    camera.SetPosition(0, 500, 0)
    shown = [nodes.lung_segmentation_node, nodes.involvement_segmentation_node]
    segmentations.show_segmentations_3d(shown)
    for segmentation_node in shown:
        segmentation = segmentation_node.GetSegmentation()
        assert segmentation.GetSourceRepresentationName() == LABELMAP  # still editable as labelmaps
        for name, segment in segments(segmentation_node).items():
            surface = segment.GetRepresentation(segmentations.CLOSED_SURFACE)
            assert surface is not None and surface.GetNumberOfPoints() > 0, name
        display = segmentation_node.GetDisplayNode()
        assert display.GetPreferredDisplayRepresentationName3D() == segmentations.CLOSED_SURFACE

    assert segmentations.centre_3d_views(scene, shown) == 1
    bounds = [0.0] * 6
    nodes.lung_segmentation_node.GetRASBounds(bounds)
    centre = [(bounds[2 * axis] + bounds[2 * axis + 1]) / 2 for axis in range(3)]
    assert camera.GetFocalPoint() == pytest.approx(centre, abs=1.0)
    assert np.subtract(camera.GetPosition(), camera.GetFocalPoint()) == pytest.approx([0, 500, 0])


def test_lung_segments_match_the_table_on_a_subsampled_analysis_grid(chest_ct_path: Path, demo_model,
                                                                     tmp_path: Path):
    """Thin pixels are analysed on every other voxel: the segments, made on the input's grid from that
    grid's labels, still hold the lung volumes of the table."""
    sitk = pytest.importorskip("SimpleITK")
    fine = tmp_path / "fine.nrrd"
    middle = sitk.ReadImage(str(chest_ct_path))[:, :, 12:24]  # 12 slices through both lungs: a fast test
    sitk.WriteImage(sitk.Expand(middle, [4, 4, 1], sitk.sitkNearestNeighbor), str(fine))
    volume = read_volume(fine)
    prediction = predict_volume(demo_model, volume)
    assert prediction.involvement["analysis_spacing_mm"][1] == pytest.approx(2 * volume.spacing_zyx[1])
    node = add_chest_node(volume, name="fine")
    nodes = scene_module.write_prediction_nodes(prediction, node)
    for side in ("right", "left"):
        assert segment_volume_ml(segments(nodes.lung_segmentation_node)[f"{side} lung"]) == \
            pytest.approx(prediction.involvement["per_lung"][side]["volume_ml"], rel=0.01)


def test_predict_scene_files_hold_the_segmentations_in_their_folder(chest_ct_path: Path,
                                                                    chest_prediction: Prediction, tmp_path: Path):
    """What ``predict --scene`` writes: the segmentations' files, and the folder beside the input on reload."""
    mrml = scene_module.save_prediction_scene(chest_prediction, chest_ct_path, tmp_path, "case 1")
    data = {p.name for p in (tmp_path / "case 1_data").iterdir()}
    assert {"case_1_lungs.seg.nrrd", "case_1_involvement.seg.nrrd"} <= data
    scene = reload(mrml)
    found = scene_module.find_prediction_nodes(node_named(scene, "case 1", "vtkMRMLScalarVolumeNode"))
    assert set(segments(found.lung_segmentation_node)) == {"right lung", "left lung"}
    hierarchy = folders.subject_hierarchy(scene)
    folder = hierarchy.GetItemParent(hierarchy.GetItemByDataNode(found.lung_segmentation_node))
    assert hierarchy.GetItemName(folder) == "TwoFiveCNN: case 1"
    assert hierarchy.GetItemParent(folder) == hierarchy.GetSceneItemID()


def test_show_3d_works_on_a_scene_loaded_before_the_library(chest: Volume, chest_prediction: Prediction,
                                                            tmp_path: Path):
    """A segmentation made before the converter rules existed (a saved scene loaded by a fresh slicer-core
    process before TwoFiveCNNLib.scene is imported) still gets its surfaces."""
    node = add_chest_node(chest)
    scene_module.write_prediction_nodes(chest_prediction, node)
    mrml = scene_module.save_scene(slicer.mrmlScene, tmp_path / "graded.mrml")
    script = f"""
import slicer
scene = slicer.vtkMRMLScene()
scene.SetURL({str(mrml)!r})
assert scene.Import() == 1
segmentation = scene.GetFirstNodeByName("CTChest4 lungs")
assert not segmentation.CreateClosedSurfaceRepresentation()  # made before the rules: cannot convert
from TwoFiveCNNLib.scene.segmentations import show_segmentations_3d
show_segmentations_3d([segmentation])
segments = segmentation.GetSegmentation()
segment = segments.GetSegment(segments.GetSegmentIdBySegmentName("left lung"))
print(segment.GetRepresentation("Closed surface").GetNumberOfPoints())
"""
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                          timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(scene_module.__file__).parents[2])})
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0
