"""Slice views rendered by MRML's own slice logic (slicer-core, no OpenGL): what lies where, not how it looks.

Each check maps every pixel back to the voxel it shows (through the view's XY-to-RAS matrix and the
volume's RAS-to-IJK), so an overlay must change exactly the pixels over its non-zero voxels; no
golden image, no timing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from PIL import Image
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.inference.prediction import Prediction
from TwoFiveCNNLib.io.volume import Volume
from TwoFiveCNNLib.reports.plotting import WIDTH
from TwoFiveCNNLib.scene.nodes import build_prediction_scene
from TwoFiveCNNLib.scene.views import (
    VIEW_ORIENTATIONS,
    focus_voxel,
    render_slice_views,
    render_views,
    write_views_png,
)
from TwoFiveCNNLib.transforms.involvement import AERATED, GROUND_GLASS

SIZE = 96
CLASSES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
MARGIN_VOXELS = 1.5  # interpolation blurs a box edge over about one voxel: pixels this close are not judged


@pytest.fixture(scope="module")
def phantom_volume() -> Volume:
    """A small phantom stored feet first with flipped in-plane axes, so geometry mistakes show."""
    phantom = generate_phantom(2, seed=3, orientation="RAI", shape_zyx=(20, 48, 56))
    return Volume.from_original(phantom.array_kji, phantom.geometry, source="phantom")


def box_prediction(volume: Volume, box: tuple[slice, slice, slice], bands: bool = False) -> Prediction:
    """A prediction whose lesion map is 1 inside ``box`` (input k, j, i) and 0 elsewhere; with ``bands``,
    ground glass in the box and normally aerated lung (a band the overlay does not draw) beside it."""
    shape = volume.geometry.size[::-1]
    lesion_map = np.zeros(shape, dtype=np.float32)
    lesion_map[box] = 1.0
    attention = np.full(shape[0], 1.0 / shape[0])
    prediction = Prediction(label="CT-2", probabilities=dict(zip(CLASSES, (0.05, 0.1, 0.6, 0.2, 0.05))),
                            slice_attention=attention, lesion_map_kji=lesion_map, geometry=volume.geometry,
                            model_name="box")
    if bands:
        labels = np.zeros(shape, dtype=np.uint8)
        labels[box] = GROUND_GLASS
        beside = tuple(slice(s.stop, s.stop + (s.stop - s.start)) if axis == 2 else s for axis, s in enumerate(box))
        labels[beside] = AERATED
        band_ml = {name: 1.0 for name in ("emphysema", "aerated", "ground_glass", "consolidation", "vessel")}
        figures = {"volume_ml": 5.0, "bands_ml": band_ml, "bands_share": {name: 0.2 for name in band_ml},
                   "involved_share": 0.2}
        prediction.involvement = {"lungs": {**figures, "voxels": 10}, "per_lung": {}, "involved_share": 0.2,
                                  "grade": "CT-1"}
        prediction.bands_kji = labels
    return prediction


def voxel_of_pixels(view, ras_to_ijk: np.ndarray) -> np.ndarray:
    """``(rows, columns, 3)`` continuous (i, j, k) of the voxel each pixel of ``view`` shows."""
    rows, columns, _ = view.rgb.shape
    column, row = np.meshgrid(np.arange(columns), np.arange(rows))
    xy = np.stack([column, rows - 1 - row, np.zeros_like(row), np.ones_like(row)], axis=-1).astype(float)
    ras = xy @ view.xy_to_ras.T
    return (ras @ ras_to_ijk.T)[..., :3]


def box_masks(ijk: np.ndarray, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels surely inside the box, and surely outside it (both away from its edges by the margin)."""
    inside = np.ones(ijk.shape[:2], dtype=bool)
    outside = np.zeros(ijk.shape[:2], dtype=bool)
    for axis, s in zip((2, 1, 0), box):  # box is (k, j, i); ijk's last axis is (i, j, k)
        low, high = s.start - 0.5, s.stop - 0.5  # voxel centres are at integers
        inside &= (ijk[..., axis] > low + MARGIN_VOXELS) & (ijk[..., axis] < high - MARGIN_VOXELS)
        outside |= (ijk[..., axis] < low - MARGIN_VOXELS) | (ijk[..., axis] > high + MARGIN_VOXELS)
    return inside, outside


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def scene_for(prediction: Prediction, volume: Volume):
    """A scene the way a caller builds one, without any colour logic: the renderer must cope."""
    return build_prediction_scene(prediction, volume, "phantom", slicer.vtkMRMLScene())


BOX = (slice(6, 14), slice(14, 30), slice(12, 24))  # k, j, i


@pytest.mark.parametrize("colour_table", [None, "vtkMRMLColorTableNodeRainbow"], ids=["lesion map", "built-in"])
def test_overlay_changes_exactly_the_pixels_over_its_nonzero_voxels(phantom_volume: Volume, colour_table):
    """The lesion map overlay as the scene shows it; and the same volume under one of Slicer's built-in
    tables, opaque at zero, where only the display node's threshold keeps the zeros from tinting."""
    scene, input_node, nodes = scene_for(box_prediction(phantom_volume, BOX), phantom_volume)
    if colour_table is not None:
        colours = slicer.vtkMRMLColorLogic()  # the built-in tables exist only where a colour logic made them
        colours.SetMRMLScene(scene)
        nodes.lesion_map_node.GetDisplayNode().SetAndObserveColorNodeID(colour_table)
        colours.SetMRMLScene(None)
    centre_ijk = [(s.start + s.stop - 1) / 2 for s in reversed(BOX)]
    focus = phantom_volume.geometry.ijk_to_ras() @ np.array([*centre_ijk, 1.0])
    before = node_ids(scene)

    with_overlay = render_slice_views(scene, input_node, nodes.lesion_map_node, focus[:3], size=SIZE)
    with_colours = node_ids(scene)
    background_only = render_slice_views(scene, input_node, None, focus[:3], size=SIZE)

    # At most Slicer's built-in colour tables stay (if the scene had none); no slice node or other logic node.
    assert all(scene.GetNodeByID(i).IsA("vtkMRMLColorNode") for i in with_colours - before)
    assert node_ids(scene) == with_colours
    assert [v.orientation for v in with_overlay] == list(VIEW_ORIENTATIONS)
    ras_to_ijk = np.linalg.inv(phantom_volume.geometry.ijk_to_ras())
    for view, plain in zip(with_overlay, background_only):
        assert view.rgb.shape == plain.rgb.shape == (SIZE, SIZE, 3) and view.rgb.dtype == np.uint8
        np.testing.assert_allclose(view.xy_to_ras, plain.xy_to_ras)
        # The view's plane passes through the focus point.
        normal = view.xy_to_ras[:3, 2] / np.linalg.norm(view.xy_to_ras[:3, 2])
        assert np.dot(normal, view.xy_to_ras[:3, 3]) == pytest.approx(np.dot(normal, focus[:3]), abs=1e-3)
        # ...and is named by that point's coordinate, as Slicer's slice controller names it.
        axis = {"Axial": 2, "Coronal": 1, "Sagittal": 0}[view.orientation]
        side = ("RAS" if focus[axis] >= 0 else "LPI")[axis]
        assert view.label == f"{view.orientation}  {side} {abs(focus[axis]):.1f} mm"
        inside, outside = box_masks(voxel_of_pixels(view, ras_to_ijk), BOX)
        assert inside.sum() > 20, f"{view.orientation}: the box should cross the view"
        assert outside.sum() > 20
        differs = np.any(view.rgb != plain.rgb, axis=-1)
        assert differs[inside].all(), f"{view.orientation}: overlay missing over a non-zero lesion map"
        assert not differs[outside].any(), f"{view.orientation}: a zero lesion map tints the view"
        # Background only: a lung-windowed CT is grey, and black outside the volume.
        assert np.all(plain.rgb[..., 0] == plain.rgb[..., 1])


def test_labelmap_overlay_draws_only_the_bands_its_colour_table_shows(phantom_volume: Volume):
    """Bands go to the label layer; normally aerated lung (alpha 0) must leave the CT as it is."""
    prediction = box_prediction(phantom_volume, BOX, bands=True)
    scene, input_node, nodes = scene_for(prediction, phantom_volume)
    centre_ijk = [(s.start + s.stop - 1) / 2 for s in reversed(BOX)]
    focus = phantom_volume.geometry.ijk_to_ras() @ np.array([*centre_ijk, 1.0])
    with_bands = render_slice_views(scene, input_node, nodes.bands_node, focus[:3], size=SIZE)
    background_only = render_slice_views(scene, input_node, None, focus[:3], size=SIZE)
    ras_to_ijk = np.linalg.inv(phantom_volume.geometry.ijk_to_ras())
    for view, plain in zip(with_bands, background_only):
        ijk = voxel_of_pixels(view, ras_to_ijk)
        ground_glass, not_ground_glass = box_masks(ijk, BOX)
        differs = np.any(view.rgb != plain.rgb, axis=-1)
        assert differs[ground_glass].all(), f"{view.orientation}: ground glass not drawn"
        assert not differs[not_ground_glass].any(), f"{view.orientation}: aerated lung or background drawn"
    assert with_bands[0].rgb[ground_glass].mean(axis=0)[0] > with_bands[0].rgb[ground_glass].mean(axis=0)[2], \
        "ground glass is drawn orange"


def test_render_views_writes_the_three_views_side_by_side(phantom_volume: Volume, tmp_path: Path):
    scene, input_node, nodes = scene_for(box_prediction(phantom_volume, BOX), phantom_volume)
    path = render_views(scene, input_node, nodes.lesion_map_node, tmp_path / "views.png", size=SIZE)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width == 3 * SIZE + 2 * 4 and image.height > SIZE


def test_render_refuses_nodes_outside_the_scene_and_unknown_orientations(phantom_volume: Volume):
    scene, input_node, nodes = scene_for(box_prediction(phantom_volume, BOX), phantom_volume)
    other, other_input, _ = scene_for(box_prediction(phantom_volume, BOX), phantom_volume)
    with pytest.raises(ValueError, match="in the scene"):
        render_slice_views(other, input_node, None)
    with pytest.raises(ValueError, match="not in the scene"):
        render_slice_views(other, other_input, nodes.lesion_map_node)
    with pytest.raises(ValueError, match="orientations"):
        render_slice_views(scene, input_node, None, orientations=("Oblique",))


def test_focus_is_the_most_attended_slice_and_its_strongest_lesion_map(phantom_volume: Volume):
    prediction = box_prediction(phantom_volume, BOX)
    attention = np.full(len(prediction.slice_attention), 0.5 / (len(prediction.slice_attention) - 1))
    attention[9] = 0.5
    prediction.slice_attention = attention
    k, j, i = focus_voxel(prediction, "lesion-map")
    assert k == 9 and BOX[1].start <= j < BOX[1].stop and BOX[2].start <= i < BOX[2].stop
    banded = box_prediction(phantom_volume, BOX, bands=True)
    k, j, i = focus_voxel(banded, "bands")
    assert all(s.start <= v < s.stop for v, s in zip((k, j, i), BOX))


def test_write_views_png_of_a_real_prediction(demo_model, phantom_volume: Volume, tmp_path: Path):
    """The picture ``predict --views`` writes, from the bundled model, leaves slicer.mrmlScene alone."""
    from TwoFiveCNNLib.inference.predict import predict_volume

    slicer.mrmlScene = slicer.vtkMRMLScene()
    prediction = predict_volume(demo_model, phantom_volume)
    for overlay in ("lesion-map", "bands"):
        path = write_views_png(prediction, phantom_volume, tmp_path / f"{overlay}.png", overlay=overlay)
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width == WIDTH
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 10, "an empty picture"
    assert slicer.mrmlScene.GetNumberOfNodes() == 0
    with pytest.raises(ValueError, match="overlay"):
        write_views_png(prediction, phantom_volume, tmp_path / "x.png", overlay="heat")
    prediction.bands_kji = None
    with pytest.raises(ValueError, match="no lung bands"):
        write_views_png(prediction, phantom_volume, tmp_path / "x.png", overlay="bands")
    assert not (tmp_path / "x.png").exists()
