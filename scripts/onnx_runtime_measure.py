"""What ONNX Runtime gives ``predict`` against torch: the cold start without torch, the networks' speed,
the peak memory of each process (``io.memory.peak_rss_kb``), and how far its probabilities move from
eager PyTorch's.

    .venv/bin/python scripts/onnx_runtime_measure.py > benchmarks/onnx_runtime.json

This is the measurement that chose ONNX Runtime as ``predict``'s default engine (``--engine auto``).
It uses the bundled demo model and its shipped export (``twofivecnn export-onnx``). Two fresh
processes each grade the same studies up to the probabilities and the lesion network's output, timed
from their start: one on torch, one on ONNX Runtime with no torch at all (it checks that torch was
never imported). Both read the study, measure its lungs and make the model grid with the project's
own code; output writing is left out of both (``twofivecnn bench`` times whole ``predict``
processes). Timings are in the unit of one 2048 x 2048 float32 matmul measured in the same run, as
``twofivecnn bench`` does; warm network timings compare the backbone's efficiency against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from TwoFiveCNNLib.evaluation.bench import (
    best_time,
    chest_ct_path,
    forward_gflop,
    matmul_seconds,
    write_bench_studies,
)
from TwoFiveCNNLib.inference.engines import load_model
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.transforms.involvement import lung_features, lung_involvement_coarse
from TwoFiveCNNLib.transforms.preprocess import to_model_grid

REPEATS = 5

# The same steps in both child processes, from process start: imports, model, read, lungs, model grid,
# networks (probabilities and the lesion network's output). Both end as the command line does.
CHILD = """
import time; start = time.perf_counter()
import json, os, sys
from TwoFiveCNNLib.inference.engines import load_model
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.transforms.involvement import lung_features, lung_involvement_coarse
from TwoFiveCNNLib.transforms.preprocess import to_model_grid
marks = {"imports": time.perf_counter() - start}
model = load_model(None, "cpu", sys.argv[2]); marks["model"] = time.perf_counter() - start
volume = read_volume(sys.argv[1]); marks["read"] = time.perf_counter() - start
report, _, _ = lung_involvement_coarse(volume.array, volume.spacing_zyx); marks["lungs"] = time.perf_counter() - start
grid = to_model_grid(volume, model.preprocess)[0]; marks["grid"] = time.perf_counter() - start
result = model.grade(grid, lung_features(report))
model.lesion_probabilities(grid)
if sys.argv[2] == "onnx":
    assert "torch" not in sys.modules, "torch was imported"
marks["networks"] = time.perf_counter() - start
from TwoFiveCNNLib.io.memory import peak_rss_kb
print(json.dumps({"marks": marks, "probabilities": result.probabilities.tolist(), "peak_rss_kb": peak_rss_kb()}),
      flush=True)
os._exit(0)  # as the command line ends: without the interpreter's teardown of torch
"""


def child(path: Path, engine: str) -> dict:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", CHILD, str(path), engine], capture_output=True, text=True, check=True)
    record = json.loads(run.stdout.strip().splitlines()[-1])
    record["process_seconds"] = time.perf_counter() - started
    return record


def network_speed(model, exported, grid: np.ndarray, unit: float) -> dict:
    """Warm per-study times of the networks on one study's grid, eager PyTorch against ONNX Runtime."""
    torch_backbone = best_time(lambda: model.embed_slices(grid), REPEATS)
    torch_lesions = best_time(lambda: model.lesion_probabilities(grid), REPEATS)
    onnx_backbone = best_time(lambda: exported.embed_slices(grid), REPEATS)
    onnx_lesions = best_time(lambda: exported.lesion_probabilities(grid), REPEATS)
    gflop = forward_gflop(lambda: model.embed_slices(grid))
    matmul_gflops = 2 * 2048**3 / unit / 1e9
    return {"slices": len(grid), "backbone_gflop": round(gflop, 2),
            "backbone_seconds": {"torch": round(torch_backbone, 4), "onnxruntime": round(onnx_backbone, 4)},
            "backbone_vs_matmul": {"torch": round(gflop / torch_backbone / matmul_gflops, 3),
                                   "onnxruntime": round(gflop / onnx_backbone / matmul_gflops, 3)},
            "lesion_net_seconds": {"torch": round(torch_lesions, 4), "onnxruntime": round(onnx_lesions, 4)}}


def main() -> int:
    model, exported = load_model(None, "cpu", "torch"), load_model(None, "cpu", "onnx")
    unit = matmul_seconds()
    results = {"matmul_2048_seconds": round(unit, 4), "studies": {}}
    with tempfile.TemporaryDirectory() as name:
        studies = write_bench_studies(Path(name) / "phantom", (60, 512, 512), 1)
        if chest_ct_path() is not None:
            studies.append(chest_ct_path())
        for path in studies:
            volume = read_volume(path)
            grid = to_model_grid(volume, model.preprocess)[0]
            report, _, _ = lung_involvement_coarse(volume.array, volume.spacing_zyx)
            reference = model.grade(grid, lung_features(report)).probabilities
            record = {"size": "x".join(map(str, volume.geometry.size))}
            for engine, label in (("torch", "torch"), ("onnx", "onnxruntime")):
                fastest = min((child(path, engine) for _ in range(REPEATS)), key=lambda r: r["process_seconds"])
                record[label] = {"process_seconds": round(fastest["process_seconds"], 3),
                                 "process_matmuls": round(fastest["process_seconds"] / unit, 1),
                                 "marks_seconds": {k: round(v, 3) for k, v in fastest["marks"].items()},
                                 "peak_rss_mb": round(fastest["peak_rss_kb"] / 1024),
                                 "max_probability_difference": float(np.abs(
                                     np.asarray(fastest["probabilities"]) - reference).max())}
            record["networks_warm"] = network_speed(model, exported, grid, unit)
            results["studies"][path.stem] = record
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
