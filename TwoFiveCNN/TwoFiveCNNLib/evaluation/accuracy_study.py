"""Accuracy against training-set size in the low-data regime: 2.5D against pure 2D, pure 3D and the
ACS-inflated 3D CNN, every method trained on the same split of the same phantom cohort and scored on
one balanced held-out cohort, over several seeds.

Each (size, seed) run is written to its own result file as soon as it finishes, so an interrupted
study resumes where it stopped (``twofivecnn bench --accuracy DIR`` again).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from ..data.cache import PreprocessedCache
from ..data.phantoms import write_cohort
from ..io.atomic import write_json_atomic, write_text_atomic
from ..io.progress import ProgressReporter
from ..reports.figures import accuracy_vs_size_png
from ..training.config import TrainConfig
from ..training.run import train

# Studies per class of the ~90-study acceptance cohort: MosMed's imbalance, with CT-3 and CT-4 rare.
MOSMED_LIKE_SHARES = (20, 40, 16, 10, 6)
MIN_PER_CLASS = 3  # every split subset needs a study of each class to be stratified
METHODS = {  # result key -> label in the table and plot
    "twofive": "2.5D (CNN + involvement)",
    "twofive_cnn_only": "2.5D CNN only",
    "involvement_only": "involvement only (lung features)",  # runs made before 0.2 lack it: "-" in the table
    "pooled_2d": "pure 2D (slice average)",
    "cnn3d": "pure 3D CNN",
    "acs": "ACS-inflated 3D",
}


def cohort_counts(n_studies: int, shares: Sequence[int] = MOSMED_LIKE_SHARES) -> list[int]:
    """Studies per class summing to ``n_studies``, in proportion to ``shares`` (largest remainders)."""
    if n_studies < MIN_PER_CLASS * len(shares):
        raise ValueError(f"{n_studies} studies: a study cohort needs at least {MIN_PER_CLASS * len(shares)} "
                         f"({MIN_PER_CLASS} per class).")
    spare = n_studies - MIN_PER_CLASS * len(shares)
    exact = [spare * share / sum(shares) for share in shares]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(shares)), key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[:spare - sum(counts)]:
        counts[k] += 1
    return [MIN_PER_CLASS + count for count in counts]


@dataclasses.dataclass(frozen=True)
class StudyPlan:
    sizes: tuple[int, ...] = (40, 90, 200)
    seeds: tuple[int, ...] = (1, 2, 3)
    held_out_per_class: int = 10
    held_out_seed: int = 4242
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def _ensure_cohort(folder: Path, counts: list[int], seed: int) -> Path:
    """Write a phantom cohort unless a complete one (its phantoms.json is written last) is there."""
    if not (folder / "phantoms.json").is_file():
        write_cohort(folder, counts, seed)
    return folder


def run_one(out: Path, size: int, seed: int, plan: StudyPlan, held_out: Path, cache: PreprocessedCache,
            reporter: ProgressReporter) -> dict:
    """Train the 2.5D model and every baseline on one cohort; held-out metrics per method."""
    counts = cohort_counts(size)
    data = _ensure_cohort(out / "cohorts" / f"n{size}_seed{seed}", counts, 10_000 * seed + size)
    config = dataclasses.replace(plan.train, seed=seed, baselines=True)
    model = train(data, out / "models" / f"n{size}_seed{seed}.pt", config, reporter, cache, held_out=held_out)
    metadata = model.metadata
    metrics = dict(metadata["metrics"]["held_out"])
    seconds = {"twofive": metadata["training_seconds"]}
    for name, record in metadata["baselines"].items():
        metrics[name] = record["metrics"]["held_out"]
        seconds[name] = record["seconds"]
    return {"size": size, "seed": seed, "counts": counts, "training_seconds": seconds,
            "metrics": {method: {"balanced_accuracy": metrics[method]["balanced_accuracy"],
                                 "quadratic_weighted_kappa": metrics[method]["quadratic_weighted_kappa"]}
                        for method in METHODS if method in metrics}}


def summarise(runs: list[dict]) -> dict:
    """Mean and (sample) standard deviation over seeds, per training-set size and method."""
    summary: dict[str, dict] = {}
    for size in sorted({run["size"] for run in runs}):
        at_size = [run for run in runs if run["size"] == size]
        summary[str(size)] = {}
        for method in METHODS:
            for metric in ("balanced_accuracy", "quadratic_weighted_kappa"):
                values = [run["metrics"][method][metric] for run in at_size if method in run["metrics"]]
                if values:
                    summary[str(size)].setdefault(method, {})[metric] = {
                        "mean": round(statistics.fmean(values), 4),
                        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                        "n": len(values)}
    return summary


def markdown_table(summary: dict) -> str:
    """Balanced accuracy and QWK, mean +- sd over seeds: one row per method, one column per size."""
    sizes = list(summary)
    lines = ["| method | " + " | ".join(f"{size} studies" for size in sizes) + " |",
             "| --- |" + " --- |" * len(sizes)]
    for method, label in METHODS.items():
        cells = []
        for size in sizes:
            result = summary[size].get(method)
            if result is None:
                cells.append("-")
                continue
            accuracy, kappa = result["balanced_accuracy"], result["quadratic_weighted_kappa"]
            cells.append(f"{accuracy['mean']:.2f} ± {accuracy['std']:.2f} / {kappa['mean']:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_study(out: str | Path, plan: StudyPlan | None = None, reporter: ProgressReporter | None = None,
              cache: PreprocessedCache | None = None) -> dict:
    """Every (size, seed) run not done yet; after each, the summary of the runs so far as JSON, a
    Markdown table and a plot, so a long study can be read (and stopped) at any point."""
    out, plan = Path(out), plan or StudyPlan()
    reporter = reporter or ProgressReporter()
    cache = cache or PreprocessedCache(out / "cache")
    held_out = _ensure_cohort(out / "held_out", [plan.held_out_per_class] * len(MOSMED_LIKE_SHARES),
                              plan.held_out_seed)
    runs = []
    for size in plan.sizes:
        for seed in plan.seeds:
            result_path = out / "runs" / f"n{size}_seed{seed}.json"
            if not result_path.is_file():
                reporter.message(f"accuracy study: {size} training studies, seed {seed}")
                write_json_atomic(result_path, run_one(out, size, seed, plan, held_out, cache, reporter))
            runs.append(json.loads(result_path.read_text()))
            report = write_report(out, plan, runs)
    return report


def write_report(out: Path, plan: StudyPlan, runs: list[dict]) -> dict:
    summary = summarise(runs)
    report = {"plan": {"sizes": list(plan.sizes), "seeds": list(plan.seeds),
                       "held_out_per_class": plan.held_out_per_class, "held_out_seed": plan.held_out_seed,
                       "train_config": plan.train.to_dict()},
              "summary": summary, "runs": runs}
    write_json_atomic(out / "accuracy_study.json", report)
    write_text_atomic(out / "accuracy_study.md", markdown_table(summary) + "\n")
    accuracy_vs_size_png(summary, METHODS, out / "accuracy_study.png")
    return report
