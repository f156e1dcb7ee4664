"""Quantitative lung aeration: the fast closing is exact, and the shares track the phantoms' truth."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.io.volume import Volume, read_volume
from TwoFiveCNNLib.transforms.aeration import AERATION_FEATURES, box_closing, measure_aeration
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig, to_model_grid

GRID = PreprocessConfig(in_plane=96, n_slices=32)
# Vessels and partial volume at the model grid's resolution: a healthy lung's share above -700 HU.
HEALTHY_DISEASED_SHARE = 0.3


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 11), iterations=st.integers(1, 3), density=st.floats(0.2, 0.95),
       shape=st.tuples(st.integers(1, 3), st.integers(11, 40), st.integers(11, 40)), seed=st.integers(0, 2**16))
def test_box_closing_equals_scipy_binary_closing(size, iterations, density, shape, seed):
    # Slices at least as large as the box: scipy 1.17's binary_closing itself corrupts the heap otherwise.
    mask = np.random.default_rng(seed).random(shape) < density
    expected = ndimage.binary_closing(mask, structure=np.ones((1, size, size)), iterations=iterations)
    np.testing.assert_array_equal(box_closing(mask, size, iterations), expected)


def test_box_closing_refuses_a_box_larger_than_the_slice():
    with pytest.raises(ValueError, match="at least 9 x 9"):
        box_closing(np.ones((2, 8, 20), dtype=bool), 9, iterations=1)


def phantom_features(label: int, seed: int) -> tuple[np.ndarray, dict]:
    phantom = generate_phantom(label, seed)
    grid, _ = to_model_grid(Volume.from_original(phantom.array_kji, phantom.geometry), GRID)
    return measure_aeration(grid, GRID.window)[0], phantom.info


@pytest.mark.parametrize("seed", [3, 11])
def test_diseased_share_ranks_like_the_phantoms_involved_fraction(seed):
    rows = [phantom_features(label, seed) for label in range(5)]
    diseased = np.array([features[1] + features[2] for features, _ in rows])
    truth = np.array([info["involved_fraction"] for _, info in rows])
    assert np.argsort(diseased).tolist() == np.argsort(truth).tolist(), (diseased, truth)
    assert np.corrcoef(diseased, truth)[0, 1] > 0.95
    assert diseased[0] < HEALTHY_DISEASED_SHARE, rows[0]
    for features, _ in rows:
        assert features[:3].sum() == pytest.approx(1.0, abs=1e-5)


def test_real_chest_ct_looks_like_a_healthy_lung(chest_ct_path):
    grid, _ = to_model_grid(read_volume(chest_ct_path), GRID)
    features, lung = measure_aeration(grid, GRID.window)
    shares = dict(zip(AERATION_FEATURES, features.tolist()))
    assert shares["poorly_aerated"] + shares["non_aerated"] < HEALTHY_DISEASED_SHARE, shares
    assert 0.1 < shares["lung_to_body"] < 0.6, shares
    middle = grid.shape[2] // 2
    columns = np.nonzero(lung.any(axis=(0, 1)))[0]
    assert columns.min() < middle - 10 and columns.max() > middle + 10, "both lungs are found"


@pytest.mark.parametrize("seed", [3, 11])
def test_lung_envelope_does_not_bridge_the_mediastinum(seed):
    phantom = generate_phantom(0, seed)
    grid, _ = to_model_grid(Volume.from_original(phantom.array_kji, phantom.geometry), GRID)
    lung = measure_aeration(grid, GRID.window)[1]
    middle = grid.shape[2] // 2
    # The phantoms' mediastinum fills the central columns; closing across it would put ~4% of the mask there.
    assert lung[:, :, middle - 2:middle + 3].sum() < 0.01 * lung.sum()
