"""The ``twofivecnn`` command line: phantoms, synth, index, train, evaluate, predict, export-onnx, demo,
bench."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from ..data.index import DatasetError
from ..inference.output_names import LESION_MAP_FORMATS
from ..inference.prediction import DEMO_MODEL_NOTICE

EXIT_USAGE, EXIT_FAILED_STUDIES, EXIT_INTERRUPTED = 2, 3, 130


def _add_phantoms(sub) -> None:
    p = sub.add_parser("phantoms", help="write a synthetic MosMed-style phantom cohort")
    p.add_argument("out", type=Path, help="writes OUT/studies/CT-k/study_NNNN.nii.gz and OUT/phantoms.json, never "
                                          "over a file it did not write; the same command again resumes a stopped run")
    p.add_argument("--counts", default="20,40,16,10,6", help="studies per class CT-0..CT-4 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_phantoms)


def run_phantoms(args) -> int:
    from ..data.phantoms import parse_counts, write_cohort

    counts = parse_counts(args.counts)
    command = f"twofivecnn phantoms {args.out} --counts {args.counts} --seed {args.seed}"
    paths = write_cohort(args.out, counts, args.seed, progress=_counter("phantoms"), command=command)
    print(f"wrote {len(paths)} phantom studies to {args.out / 'studies'}")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="insert COVID-19 lesions into real normal chest CTs: a MosMed-style "
                                     "folder, with lesion and lung masks beside it")
    p.add_argument("--base", required=True, nargs="+", type=Path, metavar="CT",
                   help="normal chest CT volume files, or folders of them (e.g. MosMedData's CT-0 folder)")
    p.add_argument("--out", required=True, type=Path,
                   help="writes OUT/studies/CT-k/study_NNNN.nii.gz, OUT/masks/ and OUT/synth.json, never over "
                        "a file it did not write; the same command again resumes a stopped run")
    p.add_argument("--counts", default="10,10,10,10,10",
                   help="studies per class CT-0..CT-4 (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefix", default="study",
                   help="study file names <prefix>_NNNN (default %(default)s; another, such as 'synth', keeps "
                        "them apart from MosMedData's study_NNNN when both are indexed together)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes making studies side by side (default %(default)s; each about 0.2 GB plus 38 "
                        "bytes per voxel of the largest base: 0.76 GB for 512 x 512 x 68, 3.2 GB for 512 x 512 "
                        "x 300; refused when they would not fit in memory); the files are the same for any number")
    p.set_defaults(run=run_synth)


def run_synth(args) -> int:
    from ..data.phantoms import parse_counts
    from ..data.synth import write_synth_cohort

    counts = parse_counts(args.counts)
    command = " ".join(["twofivecnn synth --base", *(str(b) for b in args.base), "--out", str(args.out),
                        "--counts", args.counts, "--seed", str(args.seed), "--prefix", args.prefix])
    paths = write_synth_cohort(args.base, args.out, counts, args.seed, command=command,
                               progress=_counter("synth", every_call=True), prefix=args.prefix,
                               workers=args.workers)
    print(f"wrote {len(paths)} lesion-inserted studies to {args.out / 'studies'}, their masks to "
          f"{args.out / 'masks'}, and {args.out / 'synth.json'}")
    return 0


def _add_index(sub) -> None:
    p = sub.add_parser("index", help="check a dataset, print its summary and optionally save a split")
    p.add_argument("data", type=Path, help="MosMed-style folder or CSV (path,label, optionally patient)")
    p.add_argument("--split", type=Path, help="write a patient-level split JSON here (each patient's studies in "
                                              "one subset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test")
    p.add_argument("--folds", type=int, default=0,
                   help="instead, write K stratified cross-validation splits (<split stem>_foldN.json)")
    p.add_argument("--read-images", action="store_true",
                   help="also read every study to find one image saved in two files of other bytes (another "
                        "format or compression); slow on a big folder, but the hashes are kept in the cache, so "
                        "train and evaluate (which always compare images) need not read the studies again. "
                        "Without it: files listed twice and copies of one file")
    p.add_argument("--cache", type=Path, help="preprocessed cache folder (default ~/.cache/twofivecnn)")
    p.set_defaults(run=run_index)


def run_index(args) -> int:
    from ..data.cache import PreprocessedCache
    from ..data.index import DatasetIndex
    from ..data.repeats import refuse_copied_files, refuse_repeated_images
    from ..data.splits import make_kfold, make_split

    index = DatasetIndex.load(args.data)
    cache = PreprocessedCache(args.cache)
    refuse_copied_files(index.studies, cache)
    if args.read_images:
        refuse_repeated_images(index.studies, cache, _counter("read images"))
    print(index.summary(args.folds or sum(f > 0 for f in _fractions(args.fractions))))
    print("  every study a distinct " + ("image (voxels compared)" if args.read_images else
                                         "file (voxels not compared: --read-images)"))
    fold_paths = [args.split.with_name(f"{args.split.stem}_fold{fold}.json") for fold in range(args.folds)] \
        if args.split else []
    if args.split:  # only a split file twofivecnn wrote is replaced
        from ..inference.outputs import claim_output_files

        claim_output_files(fold_paths or [args.split], [args.data, *(s.path for s in index.studies)], "index")
    if args.split and args.folds:
        for fold, (split, path) in enumerate(zip(make_kfold(index, args.folds, args.seed), fold_paths, strict=True)):
            split.save(path)
            print(f"fold {fold}: train/val = {_studies_and_patients(split, ('train', 'val'))} -> {path}")
    elif args.split:
        split = make_split(index, _fractions(args.fractions), args.seed)
        split.save(args.split)
        print(f"split train/val/test = {_studies_and_patients(split, ('train', 'val', 'test'))} -> {args.split}")
    return 0


def _studies_and_patients(split, subsets: tuple[str, ...]) -> str:
    """``a/b studies of c/d patients``: the subsets' sizes as a split file records them."""
    studies = [getattr(split, name) for name in subsets]
    patients = [len({split.patients.get(sid, sid) for sid in ids}) for ids in studies]
    return f"{'/'.join(str(len(ids)) for ids in studies)} studies of {'/'.join(map(str, patients))} patients"


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--fractions {text!r}: give three numbers such as 0.7,0.15,0.15") from None
    if len(values) != 3 or any(v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--fractions {text!r}: give three non-negative numbers summing to 1")
    return values


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train both stages (torchrun for several processes)")
    p.add_argument("--data", required=True, type=Path, nargs="+", metavar="DATA",
                   help="MosMed-style folder or CSV (path,label); several are split as one dataset")
    p.add_argument("--train-only", type=Path, nargs="+", metavar="DATA",
                   help="datasets whose studies only ever train, never validate or test: synthetic ones, "
                        "such as `twofivecnn synth` makes from a cohort's normal CTs")
    p.add_argument("--out", required=True, type=Path, help="model file to write (.pt)")
    p.add_argument("--task", default="severity",
                   help="severity (5 classes), binary (CT-0 vs CT-1..4) or groups like 'CT-0|CT-1,CT-2|CT-3,CT-4'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fractions", default="0.7,0.15,0.15", help="train,val,test fractions of the split")
    p.add_argument("--split", type=Path, help="reuse (or create) this split JSON; default: <out>.split.json")
    p.add_argument("--backbone", default="compact_resnet")
    p.add_argument("--pretrained", type=Path, help="local file of backbone weights (never downloaded)")
    p.add_argument("--allow-partial", action="store_true",
                   help="train even if --pretrained fills under 90%% of the backbone's parameter tensors "
                        "(the rest starts from random; what loaded is logged)")
    p.add_argument("--in-plane", type=int, default=96, help="model grid in-plane size (pixels)")
    p.add_argument("--slices", type=int, default=32, help="model grid slices per study")
    p.add_argument("--window", default="default", help="HU window preset or 'low,high'")
    p.add_argument("--stage1-epochs", type=int, default=14)
    p.add_argument("--stage2-epochs", type=int, default=150)
    p.add_argument("--stage2-views", type=int, default=6, help="augmented embedding views per training study")
    p.add_argument("--finetune-epochs", type=int, default=0,
                   help="after stage 2, fine-tune backbone and head end to end for N epochs (low learning rate)")
    p.add_argument("--lesion-epochs", type=int, default=24,
                   help="epochs of the lesion network, trained when training studies have voxel masks beside "
                        "them (ROOT/masks, as `twofivecnn synth` writes); 0: none (default %(default)s)")
    p.add_argument("--pleural-consolidation", type=float, default=0.3, metavar="SHARE",
                   help="share of the lesion network's training slices given a consolidation painted against "
                        "the chest wall (a dorsal band or a patch on the lung's edge), which the HU lung mask "
                        "misses; 0: the masks' lesions alone (default %(default)s)")
    p.add_argument("--held-out", type=Path, help="another dataset to score the model (and baselines) on")
    p.add_argument("--baselines", action="store_true",
                   help="also train the pure-3D baselines (3D CNN, ACS-inflated backbone) on the same split")
    p.add_argument("--involvement-features", default="involved",
                   help="lung features the involvement part reads, comma-separated, of emphysema, ground_glass, "
                        "consolidation, involved (default %(default)s)")
    p.add_argument("--attention-supervision", type=float, default=0.2, metavar="W",
                   help="stage 2: weight of the loss that draws a study's slice attention toward its slices' share "
                        "of lesion voxels, where voxel masks exist; 0: labels alone (default %(default)s)")
    p.add_argument("--hu-lungs-only", action="store_true",
                   help="measure the involvement in the HU lung mask alone; by default the lesion network's "
                        "lesion voxels join it (dense consolidation the HU mask leaves out)")
    p.add_argument("--no-involvement", action="store_true",
                   help="the CNN head alone decides (no fusion with the lung involvement part)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--cache", type=Path, help="preprocessed cache folder (default ~/.cache/twofivecnn)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.ckpt after an interruption")
    p.add_argument("--progress-json", nargs="?", const="-", metavar="PATH",
                   help="emit one JSON object per line (stdout, or PATH) for programs such as Slicer")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--name", default="", help="model name shown with every prediction")
    p.add_argument("--demo", action="store_true", help="mark as a demo model trained on synthetic data (every output says: not for clinical use)")
    p.set_defaults(run=run_train)


def train_config_from_args(args):
    from ..networks.severity_model import Architecture
    from ..training.config import TrainConfig
    from ..transforms.preprocess import PreprocessConfig

    window = tuple(float(v) for v in args.window.split(",")) if "," in args.window else args.window
    return TrainConfig(
        task=args.task, seed=args.seed, fractions=_fractions(args.fractions),
        preprocess=PreprocessConfig.with_window(window, in_plane=args.in_plane, n_slices=args.slices),
        architecture=Architecture(backbone=args.backbone, involvement=not args.no_involvement,
                                  involvement_features=tuple(args.involvement_features.split(",")),
                                  lesion_lungs=not args.hu_lungs_only),
        pretrained=str(args.pretrained) if args.pretrained else None, allow_partial=args.allow_partial,
        stage1_epochs=args.stage1_epochs,
        stage2_epochs=args.stage2_epochs, stage2_views=args.stage2_views, finetune_epochs=args.finetune_epochs,
        lesion_epochs=args.lesion_epochs, lesion_pleural_consolidation=args.pleural_consolidation,
        attention_supervision=args.attention_supervision, device=args.device,
        baselines=args.baselines, name=args.name, demo=args.demo,
    )


def run_train(args) -> int:
    from ..data.cache import PreprocessedCache
    from ..training.run import train

    _init_distributed()
    config = train_config_from_args(args)
    with _json_stream(args.progress_json) as stream:
        reporter = _reporter(stream, args.quiet)
        try:
            model = train(args.data, args.out, config, reporter, PreprocessedCache(args.cache), args.split,
                          args.resume, args.held_out, args.train_only)
        finally:
            reporter.close()  # ends a bar an error or Ctrl-C interrupted, before the message is printed
    figures = run_figures(model.metadata)
    if figures and not args.quiet:
        print(figures, file=sys.stderr)
    if "baselines" in model.metadata:
        print(comparison_table(model.metadata))
    print(f"model written to {args.out}")
    return 0


def run_figures(metadata: dict) -> str:
    """The 2.5D model's scores on the test split and the held-out data, each headed with what it was
    measured on and its size: the two differ, and read side by side without that they seem to disagree."""
    from ..inference.cohort_scores import FUSED
    from ..io.progress import subset_title
    from ..metrics.classification import format_metrics

    scored = {subset: metadata["metrics"].get(subset) for subset in ("test", "held_out")}
    return "\n".join(f"{subset_title(subset, metrics[FUSED]['n_studies'])}, 2.5D model:\n"
                     f"{format_metrics(metrics[FUSED])}" for subset, metrics in scored.items() if metrics)


def comparison_table(metadata: dict) -> str:
    """Balanced accuracy / QWK of the 2.5D model, its parts and the baselines, per subset not trained on,
    each headed with its size."""
    subsets = [s for s in ("val", "test", "held_out") if s in metadata["metrics"]]
    names = list(metadata["metrics"][subsets[0]]) + list(metadata.get("baselines", {}))
    sizes = {s: next(iter(metadata["metrics"][s].values()))["n_studies"] for s in subsets}
    lines = ["model".ljust(24) + "".join(f"{f'{s} ({sizes[s]} studies)':>22}" for s in subsets)]
    for name in names:
        cells = []
        for subset in subsets:
            metrics = metadata["metrics"][subset].get(name) or \
                metadata.get("baselines", {}).get(name, {}).get("metrics", {}).get(subset)
            cells.append(f"{metrics['balanced_accuracy']:.3f} / {metrics['quadratic_weighted_kappa']:.3f}"
                         if metrics else "-")
        lines.append(name.ljust(24) + "".join(f"{c:>22}" for c in cells))
    return ("balanced accuracy / QWK (val and test: splits of the training cohort; held_out: never trained on)\n"
            + "\n".join(lines))


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a model on a dataset")
    p.add_argument("--model", type=Path, help="model file (default: the bundled demo model)")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--subset", choices=("auto", "all", "train", "val", "test"), default="auto",
                   help="auto: the model's test split if DATA is its training set, else every study")
    p.add_argument("--json", type=Path, help="write metrics JSON here")
    p.add_argument("--confusion", type=Path, help="write the confusion matrix picture here (.png)")
    p.add_argument("--masks", type=Path,
                   help="folder of <study>_lesion.nii.gz and <study>_lungs.nii.gz (as `synth` writes beside "
                        "studies/): also score the lesion map and the slice attention against the lesion masks "
                        "(voxel AUC, attention rank correlation)")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache", type=Path)
    p.set_defaults(run=run_evaluate)


def run_evaluate(args) -> int:
    from ..evaluation.evaluate import check_evaluation_paths, evaluate_dataset
    from ..inference.engines import BUNDLED_MODEL, TorchGrader, load_torch_model
    from ..io.atomic import write_json_atomic
    from ..metrics.classification import format_metrics
    from ..reports.figures import confusion_matrix_png

    grader = TorchGrader(load_torch_model(args.model, args.device))
    # Every path before any work: a wrong one found after the evaluation would lose the run.
    check_evaluation_paths(args.data, args.model or BUNDLED_MODEL, args.masks, args.json, args.confusion,
                           args.cache, progress=_counter("check masks"))
    report = evaluate_dataset(grader.model, args.data, args.subset, args.cache, progress=_counter("evaluate"))
    if grader.is_demo:
        report["notice"] = DEMO_MODEL_NOTICE
        print(f"note: {DEMO_MODEL_NOTICE}")
    print(f"{report['subset_description']}\n{format_metrics(report['metrics'])}")
    for name, metrics in report["components"].items():
        print(f"  {name}: balanced accuracy {metrics['balanced_accuracy']:.3f}, "
              f"QWK {metrics['quadratic_weighted_kappa']:.3f}")
    if args.masks:
        from ..evaluation.localisation import evaluate_masks

        report["localisation"] = evaluate_masks(grader, args.data, args.masks, progress=_counter("localisation"))
        localisation = report["localisation"]

        def figure(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f}"

        print(f"localisation over {localisation['studies_with_lesions']} studies with lesions: voxel AUC "
              f"{figure(localisation['voxel_auc'])}, attention rank correlation "
              f"{figure(localisation['attention_rank_correlation'])}")
        if localisation["involvement_mean_abs_error"] is not None:
            print(f"involvement against the masks over {len(localisation['studies'])} studies: mean absolute error "
                  f"{100 * localisation['involvement_mean_abs_error']:.1f} percentage points, grade by involvement "
                  f"right for {100 * localisation['involvement_grade_accuracy']:.0f} %")
    if args.json:
        write_json_atomic(args.json, report)
    if args.confusion:
        confusion_matrix_png(report["metrics"]["confusion_matrix"], report["metrics"]["class_names"],
                             args.confusion, title=f"{grader.name} on {args.data.name}")
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="grade studies and write JSON, lesion map volume, picture (and scene)")
    p.add_argument("inputs", nargs="+", type=Path, help="volume files, DICOM series folders, or folders of volumes")
    p.add_argument("--model", type=Path, help="model file (default: the bundled demo model)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--scene", action="store_true", help="also write a Slicer scene <name>.mrml per study")
    p.add_argument("--format", choices=LESION_MAP_FORMATS, default=LESION_MAP_FORMATS[0],
                   help="lesion map volume format (<name>_lesion_map.nii.gz or .nrrd)")
    p.add_argument("--device", default="auto")
    p.add_argument("--engine", choices=("auto", "torch", "onnx"), default="auto",
                   help="run the networks on torch, or on ONNX Runtime (CPU; needs an export made by export-onnx, "
                        "shipped for the demo model): a process that never imports torch starts seconds sooner. "
                        "auto (default): ONNX Runtime when installed and an export of the model exists, else torch")
    p.add_argument("--half", action="store_true", help="float16 backbone (CUDA GPUs only; torch engine)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone: about a minute of compiling, worth it for large batches "
                        "(torch engine)")
    p.add_argument("--progress-json", nargs="?", const="-", metavar="PATH",
                   help="emit one JSON object per line (stdout, or PATH) per study: count, total, current "
                        "study, for programs such as Slicer")
    p.add_argument("--allow-uneven-slices", action="store_true",
                   help="resample a DICOM series with a missing slice or uneven slice steps onto an even grid of "
                        "its median step (linearly, with a warning) instead of refusing it; the outputs then lie "
                        "on that grid")
    p.add_argument("--views", nargs="?", const="lesion-map", choices=("lesion-map", "bands"), type=_view_overlay,
                   help="also write <name>_views.png: Slicer's axial, coronal and sagittal views under the "
                        "lesion map (default) or the lung bands, with the attention and probabilities")
    p.set_defaults(run=run_predict)


def _view_overlay(text: str) -> str:
    """``--views``' overlay name. legacy: remove after 0.3; 0.2 called the lesion map ``evidence``."""
    return "lesion-map" if text == "evidence" else text


def run_predict(args) -> int:
    from ..inference.studies import StudyPrefetcher, expand_inputs

    # The first study is read and its lungs measured while the model loads (torch, if it runs on torch).
    prefetcher = StudyPrefetcher(allow_uneven_slices=args.allow_uneven_slices)
    studies = expand_inputs(args.inputs)  # a missing path stays itself: predict_batch reports it
    if studies and not any(Path(p).resolve() == args.out.resolve() for p in args.inputs):
        prefetcher.prefetch_next(0, studies[0])  # not a study too large to share memory with torch's loading
    with prefetcher:
        return _run_predict(args, prefetcher, studies)


def _run_predict(args, prefetcher, studies: list[Path]) -> int:
    from ..inference.engines import BUNDLED_MODEL, load_model
    from ..inference.outputs import ExtraOutput, predict_batch, unique_names
    from ..io.progress import ProgressReporter, item_progress

    scene_writer = None
    if args.scene:
        from ..scene import save_prediction_scene  # needs the MRML library (Slicer or slicer-core)

        scene_writer = save_prediction_scene
    extra_writers = []
    if args.views:
        from ..scene.views import write_views_png  # needs the MRML library (Slicer or slicer-core)

        def write_views(prediction, volume, path, name):
            return write_views_png(prediction, volume, path, args.views, name)

        extra_writers.append(ExtraOutput("_views.png", write_views))
    model = load_model(args.model, args.device, args.engine, _warning("predict"), args.half, args.compile)
    with _json_stream(args.progress_json) as stream:
        # Programs (the Slicer module) follow the batch by study: count, total, the study at work.
        progress = _counter("predict", every_call=True) if stream is None else \
            item_progress(ProgressReporter(stream), "predict", unique_names(studies))
        result = predict_batch(model, args.inputs, args.out, scene_writer, lesion_map_format=args.format,
                               progress=progress, extra_writers=extra_writers, prefetcher=prefetcher,
                               model_source=args.model or BUNDLED_MODEL,
                               allow_uneven_slices=args.allow_uneven_slices)
    for path, prediction in result.predictions.items():
        probabilities = ", ".join(f"{k} {v:.2f}" for k, v in prediction.probabilities.items())
        print(f"{path}: {prediction.label} ({probabilities})")
        if prediction.involvement:
            print(f"  {prediction.involvement_line()}")
        for warning in prediction.warnings:
            print(f"  warning: {warning}")
    if model.is_demo:
        print(f"note: {DEMO_MODEL_NOTICE}")
    for path, message in result.failures.items():
        print(f"FAILED {message}", file=sys.stderr)
    print(f"{len(result.predictions)} predicted, {len(result.failures)} failed; summary in {args.out / 'summary.tsv'}")
    return EXIT_FAILED_STUDIES if result.failures else 0


def _add_export_onnx(sub) -> None:
    p = sub.add_parser("export-onnx", help="export a model's networks for ONNX Runtime (predict --engine onnx)")
    p.add_argument("--model", type=Path, help="model file (default: the bundled demo model)")
    p.add_argument("--out", type=Path, help="export folder (default: MODEL.onnx beside the model file, where "
                                            "predict looks for it)")
    p.set_defaults(run=run_export_onnx)


def run_export_onnx(args) -> int:
    from ..inference.engines import BUNDLED_MODEL
    from ..inference.onnx_export import export_onnx

    folder = export_onnx(args.model or BUNDLED_MODEL, args.out)
    print(f"exported to {folder}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="phantom cohort, both stages, held-out evaluation, prediction with scene")
    p.add_argument("--out", type=Path, default=Path("twofivecnn_demo"))
    p.add_argument("--quick", action="store_true", help="a small, fast run (a smoke test, not a result)")
    p.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from .demo import run_demo as demo

    summary = demo(args.out, quick=args.quick)
    return 3 if summary["failures"] else 0  # as predict: some studies could not be graded


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure speed and memory against references taken in the same run")
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--accuracy", type=Path, metavar="DIR",
                   help="instead: the accuracy study (2.5D vs 2D vs 3D vs ACS against training-set size, default "
                        "settings, several seeds) in DIR; runs again to resume. About 2 hours on 2 cores")
    p.add_argument("--sizes", default="40,90,200", help="training studies per cohort, for --accuracy")
    p.add_argument("--seeds", default="1,2,3", help="seeds, for --accuracy")
    p.set_defaults(run=run_bench)


def run_bench(args) -> int:
    if args.accuracy is not None:
        from ..evaluation.accuracy_study import StudyPlan, run_study

        plan = StudyPlan(sizes=_integers(args.sizes, "--sizes"), seeds=_integers(args.seeds, "--seeds"))
        report = run_study(args.accuracy, plan, _reporter(None, quiet=False))
        print((args.accuracy / "accuracy_study.md").read_text(), end="")
        print(f"study written to {args.accuracy} ({len(report['runs'])} runs)")
        return 0
    from ..evaluation.bench import run_benchmarks
    from ..io.manifest import OutputManifest

    if args.json is not None:  # before the minutes of measuring: a user's file of that name is not replaced
        OutputManifest.open(args.json.parent, "bench").claim(args.json)
    run_benchmarks(args.json, quick=args.quick)
    return 0


def _integers(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(value) for value in text.split(","))
    except ValueError:
        raise ValueError(f"{option} {text!r}: give comma-separated whole numbers, e.g. 40,90,200.") from None
    return values


def _warning(command: str):
    """``warn(message)``: one line on stderr, as the command's errors are printed."""
    def warn(message: str) -> None:
        print(f"twofivecnn {command}: warning: {message}", file=sys.stderr)

    return warn


def _counter(stage: str, every_call: bool = False):
    """``progress(done, total, *details)`` shown on stderr, as every other progress (``io.progress``)."""
    from ..io.progress import counter

    return counter(stage, every_call=every_call)


class _json_stream:
    """Context manager giving the progress JSON stream: stdout, a file, or none."""

    def __init__(self, target: str | None) -> None:
        self.target, self.file = target, None

    def __enter__(self):
        if self.target is None:
            return None
        if self.target == "-":
            return sys.stdout
        self.file = open(self.target, "a", encoding="utf-8")
        return self.file

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


def _reporter(stream, quiet: bool):
    from ..io.progress import ProgressReporter
    from ..training.distributed import distributed_rank_world

    rank = distributed_rank_world()[0]
    return ProgressReporter(stream if rank == 0 else None, quiet=quiet or rank != 0)


def _init_distributed() -> None:
    """Join the process group when started by torchrun (gloo on CPU, nccl on GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="twofivecnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_phantoms, _add_synth, _add_index, _add_train, _add_evaluate, _add_predict, _add_export_onnx,
                _add_demo, _add_bench):
        add(sub)
    return parser


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # a clean stop: temporary files removed, checkpoint kept
    from ..io.model_file import ModelFileError
    from ..io.volume import VolumeError

    try:
        return args.run(args)
    except (VolumeError, DatasetError, ModelFileError, ValueError, FileNotFoundError, PermissionError) as error:
        print(f"twofivecnn {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as error:
        where = f" ({error.filename})" if error.filename else ""
        print(f"twofivecnn {args.command}: error: {error.strerror or error}{where}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = " (resume with --resume)" if args.command == "train" else ""
        print(f"twofivecnn {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_command(argv: list[str] | None = None) -> None:
    """The ``twofivecnn`` command as a process: :func:`main`, then exit.

    After ``predict``, whose outputs are all written and closed by then, the process ends without
    the interpreter's teardown of torch's modules, which takes longer than grading a small study.
    """
    code = main(argv)
    command = (argv if argv is not None else sys.argv[1:])[:1]
    if command == ["predict"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run_command()
