"""Prediction results as real MRML nodes (slicer-core, no application), and scenes that save and reload."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from helpers import add_chest_node, column, ijk_to_ras, node_named, reload
from TwoFiveCNNLib.inference.predict import load_model
from TwoFiveCNNLib.inference.prediction import Prediction
from TwoFiveCNNLib.io.volume import Volume
from TwoFiveCNNLib.scene import nodes as scene_module
from TwoFiveCNNLib.scene.nodes import (
    find_prediction_nodes,
    jump_to_slice_ras,
    predict_volume_node,
    save_prediction_scene,
    save_scene,
    show_overlay,
    volume_from_node,
    write_prediction_nodes,
)
from TwoFiveCNNLib.transforms.involvement import BAND_NAMES

CLASSES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")


pytestmark = pytest.mark.usefixtures("mrml_scene")  # a fresh application scene per test (conftest)


def fake_prediction(node, label: str = "CT-2", seed: int = 0) -> Prediction:
    """A prediction with every property a real one has, made without a model."""
    volume = volume_from_node(node)
    shape = slicer.util.arrayFromVolume(node).shape
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=len(CLASSES))
    logits[CLASSES.index(label)] += 5
    probabilities = np.exp(logits) / np.exp(logits).sum()
    slice_logits = rng.normal(size=shape[0])
    return Prediction(
        label=label,
        probabilities={c: float(p) for c, p in zip(CLASSES, probabilities)},
        slice_attention=np.exp(slice_logits) / np.exp(slice_logits).sum(),
        lesion_map_kji=rng.random(shape, dtype=np.float32),
        geometry=volume.geometry,
        model_name="test-model",
        source=node.GetName(),
        warnings=["a warning; with: separators"],
    )


# ---------------------------------------------------------------------------------------------- input


@pytest.mark.parametrize("tilt", [False, True], ids=["axial", "oblique"])
def test_volume_from_node_round_trips_array_and_geometry(chest: Volume, tilt: bool):
    node = add_chest_node(chest, tilt)
    volume = volume_from_node(node)
    np.testing.assert_array_equal(volume.to_original(volume.array), slicer.util.arrayFromVolume(node))
    np.testing.assert_allclose(volume.geometry.ijk_to_ras(), ijk_to_ras(node), atol=1e-9)
    if not tilt:
        np.testing.assert_array_equal(volume.array, chest.array)
        assert volume.spacing_zyx == pytest.approx(chest.spacing_zyx)
    assert volume.name == "CTChest4" and volume.warnings == []
    volume.array[...] = 0  # a copy: the node keeps its voxels
    assert slicer.util.arrayFromVolume(node).any()


def test_volume_from_node_refuses_what_is_not_a_ct(chest: Volume):
    scene = slicer.mrmlScene
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "lungs surface")
    with pytest.raises(ValueError, match="'lungs surface'.*vtkMRMLModelNode.*select the chest CT"):
        volume_from_node(model)
    vector = slicer.util.addVolumeFromArray(
        np.zeros((4, 8, 8, 3), np.uint8), name="colour photo", nodeClassName="vtkMRMLVectorVolumeNode"
    )
    with pytest.raises(ValueError, match="'colour photo'.*Vector to Scalar Volume"):
        volume_from_node(vector)
    labels = slicer.util.addVolumeFromArray(
        np.zeros((4, 8, 8), np.uint8), name="labels", nodeClassName="vtkMRMLLabelMapVolumeNode"
    )
    with pytest.raises(ValueError, match="'labels' .*labelmap"):
        volume_from_node(labels)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "not loaded")
    with pytest.raises(ValueError, match="'not loaded'.*no voxels.*reload"):
        volume_from_node(empty)
    with pytest.raises(ValueError, match="No input volume"):
        volume_from_node(None)


def test_parent_transform_is_reported_and_followed(chest: Volume):
    node = add_chest_node(chest)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 25.0)
    transform.SetMatrixTransformToParent(shift)
    untransformed = jump_to_slice_ras(node, 3)
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert "'shift'" in volume_from_node(node).warnings[0]
    assert jump_to_slice_ras(node, 3) == pytest.approx(np.add(untransformed, (25.0, 0, 0)))
    nodes = write_prediction_nodes(fake_prediction(node), node)
    assert nodes.lesion_map_node.GetTransformNodeID() == transform.GetID()


@pytest.mark.parametrize("tilt", [False, True], ids=["axial", "oblique"])
def test_jump_to_slice_ras_is_the_slice_centre(chest: Volume, tilt: bool):
    node = add_chest_node(chest, tilt)
    i, j, k = node.GetImageData().GetDimensions()
    for index in (0, k // 2, k - 1):
        ras = jump_to_slice_ras(node, index)
        ijk = np.linalg.inv(ijk_to_ras(node)) @ np.array([*ras, 1.0])
        np.testing.assert_allclose(ijk[:3], [(i - 1) / 2, (j - 1) / 2, index], atol=1e-6)
    with pytest.raises(ValueError, match=f"slices 0..{k - 1}"):
        jump_to_slice_ras(node, k)


# ---------------------------------------------------------------------------------------------- nodes


@pytest.mark.parametrize("tilt", [False, True], ids=["axial", "oblique"])
def test_write_prediction_nodes(chest: Volume, tilt: bool):
    node = add_chest_node(chest, tilt)
    array_before, matrix_before = slicer.util.arrayFromVolume(node).copy(), ijk_to_ras(node)
    prediction = fake_prediction(node)
    nodes = write_prediction_nodes(prediction, node)

    lesion_map = nodes.lesion_map_node
    assert lesion_map.GetName() == "CTChest4 lesion map"
    assert lesion_map.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ijk_to_ras(lesion_map), matrix_before)
    lesion_map_array = slicer.util.arrayFromVolume(lesion_map)
    assert lesion_map_array.dtype == np.float32
    np.testing.assert_array_equal(lesion_map_array, prediction.lesion_map_kji)

    display = lesion_map.GetDisplayNode()
    assert display.GetColorNodeID() == nodes.colour_node.GetID()
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.05)
    colours = nodes.colour_node
    assert colours.GetType() == colours.User and colours.GetNumberOfColors() == 256
    assert colours.GetStorageNode() is not None
    rgba = [0.0] * 4
    colours.GetColor(255, rgba)
    assert rgba[3] == pytest.approx(1.0)
    colours.GetColor(0, rgba)
    assert rgba[3] == pytest.approx(0.0)

    table = nodes.table_node
    assert table.GetName() == "CTChest4 severity"
    assert column(table, "class") == list(CLASSES)
    assert sum(column(table, "probability")) == pytest.approx(1.0)
    assert column(table, "predicted") == [int(c == "CT-2") for c in CLASSES]
    assert table.GetAttribute("TwoFiveCNN.label") == "CT-2"
    assert table.GetAttribute("TwoFiveCNN.model") == "test-model"
    assert table.GetAttribute("TwoFiveCNN.warnings") == prediction.warnings[0]
    assert table.GetAttribute("TwoFiveCNN.notice") is None

    slices = nodes.slice_table_node
    k = node.GetImageData().GetDimensions()[2]
    assert slices.GetNumberOfRows() == k
    assert column(slices, "slice") == list(range(k))
    np.testing.assert_allclose(column(slices, "attention"), prediction.slice_attention)
    np.testing.assert_allclose(column(slices, "position_mm"), prediction.slice_positions_mm())
    series, chart = nodes.plot_series_node, nodes.plot_chart_node
    assert series.GetTableNodeID() == slices.GetID()
    assert (series.GetXColumnName(), series.GetYColumnName()) == ("slice", "attention")
    assert chart.GetName() == "CTChest4 attention chart"
    assert chart.GetPlotSeriesNodeID() == series.GetID()
    assert chart.GetXAxisTitle() and chart.GetYAxisTitle()

    for role, result in nodes.by_role().items():
        assert node.GetNodeReferenceID(f"TwoFiveCNN.{role}") == result.GetID()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array_before)
    np.testing.assert_array_equal(ijk_to_ras(node), matrix_before)
    assert show_overlay(node, nodes.lesion_map_node) == 0  # a scene without slice views: nothing to set


def test_show_overlay_sets_every_slice_view_and_hides_again(chest: Volume):
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    nodes = write_prediction_nodes(fake_prediction(node), node)
    views = [scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    assert show_overlay(node, nodes.lesion_map_node, opacity=0.3) == 3
    for view in views:
        assert (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID()) == (node.GetID(),
                                                                                nodes.lesion_map_node.GetID())
        assert view.GetForegroundOpacity() == pytest.approx(0.3)
    show_overlay(node, nodes.lesion_map_node, visible=False)
    assert [view.GetForegroundVolumeID() for view in views] == [None] * 3
    assert all(view.GetBackgroundVolumeID() == node.GetID() for view in views)


@pytest.mark.parametrize(
    ("reference", "lesion_map_name", "colour_name", "references_kept"),
    [("evidence", "CTChest4 evidence", "TwoFiveCNN evidence colours", True),
     ("attention", "CTChest4 attention", "TwoFiveCNN attention colours", True),
     ("evidence", "CTChest4 evidence", "TwoFiveCNN evidence colours", False)],
    ids=["0.2", "before 0.2", "0.2, references lost"])
def test_legacy_scene_with_old_names_is_found_and_rerun_in_place(chest: Volume, tmp_path: Path, reference: str,
                                                                 lesion_map_name: str, colour_name: str,
                                                                 references_kept: bool):
    """legacy: remove after 0.3. A scene saved by 0.2 (or before) calls the lesion map, its colours and the
    input's reference to it by their old names: reloaded from its file, its results are found, and a re-run
    updates those same nodes (none added) under today's names."""
    node = add_chest_node(chest)
    nodes = write_prediction_nodes(fake_prediction(node), node)
    nodes.lesion_map_node.SetName(lesion_map_name)
    nodes.colour_node.SetName(colour_name)
    for role in nodes.by_role() if not references_kept else ["lesion_map"]:
        node.RemoveNodeReferenceIDs(f"TwoFiveCNN.{role}")
    if references_kept:
        node.SetNodeReferenceID(f"TwoFiveCNN.{reference}", nodes.lesion_map_node.GetID())
    mrml = save_scene(slicer.mrmlScene, tmp_path / "old.mrml")
    saved = mrml.read_text(encoding="utf-8")
    assert "TwoFiveCNN.lesion_map" not in saved and (f"TwoFiveCNN.{reference}" in saved) == references_kept

    scene = reload(mrml)
    old_input = node_named(scene, "CTChest4", "vtkMRMLScalarVolumeNode")
    old_lesion_map = node_named(scene, lesion_map_name, "vtkMRMLScalarVolumeNode")
    old_colours = node_named(scene, colour_name, "vtkMRMLColorTableNode")
    found = find_prediction_nodes(old_input)
    if references_kept:
        assert found.lesion_map_node.GetID() == old_lesion_map.GetID()
        assert found.evidence_node is found.lesion_map_node and found.attention_node is found.lesion_map_node
    else:
        assert found is None  # without its references a result is not shown; a re-run finds it by name
    count = scene.GetNumberOfNodes()
    prediction = fake_prediction(old_input, seed=1)
    again = write_prediction_nodes(prediction, old_input, scene)
    assert scene.GetNumberOfNodes() == count
    assert again.lesion_map_node.GetID() == old_lesion_map.GetID()
    assert again.colour_node.GetID() == old_colours.GetID()
    assert old_lesion_map.GetName() == "CTChest4 lesion map" and old_colours.GetName() == "TwoFiveCNN lesion map colours"
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(old_lesion_map), prediction.lesion_map_kji)
    assert old_input.GetNodeReferenceID("TwoFiveCNN.lesion_map") == old_lesion_map.GetID()
    assert old_input.GetNodeReferenceID(f"TwoFiveCNN.{reference}") is None
    assert find_prediction_nodes(old_input).lesion_map_node.GetID() == old_lesion_map.GetID()


def test_a_renamed_result_node_keeps_its_name_on_rerun(chest: Volume):
    """Only legacy names are replaced: a lesion map the user renamed is updated under the user's name."""
    node = add_chest_node(chest)
    nodes = write_prediction_nodes(fake_prediction(node), node)
    nodes.lesion_map_node.SetName("my evidence")
    again = write_prediction_nodes(fake_prediction(node, seed=1), node)
    assert again.lesion_map_node.GetID() == nodes.lesion_map_node.GetID()
    assert again.lesion_map_node.GetName() == "my evidence"


def test_rerun_updates_the_same_nodes(chest: Volume):
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    first = write_prediction_nodes(fake_prediction(node), node)
    count = scene.GetNumberOfNodes()
    demo = fake_prediction(node, label="CT-4", seed=1)
    demo.is_demo_model, demo.warnings = True, []
    second = write_prediction_nodes(demo, node)
    assert scene.GetNumberOfNodes() == count
    assert {r: n.GetID() for r, n in second.by_role().items()} == {
        r: n.GetID() for r, n in first.by_role().items()
    }
    assert second.table_node.GetAttribute("TwoFiveCNN.label") == "CT-4"
    assert second.table_node.GetAttribute("TwoFiveCNN.warnings") is None
    assert "not for clinical use" in second.table_node.GetAttribute("TwoFiveCNN.notice")
    assert second.plot_chart_node.GetNumberOfPlotSeriesNodes() == 1
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(second.lesion_map_node), demo.lesion_map_kji)

    # Without the references (e.g. an older scene), the nodes are found again by name.
    for role in second.by_role():
        node.RemoveNodeReferenceIDs(f"TwoFiveCNN.{role}")
    write_prediction_nodes(demo, node)
    assert scene.GetNumberOfNodes() == count

    # A second input gets its own nodes but shares the colour table.
    other = add_chest_node(chest, name="other CT")
    third = write_prediction_nodes(fake_prediction(other), other)
    assert third.table_node.GetID() != first.table_node.GetID()
    assert third.colour_node.GetID() == first.colour_node.GetID()


def test_bad_prediction_adds_no_nodes_and_leaves_input_alone(chest: Volume):
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    array_before, matrix_before = slicer.util.arrayFromVolume(node).copy(), ijk_to_ras(node)
    count = scene.GetNumberOfNodes()
    good = fake_prediction(node)
    wrong_shape = fake_prediction(node)
    wrong_shape.lesion_map_kji = wrong_shape.lesion_map_kji[:-1]
    with pytest.raises(ValueError, match="lesion map has shape.*another volume"):
        write_prediction_nodes(wrong_shape, node)
    wrong_slices = fake_prediction(node)
    wrong_slices.slice_attention = wrong_slices.slice_attention[1:]
    with pytest.raises(ValueError, match="slice attention has"):
        write_prediction_nodes(wrong_slices, node)
    bad_probabilities = fake_prediction(node)
    bad_probabilities.probabilities = {c: 0.5 for c in CLASSES}
    with pytest.raises(ValueError, match="sum to 1"):
        write_prediction_nodes(bad_probabilities, node)
    good.lesion_map_kji = good.lesion_map_kji * 2
    with pytest.raises(ValueError, match="0..1"):
        write_prediction_nodes(good, node)
    assert scene.GetNumberOfNodes() == count
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), array_before)
    np.testing.assert_array_equal(ijk_to_ras(node), matrix_before)


def test_failure_while_building_removes_the_new_nodes(chest: Volume, monkeypatch):
    """A fault injected after every node exists (the plot is filled last) must leave no orphans."""
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    count = scene.GetNumberOfNodes()

    def broken_plot(*args):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(scene_module, "_fill_plot", broken_plot)
    with pytest.raises(RuntimeError, match="injected"):
        write_prediction_nodes(fake_prediction(node), node)
    assert scene.GetNumberOfNodes() == count
    assert node.GetNodeReference("TwoFiveCNN.table") is None


# ---------------------------------------------------------------------------------------------- saving


def check_reloaded(
    scene, name: str, prediction: Prediction, input_array: np.ndarray, matrix: np.ndarray
) -> None:
    volume = node_named(scene, name, "vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), input_array)
    lesion_map = node_named(scene, f"{name} lesion map", "vtkMRMLScalarVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(lesion_map), prediction.lesion_map_kji)
    np.testing.assert_allclose(ijk_to_ras(lesion_map), matrix, atol=1e-6)
    assert volume.GetNodeReferenceID("TwoFiveCNN.lesion_map") == lesion_map.GetID()
    colours = lesion_map.GetDisplayNode().GetColorNode()
    assert colours.GetName() == "TwoFiveCNN lesion map colours" and colours.GetNumberOfColors() == 256
    table = node_named(scene, f"{name} severity", "vtkMRMLTableNode")
    assert column(table, "class") == list(CLASSES)
    assert sum(column(table, "probability")) == pytest.approx(1.0)
    assert table.GetAttribute("TwoFiveCNN.label") == prediction.label
    slices = node_named(scene, f"{name} slice attention", "vtkMRMLTableNode")
    assert slices.GetNumberOfRows() == len(prediction.slice_attention)
    chart = node_named(scene, f"{name} attention chart", "vtkMRMLPlotChartNode")
    assert chart.GetPlotSeriesNode().GetTableNode().GetID() == slices.GetID()


def test_save_prediction_scene_reloads(chest: Volume, chest_ct_path: Path, tmp_path: Path):
    node = add_chest_node(chest)
    prediction = fake_prediction(node)
    before = slicer.mrmlScene.GetNumberOfNodes()
    mrml = save_prediction_scene(prediction, chest_ct_path, tmp_path, "case 1")
    assert slicer.mrmlScene.GetNumberOfNodes() == before  # the application's scene is not touched
    assert mrml == tmp_path / "case 1.mrml" and mrml.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case 1.mrml", "case 1_data"]
    data = sorted(p.name for p in (tmp_path / "case 1_data").iterdir())
    assert "case_1.nrrd" not in data  # the input is read from its own file, not copied
    assert chest_ct_path.name in mrml.read_text(encoding="utf-8")
    assert {
        "case_1_lesion_map.nrrd",
        "case_1_severity.tsv",
        "case_1_slice_attention.tsv",
        "TwoFiveCNN_lesion_map_colours.csv",
    } <= set(data)
    check_reloaded(
        reload(mrml), "case 1", prediction, chest.to_original(chest.array), chest.geometry.ijk_to_ras()
    )

    # Saving again (from a Volume) replaces the result and leaves no staging folder behind.
    again = fake_prediction(node, label="CT-1", seed=3)
    save_prediction_scene(again, chest, tmp_path, "case 1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case 1.mrml", "case 1_data"]
    check_reloaded(reload(mrml), "case 1", again, chest.to_original(chest.array), chest.geometry.ijk_to_ras())

    # A volume with no file behind it is copied into the scene's data folder.
    unsourced = Volume(chest.array, chest.spacing_zyx, chest.geometry, "")
    mrml = save_prediction_scene(again, unsourced, tmp_path / "copied", "case 2")
    assert "case_2.nrrd" in {p.name for p in (tmp_path / "copied" / "case 2_data").iterdir()}
    check_reloaded(reload(mrml), "case 2", again, chest.to_original(chest.array), chest.geometry.ijk_to_ras())

    with pytest.raises(ValueError, match="plain file name"):
        save_prediction_scene(prediction, chest, tmp_path, "../escape")


def test_application_scene_saves_and_reloads(chest: Volume, tmp_path: Path):
    node = add_chest_node(chest, tilt=True)
    prediction = fake_prediction(node)
    write_prediction_nodes(prediction, node)
    mrml = save_scene(slicer.mrmlScene, tmp_path / "session.mrml")
    assert not (tmp_path / "session_Private").exists()
    check_reloaded(reload(mrml), "CTChest4", prediction, slicer.util.arrayFromVolume(node), ijk_to_ras(node))


# ---------------------------------------------------------------------------------------------- a real model


def test_predict_volume_node_with_a_trained_model(chest: Volume, tiny_model: Path, tmp_path: Path):
    """The real chest CT, tilted, through a really trained model: results on the input's grid, saved and found."""

    scene = slicer.mrmlScene
    node = add_chest_node(chest, tilt=True)
    matrix = ijk_to_ras(node)
    assert find_prediction_nodes(node) is None
    result = predict_volume_node(node, model_path=tiny_model, device="cpu")

    assert result.label == result.prediction.label == max(result.probabilities, key=result.probabilities.get)
    assert list(result.probabilities) == list(CLASSES)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert column(result.table_node, "class") == list(CLASSES)
    assert column(result.table_node, "probability") == pytest.approx(list(result.probabilities.values()))
    assert result.lesion_map_node.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()
    assert result.table_node is result.nodes.table_node and result.plot_chart_node is result.nodes.plot_chart_node
    np.testing.assert_allclose(ijk_to_ras(result.lesion_map_node), matrix, atol=1e-9)
    k = node.GetImageData().GetDimensions()[2]
    assert result.plot_chart_node.GetPlotSeriesNode().GetTableNode().GetNumberOfRows() == k
    assert {r: n.GetID() for r, n in find_prediction_nodes(node).by_role().items()} == \
        {r: n.GetID() for r, n in result.nodes.by_role().items()}

    # An already loaded model gives the same result and updates the same nodes.
    count = scene.GetNumberOfNodes()
    again = predict_volume_node(node, model=load_model(tiny_model, "cpu"))
    assert scene.GetNumberOfNodes() == count
    assert again.table_node.GetID() == result.table_node.GetID()
    assert again.probabilities == pytest.approx(result.probabilities, abs=1e-5)

    mrml = save_scene(scene, tmp_path / "graded.mrml")
    reloaded_scene = reload(mrml)  # kept referenced: a node's references resolve through its scene
    found = find_prediction_nodes(node_named(reloaded_scene, "CTChest4", "vtkMRMLScalarVolumeNode"))
    assert found is not None and found.table_node.GetAttribute("TwoFiveCNN.label") == result.label
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(found.lesion_map_node),
                                  slicer.util.arrayFromVolume(result.lesion_map_node))

    # A result with a node removed by the user is no result.
    scene.RemoveNode(result.plot_chart_node)
    assert find_prediction_nodes(node) is None


def test_predict_volume_node_failures_add_no_nodes(chest: Volume, tiny_model: Path, tmp_path: Path):
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="no such model file"):
        predict_volume_node(node, model_path=tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_model.read_bytes()[:2000])
    with pytest.raises(ValueError, match="not a readable model file"):
        predict_volume_node(node, model_path=truncated)
    with pytest.raises(ValueError, match="No input volume"):
        predict_volume_node(None, model_path=tiny_model)
    assert scene.GetNumberOfNodes() == count
    assert find_prediction_nodes(node) is None
    assert find_prediction_nodes(None) is None


def test_lung_involvement_nodes_survive_save_and_reload(chest: Volume, tiny_model: Path, tmp_path: Path):
    """The involvement table, the band labelmap and its colours: in the scene, saved, reloaded, re-run."""
    scene = slicer.mrmlScene
    node = add_chest_node(chest)
    result = predict_volume_node(node, model=load_model(tiny_model, "cpu"))
    report = result.prediction.involvement
    assert report["grade"] == "CT-0"  # an untouched real CT
    table, bands, colours = result.involvement_node, result.bands_node, result.band_colour_node
    assert bands.IsA("vtkMRMLLabelMapVolumeNode")
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(bands), result.prediction.bands_kji)
    np.testing.assert_allclose(ijk_to_ras(bands), ijk_to_ras(node), atol=1e-9)
    assert bands.GetDisplayNode().GetColorNodeID() == colours.GetID()
    assert [colours.GetColorName(v) for v in range(1, 6)] == list(BAND_NAMES.values())
    headers = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert headers == ["Region", "Volume (mL)", "Involved (%)", "Emphysema (%)", "Aerated (%)",
                       "Ground glass (%)", "Consolidation (%)", "Vessel (%)"]
    assert column(table, "Region")[:3] == ["both lungs", "right lung", "right upper"]
    assert column(table, "Volume (mL)")[0] == pytest.approx(report["lungs"]["volume_ml"])
    assert column(table, "Involved (%)")[0] == pytest.approx(100 * report["involved_share"])
    right_aerated = report["per_lung"]["right"]["bands_share"]["aerated"]
    assert column(table, "Aerated (%)")[1] == pytest.approx(100 * right_aerated)
    assert table.GetColumnUnitLabel("Ground glass (%)") == "%"
    assert table.GetAttribute("TwoFiveCNN.involvementGrade") == "CT-0"
    assert float(table.GetAttribute("TwoFiveCNN.lesionNetworkAddedMl")) == report.get("learned_added_ml", 0.0)
    count = scene.GetNumberOfNodes()
    predict_volume_node(node, model=load_model(tiny_model, "cpu"))
    assert scene.GetNumberOfNodes() == count  # a re-run updates the same nodes

    reloaded_scene = reload(save_scene(scene, tmp_path / "involvement.mrml"))
    found = find_prediction_nodes(node_named(reloaded_scene, "CTChest4", "vtkMRMLScalarVolumeNode"))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(found.bands_node), result.prediction.bands_kji)
    assert column(found.involvement_node, "Volume (mL)") == pytest.approx(column(table, "Volume (mL)"))
    assert found.bands_node.GetDisplayNode().GetColorNode().GetColorName(3) == "ground_glass"
    assert found.involvement_node.GetAttribute("TwoFiveCNN.lesionNetworkAddedMl") == \
        table.GetAttribute("TwoFiveCNN.lesionNetworkAddedMl")
