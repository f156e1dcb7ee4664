"""Localisation scores against voxel masks (``evaluate --masks``), checked on hand-built cases against
scikit-learn and SciPy, and end to end on phantoms whose lesion and lung masks are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score
from TwoFiveCNNLib.data.phantoms import generate_phantom
from TwoFiveCNNLib.evaluation.localisation import (
    attention_rank_correlation,
    evaluate_masks,
    read_masks,
    voxel_auc,
)
from TwoFiveCNNLib.io.volume import Geometry, Volume, write_volume


def test_voxel_auc_by_hand_and_against_scikit_learn():
    lungs = np.zeros((2, 3, 4), dtype=bool)
    lungs[:, :, 1:] = True
    lesion = np.zeros_like(lungs)
    lesion[0, :, 3] = True
    lesion_map = np.where(lesion, 0.9, 0.1)
    assert voxel_auc(lesion_map, lesion, lungs) == 1.0
    assert voxel_auc(1 - lesion_map, lesion, lungs) == 0.0
    assert voxel_auc(np.full(lungs.shape, 0.3), lesion, lungs) == 0.5  # ties count half
    assert voxel_auc(lesion_map, np.zeros_like(lesion), lungs) is None
    rng = np.random.default_rng(0)
    noisy = np.round(rng.random(lungs.shape) + 0.4 * lesion, 1)  # many ties, some overlap
    expected = roc_auc_score(lesion[lungs], noisy[lungs])
    assert voxel_auc(noisy, lesion, lungs) == pytest.approx(expected, abs=1e-12)
    # Voxels outside the lungs do not count, however high their lesion map.
    outside = noisy.copy()
    outside[~lungs] = 10.0
    assert voxel_auc(outside, lesion, lungs) == pytest.approx(expected, abs=1e-12)


def test_attention_rank_correlation_by_hand_and_against_scipy():
    lesion = np.zeros((5, 2, 2), dtype=bool)
    for k, voxels in enumerate([0, 1, 2, 4, 3]):
        lesion[k].flat[:voxels] = True
    assert attention_rank_correlation(np.array([0.0, 0.1, 0.2, 0.4, 0.3]), lesion) == pytest.approx(1.0)
    assert attention_rank_correlation(np.array([0.4, 0.3, 0.2, 0.0, 0.1]), lesion) == pytest.approx(-1.0)
    attention = np.array([0.3, 0.1, 0.2, 0.2, 0.2])
    assert attention_rank_correlation(attention, lesion) == pytest.approx(
        stats.spearmanr(attention, [0, 1, 2, 4, 3]).statistic)
    assert attention_rank_correlation(np.full(5, 0.2), lesion) is None
    assert attention_rank_correlation(attention, np.zeros_like(lesion)) is None
    with pytest.raises(ValueError, match="slices"):
        attention_rank_correlation(np.ones(4), lesion)


def write_masked_cohort(root: Path) -> tuple[Path, Path]:
    """A MosMed-style folder of two phantoms (CT-0, CT-3) and their masks beside it, as synth lays them out."""
    data, masks = root / "data", root / "masks"
    for label, seed in ((0, 31), (3, 32)):
        phantom = generate_phantom(label, seed, orientation="LPI")
        name = f"study_{label}"
        write_volume(phantom.array_kji, phantom.geometry, data / "studies" / f"CT-{label}" / f"{name}.nii.gz")
        canonical = Volume.from_original(phantom.array_kji, phantom.geometry)
        for suffix, mask in (("_lesion", phantom.lesion_mask_zyx), ("_lungs", phantom.lung_mask_zyx | phantom.lesion_mask_zyx)):
            write_volume(canonical.to_original(mask.astype(np.uint8)), phantom.geometry, masks / f"{name}{suffix}.nii.gz")
    return data, masks


def test_evaluate_masks_on_phantoms(demo_model, tmp_path):
    data, masks = write_masked_cohort(tmp_path)
    report = evaluate_masks(demo_model, data, masks)
    assert report["studies_with_lesions"] == 1
    rows = {row["study_id"]: row for row in report["studies"]}
    assert rows["study_0"]["voxel_auc"] is None and rows["study_0"]["lesion_voxels"] == 0
    assert 0.0 <= rows["study_3"]["voxel_auc"] <= 1.0
    assert report["voxel_auc"] == rows["study_3"]["voxel_auc"]
    assert report["attention_rank_correlation"] == rows["study_3"]["attention_rank_correlation"]
    # The involvement against the masks' truth: the phantom's own lesion share, and the mean error.
    phantom = generate_phantom(3, 32, orientation="LPI")
    truth = phantom.lesion_mask_zyx.sum() / (phantom.lung_mask_zyx | phantom.lesion_mask_zyx).sum()
    assert rows["study_3"]["true_involved_share"] == pytest.approx(truth)
    assert rows["study_0"]["true_involved_share"] == 0.0
    errors = [abs(r["measured_involved_share"] - r["true_involved_share"]) for r in rows.values()]
    assert report["involvement_mean_abs_error"] == pytest.approx(np.mean(errors))
    assert report["involvement_grade_accuracy"] == np.mean([r["involvement_grade"] == r["label"] for r in rows.values()])


def test_masks_on_another_grid_are_refused(tmp_path):
    data, masks = write_masked_cohort(tmp_path)
    study = next((data / "studies" / "CT-3").iterdir())
    shifted = Geometry((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_volume(np.zeros((4, 4, 4), np.uint8), shifted, masks / "study_3_lungs.nii.gz")
    with pytest.raises(ValueError, match="grid differs"):
        read_masks(masks, study, Geometry((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)))
    with pytest.raises(ValueError, match="no lesion mask"):
        read_masks(tmp_path, study, shifted)


def test_evaluate_masks_from_the_command_line(cache_dir, tmp_path, capsys):
    import json

    from TwoFiveCNNLib.app.cli import main

    data, masks = write_masked_cohort(tmp_path)
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--data", str(data), "--masks", str(masks), "--json", str(out), "--subset", "all",
                 "--cache", str(cache_dir)]) == 0
    localisation = json.loads(out.read_text(encoding="utf-8"))["localisation"]
    assert localisation["studies_with_lesions"] == 1 and 0.0 <= localisation["voxel_auc"] <= 1.0
    assert "voxel AUC" in capsys.readouterr().out
