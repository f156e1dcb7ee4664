"""Report pictures: written atomically, readable, not blank, and showing what they claim."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from TwoFiveCNNLib.reports import plotting
from TwoFiveCNNLib.reports.colours import (
    ACCENT,
    ACCENT_UNIT,
    STAGE_COLOURS,
    STAGE_COLOURS_UNIT,
    colormap,
    lesion_map_lut,
    unit_rgb,
)
from TwoFiveCNNLib.reports.figures import confusion_matrix_png, curves_png
from TwoFiveCNNLib.reports.montage import lesion_map_montage_png

NAMES5 = ["CT-0", "CT-1", "CT-2", "CT-3", "CT-4"]


def open_rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


def accent_runs(row: np.ndarray) -> int:
    """Number of separate horizontal runs of accent-coloured pixels in one image row."""
    hit = np.all(row == ACCENT, axis=-1).astype(int)
    return int(np.sum(np.diff(np.concatenate([[0], hit])) == 1))


def phantom(n_slices: int = 32, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.mgrid[0:n_slices, 0:size, 0:size] / size
    lungs = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.15).astype(float)
    slices = 0.6 - 0.5 * lungs
    lesion_map = np.exp(-(((x - 0.4) ** 2 + (y - 0.45) ** 2) / 0.01)) * np.ones_like(z)
    return slices, lesion_map


def test_colormap_and_lut_agree() -> None:
    lut = lesion_map_lut()
    assert lut.shape == (256, 4) and lut.min() >= 0 and lut.max() <= 1
    assert np.allclose(lut[:, 3], np.linspace(0, 1, 256))  # alpha ramp: low values transparent
    rgb = colormap(np.linspace(0, 1, 256))
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 3)
    assert np.array_equal(rgb, np.round(lut[:, :3] * 255).astype(np.uint8))
    luminance = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) > -1)  # perceptual: brightness never falls along the map
    assert np.array_equal(colormap(np.array([np.nan, -3.0, 7.0])), rgb[[0, 0, 255]])
    assert colormap(np.zeros((2, 3))).shape == (2, 3, 3)
    assert lesion_map_lut(8).shape == (8, 4)
    with pytest.raises(ValueError):
        lesion_map_lut(1)


def test_float_colours_for_vtk() -> None:
    assert unit_rgb((255, 0, 51)) == (1.0, 0.0, 0.2)
    assert ACCENT_UNIT == (0.0, 114 / 255, 178 / 255)
    assert np.allclose(STAGE_COLOURS_UNIT[:2], [(0.0, 0.447, 0.698), (0.835, 0.369, 0.0)], atol=1e-3)
    assert [tuple(round(c * 255) for c in unit) for unit in STAGE_COLOURS_UNIT] == list(STAGE_COLOURS)


def test_confusion_matrix_png(tmp_path) -> None:
    path = tmp_path / "cm.png"
    matrix = [[30, 5, 1, 0, 0], [4, 120, 20, 3, 0], [0, 10, 40, 8, 1], [0, 1, 5, 20, 3], [0, 0, 0, 0, 0]]
    assert confusion_matrix_png(matrix, NAMES5, path, title="validation") == path
    pixels = open_rgb(path)
    assert pixels.shape[1] > 400 and pixels.shape[0] > 400
    assert pixels.std() > 20
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]
    with pytest.raises(ValueError, match="class names"):
        confusion_matrix_png(matrix, NAMES5[:4], tmp_path / "bad.png")


def test_montage_shows_the_top_k_slices_in_order(tmp_path) -> None:
    slices, lesion_map = phantom()
    attention = np.full(32, 0.01)
    attention[[25, 5, 15]] = [0.3, 0.2, 0.25]
    path = tmp_path / "montage.png"
    layout = lesion_map_montage_png(
        slices, lesion_map, attention, path, "predicted CT-2", "demo — not clinical", top_k=3
    )
    assert layout.shown == [5, 15, 25] and layout.bars.highlighted == [5, 15, 25] and layout.bars.tallest == 25
    assert layout.bars.numbers == list(range(32)) and layout.bars.x_ticks == [0, 5, 10, 15, 20, 25, 30]
    pixels = open_rgb(path)
    assert pixels.shape[1] == plotting.WIDTH and pixels.std() > 20
    accent_rows = np.array([accent_runs(row) for row in pixels])
    tile_rows = np.flatnonzero(accent_rows == 2 * 3)  # a row through the tiles meets each frame twice
    assert tile_rows.size > 0
    assert accent_rows[tile_rows[-1] + 1 :].max() == 3  # below the tiles: the three marked bars
    assert [p.name for p in tmp_path.iterdir()] == ["montage.png"]


def test_montage_top_k_larger_than_the_study(tmp_path) -> None:
    slices, lesion_map = phantom(n_slices=4)
    labels = [f"z = {5 * k} mm" for k in range(4)]
    layout = lesion_map_montage_png(
        slices,
        lesion_map,
        np.array([0.1, 0.4, 0.3, 0.2]),
        tmp_path / "m.png",
        "t",
        "f",
        top_k=10,
        slice_labels=labels,
    )
    assert layout.shown == [0, 1, 2, 3] and layout.bars.highlighted == [0, 1, 2, 3]


def test_montage_grows_rows_for_many_slices(tmp_path) -> None:
    slices, lesion_map = phantom()
    attention = np.linspace(0.0, 1.0, 32)
    lesion_map_montage_png(slices, lesion_map, attention, tmp_path / "six.png", "t", "f", top_k=6)
    lesion_map_montage_png(slices, lesion_map, attention, tmp_path / "twelve.png", "t", "f", top_k=12)
    six, twelve = open_rgb(tmp_path / "six.png"), open_rgb(tmp_path / "twelve.png")
    assert six.shape[1] == twelve.shape[1] and twelve.shape[0] > six.shape[0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top_k": 0}, "top_k"),
        ({"slice_attention": np.ones(5)}, "slice_attention"),
        ({"slice_attention": np.full(32, np.nan)}, "NaN"),
        ({"lesion_map": np.zeros((32, 10, 10))}, "lesion_map"),
        ({"slices": np.zeros((32, 48))}, "slices"),
        ({"slice_labels": ["a"]}, "labels"),
        ({"slice_numbers": [0] * 32}, "slice_numbers"),
        ({"slice_numbers": list(range(1, 33))}, "slice_numbers"),
    ],
)
def test_montage_rejects_bad_input(tmp_path, change, message) -> None:
    slices, lesion_map = phantom()
    arguments = {"slices": slices, "lesion_map": lesion_map, "slice_attention": np.ones(32), "top_k": 6}
    arguments |= change
    with pytest.raises(ValueError, match=message):
        lesion_map_montage_png(path=tmp_path / "m.png", title="t", footer="f", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_montage_numbers_tiles_and_bars_by_the_given_slice_numbers(tmp_path) -> None:
    """Arrays on a canonical grid, slices numbered the other way (a feet-first input): one numbering."""
    slices, lesion_map = phantom(n_slices=20)
    attention = np.full(20, 0.01)
    attention[[2, 3, 9]] = [0.2, 0.3, 0.25]  # array indices
    numbers = np.arange(20)[::-1]  # array slice k is the input's slice 19 - k
    layout = lesion_map_montage_png(slices, lesion_map, attention, tmp_path / "m.png", "t", "f", top_k=3,
                                  slice_numbers=numbers)
    assert layout.shown == [9, 3, 2], "tiles left to right in slice number: 10, 16, 17"
    assert layout.bars.numbers == list(range(20)) and layout.bars.values == attention[::-1].tolist()
    assert layout.bars.highlighted == [10, 16, 17] and layout.bars.tallest == 16
    assert layout.bars.x_ticks == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_the_prediction_picture_numbers_slices_as_its_json_on_a_feet_first_input(demo_model, tmp_path,
                                                                                   monkeypatch) -> None:
    """On a feet-first input the canonical grid runs the other way; the chart must still use the input's numbers."""
    import json

    from TwoFiveCNNLib.data.phantoms import generate_phantom
    from TwoFiveCNNLib.inference import outputs
    from TwoFiveCNNLib.io.volume import write_volume

    study = generate_phantom(3, seed=11, orientation="LPI", shape_zyx=(40, 96, 96))
    source = write_volume(study.array_kji, study.geometry, tmp_path / "feet_first.nii.gz")
    drawn, draw = [], outputs.lesion_map_montage_png

    def keep_layout(*args, **kwargs):  # our own function, run for real; only its answer is kept
        drawn.append((kwargs["slice_labels"], draw(*args, **kwargs)))
        return drawn[-1][1]

    monkeypatch.setattr(outputs, "lesion_map_montage_png", keep_layout)
    result = outputs.predict_batch(demo_model, [source], tmp_path / "out")
    assert not result.failures
    record = json.loads((tmp_path / "out" / "feet_first.json").read_text())
    (labels, layout), = drawn
    n = len(record["slice_attention"])
    assert n == 40 and layout.bars.numbers == list(range(n))
    montage_numbers = sorted(int(labels[k].removeprefix("slice ")) for k in layout.shown)
    assert montage_numbers == sorted(n - 1 - k for k in layout.shown), "feet-first: the input runs head to feet"
    assert layout.bars.highlighted == montage_numbers, "the blue bars are the montage's slices"
    assert layout.bars.tallest == record["most_attended_slice"], "the tallest bar is the JSON's slice"
    assert record["most_attended_slice"] in layout.bars.highlighted
    assert layout.bars.values == pytest.approx(record["slice_attention"]), "bar n is the JSON's slice n"
    pixels = open_rgb(tmp_path / "out" / "feet_first.png")
    assert pixels.shape[:2] == (layout.size[1], layout.size[0]) and layout.size[0] == plotting.WIDTH
    assert 500 < layout.size[1] < 900 and pixels.std() > 20


def history() -> list[dict]:
    entries = [
        {"stage": 1, "epoch": e, "train_loss": 1.5 * np.exp(-e / 4), "val_balanced_accuracy": 0.3 + 0.04 * e}
        for e in range(1, 11)
    ]
    entries += [
        {"stage": 2, "epoch": e, "train_loss": 0.6 / e, "val_balanced_accuracy": None} for e in range(1, 4)
    ]
    return entries


def test_curves_png(tmp_path) -> None:
    path = tmp_path / "curves.png"
    assert curves_png(history(), path) == path
    pixels = open_rgb(path)
    assert pixels.shape == (648, plotting.WIDTH, 3) and pixels.std() > 10  # title, then a 280-px row per stage
    rows = pixels[:344], pixels[344:]
    for row, colour, other in zip(rows, STAGE_COLOURS[:2], STAGE_COLOURS[1::-1]):
        assert np.all(row == colour, axis=-1).sum() > 100  # each stage in its own row, in its own colour
        assert np.all(row == other, axis=-1).sum() == 0
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_curve_rows_name_the_stages_and_give_each_its_own_epochs() -> None:
    from TwoFiveCNNLib.reports.figures import curve_panels, stage_title

    demo_like = [{"stage": "stage1", "epoch": e, "train_loss": 1 / e, "val_balanced_accuracy": 0.5} for e in range(1, 15)]
    demo_like += [{"stage": "stage2", "epoch": e, "train_loss": 1 / e} for e in range(1, 151)]
    stage1, stage2 = curve_panels(demo_like)
    assert (stage1.title, stage2.title) == ("Stage 1: 2D slice CNN", "Stage 2: attention head")
    assert (stage1.epochs, stage2.epochs) == (14, 150)
    assert stage1.epoch_ticks == [2, 4, 6, 8, 10, 12, 14] and stage2.epoch_ticks[-1] == 140
    assert stage1.epoch_range[1] < 15 and stage2.epoch_range[1] > 150  # each stage on its own axis
    assert stage2.accuracy == [] and len(stage2.loss) == 150
    assert [p.title for p in curve_panels(history())] == ["Stage 1: 2D slice CNN", "Stage 2: attention head"]
    assert stage_title("finetune").startswith("Fine-tuning") and stage_title("warmup") == "warmup"
    assert stage_title(3) == "Stage 3"


def test_curves_without_validation_and_single_epoch(tmp_path) -> None:
    curves_png([{"stage": "only", "epoch": 1, "train_loss": 0.7}], tmp_path / "one.png")
    assert open_rgb(tmp_path / "one.png").std() > 10


def test_curves_reject_bad_history(tmp_path) -> None:
    with pytest.raises(ValueError, match="empty"):
        curves_png([], tmp_path / "c.png")
    with pytest.raises(ValueError, match="train_loss"):
        curves_png([{"stage": 1, "epoch": 1}], tmp_path / "c.png")


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch) -> None:
    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        confusion_matrix_png(np.eye(3, dtype=int), NAMES5[:3], tmp_path / "cm.png")
    assert list(tmp_path.iterdir()) == []


def test_text_the_font_cannot_draw_is_replaced() -> None:
    assert plotting.printable("demo — not for clinical use") == "demo - not for clinical use"
    assert plotting.printable("résumé") == "resume"
