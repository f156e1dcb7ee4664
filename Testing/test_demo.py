"""The README's first command runs ``twofivecnn demo``: its quick form, end to end, must grade every
held-out example (a demo that trains and then fails to predict is the main job broken)."""

from __future__ import annotations

import json
from pathlib import Path

from TwoFiveCNNLib.app.cli import main


def test_quick_demo_trains_evaluates_and_predicts_every_example(tmp_path: Path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text(encoding="utf-8"))
    assert summary["failures"] == {} and len(summary["predictions"]) == 5
    for name in summary["predictions"]:
        stem = name.removesuffix(".nii.gz")
        for suffix in (".json", ".png", ".mrml", "_lesion_map.nii.gz"):
            assert (out / "predictions" / f"{stem}{suffix}").is_file(), stem + suffix
    assert json.loads((out / "held_out_metrics.json").read_text(encoding="utf-8"))["metrics"]["n_studies"] == 10
