"""What an ONNX Runtime path for ``predict`` would give: the cold start without torch, the networks' speed,
and how far its probabilities move from eager PyTorch's.

    .venv/bin/pip install onnxruntime   # not a dependency of the extension
    .venv/bin/python scripts/onnx_runtime_measure.py > benchmarks/onnx_runtime.json

This is the measurement that chose ONNX Runtime as ``predict``'s default engine (``--engine auto``).
The bundled demo model's three networks (slice backbone, attention head, lesion network) are exported
with torch's ONNX exporter, outside the package (the involvement part and the mix are redone here in
NumPy). Then two fresh processes each grade the same studies up to the probabilities and the lesion
network's output, timed from their start: one on torch, one on ONNX Runtime with no torch at all (it
checks that torch was never imported). Both read the study, measure its lungs and make the model grid
with the project's own code; output writing is left out of both (``twofivecnn bench`` times whole
``predict`` processes). Timings are in the unit of one 2048 x 2048 float32 matmul measured in the same
run, as ``twofivecnn bench`` does; warm network timings compare the backbone's efficiency against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from TwoFiveCNNLib.evaluation.bench import (
    best_time,
    chest_ct_path,
    forward_gflop,
    matmul_seconds,
    write_bench_studies,
)
from TwoFiveCNNLib.inference.predict import load_model, predict_grid
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.transforms.involvement import lung_features, lung_involvement_coarse
from TwoFiveCNNLib.transforms.preprocess import to_model_grid

REPEATS = 5

# The same steps in both child processes, from process start: imports, model, read, lungs, networks.
TORCH_CHILD = """
import time; start = time.perf_counter()
import json, sys
import numpy as np
import torch
from TwoFiveCNNLib.inference.predict import load_model, predict_grid
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.transforms.involvement import lung_features, lung_involvement_coarse
from TwoFiveCNNLib.transforms.preprocess import to_model_grid
marks = {"imports": time.perf_counter() - start}
model = load_model(None, "cpu", "torch"); marks["model"] = time.perf_counter() - start
volume = read_volume(sys.argv[1]); marks["read"] = time.perf_counter() - start
report, _, _ = lung_involvement_coarse(volume.array, volume.spacing_zyx); marks["lungs"] = time.perf_counter() - start
grid = to_model_grid(volume, model.preprocess)[0]; marks["grid"] = time.perf_counter() - start
result = predict_grid(model, grid, lung_features(report))
with torch.inference_mode():
    lesions = model.lesion_probabilities(torch.from_numpy(grid)[:, None])
marks["networks"] = time.perf_counter() - start
print(json.dumps({"marks": marks, "probabilities": result.probabilities.tolist()}), flush=True)
import os; os._exit(0)  # as the command line ends: without the interpreter's teardown of torch
"""

ONNX_CHILD = """
import time; start = time.perf_counter()
import json, sys
import numpy as np
import onnxruntime
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.transforms.involvement import lung_features, lung_involvement_coarse
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig, to_model_grid
marks = {"imports": time.perf_counter() - start}
folder = sys.argv[3]
options = onnxruntime.SessionOptions(); options.intra_op_num_threads = 2
sessions = {name: onnxruntime.InferenceSession(f"{folder}/{name}.onnx", options, providers=["CPUExecutionProvider"])
            for name in ("embed", "head", "lesions")}
fusion = json.load(open(f"{folder}/fusion.json"))
marks["model"] = time.perf_counter() - start
volume = read_volume(sys.argv[1]); marks["read"] = time.perf_counter() - start
report, _, _ = lung_involvement_coarse(volume.array, volume.spacing_zyx); marks["lungs"] = time.perf_counter() - start
grid = to_model_grid(volume, PreprocessConfig.from_dict(fusion["preprocess"]))[0][:, None]
marks["grid"] = time.perf_counter() - start
def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True)); return e / e.sum(-1, keepdims=True)
embeddings = np.concatenate([sessions["embed"].run(None, {"slices": grid[i:i + 32]})[0] for i in range(0, len(grid), 32)])
logits, attention = sessions["head"].run(None, {"embeddings": embeddings[None]})
cnn = softmax(logits[0].astype(np.float64))
features = lung_features(report)[fusion["columns"]]
involvement = softmax(((features - fusion["mean"]) / np.asarray(fusion["std"])) @ np.asarray(fusion["weight"]).T
                      + fusion["bias"])
probabilities = fusion["cnn_weight"] * cnn + (1 - fusion["cnn_weight"]) * involvement
lesions = np.concatenate([sessions["lesions"].run(None, {"slices": grid[i:i + 8]})[0] for i in range(0, len(grid), 8)])
marks["networks"] = time.perf_counter() - start
assert "torch" not in sys.modules, "torch was imported"
print(json.dumps({"marks": marks, "probabilities": probabilities.tolist()}), flush=True)
import os; os._exit(0)
"""


class Embed(nn.Module):
    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(slices)


class Head(nn.Module):
    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(embeddings)


def export(model, folder: Path) -> None:
    """The three networks as ONNX files (dynamic slice counts), and the involvement part and fusion as JSON."""
    size = model.preprocess.in_plane
    examples = {"embed": (Embed(model.slice_classifier), torch.rand(4, 1, size, size), "slices"),
                "head": (Head(model.head), torch.rand(1, 6, model.slice_classifier.backbone.embedding_dim), "embeddings"),
                "lesions": (model.lesion_net, torch.rand(4, 1, size, size), "slices")}
    for name, (module, example, input_name) in examples.items():
        axis = {0: "slices"} if input_name == "slices" else {1: "slices"}
        torch.onnx.export(module.eval().float().to(memory_format=torch.contiguous_format), (example,),
                          str(folder / f"{name}.onnx"), dynamo=False, input_names=[input_name],
                          dynamic_axes={input_name: axis}, opset_version=17)
    aeration = model.aeration
    (folder / "fusion.json").write_text(json.dumps({
        "columns": model.involvement_feature_columns, "mean": model.metadata["aeration_mean"], "std": model.metadata["aeration_std"],
        "weight": aeration.weight.detach().double().tolist(), "bias": aeration.bias.detach().double().tolist(),
        "cnn_weight": model.fusion_cnn_weight, "preprocess": model.preprocess.to_dict()}))


def child(code: str, *arguments: str) -> dict:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, check=True)
    record = json.loads(run.stdout.strip().splitlines()[-1])
    record["process_seconds"] = time.perf_counter() - started
    return record


def network_speed(model, folder: Path, grid: np.ndarray, unit: float) -> dict:
    """Warm per-study times of the networks on one study's grid, eager PyTorch against ONNX Runtime."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sessions = {name: onnxruntime.InferenceSession(str(folder / f"{name}.onnx"), options,
                                                   providers=["CPUExecutionProvider"]) for name in ("embed", "lesions")}
    slices = torch.from_numpy(grid)[:, None]
    with torch.inference_mode():
        torch_backbone = best_time(lambda: model.embed_slices(slices), REPEATS)
        torch_lesions = best_time(lambda: model.lesion_probabilities(slices), REPEATS)
    array = grid[:, None]
    onnx_backbone = best_time(lambda: [sessions["embed"].run(None, {"slices": array[i:i + 32]})
                                       for i in range(0, len(array), 32)], REPEATS)
    onnx_lesions = best_time(lambda: [sessions["lesions"].run(None, {"slices": array[i:i + 8]})
                                      for i in range(0, len(array), 8)], REPEATS)
    gflop = forward_gflop(lambda: model.embed_slices(slices))
    matmul_gflops = 2 * 2048**3 / unit / 1e9
    return {"slices": len(grid), "backbone_gflop": round(gflop, 2),
            "backbone_seconds": {"torch": round(torch_backbone, 4), "onnxruntime": round(onnx_backbone, 4)},
            "backbone_vs_matmul": {"torch": round(gflop / torch_backbone / matmul_gflops, 3),
                                   "onnxruntime": round(gflop / onnx_backbone / matmul_gflops, 3)},
            "lesion_net_seconds": {"torch": round(torch_lesions, 4), "onnxruntime": round(onnx_lesions, 4)}}


def main() -> int:
    model = load_model(None, "cpu")
    unit = matmul_seconds()
    results = {"matmul_2048_seconds": round(unit, 4), "studies": {}}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        export(model, folder)
        studies = write_bench_studies(folder / "phantom", (60, 512, 512), 1)
        if chest_ct_path() is not None:
            studies.append(chest_ct_path())
        for path in studies:
            volume = read_volume(path)
            grid = np.ascontiguousarray(to_model_grid(volume, model.preprocess)[0], dtype=np.float32)
            grid_path = folder / f"{path.stem}_grid.npy"
            np.save(grid_path, grid)
            report, _, _ = lung_involvement_coarse(volume.array, volume.spacing_zyx)
            reference = predict_grid(model, grid, lung_features(report)).probabilities
            runs = {engine: [child(code, str(path), str(grid_path), str(folder)) for _ in range(REPEATS)]
                    for engine, code in (("torch", TORCH_CHILD), ("onnxruntime", ONNX_CHILD))}
            record = {"size": "x".join(map(str, volume.geometry.size))}
            for engine, records in runs.items():
                fastest = min(records, key=lambda r: r["process_seconds"])
                record[engine] = {"process_seconds": round(fastest["process_seconds"], 3),
                                  "process_matmuls": round(fastest["process_seconds"] / unit, 1),
                                  "marks_seconds": {k: round(v, 3) for k, v in fastest["marks"].items()},
                                  "max_probability_difference": float(np.abs(
                                      np.asarray(fastest["probabilities"]) - reference).max())}
            record["networks_warm"] = network_speed(model, folder, grid, unit)
            results["studies"][path.stem] = record
    json.dump(results, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
