"""Files that lie and concurrent writers: clear errors, no corrupt outputs."""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from TwoFiveCNNLib.data.index import DatasetError, DatasetIndex
from TwoFiveCNNLib.io.manifest import MANIFEST_NAME
from TwoFiveCNNLib.io.model_file import CHECKPOINT_FORMAT, load_archive
from TwoFiveCNNLib.io.volume import VolumeError, read_volume
from TwoFiveCNNLib.networks.severity_model import SeverityModel


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


def _with_file_size_limit(limit_bytes: int):
    """A child process that may write no file larger than ``limit_bytes``: a disk that fills up mid-write."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return apply


@pytest.mark.parametrize("limit_bytes", [3_000, 100_000])  # the first output fails; a later one (the PNG) fails
def test_full_disk_leaves_no_partial_outputs(chest_ct_path, tmp_path, limit_bytes):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "TwoFiveCNNLib", "predict", str(chest_ct_path), "--out", str(out),
                          "--scene"], check=False, capture_output=True, text=True, timeout=300,
                         preexec_fn=_with_file_size_limit(limit_bytes))
    assert run.returncode == 3, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and ("free some space" in run.stderr or "disk space" in run.stderr)
    # The failed study leaves nothing of its own (no lesion map volume without its record), and no temporaries.
    assert sorted(p.name for p in out.rglob("*")) == [MANIFEST_NAME, "summary.tsv"]  # the manifest: what it claimed
    assert "\tfailed\t" in (out / "summary.tsv").read_text()


def _stage1_epochs_reported(progress: Path) -> int:
    lines = progress.read_text().splitlines() if progress.exists() else []
    return sum(json.loads(line)["stage"] == "stage1" for line in lines if line.endswith("}"))


def test_training_killed_at_random_points_resumes_to_the_same_model(phantom_cohort, cache_dir, tmp_path):
    """SIGKILL (no clean-up possible) at seeded random moments of stage 1: after a random number of
    epochs plus a random delay, so some kills land mid-epoch and some mid-checkpoint. Each restart
    resumes from the last checkpoint, and the final model equals an uninterrupted run's, weight for weight."""
    command = [sys.executable, "-m", "TwoFiveCNNLib", "train", "--data", str(phantom_cohort),
               "--cache", str(cache_dir), "--in-plane", "48", "--slices", "12", "--stage1-epochs", "5",
               "--stage2-epochs", "4", "--stage2-views", "2", "--quiet"]
    subprocess.run([*command, "--out", str(tmp_path / "reference.pt")], check=True, capture_output=True)

    out, checkpoint, rng = tmp_path / "killed.pt", tmp_path / "killed.pt.ckpt", random.Random(7)
    kills = []
    for attempt in range(3):
        progress = tmp_path / f"progress{attempt}.jsonl"
        run = subprocess.Popen([*command, "--out", str(out), "--resume", "--progress-json", str(progress)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        epochs, delay = rng.randint(1, 2) if attempt == 0 else 1, rng.uniform(0.0, 1.0)
        deadline = time.monotonic() + 300
        while _stage1_epochs_reported(progress) < epochs and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        run.kill()
        assert run.wait() == -signal.SIGKILL, "the run ended before it could be killed"
        kills.append((epochs, round(delay, 2)))
        assert not out.exists(), "a model file appears only when training has finished"
        load_archive(checkpoint, CHECKPOINT_FORMAT)  # whole, never half-written
    subprocess.run([*command, "--out", str(out), "--resume"], check=True, capture_output=True)

    reference, resumed = SeverityModel.load(tmp_path / "reference.pt"), SeverityModel.load(out)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), (name, kills)
    assert reference.metadata["metrics"] == resumed.metadata["metrics"]
    def losses(model):
        return [(entry["epoch"], entry["loss"]) for entry in model.metadata["history"]["stage1"]]
    assert losses(resumed) == losses(reference)
    assert not checkpoint.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
