"""Geometry exact or refused: sheared grids (a tilted gantry's) and DICOM series whose slices are not
evenly spaced are refused with a message naming the file, the slice and the fix; on request an uneven
series is resampled onto an even grid whose geometry is what the outputs describe.

Every case is made from slicerio's real chest CT (34 axial slices, 10 mm apart), written as real
NRRD, MetaImage and NIfTI files, real DICOM series (pydicom) and real MRML volume nodes (slicer-core).
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from helpers import write_dicom_series
from TwoFiveCNNLib.app.cli import EXIT_FAILED_STUDIES, main
from TwoFiveCNNLib.io.volume import Volume, VolumeError, read_volume

MISSING = 16  # the slice left out of the gapped series: mid-chest, through both lungs
CORNER = (-194.0, -216.0, -340.0)  # LPS position of the first voxel of every series made here


def sheared_image(chest: Volume, degrees: float) -> sitk.Image:
    """The chest on its canonical grid with the slice axis tilted ``degrees`` toward the back (y): slices
    stacked at a slant, as a tilted gantry scans them."""
    image = sitk.GetImageFromArray(chest.array)  # canonical LPS order: identity direction
    image.SetSpacing(chest.spacing_zyx[::-1])
    image.SetOrigin(CORNER)
    angle = np.radians(degrees)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, np.sin(angle), 0.0, 0.0, np.cos(angle)))
    return image


def chest_series(chest: Volume, folder: Path, steps_mm: list[float] | None = None,
                 tilt_degrees: float = 0.0) -> list[Path]:
    """The chest as a DICOM series (HU stored + 3024), slice k at the sum of the first k ``steps_mm``
    (default: its own 10 mm) and shifted toward the back (y) by tan(tilt) x that height."""
    dz = chest.spacing_zyx[0]
    heights = np.concatenate([[0.0], np.cumsum(steps_mm or [dz] * (chest.array.shape[0] - 1))])
    slant = np.tan(np.radians(tilt_degrees))
    positions = [(CORNER[0], CORNER[1] + slant * h, CORNER[2] + h) for h in heights]
    stored = (chest.array.astype(np.int32) + 3024).astype(np.uint16)
    return write_dicom_series(folder, stored, intercept=-3024, slope=1, spacing=chest.spacing_zyx[::-1],
                              positions=positions)


def predict(tmp_path: Path, capsys, *arguments: str | Path) -> tuple[int, str, str, Path]:
    """``twofivecnn predict`` with the bundled demo model: return code, stdout, stderr, output folder."""
    out = tmp_path / "out"
    code = main(["predict", *map(str, arguments), "--out", str(out)])
    printed = capsys.readouterr()
    return code, printed.out, printed.err, out


# ----------------------------------------------------------------------------------------- sheared grids


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
@pytest.mark.parametrize("degrees", [6.0, 45.0])
def test_sheared_volume_file_is_refused_naming_the_shear(chest, tmp_path, suffix, degrees):
    path = tmp_path / f"tilted{suffix}"
    sitk.WriteImage(sheared_image(chest, degrees), str(path), True)

    with pytest.raises(VolumeError) as refused:
        read_volume(path)

    message = str(refused.value)
    assert message.startswith(f"{path}: ") and f"sheared by {degrees:.2f} degrees" in message
    assert "Resample Scalar Volume" in message and "dcm2niix" in message
    # A grid square to within rounding (0.03 degrees) is read as it is.
    sitk.WriteImage(sheared_image(chest, 0.03), str(path), True)
    assert read_volume(path).array.shape == chest.array.shape


@pytest.mark.parametrize("qform", [True, False], ids=["with-qform", "sform-only"])
def test_nifti_with_a_sheared_sform_is_refused(chest, tmp_path, qform):
    """dcm2niix's uncorrected NIfTI of a tilted gantry: the slant is in the sform; ITK reads the square
    qform in its place (or, without one, refuses the file as if it were corrupt)."""
    plain = tmp_path / "plain.nii"
    sitk.WriteImage(sheared_image(chest, 0.0), str(plain))
    header = bytearray(plain.read_bytes())
    sform = np.array(struct.unpack("<12f", header[280:328])).reshape(3, 4)
    angle = np.radians(6.0)
    k, j = sform[:, 2].copy(), sform[:, 1] / np.linalg.norm(sform[:, 1])
    sform[:, 2] = np.cos(angle) * k + np.sin(angle) * np.linalg.norm(k) * j  # slices shifted along j
    header[280:328] = struct.pack("<12f", *sform.ravel())
    header[252:256] = struct.pack("<2h", 1 if qform else 0, 1)  # qform_code, sform_code
    path = tmp_path / "tilted.nii.gz"
    path.write_bytes(gzip.compress(bytes(header)))

    with pytest.raises(VolumeError, match=rf"^{path}: the voxel grid is sheared by 6\.00 degrees.*Resample"):
        read_volume(path)


def test_predict_refuses_a_sheared_nrrd_and_writes_nothing_for_it(chest, chest_ct_path, tmp_path, capsys):
    sheared = tmp_path / "in" / "tilted.nrrd"
    sheared.parent.mkdir()
    sitk.WriteImage(sheared_image(chest, 6.0), str(sheared), True)

    code, stdout, stderr, out = predict(tmp_path, capsys, sheared, chest_ct_path)

    assert code == EXIT_FAILED_STUDIES  # the batch's code: the good study is still graded
    assert f"FAILED {sheared}: the voxel grid is sheared by 6.00 degrees" in stderr
    assert "Traceback" not in stdout + stderr
    assert not list(out.glob("tilted*")), "nothing may be written for the refused study"
    assert (out / "CTChest4.json").is_file() and (out / "CTChest4_lesion_map.nii.gz").is_file()
    rows = (out / "summary.tsv").read_text().splitlines()
    assert any(row.startswith(f"{sheared}\tfailed\t") and "sheared by 6.00 degrees" in row for row in rows)


def test_a_command_given_a_sheared_volume_answers_rc_2(chest, tmp_path, capsys):
    """Where the volume is an argument rather than one study of a batch, the refusal is a usage error."""
    sheared = tmp_path / "tilted.nrrd"
    sitk.WriteImage(sheared_image(chest, 6.0), str(sheared), True)

    code = main(["synth", "--base", str(sheared), "--out", str(tmp_path / "synth"), "--counts", "1,0,0,0,0"])

    printed = capsys.readouterr()
    assert code == 2 and "Traceback" not in printed.out + printed.err
    assert f"twofivecnn synth: error: {sheared}: the voxel grid is sheared by 6.00 degrees" in printed.err
    assert not list((tmp_path / "synth").rglob("*.nii.gz"))


def test_sheared_volume_node_is_refused(chest, tmp_path):
    slicer = pytest.importorskip("slicer")
    from TwoFiveCNNLib.scene.nodes import find_prediction_nodes, predict_volume_node, volume_from_node

    slicer.mrmlScene = scene = slicer.vtkMRMLScene()
    try:
        matrix = chest.geometry.ijk_to_ras()
        matrix[:3, 2] += 10.0 * np.array([0.0, np.sin(np.radians(6.0)), 0.0])  # slices shifted forward
        node = slicer.util.addVolumeFromArray(chest.to_original(chest.array), matrix, name="tilted CT")
        count = scene.GetNumberOfNodes()

        refusal = r"'tilted CT' \(vtkMRMLScalarVolumeNode\d*\): the voxel grid is sheared by \d\.\d\d degrees"
        with pytest.raises(VolumeError, match=refusal + ".*Resample Scalar"):
            volume_from_node(node)
        with pytest.raises(VolumeError, match="sheared"):  # the module's and the console's way in
            predict_volume_node(node)
        assert scene.GetNumberOfNodes() == count and find_prediction_nodes(node) is None
    finally:
        scene.Clear(1)


# ------------------------------------------------------------------------------------------ DICOM slices


@pytest.fixture(scope="module")
def series(chest, tmp_path_factory) -> dict[str, Path]:
    """The chest as DICOM series: whole, with slice 16 missing, with a slice copied twice, with steps
    growing from 10 to 13 mm halfway (uneven, no gap), and scanned with a 6 degree gantry tilt."""
    root = tmp_path_factory.mktemp("series")
    folders = {name: root / name for name in ("whole", "gapped", "repeated", "uneven", "tilted")}
    chest_series(chest, folders["whole"])
    chest_series(chest, folders["gapped"])[MISSING].unlink()
    repeated = chest_series(chest, folders["repeated"])[MISSING]
    shutil.copy(repeated, repeated.with_name("slice_016 (copy).dcm"))
    count = chest.array.shape[0]
    chest_series(chest, folders["uneven"], steps_mm=[10.0] * (count // 2) + [13.0] * (count - 1 - count // 2))
    chest_series(chest, folders["tilted"], tilt_degrees=6.0)
    return folders


def test_dicom_series_with_a_missing_slice_is_refused_naming_it(series, tmp_path, capsys):
    code, stdout, stderr, out = predict(tmp_path, capsys, series["gapped"])

    assert code == EXIT_FAILED_STUDIES and "Traceback" not in stdout + stderr
    assert (f"FAILED {series['gapped']}: a gap of 20.00 mm between slices slice_015.dcm and slice_017.dcm, "
            f"2.0 times the series' 10.00 mm step: a slice is missing") in stderr
    assert "--allow-uneven-slices" in stderr
    assert not list(out.glob("gapped*")), "nothing may be written for the refused study"


def test_dicom_series_with_a_repeated_slice_is_refused_naming_both(series):
    both = (r"slices (slice_016 \(copy\)\.dcm and slice_016\.dcm|slice_016\.dcm and slice_016 \(copy\)\.dcm) "
            r"lie at the same position")
    with pytest.raises(VolumeError, match=both):
        read_volume(series["repeated"])
    with pytest.raises(VolumeError, match=both):  # two slices at one position: nothing to interpolate between
        read_volume(series["repeated"], allow_uneven_slices=True)


def test_dicom_series_with_uneven_steps_is_refused_naming_the_slice(series):
    with pytest.raises(VolumeError, match=r"uneven slice steps \(10\.00 to 13\.00 mm\): slice slice_\d+\.dcm "
                                          r"lies \d+\.\d\d mm from where an even \d+\.\d\d mm stack puts it"):
        read_volume(series["uneven"])


def test_tilted_dicom_series_is_refused_as_sheared(series):
    sheared = rf"^{series['tilted']}: the voxel grid is sheared by 6\.00 degrees"
    with pytest.raises(VolumeError, match=sheared):
        read_volume(series["tilted"])
    with pytest.raises(VolumeError, match=sheared):  # a slant is no unevenness: resampling along z keeps it
        read_volume(series["tilted"], allow_uneven_slices=True)


def test_allow_uneven_slices_resamples_onto_the_median_step(chest, series, tmp_path, capsys):
    resampled = read_volume(series["gapped"], allow_uneven_slices=True)

    # The grid of the whole series: each slice read where it lies, the missing one interpolated.
    whole = read_volume(series["whole"])
    assert resampled.geometry == whole.geometry and resampled.array.shape == chest.array.shape
    others = np.arange(chest.array.shape[0]) != MISSING
    np.testing.assert_array_equal(resampled.array[others], chest.array[others])
    between = (chest.array[MISSING - 1].astype(np.float32) + chest.array[MISSING + 1]) / 2
    np.testing.assert_allclose(resampled.array[MISSING], between, atol=0.5)

    code, stdout, stderr, out = predict(tmp_path, capsys, series["whole"], series["gapped"],
                                        "--allow-uneven-slices")

    assert code == 0, stderr
    notice = "resampled onto an even 10.00 mm grid of 34 slices"
    assert notice in stdout
    whole_record, gapped_record = (json.loads((out / f"{name}.json").read_text())
                                   for name in ("whole", "gapped"))
    assert any(notice in warning and "slice_015.dcm" in warning for warning in gapped_record["warnings"])
    assert not any(notice in warning for warning in whole_record["warnings"])
    # The lungs measure what the whole series' do (read as evenly spaced, the gap lost 146 mL of 6571).
    whole_ml, gapped_ml = (record["involvement"]["lungs"]["volume_ml"]
                           for record in (whole_record, gapped_record))
    assert gapped_ml == pytest.approx(whole_ml, rel=0.005)
    # The outputs describe the resampled grid: the lesion map volume lies exactly on the whole series' grid.
    assert len(gapped_record["slice_attention"]) == 34
    lesion_map = sitk.ReadImage(str(out / "gapped_lesion_map.nii.gz"))
    assert lesion_map.GetSize() == (128, 128, 34)
    np.testing.assert_allclose(lesion_map.GetSpacing(), whole.geometry.spacing, rtol=1e-6)
    np.testing.assert_allclose(lesion_map.GetOrigin(), whole.geometry.origin, atol=1e-3)
    np.testing.assert_allclose(lesion_map.GetDirection(), whole.geometry.direction, atol=1e-6)
