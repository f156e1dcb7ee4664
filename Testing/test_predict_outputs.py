"""What ``predict`` writes, and what it costs to start: the lesion map volume in uint8 steps
that read back as the map the bands give, NRRD with its step in the header, the three-plane views, and a command line that
imports torch only when it predicts (checked through ``sys.modules``, never by timing)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from TwoFiveCNNLib.app.cli import build_parser, main
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.inference.outputs import write_prediction
from TwoFiveCNNLib.inference.predict import load_model, predict_volume
from TwoFiveCNNLib.inference.prediction import Prediction
from TwoFiveCNNLib.io.manifest import OutputManifest
from TwoFiveCNNLib.io.volume import PROBABILITY_STEP, Volume, write_probability_volume
from TwoFiveCNNLib.transforms.involvement import (
    CONSOLIDATION,
    GROUND_GLASS,
    LESION_WINDOW_MM,
    lung_features,
    lung_involvement,
)
from TwoFiveCNNLib.transforms.preprocess import to_model_grid


@pytest.fixture(scope="module")
def feet_first_study() -> Volume:
    """A feet-first CT-3 phantom: storage order differs from the canonical one on every axis it can."""
    phantom = generate_phantom(3, seed=21, orientation="LPI")
    return Volume.from_original(phantom.array_kji, phantom.geometry, "feet_first.nii.gz")


def test_lesion_map_file_is_the_share_of_involved_bands_within_one_step(demo_model, feet_first_study, tmp_path):
    """The stored lesion map against the involved share around each voxel counted here by hand from the
    prediction's band labels (the HU lungs and the lesion network's voxels), in the input's own
    (feet-first) storage order."""
    assert demo_model.lesion_lungs
    prediction = predict_volume(demo_model, feet_first_study)
    report = prediction.involvement
    hu_report, hu_bands = lung_involvement(feet_first_study.array, feet_first_study.spacing_zyx)
    assert report["analysis_spacing_mm"] == hu_report["analysis_spacing_mm"] == list(feet_first_study.spacing_zyx)
    bands = Volume.from_original(np.asarray(prediction.bands_kji), feet_first_study.geometry).array
    assert not ((hu_bands > 0) & (bands == 0)).any()  # the lesion network only adds to the HU lungs
    assert report["lungs"]["voxels"] == int((bands > 0).sum())
    half = [max(1, round(LESION_WINDOW_MM / s)) // 2 for s in feet_first_study.spacing_zyx[1:]]
    involved = np.isin(bands, (GROUND_GLASS, CONSOLIDATION))
    padded = np.pad(involved, ((0, 0), (half[0], half[0]), (half[1], half[1])))
    reference = np.zeros(bands.shape, dtype=np.float32)
    for dy in range(2 * half[0] + 1):
        for dx in range(2 * half[1] + 1):
            reference += padded[:, dy: dy + bands.shape[1], dx: dx + bands.shape[2]]
    reference /= (2 * half[0] + 1) * (2 * half[1] + 1)
    reference_kji = feet_first_study.to_original(reference)
    lesion_map = prediction.lesion_map_kji.astype(np.float32)
    lungs = feet_first_study.to_original(bands > 0)
    # Inside the lungs the map is the bands' count; beyond them the lesion network may only add.
    assert np.abs(lesion_map - reference_kji)[lungs].max() < 1e-3
    assert (lesion_map >= reference_kji - 1e-3).all()
    lesion_voxels = feet_first_study.to_original(involved)
    assert prediction.lesion_map_kji[lesion_voxels].mean() > 0.8
    assert prediction.lesion_map_kji[~lesion_voxels].mean() < 0.05
    grid, _ = to_model_grid(feet_first_study, demo_model.preprocess)
    result = demo_model.grade(grid, lung_features(report))
    assert list(prediction.probabilities.values()) == pytest.approx(list(result.probabilities), abs=1e-6)

    written = write_prediction(prediction, feet_first_study, tmp_path, "study")
    lesion_map_path = tmp_path / "study_lesion_map.nii.gz"
    assert lesion_map_path in written
    image = sitk.ReadImage(str(lesion_map_path))  # NIfTI readers apply scl_slope: floats in 0..1
    assert image.GetSize() == feet_first_study.geometry.size
    assert np.allclose(image.GetDirection(), feet_first_study.geometry.direction)
    stored = sitk.GetArrayFromImage(image)
    assert np.abs(stored - lesion_map).max() <= PROBABILITY_STEP / 2 + 1e-3
    record = json.loads((tmp_path / "study.json").read_text(encoding="utf-8"))
    assert record["lesion_map_volume"]["dtype"] == "uint8"
    assert record["lesion_map_volume"]["value_step"] == pytest.approx(PROBABILITY_STEP)


def test_nrrd_probability_volume_keeps_steps_and_says_so(feet_first_study, tmp_path):
    values = np.linspace(0, 1, int(np.prod(feet_first_study.geometry.size)), dtype=np.float32)
    values = values.reshape(feet_first_study.geometry.size[::-1])
    path = write_probability_volume(values, feet_first_study.geometry, tmp_path / "map.nrrd")
    image = sitk.ReadImage(str(path))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert float(image.GetMetaData("twofivecnn_value_step")) == pytest.approx(PROBABILITY_STEP)
    assert np.abs(sitk.GetArrayFromImage(image) * PROBABILITY_STEP - values).max() <= PROBABILITY_STEP / 2 + 1e-6
    assert [p.name for p in tmp_path.iterdir()] == ["map.nrrd"]  # no temporary file left


def test_predict_views_writes_the_three_plane_picture(chest_ct_path, tmp_path):
    assert main(["predict", str(chest_ct_path), "--out", str(tmp_path), "--views", "bands"]) == 0
    record = json.loads((tmp_path / "CTChest4.json").read_text(encoding="utf-8"))
    assert "CTChest4_views.png" in record["outputs"]
    with Image.open(tmp_path / "CTChest4_views.png") as picture:
        assert picture.width > 900 and picture.height > 500


def test_legacy_lesion_map_names_still_read(feet_first_study, tmp_path):
    """legacy: remove after 0.3. 0.2 called the lesion map ``evidence``: ``Prediction.evidence_kji`` (and
    ``attention_kji``, its name before) still read it, and a study written again into a folder where an
    earlier run left ``<name>_evidence.nii.gz`` replaces that file; a user's file of such a name stays."""
    shape = feet_first_study.geometry.size[::-1]
    prediction = Prediction(label="CT-0", probabilities={"CT-0": 0.7, "CT-1": 0.3},
                            slice_attention=np.full(shape[0], 1 / shape[0]),
                            lesion_map_kji=np.zeros(shape, np.float16), geometry=feet_first_study.geometry,
                            model_name="test")
    assert prediction.evidence_kji is prediction.lesion_map_kji
    assert prediction.attention_kji is prediction.lesion_map_kji
    earlier, users = tmp_path / "study_evidence.nii.gz", tmp_path / "study_evidence.nrrd"
    OutputManifest.open(tmp_path, "predict").claim(earlier)  # recorded by the earlier run before it wrote it
    earlier.write_bytes(b"0.2's lesion map")
    users.write_bytes(b"the user's")
    written = write_prediction(prediction, feet_first_study, tmp_path, "study")
    assert tmp_path / "study_lesion_map.nii.gz" in written
    assert not earlier.exists() and not OutputManifest.open(tmp_path, "predict").owns(earlier)
    assert users.read_bytes() == b"the user's"


def test_legacy_views_evidence_is_the_lesion_map(capsys):
    """legacy: remove after 0.3. ``predict --views evidence`` (0.2's word) still draws the lesion map; the
    help offers only today's words."""
    parser = build_parser()

    def views(*value: str) -> str:
        return parser.parse_args(["predict", "ct.nrrd", "--out", "out", "--views", *value]).views

    assert views("evidence") == views("lesion-map") == views() == "lesion-map"
    assert views("bands") == "bands"
    with pytest.raises(SystemExit):
        views("heat")
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--help"])
    help_text = capsys.readouterr().out
    assert "{lesion-map,bands}" in help_text and "evidence" not in help_text


@pytest.mark.parametrize("argv", [["--help"], ["predict", "--help"], ["predict"], ["no-such-command"]],
                         ids=["help", "predict help", "argument error", "unknown command"])
def test_help_and_argument_errors_do_not_import_torch(argv):
    code = ("import sys\nfrom TwoFiveCNNLib.app.cli import main\ntry:\n    main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'scipy' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "False False", run.stderr[-2000:]


def test_channels_last_backbone_gives_the_contiguous_results(demo_model, feet_first_study):
    """The loaded backbone is channels-last for speed; its grades are those of the plain layout."""
    fast = demo_model
    plain = load_model(None, "cpu")  # its own copy: its layout is changed here
    plain.model.slice_classifier.to(memory_format=torch.contiguous_format)
    a, b = predict_volume(fast, feet_first_study), predict_volume(plain, feet_first_study)
    assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-4)
    assert np.abs(a.lesion_map_kji.astype(np.float32) - b.lesion_map_kji.astype(np.float32)).max() <= PROBABILITY_STEP


def test_a_study_that_cannot_be_written_in_the_background_fails_alone(chest_ct_path, tmp_path):
    """A batch writes each study while predicting the next: a write that fails there (here a folder in
    the way of the picture) makes that study fail, with no record of it left, and the others complete,
    in order, with progress for every study."""
    import shutil
    from pathlib import Path

    from TwoFiveCNNLib.inference.outputs import predict_batch
    from TwoFiveCNNLib.inference.predict import load_model

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(chest_ct_path, inputs / f"{name}.nrrd")
    out = tmp_path / "out"
    (out / "b.png").mkdir(parents=True)
    seen = []
    result = predict_batch(load_model(None, "cpu", "auto"), [inputs], out,
                           progress=lambda done, total, path: seen.append((done, total, Path(path).name)))
    assert seen == [(1, 3, "a.nrrd"), (2, 3, "b.nrrd"), (3, 3, "c.nrrd")]
    assert [Path(p).name for p in result.predictions] == ["a.nrrd", "c.nrrd"]
    assert [Path(p).name for p in result.failures] == ["b.nrrd"] and "b.png" in next(iter(result.failures.values()))
    assert (out / "a.json").is_file() and (out / "c.json").is_file() and not (out / "b.json").exists()
    assert not list(out.glob("b_lesion_map*"))
    rows = (out / "summary.tsv").read_text().splitlines()
    assert [row.split("\t")[1] for row in rows[1:]] == ["ok", "ok", "failed"]
