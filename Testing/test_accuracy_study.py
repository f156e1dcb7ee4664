"""The accuracy study: cohort sizes, a real (tiny) study run, its summary, table and plot, and resume."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.evaluation.accuracy_study import (
    METHODS,
    StudyPlan,
    cohort_counts,
    markdown_table,
    run_study,
    summarise,
)
from TwoFiveCNNLib.training.config import TrainConfig
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig


@pytest.mark.parametrize("n", [15, 40, 90, 92, 200])
def test_cohort_counts_keep_the_imbalance_and_the_total(n):
    counts = cohort_counts(n)
    assert sum(counts) == n and min(counts) >= 3
    assert counts[1] == max(counts) and counts[4] == min(counts)  # CT-1 commonest, CT-4 rarest, as in MosMed


def test_cohort_counts_refuse_too_few_studies():
    with pytest.raises(ValueError, match="at least 15"):
        cohort_counts(12)


def test_summary_is_mean_and_spread_over_seeds():
    runs = [{"size": 40, "seed": seed, "metrics": {"twofive": {"balanced_accuracy": value,
                                                               "quadratic_weighted_kappa": 0.9}}}
            for seed, value in ((1, 0.6), (2, 0.8))]
    result = summarise(runs)["40"]["twofive"]["balanced_accuracy"]
    assert result["mean"] == pytest.approx(0.7) and result["std"] == pytest.approx(0.1414, abs=1e-4)
    assert result["n"] == 2
    assert "0.70 ± 0.14 / 0.90" in markdown_table(summarise(runs))


def test_a_tiny_study_runs_every_method_and_resumes(tmp_path):
    plan = StudyPlan(sizes=(15,), seeds=(1,), held_out_per_class=1,
                     train=TrainConfig(preprocess=PreprocessConfig(in_plane=48, n_slices=12), stage1_epochs=1,
                                       stage2_epochs=3, stage2_views=1, baseline_epochs=2))
    report = run_study(tmp_path, plan)
    [run] = report["runs"]
    assert set(run["metrics"]) == set(METHODS)
    assert all(0 <= m["balanced_accuracy"] <= 1 for m in run["metrics"].values())
    assert set(run["training_seconds"]) == {"twofive", "cnn3d", "acs"}
    assert Image.open(tmp_path / "accuracy_study.png").size == (1200, 560)
    assert "| ACS-inflated 3D |" in (tmp_path / "accuracy_study.md").read_text()
    # A second call finds the run's result and trains nothing: the model file is not rewritten.
    model = tmp_path / "models" / "n15_seed1.pt"
    stamp = model.stat().st_mtime_ns
    assert run_study(tmp_path, plan)["runs"] == report["runs"]
    assert model.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "accuracy_study.json").read_text())["summary"]["15"]


def test_bench_accuracy_refuses_bad_sizes(tmp_path, capsys):
    assert main(["bench", "--accuracy", str(tmp_path), "--sizes", "40,ninety"]) != 0
    assert "--sizes '40,ninety'" in capsys.readouterr().err
