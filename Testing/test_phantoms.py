"""Synthetic MosMed-like phantoms: exact grading, determinism, stored orientations, cohort layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from TwoFiveCNNLib.data.phantoms import (
    ORIENTATIONS,
    generate_phantom,
    parse_counts,
    study_seed,
    write_cohort,
)
from TwoFiveCNNLib.io.volume import Volume, read_volume, write_volume

# MosMed's rule on the involved share of lung parenchyma, [low, high) per class.
MOSMED_RANGES = {1: (1e-9, 0.25), 2: (0.25, 0.5), 3: (0.5, 0.75), 4: (0.75, 1.0)}


def canonical(phantom) -> np.ndarray:
    return Volume.from_original(phantom.array_kji, phantom.geometry).array


def test_same_seed_same_phantom_other_seed_differs():
    first, again, other = generate_phantom(2, 11), generate_phantom(2, 11), generate_phantom(2, 12)
    assert first.array_kji.dtype == np.int16
    np.testing.assert_array_equal(first.array_kji, again.array_kji)
    assert first.geometry == again.geometry and first.info == again.info
    assert not np.array_equal(canonical(other), canonical(first))


@pytest.mark.parametrize("label", range(5))
def test_involved_fraction_lies_in_the_mosmed_class(label):
    for seed in (1, 2):
        phantom = generate_phantom(label, seed)
        lung, lesion = phantom.lung_mask_zyx, phantom.lesion_mask_zyx
        fraction = phantom.info["involved_fraction"]
        assert phantom.info["label"] == label
        assert not (lesion & ~lung).any(), "lesions must lie inside the lungs"
        assert fraction == pytest.approx(lesion.sum() / lung.sum(), abs=1e-12)
        if label == 0:
            assert fraction == 0 and not lesion.any()
        else:
            low, high = MOSMED_RANGES[label]
            assert low <= fraction < high


def test_stored_orientations_hold_the_same_anatomy(tmp_path):
    reference, positions, directions = None, set(), set()
    for name in ORIENTATIONS:
        phantom = generate_phantom(3, 5, orientation=name)
        assert phantom.info["orientation"] == name
        volume = read_volume(write_volume(phantom.array_kji, phantom.geometry, tmp_path / f"{name}.nrrd"))
        if reference is None:
            reference = volume.array
        np.testing.assert_array_equal(volume.array, reference)
        np.testing.assert_array_equal(volume.array, canonical(phantom))
        # The canonical first voxel sits at the same physical point whatever the storage order.
        marker = np.zeros(volume.array.shape, dtype=bool)
        marker[0, 0, 0] = True
        k, j, i = np.argwhere(volume.to_original(marker))[0]
        positions.add(tuple(np.round(volume.geometry.ijk_to_lps() @ [i, j, k, 1], 4)))
        directions.add(volume.geometry.direction)
    assert len(positions) == 1
    assert len(directions) == len(ORIENTATIONS)


def test_canonical_anatomy_is_right_side_up(tmp_path):
    phantom = generate_phantom(2, 21, orientation="RAI")
    array = read_volume(write_volume(phantom.array_kji, phantom.geometry, tmp_path / "p.nii.gz")).array
    lung = phantom.lung_mask_zyx
    body = np.stack([ndimage.binary_fill_holes(s) for s in array > -500])
    lung_hu = body & (array < -500)
    nz, _, nx = array.shape
    middle = lung_hu[nz // 3: 2 * nz // 3]
    right, left = middle[..., : nx // 2].sum(), middle[..., nx // 2:].sum()
    assert min(right, left) > 0.3 * max(right, left), "a lung on each side of the body"
    # Lungs taper to the apex: the largest lung slices lie in the lower half (smaller z).
    assert np.argmax(lung.sum(axis=(1, 2))) < nz / 2
    # Lesions favour the posterior (larger y) part of the lungs, in the masks and in HU: the
    # healthy phantom of the same seed has the same anatomy and noise, so the difference is the disease.
    assert np.nonzero(phantom.lesion_mask_zyx)[1].mean() > np.nonzero(lung)[1].mean() + 2
    healthy_phantom = generate_phantom(0, 21, orientation="LPS")
    healthy = read_volume(write_volume(healthy_phantom.array_kji, healthy_phantom.geometry, tmp_path / "h.nrrd"))
    increase = (array.astype(float) - healthy.array)[lung]
    y = np.nonzero(lung)[1]
    assert np.average(y, weights=increase) > y.mean() + 2


def test_write_cohort_layout_and_manifest(tmp_path):
    calls = []
    paths = write_cohort(tmp_path, [1, 1, 0, 1, 1], seed=7, progress=lambda d, t: calls.append((d, t)))
    expected = ["studies/CT-0/study_0001.nii.gz", "studies/CT-1/study_0002.nii.gz",
                "studies/CT-3/study_0003.nii.gz", "studies/CT-4/study_0004.nii.gz"]
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == expected
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    manifest = json.loads((tmp_path / "phantoms.json").read_text())
    assert manifest["settings"]["seed"] == 7 and manifest["settings"]["counts"] == [1, 1, 0, 1, 1]
    assert [s["path"] for s in manifest["studies"]] == expected
    for n, study in enumerate(manifest["studies"], 1):
        assert study["seed"] == study_seed(7, n)
        assert study["path"].startswith(f"studies/CT-{study['label']}/")
        volume = read_volume(tmp_path / study["path"])
        regenerated = generate_phantom(study["label"], study["seed"])
        np.testing.assert_array_equal(volume.array, canonical(regenerated))
        assert study["involved_fraction"] == regenerated.info["involved_fraction"]


def test_write_cohort_refuses_to_mix_with_stale_studies(tmp_path):
    write_cohort(tmp_path, [0, 1], seed=1)
    with pytest.raises(ValueError, match="would not replace"):
        write_cohort(tmp_path, [1], seed=1)


def test_parse_counts():
    assert parse_counts("20,40,16,10,6") == [20, 40, 16, 10, 6]
    assert parse_counts(" 3, 2 ") == [3, 2, 0, 0, 0]


@pytest.mark.parametrize("text", ["", "a,b", "1.5,2", "1,2,3,4,5,6", "1,-2", "0,0,0"])
def test_parse_counts_rejects_bad_input(text):
    with pytest.raises(ValueError, match="counts"):
        parse_counts(text)


@pytest.mark.parametrize("counts", [[], [0, 0, 0], [3, -1], [1, 1, 1, 1, 1, 1], [1.5]])
def test_write_cohort_rejects_bad_counts(tmp_path, counts):
    with pytest.raises(ValueError, match="counts"):
        write_cohort(tmp_path, counts, seed=0)
    assert not (tmp_path / "studies").exists()


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_cohort(tmp_path, [1], seed=0, suffix=".png")
    with pytest.raises(ValueError, match="label"):
        generate_phantom(5, 0)
    with pytest.raises(ValueError, match="orientation"):
        generate_phantom(1, 0, orientation="XYZ")
