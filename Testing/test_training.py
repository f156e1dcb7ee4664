"""Two-stage training, model file, resume, evaluation and prediction, on real phantoms and a real CT."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import TINY_TRAIN_ARGS, StopAfter
from TwoFiveCNNLib.app.cli import comparison_table, main, run_figures
from TwoFiveCNNLib.data.cache import PreprocessedCache
from TwoFiveCNNLib.data.cohort import load_cohort
from TwoFiveCNNLib.data.index import DatasetIndex
from TwoFiveCNNLib.data.splits import Split
from TwoFiveCNNLib.data.tasks import TaskDefinition
from TwoFiveCNNLib.inference.cohort_scores import FUSED, embed_cohort, study_probabilities
from TwoFiveCNNLib.inference.predict import load_model, predict_path
from TwoFiveCNNLib.io.model_file import ModelFileError
from TwoFiveCNNLib.io.progress import ProgressReporter
from TwoFiveCNNLib.networks.severity_model import SeverityModel
from TwoFiveCNNLib.training.config import TrainConfig
from TwoFiveCNNLib.training.run import train
from TwoFiveCNNLib.training.stages import refit_slice_classifier
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig

TINY_CONFIG = TrainConfig(preprocess=PreprocessConfig(in_plane=48, n_slices=12), stage1_epochs=2,
                          stage2_epochs=4, stage2_views=2)


def test_model_file_records_how_it_was_made(tiny_model):
    model = SeverityModel.load(tiny_model)
    meta = model.metadata
    assert model.class_names == ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
    assert meta["preprocess"]["in_plane"] == 48 and meta["architecture"]["backbone"] == "compact_resnet"
    assert set(meta["split"]) >= {"train", "val", "test", "seed"}
    assert not set(meta["split"]["train"]) & set(meta["split"]["test"])
    assert meta["versions"]["torch"] == torch.__version__
    test_metrics = meta["metrics"]["test"]["twofive"]
    for key in ("accuracy", "balanced_accuracy", "quadratic_weighted_kappa", "macro_f1", "roc_auc", "per_class",
                "confusion_matrix", "n_studies"):
        assert key in test_metrics
    assert Path(str(tiny_model) + ".ckpt").exists() is False, "the checkpoint is removed once the model is written"


def test_prediction_on_the_real_chest_ct(tiny_model, chest_ct_path, tmp_path):
    prediction, _ = predict_path(load_model(tiny_model, "cpu"), chest_ct_path)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.slice_attention.shape == (34,)
    assert prediction.slice_attention.sum() == pytest.approx(1.0, abs=1e-6)
    assert main(["predict", "--model", str(tiny_model), str(chest_ct_path), "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "CTChest4.json").read_text())
    assert len(record["slice_attention"]) == 34 and record["label"] in record["probabilities"]
    lesion_map = sitk.ReadImage(str(tmp_path / "CTChest4_lesion_map.nii.gz"))
    original = sitk.ReadImage(str(chest_ct_path))
    assert lesion_map.GetSize() == original.GetSize()
    assert np.allclose(lesion_map.GetSpacing(), original.GetSpacing())
    assert np.allclose(lesion_map.GetOrigin(), original.GetOrigin(), atol=1e-4)
    assert np.allclose(lesion_map.GetDirection(), original.GetDirection())
    values = sitk.GetArrayFromImage(lesion_map)
    assert values.min() >= 0 and values.max() <= 1
    assert (tmp_path / "CTChest4.png").stat().st_size > 10_000


def test_json_summary_and_picture_carry_the_same_involvement(tiny_model, chest_ct_path, tmp_path, monkeypatch):
    from TwoFiveCNNLib.inference import outputs

    footers = []
    draw = outputs.lesion_map_montage_png

    def recording_montage(*args, **kwargs):
        footers.append(kwargs["footer"])
        return draw(*args, **kwargs)

    monkeypatch.setattr(outputs, "lesion_map_montage_png", recording_montage)
    assert main(["predict", "--model", str(tiny_model), str(chest_ct_path), "--out", str(tmp_path)]) == 0
    involvement = json.loads((tmp_path / "CTChest4.json").read_text())["involvement"]
    header, row = (line.split("\t") for line in (tmp_path / "summary.tsv").read_text().splitlines())
    cells = dict(zip(header, row))
    share = involvement["involved_share"]
    assert involvement["grade"] == cells["involvement_grade"] == "CT-0" and share < 0.05
    assert float(cells["involved_percent"]) == pytest.approx(100 * share, abs=0.005)
    assert float(cells["lung_volume_ml"]) == pytest.approx(involvement["lungs"]["volume_ml"], abs=0.051)  # 0.1 mL
    assert f"{100 * share:.1f} % involved (CT-0 by involvement)" in footers[0]
    assert f"lungs {involvement['lungs']['volume_ml']:.0f} mL" in footers[0]


def test_batch_prediction_reports_bad_studies_and_keeps_going(tiny_model, chest_ct_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.nrrd").write_bytes(chest_ct_path.read_bytes())
    (folder / "broken.nii.gz").write_text("not an image")
    code = main(["predict", "--model", str(tiny_model), str(folder), "--out", str(tmp_path / "out")])
    assert code == 3
    summary = (tmp_path / "out" / "summary.tsv").read_text().splitlines()
    assert len(summary) == 3
    assert any("broken.nii.gz" in row and "failed" in row for row in summary)
    assert (tmp_path / "out" / "good.json").exists() and not (tmp_path / "out" / "broken.json").exists()


class PickleBomb:
    """Unpickling this would run ``touch`` on a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_model_files_that_are_not_models_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(pickle.dumps(PickleBomb(marker)))
    zipped_bomb = tmp_path / "zipped_bomb.pt"
    torch.save({"format": "twofivecnn-model", "payload": PickleBomb(marker)}, zipped_bomb)
    for path in (bomb, zipped_bomb):
        with pytest.raises(ModelFileError, match=path.name):
            load_model(path, "cpu")
    assert not marker.exists(), "loading a model file must never execute code"

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="notes.pt.*not a readable model"):
        load_model(text, "cpu")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(ModelFileError, match="foreign.pt.*not a TwoFiveCNN model"):
        load_model(foreign, "cpu")
    with pytest.raises(ModelFileError, match="missing.pt.*no such model file"):
        load_model(tmp_path / "missing.pt", "cpu")
    assert main(["predict", "--model", str(text), str(tmp_path), "--out", str(tmp_path / "o")]) == 2


def test_model_file_from_an_incompatible_version_is_refused(tiny_model, tmp_path):
    archive = torch.load(tiny_model, weights_only=True)
    archive["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(archive, future)
    with pytest.raises(ModelFileError, match="future.pt.*format version 99"):
        load_model(future, "cpu")


def test_interrupted_training_resumes_to_the_same_model(phantom_cohort, cache_dir, tmp_path):
    cache = PreprocessedCache(cache_dir)
    reference = train(phantom_cohort, tmp_path / "reference.pt", TINY_CONFIG, ProgressReporter(quiet=True), cache)

    out = tmp_path / "resumed.pt"
    with pytest.raises(KeyboardInterrupt):
        train(phantom_cohort, out, TINY_CONFIG, StopAfter(1), cache)
    assert not out.exists() and Path(str(out) + ".ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name], "no half-written files"
    resumed = train(phantom_cohort, out, TINY_CONFIG, ProgressReporter(quiet=True), cache, resume=True)

    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    assert reference.metadata["metrics"] == resumed.metadata["metrics"]


def test_resume_with_other_settings_is_refused(phantom_cohort, cache_dir, tmp_path):
    cache = PreprocessedCache(cache_dir)
    out = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        train(phantom_cohort, out, TINY_CONFIG, StopAfter(1), cache)
    with pytest.raises(ValueError, match="other settings"):
        train(phantom_cohort, out, replace(TINY_CONFIG, seed=5), ProgressReporter(quiet=True), cache, resume=True)


def test_evaluate_reproduces_the_metrics_the_model_file_records(tiny_model, phantom_cohort, tmp_path):
    """One evaluation path: training scores the model as saved (float16 weights), and so does evaluate."""
    report_path = tmp_path / "test.json"
    assert main(["evaluate", "--model", str(tiny_model), "--data", str(phantom_cohort), "--subset", "test",
                 "--cache", str(tmp_path / "fresh_cache"), "--json", str(report_path), "--device", "cpu"]) == 0
    report = json.loads(report_path.read_text())
    recorded = SeverityModel.load(tiny_model).metadata["metrics"]["test"]
    assert report["metrics"]["n_studies"] > 0
    assert report["metrics"] == recorded["twofive"]  # the same computation on the same weights: exactly
    assert report["components"]["cnn_only"] == recorded["twofive_cnn_only"]
    assert report["components"]["involvement_only"] == recorded["involvement_only"]


def test_recorded_metrics_are_those_of_the_float16_weights(tiny_model, phantom_cohort, cache_dir):
    """The file's weights are float16 values, and rounding them again changes no probability."""
    model = SeverityModel.load(tiny_model)
    index = DatasetIndex.load(phantom_cohort)
    studies = Split.from_dict(model.metadata["split"]).subset(index, "test")
    cohort = load_cohort(studies, model.task, model.preprocess, PreprocessedCache(cache_dir),
                         with_lung_features=True)
    stored = study_probabilities(model, cohort)[FUSED]
    model.round_to_stored_precision()
    assert np.array_equal(study_probabilities(model, cohort)[FUSED], stored), "rounding stored weights is a no-op"
    for parameter in model.parameters():
        assert torch.equal(parameter, parameter.half().float())


def test_binary_task_and_evaluation_json(phantom_cohort, cache_dir, tmp_path):
    out = tmp_path / "binary.pt"
    assert main(["train", "--data", str(phantom_cohort), "--out", str(out), "--task", "binary",
                 "--cache", str(cache_dir), *TINY_TRAIN_ARGS]) == 0
    assert load_model(out, "cpu").class_names == ("CT-0", "CT-1..4")
    metrics_path = tmp_path / "metrics.json"
    assert main(["evaluate", "--model", str(out), "--data", str(phantom_cohort), "--cache", str(cache_dir),
                 "--json", str(metrics_path), "--confusion", str(tmp_path / "cm.png")]) == 0
    report = json.loads(metrics_path.read_text())
    assert report["subset_description"].startswith("test split"), "never scored on its own training studies"
    assert report["metrics"]["n_studies"] == len(report["studies"]) > 0
    assert (tmp_path / "cm.png").exists()


def test_progress_json_lines(phantom_cohort, cache_dir, tmp_path):
    log = tmp_path / "progress.jsonl"
    assert main(["train", "--data", str(phantom_cohort), "--out", str(tmp_path / "m.pt"), "--cache",
                 str(cache_dir), "--progress-json", str(log), *TINY_TRAIN_ARGS]) == 0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    stages = {event["stage"] for event in events}
    assert {"preprocess", "stage1", "stage2", "done"} <= stages
    stage1 = [e for e in events if e["stage"] == "stage1"]
    assert {"epoch", "epochs", "loss", "val_balanced_accuracy", "eta_s"} <= set(stage1[-1])
    test_split = SeverityModel.load(tmp_path / "m.pt").metadata["split"]["test"]
    assert events[-1]["stage"] == "done" and events[-1]["test_studies"] == len(test_split) > 0


def test_the_end_of_run_figures_name_their_split_and_size(tiny_model):
    metadata = SeverityModel.load(tiny_model).metadata
    n_test, n_val = len(metadata["split"]["test"]), len(metadata["split"]["val"])
    figures = run_figures(metadata)
    assert figures.startswith(f"test split ({n_test} studies of the training cohort), 2.5D model:\n")
    assert f"studies {n_test} " in figures
    header = comparison_table(metadata).splitlines()[1]
    assert f"val ({n_val} studies)" in header and f"test ({n_test} studies)" in header


def test_bad_data_gives_a_clear_error(tmp_path, capsys):
    (tmp_path / "studies" / "CT-9").mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.pt"), "--quiet"]) == 2
    assert "CT-9" in capsys.readouterr().err


def test_torchrun_trains_with_two_cpu_processes(phantom_cohort, cache_dir, tmp_path):
    """DistributedDataParallel over gloo: two processes share stage 1, rank 0 writes the model."""
    import subprocess
    import sys

    out = tmp_path / "ddp.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "TwoFiveCNNLib", "train", "--data", str(phantom_cohort), "--out", str(out),
               "--cache", str(cache_dir), *TINY_TRAIN_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    model = SeverityModel.load(out)
    assert model.metadata["metrics"]["test"]["twofive"]["n_studies"] > 0
    assert not Path(str(out) + ".ckpt").exists()


def test_end_to_end_finetuning_runs_and_is_recorded(phantom_cohort, cache_dir, tmp_path):
    config = replace(TINY_CONFIG, stage1_epochs=1, finetune_epochs=1)
    model = train(phantom_cohort, tmp_path / "ft.pt", config, ProgressReporter(quiet=True),
                  PreprocessedCache(cache_dir))
    assert [r["epoch"] for r in model.metadata["history"]["finetune"]] == [1]
    reloaded = SeverityModel.load(tmp_path / "ft.pt")
    assert reloaded.metadata["train_config"]["finetune_epochs"] == 1


def test_unwritable_output_folder_fails_up_front(tiny_model, chest_ct_path, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["predict", "--model", str(tiny_model), str(chest_ct_path), "--out", str(blocker / "out")])
    assert code == 2
    assert "cannot write to the output folder" in capsys.readouterr().err


def test_refit_slice_classifier_matches_the_backbone_again(tiny_model, phantom_cohort, cache_dir):
    """After fine-tuning moves the backbone, the CAM's linear layer is re-fitted to its features."""
    model = SeverityModel.load(tiny_model)
    cohort = load_cohort(DatasetIndex.load(phantom_cohort).studies, model.task, model.preprocess,
                         PreprocessedCache(cache_dir))
    embeddings = embed_cohort(model, cohort)[cohort.mask()]
    labels = cohort.labels[cohort.slice_index()[0]]

    def slice_loss() -> float:
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(model.slice_classifier.linear(embeddings), labels).item()

    trained = slice_loss()  # the layer stage 1 trained with this backbone
    layer = model.slice_classifier.linear
    with torch.no_grad():  # a layer that no longer fits the features: confidently wrong
        layer.weight.normal_(std=1.0)
        layer.bias.copy_(torch.linspace(-5, 5, layer.bias.numel()))
    assert slice_loss() > trained + 0.5
    refit_slice_classifier(model, cohort, TINY_CONFIG)
    assert slice_loss() <= trained + 0.01


def test_a_model_from_before_the_lung_features_grades_with_its_cnn_alone(tiny_model, chest_ct_path, tmp_path):
    """A 0.1 model file's involvement part read 96-px features this version no longer measures."""
    from TwoFiveCNNLib.io.model_file import load_archive, save_archive

    tensors, metadata = load_archive(tiny_model)
    assert metadata["involvement_features"] == ["emphysema", "ground_glass", "consolidation", "involved"]
    del metadata["involvement_features"]
    old = save_archive(tmp_path / "old.pt", "twofivecnn-model", tensors, metadata)
    model = load_model(old, "cpu")
    assert model.fusion is None
    prediction, _ = predict_path(model, chest_ct_path)
    assert any("trained before 0.2" in warning for warning in prediction.warnings)
    assert prediction.probabilities == pytest.approx(prediction.cnn_probabilities)


# ---------------------------------------------------------------- pretrained backbone files


def _backbone_file(path: Path, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> Path:
    """Weights of the default compact ResNet (``blocks=(1, 1, 1, 1)``: a shallower layout, 36 of 60 names fit)."""
    from TwoFiveCNNLib.networks.backbones import build_backbone

    torch.save(build_backbone("compact_resnet", blocks=blocks).state_dict(), path)
    return path


def test_a_fitting_pretrained_file_loads_and_the_log_says_so(tmp_path):
    import io

    from TwoFiveCNNLib.networks.severity_model import SeverityModel
    from TwoFiveCNNLib.training.run import apply_pretrained

    path = _backbone_file(tmp_path / "full.pt")
    config = replace(TINY_CONFIG, pretrained=str(path))
    model = SeverityModel(TaskDefinition.from_name("severity"), config.preprocess, config.architecture)
    log = io.StringIO()
    report = apply_pretrained(model, config, ProgressReporter(log, terminal=None))
    assert report.fraction == 1.0 and report.complete
    events = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [e["stage"] for e in events] == ["log"]
    assert events[0]["message"].startswith(f"pretrained weights {path}: loaded 60 of 60 backbone parameter tensors")
    assert "warning" not in log.getvalue()
    assert torch.equal(model.slice_classifier.backbone.conv1.weight, torch.load(path, weights_only=True)["conv1.weight"])


def test_a_partial_pretrained_file_is_refused_before_any_work(phantom_cohort, tmp_path, capsys):
    partial = _backbone_file(tmp_path / "shallow.pt", blocks=(1, 1, 1, 1))
    out = tmp_path / "m.pt"
    assert main(["train", "--data", str(phantom_cohort), "--out", str(out), "--cache", str(tmp_path / "cache"),
                 "--pretrained", str(partial), *TINY_TRAIN_ARGS]) == 2
    error = capsys.readouterr().err
    assert f"{partial} fills only 36 of the 60 parameter tensors" in error
    assert "--allow-partial" in error and "layer1.1.conv1.weight" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shallow.pt"], "refused up front: no split, cache or model"


def test_allow_partial_trains_reports_and_records_the_partial_load(phantom_cohort, cache_dir, tmp_path):
    partial = _backbone_file(tmp_path / "shallow.pt", blocks=(1, 1, 1, 1))
    out, log = tmp_path / "m.pt", tmp_path / "progress.jsonl"
    assert main(["train", "--data", str(phantom_cohort), "--out", str(out), "--cache", str(cache_dir),
                 "--pretrained", str(partial), "--allow-partial", "--progress-json", str(log), *TINY_TRAIN_ARGS]) == 0
    messages = [e["message"] for e in map(json.loads, log.read_text().splitlines()) if e["stage"] == "log"]
    report_line = next(m for m in messages if m.startswith("pretrained weights"))
    assert f"{partial}: loaded 36 of 60 backbone parameter tensors (60%)" in report_line
    assert "48 left as initialised (not in the file), e.g. layer1.1.conv1.weight" in report_line
    assert any(m.startswith("warning: training from a partial pretrained load") for m in messages)
    metadata = SeverityModel.load(out).metadata
    assert metadata["train_config"]["allow_partial"] is True
    assert metadata["train_config"]["pretrained"] == str(partial)
    assert metadata["pretrained"]["parameters_loaded"] == 36 and metadata["pretrained"]["missing"]["count"] == 48


def test_a_checkpoint_from_before_a_new_setting_still_resumes(tmp_path):
    """A setting added since a checkpoint was saved counts as its default; a changed one refuses."""
    from TwoFiveCNNLib.io.model_file import CHECKPOINT_FORMAT, save_archive
    from TwoFiveCNNLib.training.checkpoint import Checkpoint

    path = tmp_path / "run.pt.ckpt"
    saved = TINY_CONFIG.to_dict()
    del saved["allow_partial"]  # as written before the setting existed
    save_archive(path, CHECKPOINT_FORMAT, {"w": torch.zeros(1)}, {"stage": "stage1", "epoch": 1, "history": [],
                                                                  "config": saved})
    assert Checkpoint(path, TINY_CONFIG).load() is not None
    with pytest.raises(ValueError, match="other settings"):
        Checkpoint(path, replace(TINY_CONFIG, seed=TINY_CONFIG.seed + 1)).load()
