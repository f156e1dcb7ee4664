"""Volume reading: canonical orientation, exact geometry round trips, DICOM, real CT, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import asymmetric_anatomy, sitk_image, write_dicom_series
from scipy import ndimage
from TwoFiveCNNLib.io.volume import Geometry, Volume, VolumeError, canonical_axes, read_volume, write_volume

# ITK's own reorientation filter stores the same anatomy with other direction matrices; each code names
# where the index axes point (e.g. "RAI": i to Right, j to Anterior, k to Inferior = feet-first slices).
ORIENTATIONS = ["LPS", "RAS", "LPI", "RAI", "PLS", "SLP", "ALI"]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_same_anatomy_any_direction_gives_same_canonical_array(tmp_path, orientation):
    anatomy = asymmetric_anatomy()
    reference = sitk_image(anatomy)  # identity direction = canonical LPS
    stored = sitk.DICOMOrient(reference, orientation)
    path = tmp_path / f"{orientation}.nii.gz"
    sitk.WriteImage(stored, str(path))

    volume = read_volume(path)

    np.testing.assert_array_equal(volume.array, anatomy)
    assert volume.spacing_zyx == pytest.approx((2.5, 0.8, 0.7))
    # Canonical voxel 0 is the same physical point whatever the storage order.
    corner = np.array(reference.TransformIndexToPhysicalPoint((0, 0, 0)))
    source_axes, flips = canonical_axes(volume.geometry.direction_matrix)
    index = [0, 0, 0]
    for world in range(3):
        index[source_axes[world]] = volume.geometry.size[source_axes[world]] - 1 if flips[world] else 0
    assert np.allclose(stored.TransformIndexToPhysicalPoint(index), corner)


@pytest.mark.parametrize("seed", range(8))
def test_to_original_inverts_canonical_for_oblique_directions(seed):
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    geometry = Geometry((9, 7, 5), (1.0, 1.2, 3.0), (0.0, 0.0, 0.0), tuple(rotation.ravel()))
    stored = rng.normal(size=(5, 7, 9)).astype(np.float32)

    volume = Volume.from_original(stored, geometry)

    assert sorted(volume.array.shape) == sorted(stored.shape)
    np.testing.assert_array_equal(volume.to_original(volume.array), stored)


def test_slightly_oblique_volume_reads_like_the_axis_aligned_one(tmp_path):
    anatomy = asymmetric_anatomy()
    image = sitk_image(anatomy)
    angle = np.deg2rad(12)
    tilt = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    image.SetDirection(tuple(tilt.ravel()))
    write_volume(anatomy, Geometry.from_sitk(image), tmp_path / "oblique.nrrd")

    volume = read_volume(tmp_path / "oblique.nrrd")

    np.testing.assert_array_equal(volume.array, anatomy)
    assert np.allclose(volume.geometry.direction_matrix, tilt)


def test_ijk_to_ras_round_trip():
    rotation, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
    geometry = Geometry((10, 11, 12), (0.5, 0.6, 2.0), (1.0, -2.0, 3.0), tuple(rotation.ravel()))
    again = Geometry.from_ijk_to_ras(geometry.ijk_to_ras(), geometry.size)
    assert np.allclose(again.ijk_to_lps(), geometry.ijk_to_lps())
    assert Geometry.from_dict(geometry.to_dict()) == geometry


def test_dicom_series_reads_with_hu_and_geometry(tmp_path):
    hu = asymmetric_anatomy((6, 24, 20)).astype(np.int32)
    raw = ((hu + 1024) * 2).astype(np.uint16)  # stored = (HU - intercept) / slope
    write_dicom_series(tmp_path / "series", raw, intercept=-1024, slope=0.5)

    volume = read_volume(tmp_path / "series")

    np.testing.assert_allclose(volume.array, hu)
    assert volume.spacing_zyx == pytest.approx((2.0, 0.75, 0.75))
    assert volume.geometry.origin == pytest.approx((-100.0, -120.0, 0.0))
    assert volume.name == "series"


def test_dicom_feet_first_series_gives_same_canonical_array(tmp_path):
    hu = asymmetric_anatomy((6, 24, 20)).astype(np.int32)
    raw = (hu + 1024).astype(np.uint16)
    write_dicom_series(tmp_path / "head_first", raw, intercept=-1024, slope=1)
    write_dicom_series(tmp_path / "feet_first", raw[::-1], intercept=-1024, slope=1, feet_first=True)

    head_first = read_volume(tmp_path / "head_first").array
    feet_first = read_volume(tmp_path / "feet_first").array

    np.testing.assert_array_equal(head_first, feet_first)


def test_dicom_folder_with_two_series_picks_the_larger_and_warns(tmp_path):
    hu = asymmetric_anatomy((6, 24, 20)).astype(np.int32)
    write_dicom_series(tmp_path / "mixed", (hu + 1024).astype(np.uint16), -1024, 1)
    write_dicom_series(tmp_path / "mixed", (hu[:3] + 1024).astype(np.uint16), -1024, 1)
    # The second call reuses file names for 3 slices; write the scout series under other names.
    scout = tmp_path / "scout"
    write_dicom_series(scout, (hu[:2] + 1024).astype(np.uint16), -1024, 1)
    for path in scout.iterdir():
        path.rename(tmp_path / "mixed" / f"scout_{path.name}")

    volume = read_volume(tmp_path / "mixed")

    assert volume.array.shape[0] in (3, 6)
    assert any("DICOM series" in warning for warning in volume.warnings)


def test_real_chest_ct_has_plausible_hu_and_anatomy(chest_ct_path):
    volume = read_volume(chest_ct_path)
    ct = volume.array.astype(np.float32)
    assert ct.shape == (34, 128, 128)

    assert ct.min() == -3024, "scanner padding outside the reconstruction circle"
    front = ct[:, :10]  # anterior rows: air in front of the chest, inside the field of view
    air = front[front > -2000]
    assert abs(np.median(air) - (-1000)) < 60, "air outside the body should be near -1000 HU"
    soft = ct[(ct > -200) & (ct < 200)]
    assert abs(np.median(soft) - 40) < 40, "soft tissue should be near 40 HU"

    lungs = [lung_mask(axial) for axial in ct]
    middle = ct.shape[0] // 2
    lung = lungs[middle]
    assert lung[:, :64].sum() > 300 and lung[:, 64:].sum() > 300, "both lungs, one on each side"
    bone = (ct[middle] > 300) & body_mask(ct[middle])
    bone[:, :54] = bone[:, 74:] = False  # the midline: sternum in front, spine behind
    assert np.nonzero(bone)[0].max() > np.nonzero(lung)[0].mean(), "spine must be posterior (larger y)"
    lung_area = np.array([m.sum() for m in lungs])
    assert lung_area[-5:].mean() > 3 * lung_area[:3].mean(), "lungs superior (larger z), abdomen inferior"


def body_mask(axial: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(axial > -500)
    largest = 1 + np.argmax(ndimage.sum_labels(np.ones_like(axial), labels, range(1, count + 1)))
    return ndimage.binary_fill_holes(labels == largest)


def lung_mask(axial: np.ndarray) -> np.ndarray:
    return body_mask(axial) & (axial < -500)


def test_nifti_scaling_is_honoured(tmp_path):
    hu = asymmetric_anatomy((4, 16, 16)).astype(np.float32)
    raw = ((hu + 1024) / 2).astype(np.int16)
    path = tmp_path / "scaled.nii"
    sitk.WriteImage(sitk.GetImageFromArray(raw), str(path))
    data = bytearray(path.read_bytes())
    # NIfTI-1 header: scl_slope at byte 112, scl_inter at byte 116 (little-endian float32).
    data[112:120] = np.array([2.0, -1024.0], dtype="<f4").tobytes()
    path.write_bytes(bytes(data))

    volume = read_volume(path)

    np.testing.assert_allclose(volume.array, raw.astype(np.float32) * 2 - 1024)


def test_write_volume_round_trip_keeps_geometry_and_leaves_no_temp_files(tmp_path):
    geometry = Geometry((20, 16, 6), (0.7, 0.8, 2.5), (1.0, 2.0, 3.0), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    data = asymmetric_anatomy((6, 16, 20))
    write_volume(data, geometry, tmp_path / "out.nrrd")
    assert [p.name for p in tmp_path.iterdir()] == ["out.nrrd"]
    image = sitk.ReadImage(str(tmp_path / "out.nrrd"))
    assert Geometry.from_sitk(image) == pytest.approx(geometry) or Geometry.from_sitk(image).to_dict() == \
        pytest.approx(geometry.to_dict())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), data)


@pytest.mark.parametrize("name", ["notes.nii.gz", "scan.nrrd"])
def test_text_file_named_like_a_volume_is_refused_with_its_name(tmp_path, name):
    path = tmp_path / name
    path.write_text("this is not an image")
    with pytest.raises(VolumeError, match=f"{name}.*cannot be read"):
        read_volume(path)


def test_2d_image_is_refused(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16)), str(path))
    with pytest.raises(VolumeError, match="slice.nrrd.*2D image"):
        read_volume(path)


def test_4d_image_is_refused(tmp_path):
    path = tmp_path / "series4d.nii.gz"
    frames = [sitk.GetImageFromArray(np.zeros((4, 32, 32), np.int16)) for _ in range(3)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    with pytest.raises(VolumeError, match="series4d.nii.gz.*4D image"):
        read_volume(path)


def test_colour_image_is_refused(tmp_path):
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 32, 32, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(VolumeError, match="rgb.nrrd.*3 values per voxel"):
        read_volume(path)


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(VolumeError, match=f"{tmp_path.name}.*no DICOM series") as refused:
        read_volume(tmp_path)
    assert "sub-folders" not in str(refused.value)


def test_a_folder_of_class_folders_is_refused_naming_them(tmp_path):
    """A MosMed-style studies/ folder given as one input: the message names the sub-folders to pass."""
    for grade in ("CT-0", "CT-1"):
        (tmp_path / grade).mkdir()
        write_volume(np.zeros((8, 8, 8), np.int16), Geometry((8, 8, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                                                             (1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / grade / "s.nii.gz")
    (tmp_path / "notes").mkdir()
    with pytest.raises(VolumeError, match=r"sub-folders CT-0, CT-1 hold volume files.*CT-\*\)"):
        read_volume(tmp_path)


def test_missing_and_unsupported_files_are_refused(tmp_path):
    with pytest.raises(VolumeError, match="absent.nii.gz.*no such file"):
        read_volume(tmp_path / "absent.nii.gz")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(VolumeError, match="scan.png.*unsupported file type"):
        read_volume(tmp_path / "scan.png")


def test_input_slice_index_maps_canonical_slices_to_the_inputs_own():
    array = np.arange(4 * 8 * 8, dtype=np.int16).reshape(4, 8, 8)
    axial_head_first = Volume.from_original(array, Geometry((8, 8, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                                                            (1, 0, 0, 0, 1, 0, 0, 0, -1)))
    assert axial_head_first.input_slice_index().tolist() == [3, 2, 1, 0]
    np.testing.assert_array_equal(axial_head_first.array[0], array[3])  # canonical z 0 is input slice 3
    sagittal = Volume.from_original(array, Geometry((8, 8, 4), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0),
                                                    (0, 0, 1, 0, 1, 0, 1, 0, 0)))
    assert sagittal.input_slice_index() is None
