"""Preprocessing: window, body crop, model grid shape and range, mapping results back."""

from __future__ import annotations

import numpy as np
import pytest
from TwoFiveCNNLib.io.volume import Geometry, Volume, read_volume
from TwoFiveCNNLib.transforms.preprocess import (
    GridMapping,
    PreprocessConfig,
    apply_window,
    body_crop,
    grid_map_to_canonical,
    slice_values_to_canonical,
    to_model_grid,
)


def synthetic_volume(shape=(40, 96, 120), spacing=(2.5, 0.7, 0.7)) -> Volume:
    """Air around an off-centre soft-tissue block holding a dark 'lung' box."""
    array = np.full(shape, -1000, dtype=np.int16)
    array[:, 20:80, 30:100] = 40
    array[:, 35:65, 45:85] = -850
    geometry = Geometry(shape[::-1], spacing[::-1], (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return Volume.from_original(array, geometry)


def test_window_maps_hu_to_unit_range_and_tames_nan_and_inf():
    values = np.array([np.nan, np.inf, -np.inf, -2000, -1000, -300, 400, 3000], dtype=np.float32)
    original = values.copy()
    out = apply_window(values, (-1000, 400))
    np.testing.assert_allclose(out, [0, 1, 0, 0, 0, 0.5, 1, 1], atol=1e-6)
    np.testing.assert_array_equal(np.isnan(values), np.isnan(original))  # the input is untouched


def test_model_grid_shape_and_range_for_the_real_ct(chest_ct_path):
    grid, mapping = to_model_grid(read_volume(chest_ct_path), PreprocessConfig(in_plane=96, n_slices=32))
    assert grid.shape == (32, 96, 96) and grid.dtype == np.float32
    assert 0.0 <= grid.min() and grid.max() <= 1.0
    assert mapping.canonical_shape == (34, 128, 128)
    assert grid.std() > 0.1, "a real CT keeps its contrast"


def test_body_crop_is_square_and_contains_the_body():
    volume = synthetic_volume()
    y0, y1, x0, x1 = body_crop(volume.array, -500)
    assert y1 - y0 == x1 - x0 or (y1 - y0) == volume.array.shape[1]
    assert y0 <= 20 and y1 >= 80 and x0 <= 30 and x1 >= 100


def test_crop_makes_field_of_view_irrelevant():
    small_fov = synthetic_volume()
    padded = np.pad(small_fov.array, ((0, 0), (60, 60), (40, 80)), constant_values=-1000)
    large_fov = Volume.from_original(padded, Geometry(padded.shape[::-1], (0.7, 0.7, 2.5), (0, 0, 0),
                                                      (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    config = PreprocessConfig(in_plane=64, n_slices=16)
    a, _ = to_model_grid(small_fov, config)
    b, _ = to_model_grid(large_fov, config)
    assert np.abs(a - b).mean() < 0.02


def test_slice_spacing_mode_follows_physical_extent():
    volume = synthetic_volume(shape=(40, 96, 120), spacing=(2.5, 0.7, 0.7))  # 100 mm
    grid, _ = to_model_grid(volume, PreprocessConfig(slice_mode="spacing", slice_spacing_mm=5.0, in_plane=32))
    assert grid.shape == (20, 32, 32)
    capped = PreprocessConfig(slice_mode="spacing", slice_spacing_mm=0.1, max_slices=50, in_plane=32)
    assert to_model_grid(volume, capped)[0].shape[0] == 50


def test_single_slice_volume_still_gives_a_grid():
    volume = synthetic_volume(shape=(1, 96, 120))
    grid, _ = to_model_grid(volume, PreprocessConfig(in_plane=32, n_slices=8))
    assert grid.shape == (8, 32, 32) and np.isfinite(grid).all()


def test_mapping_back_onto_the_canonical_grid():
    volume = synthetic_volume()
    grid, mapping = to_model_grid(volume, PreprocessConfig(in_plane=32, n_slices=10))
    ramp = np.linspace(0, 1, 10)
    per_slice = slice_values_to_canonical(ramp, mapping)
    assert per_slice.shape == (40,) and np.all(np.diff(per_slice) >= 0)
    mapped = grid_map_to_canonical(np.ones_like(grid), mapping)
    assert mapped.shape == volume.array.shape
    y0, y1, x0, x1 = mapping.crop_yx
    assert np.allclose(mapped[:, y0:y1, x0:x1], 1) and mapped.sum() == pytest.approx(40 * (y1 - y0) * (x1 - x0))
    assert GridMapping.from_dict(mapping.to_dict()) == mapping


def test_config_round_trip_presets_and_errors():
    config = PreprocessConfig.with_window("lung", in_plane=96, n_slices=32)
    assert config.window == (-1350.0, 150.0)
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    assert config.fingerprint() != PreprocessConfig().fingerprint()
    with pytest.raises(ValueError, match="unknown window preset"):
        PreprocessConfig.with_window("bone-ish")
    with pytest.raises(ValueError, match="upper HU bound"):
        PreprocessConfig(window=(400, -1000))
    with pytest.raises(ValueError, match="newer version"):
        PreprocessConfig.from_dict({**config.to_dict(), "future_setting": 1})


@pytest.mark.parametrize("antialias", [True, False], ids=["antialiased", "plain"])
def test_numpy_resampling_equals_torch_interpolate(antialias):
    """The model grid is made, and maps are brought back, with NumPy weights: they must give what
    torch's bilinear interpolation gives, shrinking and enlarging, odd sizes and single rows included."""
    import torch
    import torch.nn.functional as F
    from TwoFiveCNNLib.transforms.resample import resize_axis0, resize_stack

    rng = np.random.default_rng(0)
    for height, width, out_height, out_width in [(400, 380, 96, 96), (120, 111, 128, 128), (96, 96, 400, 371),
                                                 (7, 300, 3, 96), (64, 64, 64, 32), (1, 9, 4, 4)]:
        stack = rng.random((3, height, width), dtype=np.float32)
        expected = F.interpolate(torch.from_numpy(stack)[:, None], size=(out_height, out_width), mode="bilinear",
                                 align_corners=False, antialias=antialias)[:, 0].numpy()
        np.testing.assert_allclose(resize_stack(stack, (out_height, out_width), antialias), expected, atol=2e-5)
        along = F.interpolate(torch.from_numpy(stack.reshape(1, 1, 3, -1)), size=(out_height, height * width),
                              mode="bilinear", align_corners=False, antialias=antialias)[0, 0].numpy()
        np.testing.assert_allclose(resize_axis0(stack, out_height, antialias).reshape(out_height, -1), along, atol=2e-5)
