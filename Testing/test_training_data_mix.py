"""Training on several datasets at once, studies that only ever train, and the fusion chosen on validation:
real phantoms and lesion-inserted real CT, really trained."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_ARGS
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.data.index import DatasetIndex
from TwoFiveCNNLib.inference.engines import TorchGrader, load_model
from TwoFiveCNNLib.inference.fusion import Fusion
from TwoFiveCNNLib.inference.predict import predict_volume
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.networks.severity_model import SeverityModel
from TwoFiveCNNLib.training.stages import FUSION_WEIGHTS


@pytest.fixture(scope="module")
def synth_cohort(chest_ct_path: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_mix")
    assert main(["synth", "--base", str(chest_ct_path), "--out", str(out), "--counts", "2,2,2,2,2",
                 "--seed", "3", "--prefix", "synth"]) == 0
    return out


@pytest.fixture(scope="module")
def mixed_model(phantom_cohort, synth_cohort, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mixed") / "mixed.pt"
    assert main(["train", "--data", str(phantom_cohort), "--train-only", str(synth_cohort), "--out", str(out),
                 "--cache", str(cache_dir), *TINY_TRAIN_ARGS]) == 0
    return out


def test_train_only_studies_train_and_never_validate_or_test(mixed_model, phantom_cohort, synth_cohort):
    meta = SeverityModel.load(mixed_model).metadata
    synth_ids = {s.study_id for s in DatasetIndex.load(synth_cohort).studies}
    assert set(meta["train_only"]["study_ids"]) == synth_ids and len(synth_ids) == 10
    split_ids = set(meta["split"]["train"]) | set(meta["split"]["val"]) | set(meta["split"]["test"])
    assert split_ids == {s.study_id for s in DatasetIndex.load(phantom_cohort).studies}
    assert not split_ids & synth_ids
    assert meta["metrics"]["test"]["twofive"]["n_studies"] == len(meta["split"]["test"])


def test_evaluating_the_train_only_data_says_the_model_trained_on_it(mixed_model, synth_cohort, cache_dir,
                                                                     tmp_path):
    report = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(mixed_model), "--data", str(synth_cohort), "--json", str(report),
                 "--cache", str(cache_dir)]) == 0
    assert "WARNING: the model trained on all of them" in json.loads(report.read_text())["subset_description"]


def test_the_fusion_is_chosen_on_validation_and_used(mixed_model):
    model = SeverityModel.load(mixed_model)
    fusion = model.metadata["fusion"]
    assert fusion["cnn_weight"] in FUSION_WEIGHTS and model.fusion_cnn_weight == fusion["cnn_weight"]
    assert [c["cnn_weight"] for c in fusion["candidates"]] == list(FUSION_WEIGHTS)
    chosen = next(c for c in fusion["candidates"] if c["cnn_weight"] == fusion["cnn_weight"])
    best = max((c["balanced_accuracy"], c["quadratic_weighted_kappa"]) for c in fusion["candidates"])
    assert (chosen["balanced_accuracy"], chosen["quadratic_weighted_kappa"]) == best
    assert load_model(mixed_model, "cpu").fusion.cnn_weight == fusion["cnn_weight"]  # what grading mixes by
    cnn, involvement = np.array([[0.6, 0.4]]), np.array([[0.2, 0.8]])
    assert np.array_equal(replace(Fusion.from_model(model), cnn_weight=1.0).mix(cnn, involvement), cnn)
    assert np.allclose(replace(Fusion.from_model(model), cnn_weight=0.25).mix(cnn, involvement), [[0.3, 0.7]])


def test_several_datasets_split_as_one_and_evaluate_scores_each_ones_share(phantom_cohort, synth_cohort,
                                                                           cache_dir, tmp_path, capsys):
    """The synth cohort is one patient (its base, CTChest4): split as one dataset with the phantoms, its
    studies all go to one subset (train, the largest), and evaluate scores only the phantoms' share."""
    out = tmp_path / "both.pt"
    assert main(["train", "--data", str(phantom_cohort), str(synth_cohort), "--out", str(out),
                 "--cache", str(cache_dir), *TINY_TRAIN_ARGS]) == 0
    meta = SeverityModel.load(out).metadata
    synth_ids = {s.study_id for s in DatasetIndex.load(synth_cohort).studies}
    assert synth_ids <= set(meta["split"]["train"]), "one patient's studies in one subset"
    assert meta["split"]["patients"] == dict.fromkeys(sorted(synth_ids), "CTChest4")
    report = tmp_path / "phantoms.json"
    assert main(["evaluate", "--model", str(out), "--data", str(phantom_cohort), "--json", str(report),
                 "--cache", str(cache_dir)]) == 0
    scored = {row["study_id"] for row in json.loads(report.read_text())["studies"]}
    assert scored == set(meta["split"]["test"]) and not scored & synth_ids
    assert main(["evaluate", "--model", str(out), "--data", str(synth_cohort), "--json", str(report),
                 "--cache", str(cache_dir)]) != 0
    assert f"holds none of the studies of {synth_cohort}" in capsys.readouterr().err


def test_a_train_only_study_that_is_also_in_the_split_is_refused(phantom_cohort, tmp_path, capsys):
    code = main(["train", "--data", str(phantom_cohort), "--train-only", str(phantom_cohort),
                 "--out", str(tmp_path / "m.pt"), *TINY_TRAIN_ARGS])
    assert code != 0 and not (tmp_path / "m.pt").exists()
    message = capsys.readouterr().err
    assert "train-only studies need ids of their own" in message and "--prefix" in message


def test_studies_with_masks_train_the_lesion_network_which_only_adds_to_the_lungs(mixed_model, synth_cohort):
    """The lesion network's lesion voxels join the HU lungs (the default, recorded in the file); without
    the network the prediction's lungs are the HU mask's."""
    model = SeverityModel.load(mixed_model)
    assert model.lesion_net is not None and model.architecture.lesion_net and model.lesion_lungs
    history = model.metadata["history"]["lesions"]
    assert len(history) == 2 and {"val_lesion_dice", "val_lung_dice"} <= set(history[0])
    volume = read_volume(next((synth_cohort / "studies" / "CT-4").glob("*.nii.gz")))
    prediction = predict_volume(TorchGrader(model), volume)
    model.lesion_net = None
    assert not model.lesion_lungs
    without = predict_volume(TorchGrader(model), volume)
    lungs, hu_lungs = np.asarray(prediction.bands_kji) > 0, np.asarray(without.bands_kji) > 0
    assert not (hu_lungs & ~lungs).any()
    assert (lungs & ~hu_lungs).any() == ("learned_added_ml" in prediction.involvement)
    assert "learned_added_ml" not in without.involvement


def test_a_model_trained_without_masks_has_no_lesion_network(tiny_model):
    model = SeverityModel.load(tiny_model)
    assert model.lesion_net is None and "lesions" not in model.metadata["history"]


def test_attention_supervision_draws_the_attention_to_the_lesion_slices():
    """Stage 2 on embeddings where every slice carries the class equally: labels alone leave the
    attention anywhere; with per-slice lesion shares as targets it goes to the lesion slices."""
    from TwoFiveCNNLib.io.progress import ProgressReporter
    from TwoFiveCNNLib.networks.heads import AttentionHead
    from TwoFiveCNNLib.training.config import TrainConfig
    from TwoFiveCNNLib.training.stages import Stage2Data, attention_loss, train_head

    generator = torch.Generator().manual_seed(0)
    studies, slices, dim = 40, 12, 16
    labels = torch.arange(studies) % 2
    embeddings = torch.randn(studies, slices, dim, generator=generator) * 0.1
    embeddings[:, :, 0] += labels[:, None].float() * 2 - 1  # the class, in every slice alike
    embeddings[:, :, 1] += torch.randn(studies, slices, generator=generator)  # what tells slices apart
    targets = torch.zeros(studies, slices)
    lesion_slice = embeddings[:, :, 1].argmax(dim=1)  # the lesions are where feature 1 peaks
    targets[torch.arange(studies), lesion_slice] = 1.0
    mask = torch.ones(studies, slices, dtype=torch.bool)

    def attention_after(weight: float) -> float:
        torch.manual_seed(0)
        head = AttentionHead(dim, 2, hidden=16)
        config = TrainConfig(stage2_epochs=60, stage2_batch=8, attention_supervision=weight)
        data = Stage2Data(embeddings[None], mask, labels, embeddings, mask, labels, targets, targets)
        train_head(head, data, ("a", "b"), config, ProgressReporter(quiet=True), torch.device("cpu"))
        head.eval()
        with torch.no_grad():
            _, attention = head(embeddings, mask)
        return float(attention[torch.arange(studies), lesion_slice].mean())

    unsupervised, supervised = attention_after(0.0), attention_after(1.0)
    assert unsupervised < 0.3 and supervised > 0.6, (unsupervised, supervised)
    assert attention_loss(torch.full((2, 4), 0.25), torch.zeros(2, 4)) is None
    assert float(attention_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))) == pytest.approx(0, abs=1e-6)


def test_the_involvement_part_is_fitted_on_the_features_predict_measures(mixed_model, phantom_cohort, synth_cohort):
    """One measurement: the training studies' features the involvement part was standardised with are
    those predict measures with the saved model (lesion network voxels included)."""
    from TwoFiveCNNLib.inference.predict import measure_lung_features

    model = SeverityModel.load(mixed_model)
    by_id = {s.study_id: s for s in DatasetIndex.load(phantom_cohort).studies + DatasetIndex.load(synth_cohort).studies}
    train_ids = model.metadata["split"]["train"] + model.metadata["train_only"]["study_ids"]
    features = measure_lung_features(TorchGrader(model), [by_id[i].path for i in train_ids])
    chosen = features[:, model._feature_columns]
    assert model.metadata["involvement_mean"] == pytest.approx(chosen.mean(0).tolist(), abs=1e-6)


def test_pleural_consolidation_is_painted_inside_the_lung_and_marked_lesion():
    """The lesion network's augmentation: solid tissue replaces lung out to the lung's edge (a dorsal
    band or a disc on the edge), only where the target says lung, and the target marks it lesion."""
    from TwoFiveCNNLib.networks.lesion_net import LESIONS, LUNGS
    from TwoFiveCNNLib.training.lesions import paint_pleural_consolidation

    window = (-1000.0, 400.0)
    target = torch.zeros(2, 48, 48)
    target[LUNGS, 10:40, 4:20] = 1  # right lung
    target[LUNGS, 12:38, 28:44] = 1  # left lung
    target[LESIONS, 20:24, 8:12] = 1  # an inserted lesion already there
    aerated = (-850 - window[0]) / (window[1] - window[0])
    painted_any, generator = 0, torch.Generator().manual_seed(0)
    for _ in range(40):
        image = torch.full((1, 48, 48), 0.75)  # soft tissue around the lungs
        image[0][target[LUNGS] > 0] = aerated
        marked, before = target.clone(), image.clone()
        if not paint_pleural_consolidation(image, marked, window, generator):
            assert torch.equal(image, before) and torch.equal(marked, target)
            continue
        painted_any += 1
        changed = image[0] != before[0]
        new_lesion = (marked[LESIONS] > 0) & (target[LESIONS] == 0)
        assert changed.any() and not (changed & (target[LUNGS] == 0)).any()  # nothing painted outside the lung
        assert (new_lesion == (changed & (target[LESIONS] == 0))).all()  # what is painted is lesion, no more
        assert torch.equal(marked[LUNGS], target[LUNGS]) and (marked[LESIONS] >= target[LESIONS]).all()
        hu = image[0][changed] * (window[1] - window[0]) + window[0]
        assert -150 < float(hu.mean()) < 160  # soft tissue, not air
        # It reaches the lung's edge: some painted pixel has a non-lung neighbour.
        outside = torch.nn.functional.max_pool2d((target[LUNGS] == 0).float()[None, None], 3, 1, 1)[0, 0] > 0
        assert (changed & outside).any()
    assert painted_any >= 30
    too_little = torch.zeros(2, 48, 48)
    too_little[LUNGS, 5:8, 5:8] = 1
    assert not paint_pleural_consolidation(torch.zeros(1, 48, 48), too_little, window, generator)
    # A lung base: a crescent around the liver (large enough, but filling little of its box); never painted.
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    crescent = torch.zeros(2, 96, 96)
    for cx in (24, 72):
        distance = ((yy - 40) ** 2 + (xx - cx) ** 2).float().sqrt()
        crescent[LUNGS][(distance > 16) & (distance < 22) & (yy > 40)] = 1
    assert int(crescent[LUNGS][:, :48].sum()) > 300
    for _ in range(20):
        assert not paint_pleural_consolidation(torch.zeros(1, 96, 96), crescent.clone(), window, generator)
