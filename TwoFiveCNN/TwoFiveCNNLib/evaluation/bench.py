"""``twofivecnn bench``: speed and memory, each figure a ratio to a reference measured in the same run,
so the numbers hold on a noisy or different machine."""

from __future__ import annotations

import functools
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..data.phantoms import generate_phantom
from ..data.tasks import TaskDefinition
from ..inference.engines import TorchGrader
from ..io.atomic import write_json_atomic
from ..io.timing import StageTimes
from ..io.volume import Volume, write_volume
from ..networks.severity_model import Architecture, SeverityModel
from ..networks.volumetric import build_volume_baseline
from ..transforms.involvement import LUNG_FEATURES, lung_involvement
from ..transforms.lungs import segment_lungs
from ..transforms.preprocess import PreprocessConfig, to_model_grid

BENCH_GRID = PreprocessConfig(in_plane=128, n_slices=64)  # the reference study: 64 slices at 128 px


def best_time(function: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` runs (the least disturbed by other work on the machine)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_time(lambda: a @ b, repeats) / 1e9


def bench_study(shape_zyx: tuple[int, int, int]) -> Volume:
    """A CT-2 phantom of a clinical size: the project's one synthetic chest, fixed by its seed."""
    phantom = generate_phantom(2, seed=0, orientation="LPS", shape_zyx=shape_zyx)
    return Volume.from_original(phantom.array_kji, phantom.geometry)


@functools.cache
def reference_study_grid() -> np.ndarray:
    """The reference study, a 64-slice 512 x 512 CT, on the benchmark's model grid (made once)."""
    return to_model_grid(bench_study((64, 512, 512)), BENCH_GRID)[0]


def untrained_model(grid: PreprocessConfig, compile: bool = False) -> TorchGrader:
    """Speed does not depend on the weights, so the benchmark needs no trained model."""
    model = SeverityModel(TaskDefinition.severity(), grid, Architecture())
    model.set_involvement_normalisation(torch.zeros(2, len(LUNG_FEATURES)))
    return TorchGrader(model.eval(), compile=compile)


def forward_gflop(function: Callable[[], object]) -> float:
    """Floating-point work of one call, counted by torch (multiply-add = 2 FLOP)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        function()
    return counter.get_total_flops() / 1e9


def bench_preprocessing(quick: bool) -> dict:
    """Model-grid resampling, lung segmentation and involvement at the input's resolution, per study size."""
    results = {}
    for slices in (64,) if quick else (64, 300):
        volume = bench_study((slices, 512, 512))
        copy_time = best_time(lambda volume=volume: volume.array.astype(np.float32), 3)
        seconds = best_time(lambda volume=volume: to_model_grid(volume, BENCH_GRID), 3)
        lungs_seconds = best_time(lambda volume=volume: segment_lungs(volume.array, volume.spacing_zyx), 3)
        # Lungs and involvement as predict runs them, the band labels back on the input's grid.
        involvement_seconds = best_time(lambda volume=volume: lung_involvement(volume.array, volume.spacing_zyx), 3)
        results[f"512x512x{slices}"] = {"seconds": round(seconds, 3),
                                        "vs_float32_copy": round(seconds / copy_time, 2),
                                        "lungs_seconds": round(lungs_seconds, 3),
                                        "lungs_and_involvement_seconds": round(involvement_seconds, 3)}
    return results


def bench_inference(quick: bool) -> dict:
    """The whole 2.5D prediction on the grid (probabilities and slice attention) and its network part
    alone (backbone over every slice + head), against a forward pass of each 3D baseline."""
    grader = untrained_model(BENCH_GRID)
    model = grader.model
    grid = reference_study_grid()
    repeats = 2 if quick else 5
    slices = torch.from_numpy(grid)[:, None]
    volume = torch.from_numpy(grid)[None, None]

    def network_only() -> object:
        return model.head(model.embed_slices(slices)[None])

    with torch.inference_mode():
        twofive = best_time(lambda: grader.grade(grid, np.zeros(len(LUNG_FEATURES), np.float32)), repeats)
        network = best_time(network_only, repeats)
        embed = best_time(lambda: model.embed_slices(slices), repeats)
    results = {"twofive_seconds": round(twofive, 3), "twofive_network_seconds": round(network, 3),
               "twofive_network_gflop": round(forward_gflop(network_only), 2),
               "slices_per_second": round(grid.shape[0] / embed, 1)}
    for name in ("cnn3d", "acs"):
        baseline = build_volume_baseline(name, 5, model.slice_classifier.backbone if name == "acs" else None).eval()
        with torch.inference_mode():
            seconds = best_time(lambda baseline=baseline: baseline(volume), repeats)
        results[f"{name}_seconds"] = round(seconds, 3)
        results[f"{name}_gflop"] = round(forward_gflop(lambda baseline=baseline: baseline(volume)), 2)
        results[f"speedup_vs_{name}"] = round(seconds / twofive, 2)
        results[f"network_speedup_vs_{name}"] = round(seconds / network, 2)
    results["speedup_vs_3d"] = min(results["speedup_vs_cnn3d"], results["speedup_vs_acs"])
    results["network_speedup_vs_3d"] = min(results["network_speedup_vs_cnn3d"], results["network_speedup_vs_acs"])
    gflop = forward_gflop(lambda: model.slice_classifier.embed(torch.zeros(1, 1, BENCH_GRID.in_plane,
                                                                      BENCH_GRID.in_plane)))
    results["backbone_gflop_per_slice"] = round(gflop, 3)
    results["backbone_gflops"] = round(gflop * grid.shape[0] / embed, 1)
    return results


def bench_compile() -> dict:
    """What ``predict --compile`` costs (compiling) and saves (per study), so users know when it pays."""
    eager, compiled = untrained_model(BENCH_GRID), untrained_model(BENCH_GRID, compile=True)
    grid = reference_study_grid()
    started = time.perf_counter()
    compiled.embed_slices(grid)
    compile_seconds = time.perf_counter() - started
    eager_seconds = best_time(lambda: eager.embed_slices(grid), 3)
    compiled_seconds = best_time(lambda: compiled.embed_slices(grid), 3)
    saved = eager_seconds - compiled_seconds
    return {"compile_seconds": round(compile_seconds, 1), "compile_speedup": round(eager_seconds / compiled_seconds, 2),
            "pays_after_studies": round(compile_seconds / saved) if saved > 0 else None}


def bench_stage2_epoch(quick: bool) -> dict:
    """One stage-2 epoch on cached embeddings against one 3D-baseline epoch on the same studies."""
    from ..networks.heads import AttentionHead

    n_studies = 8 if quick else 32
    grid = PreprocessConfig(in_plane=96, n_slices=32)  # the default training grid
    head = AttentionHead(256, 5)
    embeddings, labels = torch.randn(n_studies, grid.n_slices, 256), torch.randint(0, 5, (n_studies,))
    network = build_volume_baseline("cnn3d", 5)
    volumes = torch.rand(n_studies, 1, grid.n_slices, grid.in_plane, grid.in_plane)

    def epoch(module, inputs, batch):
        optimizer = torch.optim.AdamW(module.parameters())
        for index in torch.arange(n_studies).split(batch):
            output = module(inputs[index])
            logits = output[0] if isinstance(output, tuple) else output
            loss = torch.nn.functional.cross_entropy(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    stage2 = best_time(lambda: epoch(head, embeddings, 16), 3)
    cnn3d = best_time(lambda: epoch(network, volumes, 4), 1 if quick else 2)
    return {"studies": n_studies, "stage2_epoch_seconds": round(stage2, 4), "cnn3d_epoch_seconds": round(cnn3d, 2),
            "stage2_vs_3d_epoch_cost": round(stage2 / cnn3d, 4)}


def matmul_seconds(size: int = 2048, repeats: int = 5) -> float:
    """The time unit of the end-to-end figures: one ``size`` x ``size`` float32 matmul, torch's threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return best_time(lambda: a @ b, repeats)


def write_bench_studies(folder: Path, shape_zyx: tuple[int, int, int], count: int) -> list[Path]:
    """``count`` phantoms (CT-0..CT-4 in turn, one seed each) of a clinical size as gzip NRRD files, the
    form studies reach users in."""
    paths = []
    for index in range(count):
        phantom = generate_phantom(index % 5, seed=100 + index, orientation="LPS", shape_zyx=shape_zyx)
        paths.append(write_volume(phantom.array_kji, phantom.geometry, folder / f"study_{index}.nrrd"))
    return paths


# A whole ``twofivecnn predict`` that also reports its own peak memory (``VmHWM``): the peak a parent
# reads from ``wait4`` would include the parent's memory at the moment it forked.
PREDICT_REPORTING_PEAK = ("import sys; from TwoFiveCNNLib.app.cli import main; from TwoFiveCNNLib.io.memory import "
                          "peak_rss_kb; code = main(sys.argv[1:]); print('peak_rss_kb', peak_rss_kb()); "
                          "sys.exit(code)")


def default_engine() -> str:
    """The engine ``predict --engine auto`` runs the bundled model on here: ``onnx`` where ONNX Runtime is
    installed (its export ships with the model), else ``torch``."""
    from ..inference.engines import onnx_export_for
    from ..inference.onnx_model import onnxruntime_available

    return "onnx" if onnxruntime_available() and onnx_export_for(None) is not None else "torch"


def run_predict_process(inputs: list[Path], out: Path, report_peak: bool = False,
                        engine: str = "auto") -> tuple[float, int | None]:
    """Wall seconds of one whole ``twofivecnn predict`` process, as users run it (``python -m``), or
    with ``report_peak`` the same work with its peak resident KiB."""
    arguments = ["predict", *map(str, inputs), "--out", str(out), "--device", "cpu", "--engine", engine]
    command = [sys.executable, "-c", PREDICT_REPORTING_PEAK, *arguments] if report_peak else \
        [sys.executable, "-m", "TwoFiveCNNLib", *arguments]
    start = time.perf_counter()
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"predict failed ({run.returncode}): {run.stderr[-2000:]}")
    peaks = [int(line.split()[1]) for line in run.stdout.splitlines() if line.startswith("peak_rss_kb ")]
    return seconds, peaks[-1] if peaks else None


def bench_end_to_end(studies: dict[str, list[Path]], folder: Path, default: str) -> dict:
    """Per study, as users wait for it: a cold single-study process, and one study inside a batch of
    all ``paths`` ((batch - single) / (n - 1): start-up and model loading left out), in seconds, on
    predict's ``default`` engine here and on torch (:func:`add_matmul_ratios` adds the ratios)."""
    results = {}
    engines = [default] + (["torch"] if default != "torch" else [])
    for (name, paths), engine in itertools.product(studies.items(), engines):
        cold, _ = run_predict_process(paths[:1], folder / f"{name}_{engine}_one", engine=engine)
        batch, _ = run_predict_process(paths, folder / f"{name}_{engine}_batch", engine=engine)
        per_study = max(batch - cold, 0.0) / (len(paths) - 1)
        row = name if engine == engines[0] else f"{name}_{engine}"  # the first: what users get by default
        results[row] = {"engine": engine, "studies_in_batch": len(paths), "cold_single_seconds": round(cold, 2),
                        "batch_seconds": round(batch, 2), "per_study_in_batch_seconds": round(per_study, 3)}
    return results


def add_matmul_ratios(end_to_end: dict, unit_seconds: float) -> None:
    for row in end_to_end.values():
        row["cold_single_matmuls"] = round(row["cold_single_seconds"] / unit_seconds, 1)
        row["per_study_in_batch_matmuls"] = round(row["per_study_in_batch_seconds"] / unit_seconds, 1)


def startup_imports_seconds(engine: str) -> float:
    """What a fresh ``predict`` process spends importing before its first study (SciPy, ITK, and torch or
    ONNX Runtime)."""
    runtime = "onnxruntime" if engine == "onnx" else "torch"
    code = ("import time; t = time.perf_counter(); import TwoFiveCNNLib.app.cli, TwoFiveCNNLib.inference.outputs, "
            f"TwoFiveCNNLib.inference.predict, {runtime}; print(time.perf_counter() - t)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(output.stdout.strip().splitlines()[-1])


def bench_stage_profile(path: Path, folder: Path, engine: str) -> dict:
    """Seconds and share of each stage of one study's ``predict`` (read, preprocess, lungs and
    involvement, network, lesion map, each output), timed inside the code users run, after a warm-up
    study; start-up imports and model loading as a fresh process pays them."""
    from ..inference.engines import load_model
    from ..inference.outputs import write_prediction
    from ..inference.predict import predict_path

    started = time.perf_counter()
    model = load_model(None, "cpu", engine)
    load_seconds = time.perf_counter() - started
    write_prediction(*predict_path(model, path), folder, "warmup")
    times = StageTimes()
    prediction, volume = predict_path(model, path, times)
    write_prediction(prediction, volume, folder, "profiled", times=times)
    stages = {"startup_imports": startup_imports_seconds(engine), "load_model": load_seconds, **times}
    total = sum(stages.values())
    return {"study": f"{path.name} ({'x'.join(map(str, volume.geometry.size))})", "engine": engine,
            "total_seconds": round(total, 3),
            "stages": {name: {"seconds": round(seconds, 3), "share": round(seconds / total, 3)}
                       for name, seconds in stages.items()}}


def peak_rss_of_predict(slices: int, folder: Path, engine: str) -> dict:
    """Peak resident memory of a whole ``predict`` process on one 512 x 512 x ``slices`` int16 study."""
    path = write_bench_studies(folder / f"rss_{slices}", (slices, 512, 512), 1)[0]
    _, peak_kb = run_predict_process([path], folder / f"rss_{slices}_out", report_peak=True, engine=engine)
    volume_mb = slices * 512 * 512 * 2 / 2**20
    return {"study": f"512x512x{slices} int16", "engine": engine, "volume_mb": round(volume_mb),
            "peak_rss_mb": round(peak_kb / 1024),
            "peak_vs_volume": round(peak_kb / 1024 / volume_mb, 2)}


def bench_whole_predict(quick: bool) -> dict:
    """What users wait for and how much memory they need: the stage profile of one study (slicerio's
    chest CT and a 512 x 512 x 300 phantom), end-to-end times per study as matmul ratios, and the
    peak memory of whole ``predict`` processes by study size."""
    results = {"stage_profile": {}, "end_to_end": {}, "peak_rss": []}
    engine = default_engine()
    unit_before = matmul_seconds()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        chest = chest_ct_path()
        profiled = [] if chest is None else [chest]
        profiled += write_bench_studies(folder / "p300", (64 if quick else 300, 512, 512), 1)
        for path in profiled:
            results["stage_profile"][path.stem] = bench_stage_profile(path, folder / f"profile_{path.stem}", engine)
        count = 2 if quick else 5
        # --quick (a smoke run): the small real CT alone where it is installed.
        studies = {} if quick and chest is not None else \
            {"phantom_512x512x60": write_bench_studies(folder / "e2e", (60, 512, 512), count)}
        if chest is not None:
            copies = folder / "chest"
            copies.mkdir()
            studies["slicerio_chest_ct"] = [shutil.copy(chest, copies / f"chest_{i}.nrrd") for i in range(count)]
            studies["slicerio_chest_ct"] = [Path(p) for p in studies["slicerio_chest_ct"]]
        results["end_to_end"] = bench_end_to_end(studies, folder, engine)
        # The unit is timed before and after the processes, and the faster one is used: a machine that
        # was busy while the unit was timed cannot make the processes look cheaper than they are.
        unit_after = matmul_seconds()
        results["matmul_2048_seconds"] = round(min(unit_before, unit_after), 4)
        results["matmul_2048_seconds_before_after"] = [round(unit_before, 4), round(unit_after, 4)]
        add_matmul_ratios(results["end_to_end"], min(unit_before, unit_after))
        for slices in (64,) if quick else (100, 200, 400):
            results["peak_rss"].append(peak_rss_of_predict(slices, folder, engine))
    return results


def chest_ct_path() -> Path | None:
    """slicerio's real chest CT, where slicerio is installed."""
    try:
        import slicerio
    except ImportError:
        return None
    path = Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"
    return path if path.exists() else None


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "cuda": torch.cuda.is_available()}


def run_benchmarks(json_path: Path | None = None, quick: bool = False) -> dict:
    matmul = matmul_gflops(1024 if quick else 2048)
    results = {"machine": machine(), "matmul_gflops": round(matmul, 1),
               "preprocessing": bench_preprocessing(quick), "inference": bench_inference(quick),
               "stage2_epoch": bench_stage2_epoch(quick),
               "whole_predict": bench_whole_predict(quick)}
    if not quick:
        results["compile"] = bench_compile()
    results["inference"]["backbone_efficiency"] = round(results["inference"]["backbone_gflops"] / matmul, 3)
    print(format_bench(results))
    if json_path is not None:
        write_json_atomic(json_path, results)
    return results


def format_bench(results: dict) -> str:
    inference, stage2, whole = results["inference"], results["stage2_epoch"], results["whole_predict"]
    lines = [f"machine: {results['machine']}", f"float32 matmul: {results['matmul_gflops']} GFLOP/s"]
    lines += [f"preprocess {size}: {r['seconds']} s ({r['vs_float32_copy']}x a float32 copy); lungs "
              f"{r['lungs_seconds']} s, with involvement {r['lungs_and_involvement_seconds']} s"
              for size, r in results["preprocessing"].items()]
    lines += [
        f"2.5D inference, 64 x 128 x 128: {inference['twofive_seconds']} s; {inference['slices_per_second']} slices/s",
        (f"speedup vs 3D CNN {inference['speedup_vs_cnn3d']}x, vs ACS-inflated 3D {inference['speedup_vs_acs']}x "
         f"(networks alone: {inference['network_speedup_vs_cnn3d']}x, {inference['network_speedup_vs_acs']}x)"),
        (f"GFLOP per study: 2.5D network {inference['twofive_network_gflop']}, 3D CNN {inference['cnn3d_gflop']}, "
         f"ACS {inference['acs_gflop']}"),
        f"backbone {inference['backbone_gflops']} GFLOP/s = {inference['backbone_efficiency']} of matmul",
        f"stage-2 epoch vs 3D epoch ({stage2['studies']} studies): {stage2['stage2_vs_3d_epoch_cost']}",
        (f"whole predict processes (unit: one 2048 matmul = {whole['matmul_2048_seconds']} s, the faster of "
         f"{whole['matmul_2048_seconds_before_after']} timed before and after them):"),
    ]
    for name, row in whole["end_to_end"].items():
        lines.append(f"  {name} ({row['engine']}): cold single study {row['cold_single_seconds']} s = "
                     f"{row['cold_single_matmuls']} "
                     f"matmuls; per study in a batch of {row['studies_in_batch']} "
                     f"{row['per_study_in_batch_seconds']} s = {row['per_study_in_batch_matmuls']} matmuls")
    for row in whole["peak_rss"]:
        lines.append(f"  peak RSS {row['study']} ({row['engine']}): {row['peak_rss_mb']} MB ({row['peak_vs_volume']}x "
                     f"the volume)")
    for name, profile in whole["stage_profile"].items():
        stages = ", ".join(f"{stage} {value['seconds']} s ({100 * value['share']:.0f} %)"
                           for stage, value in profile["stages"].items())
        lines.append(f"  stages of {profile['study']} ({profile['engine']}): {stages}")
    if "compile" in results:
        compiled = results["compile"]
        lines.append(f"torch.compile: {compiled['compile_seconds']} s to compile, {compiled['compile_speedup']}x per "
                     f"study, pays after {compiled['pays_after_studies']} studies")
    return "\n".join(lines)
