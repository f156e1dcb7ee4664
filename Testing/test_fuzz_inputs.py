"""Input fuzzing: odd but readable volumes either predict with sane output or fail with a clear message.

Random orientations (axis permutations, flips, oblique rotations, and sheared grids as a tilted gantry
stores them, which must be refused), extreme and anisotropic spacings, 1 to 6 slices, five voxel types,
HU, 0..4095, constant and extreme values, NaN and infinities, three file formats. Every example is a
real file read back through the product's reader; each has a time limit, so a hang fails the test
instead of stalling CI.
"""

from __future__ import annotations

import contextlib
import re
import signal

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.inference.predict import load_model, predict_path
from TwoFiveCNNLib.io.volume import VolumeError

SECONDS_PER_EXAMPLE = 60
DTYPES = ("uint8", "int16", "int32", "float32", "float64")


@contextlib.contextmanager
def time_limit(seconds: int):
    def hang(*_):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def voxels(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, values: str) -> np.ndarray:
    limits = np.iinfo(dtype) if dtype.startswith(("u", "i")) else None
    if values == "hu":
        array = rng.normal(-400, 500, shape)
    elif values == "0..4095":
        array = rng.integers(0, 4096, shape).astype(float)
    elif values == "constant":
        array = np.full(shape, float(rng.integers(-1000, 1000)))
    else:  # the type's extremes
        low, high = (limits.min, limits.max) if limits else (-1e30, 1e30)
        array = rng.choice([float(low), float(high)], shape)
    if limits:
        array = np.clip(np.rint(array), limits.min, limits.max)
    return array.astype(dtype)


@st.composite
def odd_volumes(draw) -> dict:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = (draw(st.integers(1, 6)), draw(st.integers(8, 72)), draw(st.integers(8, 72)))
    dtype = draw(st.sampled_from(DTYPES))
    array = voxels(rng, shape, dtype, draw(st.sampled_from(("hu", "0..4095", "constant", "extremes"))))
    non_finite = draw(st.sampled_from((None, np.nan, np.inf, -np.inf))) if dtype.startswith("f") else None
    if non_finite is not None:
        array[rng.random(shape) < draw(st.sampled_from((0.001, 0.3, 1.0)))] = non_finite
    orientation = draw(st.sampled_from(("identity", "permuted", "oblique", "sheared")))
    if orientation == "identity":
        direction = np.eye(3)
    elif orientation == "permuted":
        direction = np.eye(3)[rng.permutation(3)] * rng.choice([-1, 1], 3)[:, None]
    else:
        direction = Rotation.random(random_state=seed).as_matrix()
    if orientation == "sheared":  # one index axis slanted toward another, by 0.1 to 60 degrees
        slant = np.radians(draw(st.floats(0.1, 60.0)))
        axis, toward = rng.permutation(3)[:2]
        direction[:, axis] = np.cos(slant) * direction[:, axis] + np.sin(slant) * direction[:, toward]
    spacing = tuple(draw(st.floats(0.05, 20.0)) for _ in range(3))
    return {"array": array, "direction": direction, "spacing": spacing,
            "suffix": draw(st.sampled_from((".nrrd", ".nii.gz", ".mha")))}


def stored_shear_degrees(image: sitk.Image) -> float:
    """How far the file's index axes are from right angles, as ITK reads them (its NIfTI writer squares
    a sheared grid, NRRD and MetaImage keep it)."""
    columns = np.reshape(image.GetDirection(), (3, 3))
    columns = columns / np.linalg.norm(columns, axis=0)
    return float(np.degrees(np.arcsin(min(1.0, np.abs(np.triu(columns.T @ columns, 1)).max()))))


def write(case: dict, folder) -> str:
    image = sitk.GetImageFromArray(case["array"])
    image.SetSpacing(case["spacing"])
    image.SetDirection(case["direction"].ravel().tolist())
    image.SetOrigin((-12.5, 40.0, 300.0))
    path = folder / f"odd{case['suffix']}"
    sitk.WriteImage(image, str(path), True)
    return str(path)


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model, "cpu")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=odd_volumes())
def test_odd_volumes_predict_sanely_or_fail_clearly(case, model, tmp_path_factory):
    path = write(case, tmp_path_factory.mktemp("odd"))
    shear = stored_shear_degrees(sitk.ReadImage(path))
    with time_limit(SECONDS_PER_EXAMPLE):
        try:
            prediction, _ = predict_path(model, path)
        except VolumeError as error:  # the one allowed failure: a message naming the file
            assert path in str(error)
            if shear > 0.06:  # a sheared grid is refused for its shear, by name and angle
                named = re.search(r"sheared by ([\d.]+) degrees", str(error))
                assert named and float(named[1]) == pytest.approx(shear, abs=0.01), str(error)
            return
    assert shear < 0.06, f"a grid sheared by {shear:.2f} degrees was graded; its outputs cannot lie on it"
    probabilities = np.array(list(prediction.probabilities.values()))
    assert np.isfinite(probabilities).all() and probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    # The lesion map lies exactly on the input's grid, as the file stores it.
    written = sitk.ReadImage(path)
    assert prediction.lesion_map_kji.shape == case["array"].shape
    np.testing.assert_allclose(prediction.geometry.spacing, written.GetSpacing(), rtol=1e-5)
    np.testing.assert_allclose(prediction.geometry.origin, written.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(prediction.geometry.direction, written.GetDirection(), atol=1e-5)
    lesion_map = prediction.lesion_map_kji
    assert np.isfinite(lesion_map).all() and lesion_map.min() >= 0 and lesion_map.max() <= 1
    slice_attention = np.asarray(prediction.slice_attention)
    assert np.isfinite(slice_attention).all() and slice_attention.sum() == pytest.approx(1.0, abs=1e-5)
    assert len(slice_attention) == case["array"].shape[0] or any("not axial" in w for w in prediction.warnings)
    if not np.isfinite(sitk.GetArrayViewFromImage(written)).all():  # ITK reads NIfTI's NaN and inf as 0
        assert any("NaN or infinite" in w for w in prediction.warnings), prediction.warnings


def test_huge_in_plane_study_predicts(model, tmp_path):
    case = {"array": voxels(np.random.default_rng(0), (2, 2048, 2048), "int16", "hu"), "direction": np.eye(3),
            "spacing": (0.2, 0.2, 5.0), "suffix": ".nrrd"}
    with time_limit(SECONDS_PER_EXAMPLE):
        prediction, _ = predict_path(model, write(case, tmp_path))
    assert prediction.lesion_map_kji.shape == (2, 2048, 2048)


def test_cli_answers_odd_inputs_without_a_traceback(tiny_model, tmp_path, capsys):
    nan_case = {"array": np.full((4, 32, 32), np.nan, np.float32), "direction": np.eye(3),
                "spacing": (1.0, 1.0, 1.0), "suffix": ".nrrd"}
    thin_case = {"array": np.zeros((4, 32, 3), np.int16), "direction": np.eye(3), "spacing": (1.0, 1.0, 1.0),
                 "suffix": ".nrrd"}
    for name in ("nan", "thin"):
        (tmp_path / name).mkdir()
    nan_path, thin_path = write(nan_case, tmp_path / "nan"), write(thin_case, tmp_path / "thin")
    assert main(["predict", "--model", str(tiny_model), nan_path, "--out", str(tmp_path / "out")]) == 0
    assert main(["predict", "--model", str(tiny_model), thin_path, "--out", str(tmp_path / "out2")]) != 0
    printed = capsys.readouterr()
    assert "warning: 4096 voxels (1e+02%) are NaN or infinite" in printed.out
    assert "at least 8 x 8" in printed.err and "Traceback" not in printed.out + printed.err
