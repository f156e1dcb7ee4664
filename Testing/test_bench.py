"""``twofivecnn bench --quick`` runs and its figures are ratios of numbers measured in the same run
(no figure is checked against a speed: benchmarks are not timed tests)."""

from __future__ import annotations

import json

import pytest
from TwoFiveCNNLib.app.cli import main


def test_quick_bench_writes_consistent_figures(tmp_path, capsys):
    assert main(["bench", "--quick", "--json", str(tmp_path / "bench.json")]) == 0
    results = json.loads((tmp_path / "bench.json").read_text())
    inference = results["inference"]
    for name in ("cnn3d", "acs"):
        assert inference[f"speedup_vs_{name}"] == pytest.approx(
            inference[f"{name}_seconds"] / inference["twofive_seconds"], rel=0.05, abs=0.01)
        assert inference[f"{name}_gflop"] > 0
    # Two timings measured apart are never compared here: on a busy machine either can be the larger.
    assert inference["twofive_network_seconds"] > 0 and inference["twofive_seconds"] > 0
    assert inference["backbone_efficiency"] == pytest.approx(
        inference["backbone_gflops"] / results["matmul_gflops"], rel=0.01)
    # 64 slices through the backbone: the network's work is at least 64 slices' worth.
    assert inference["twofive_network_gflop"] >= 64 * inference["backbone_gflop_per_slice"] * 0.99
    whole = results["whole_predict"]
    for row in whole["peak_rss"]:
        assert row["peak_rss_mb"] > row["volume_mb"]
    # predict's default engine here (ONNX Runtime, whose export ships with the demo model), then torch.
    assert {row["engine"] for row in whole["end_to_end"].values()} == {"onnx", "torch"}
    for row in whole["end_to_end"].values():
        assert row["cold_single_matmuls"] == pytest.approx(row["cold_single_seconds"] / whole["matmul_2048_seconds"],
                                                           rel=0.02, abs=0.1)
        assert row["per_study_in_batch_matmuls"] == pytest.approx(
            row["per_study_in_batch_seconds"] / whole["matmul_2048_seconds"], rel=0.02, abs=0.1)
    for profile in whole["stage_profile"].values():
        stages = profile["stages"]
        assert {"startup_imports", "load_model", "read", "preprocess", "lungs_and_involvement", "network",
                "lesion_map", "write_lesion_map", "write_picture", "write_json"} <= set(stages)
        assert sum(stage["share"] for stage in stages.values()) == pytest.approx(1.0, abs=0.01)
        assert sum(stage["seconds"] for stage in stages.values()) == pytest.approx(profile["total_seconds"], abs=0.01)
    assert "speedup vs 3D CNN" in capsys.readouterr().out


def test_half_precision_on_the_cpu_is_refused_clearly(chest_ct_path, tmp_path, capsys):
    assert main(["predict", str(chest_ct_path), "--out", str(tmp_path), "--device", "cpu", "--half"]) == 2
    assert "half precision needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_results(demo_model, chest_ct_path):
    from TwoFiveCNNLib.inference.engines import load_model
    from TwoFiveCNNLib.inference.predict import predict_path

    eager, _ = predict_path(demo_model, chest_ct_path)
    compiled, _ = predict_path(load_model(None, "cpu", compile=True), chest_ct_path)  # its own: compiled
    for name, probability in eager.probabilities.items():
        assert compiled.probabilities[name] == pytest.approx(probability, abs=1e-4)
