"""The demo: the whole product on synthetic phantoms, from data to a Slicer scene, in minutes on a CPU."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..data.cache import PreprocessedCache
from ..data.phantoms import write_cohort
from ..evaluation.evaluate import evaluate_dataset
from ..inference.engines import TorchGrader
from ..inference.outputs import predict_batch
from ..io.atomic import write_json_atomic
from ..io.manifest import OutputManifest
from ..io.progress import ProgressReporter, subset_title
from ..metrics.classification import format_metrics
from ..reports.figures import confusion_matrix_png, curves_png
from ..scene import save_prediction_scene
from ..training.config import TrainConfig
from ..training.run import train

TRAIN_COUNTS = (20, 40, 16, 10, 6)  # MosMed-like imbalance, about 90 studies
HELD_OUT_COUNTS = (10, 10, 10, 10, 10)  # balanced, never seen in training
QUICK_TRAIN_COUNTS, QUICK_HELD_OUT_COUNTS = (4, 5, 4, 4, 3), (2, 2, 2, 2, 2)
# What the demo writes in its folder itself; the cohorts, the model and the predictions are claimed by
# the steps that write them (phantoms, train, predict).
DEMO_OUTPUTS = ("cache", "training_curves.png", "held_out_metrics.json", "held_out_confusion.png",
                "demo_summary.json")


def demo_config(quick: bool) -> TrainConfig:
    config = TrainConfig(name="TwoFiveCNN phantom demo", demo=True, seed=0)
    return replace(config, stage1_epochs=2, stage2_epochs=20, stage2_views=2) if quick else config


def run_demo(out: str | Path, quick: bool = False) -> dict:
    """Phantoms -> both stages -> held-out evaluation -> predictions with picture and scene."""
    out = Path(out)
    # A re-run into an earlier demo's folder is allowed; a user's file of one of these names is refused.
    OutputManifest.open(out, "demo").claim(*(out / name for name in DEMO_OUTPUTS))
    started = time.monotonic()
    reporter = ProgressReporter()
    train_counts, held_out_counts = (QUICK_TRAIN_COUNTS, QUICK_HELD_OUT_COUNTS) if quick else \
        (TRAIN_COUNTS, HELD_OUT_COUNTS)
    reporter.message(f"1/4 writing phantom cohorts to {out}")
    write_cohort(out / "phantoms_train", train_counts, seed=101)
    held_out = write_cohort(out / "phantoms_held_out", held_out_counts, seed=202)
    cache = PreprocessedCache(out / "cache")

    reporter.message("2/4 training stage 1 (slices) and stage 2 (attention head)")
    model = train(out / "phantoms_train", out / "model.pt", demo_config(quick), reporter, cache)
    curves_png([{"stage": stage, "epoch": r["epoch"], "train_loss": r["loss"],
                 "val_balanced_accuracy": r["val_balanced_accuracy"]}
                for stage, records in model.metadata["history"].items() for r in records],
               out / "training_curves.png")

    reporter.message("3/4 evaluating on held-out phantoms")
    report = evaluate_dataset(model, out / "phantoms_held_out", "all", cache.root)
    write_json_atomic(out / "held_out_metrics.json", report)
    confusion_matrix_png(report["metrics"]["confusion_matrix"], report["metrics"]["class_names"],
                         out / "held_out_confusion.png", title="held-out phantoms")

    reporter.message("4/4 predicting held-out studies with pictures and Slicer scenes")
    examples = [held_out[i * held_out_counts[0]] for i in range(len(held_out_counts))]
    batch = predict_batch(TorchGrader(model), examples, out / "predictions", scene_writer=save_prediction_scene)
    summary = {"seconds": round(time.monotonic() - started, 1), "model": str(out / "model.pt"),
               "held_out": {k: report["metrics"][k] for k in ("balanced_accuracy", "quadratic_weighted_kappa",
                                                               "accuracy", "n_studies")},
               "predictions": {Path(p).name: pred.label for p, pred in batch.predictions.items()},
               "failures": batch.failures}
    write_json_atomic(out / "demo_summary.json", summary)
    for path, message in batch.failures.items():
        print(f"FAILED to predict {path}: {message}")
    title = subset_title("held_out", report["metrics"]["n_studies"], held_out="phantoms")
    print(f"\n{title}, 2.5D model:\n{format_metrics(report['metrics'])}")
    print(f"\ndemo finished in {summary['seconds']:.0f} s; outputs in {out}/ "
          f"(model.pt, held_out_metrics.json, predictions/*.png, predictions/*.mrml)")
    return summary
