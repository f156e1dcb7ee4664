"""Files that lie and concurrent writers: clear errors, no corrupt outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from TwoFiveCNNLib.dataset import DatasetError, DatasetIndex
from TwoFiveCNNLib.volume_io import VolumeError, read_volume


def test_truncated_nifti_is_refused_with_its_name(phantom_cohort, tmp_path):
    source = next((phantom_cohort / "studies" / "CT-1").iterdir())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(VolumeError, match="truncated.nii.gz"):
        read_volume(truncated)


def test_csv_naming_missing_files_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("path,label\nmissing_study.nii.gz,CT-1\n")
    with pytest.raises(DatasetError, match="missing_study.nii.gz"):
        DatasetIndex.load(tmp_path / "data.csv")


def test_two_predictions_into_one_folder_at_once(tiny_model, phantom_cohort, tmp_path):
    studies = sorted((phantom_cohort / "studies" / "CT-2").iterdir())[:2]
    out = tmp_path / "shared"
    runs = [subprocess.Popen([sys.executable, "-m", "TwoFiveCNNLib", "predict", "--model", str(tiny_model),
                              str(study), "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for study in studies]
    for run in runs:
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr.decode()[-1000:]
    for study in studies:
        record = json.loads((out / f"{study.name[:-len('.nii.gz')]}.json").read_text())
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-5
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    rows = (out / "summary.tsv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("input\tstatus")  # one whole summary, never a mix
