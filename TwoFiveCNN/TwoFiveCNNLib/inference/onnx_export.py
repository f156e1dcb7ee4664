"""``twofivecnn export-onnx``: a model file's networks as ONNX graphs for :mod:`.onnx_model`.

Needs torch and the ``onnx`` package (``pip install onnx``), which only exporting does; running the
export needs ONNX Runtime alone. The folder is written beside its final place and renamed into it,
so a crash leaves no half-written export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..networks.severity_model import SeverityModel
from .onnx_model import EXPORT_FORMAT, EXPORT_VERSION, OnnxModelError, export_folder_of, file_sha256

OPSET = 17


class _Embed(nn.Module):
    def __init__(self, model: SeverityModel) -> None:
        super().__init__()
        self.classifier = model.slice_classifier

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.classifier.embed(slices)


def export_onnx(model_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Export the model file ``model_path`` to the folder ``out`` (default: ``<model>.onnx`` beside it)."""
    try:
        import onnx  # noqa: F401 - torch's exporter needs it
    except ImportError:
        raise OnnxModelError("exporting to ONNX needs the onnx package: pip install onnx") from None
    model_path = Path(model_path)
    model = SeverityModel.load(model_path, torch.device("cpu")).float().eval()
    out = Path(out) if out is not None else export_folder_of(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        size = model.preprocess.in_plane
        graphs = {"embed": (_Embed(model), torch.rand(4, 1, size, size), "slices", {0: "slices"}),
                  "head": (model.head, torch.rand(1, 6, model.slice_classifier.backbone.embedding_dim), "embeddings",
                           {1: "slices"})}
        if model.lesion_net is not None:
            graphs["lesions"] = (model.lesion_net, torch.rand(4, 1, size, size), "slices", {0: "slices"})
        for name, (module, example, input_name, axes) in graphs.items():
            with warnings.catch_warnings():  # the tracer's notes on Python checks of shapes: fine for these graphs
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), str(staging / f"{name}.onnx"), dynamo=False,
                                  input_names=[input_name], dynamic_axes={input_name: axes}, opset_version=OPSET,
                                  do_constant_folding=False)  # batch norms unfolded: weights stay float16-exact
            _store_weights_as_float16(staging / f"{name}.onnx")
        record = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "source": model_path.name,
                  "source_sha256": file_sha256(model_path), "name": model.name, "demo": model.is_demo,
                  "class_names": list(model.class_names), "preprocess": model.preprocess.to_dict(),
                  "has_lesion_net": model.lesion_net is not None, "lesion_lungs": model.lesion_lungs,
                  "fusion_cnn_weight": model.fusion_cnn_weight,
                  "load_warnings": list(model.metadata.get("load_warnings", []))}
        if model.aeration is not None:
            record["involvement"] = {"columns": model.involvement_feature_columns,
                                     "mean": model.metadata["aeration_mean"], "std": model.metadata["aeration_std"],
                                     "weight": model.aeration.weight.detach().double().tolist(),
                                     "bias": model.aeration.bias.detach().double().tolist()}
        (staging / "model.json").write_text(json.dumps(record, indent=1) + "\n")
        staging.chmod(0o755)  # mkdtemp's folder is private
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _store_weights_as_float16(path: Path) -> None:
    """Store a graph's float32 weights as float16, each cast back to float32 as the graph starts: half the
    file, the same numbers (model files keep their weights in float16 already, see
    ``SeverityModel.round_to_stored_precision``), and ONNX Runtime folds the casts away when it loads."""
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    casts, kept = [], []
    for initializer in graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype != np.float32 or values.size < 16 or not np.array_equal(
                values.astype(np.float16).astype(np.float32), values):
            kept.append(initializer)
            continue
        stored = numpy_helper.from_array(values.astype(np.float16), initializer.name + "_float16")
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [initializer.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))
