"""``twofivecnn export-onnx``: a model file's networks as ONNX graphs for :mod:`.onnx_model`.

Needs torch and the ``onnx`` package (``pip install onnx``), which only exporting does; running the
export needs ONNX Runtime alone.

The export folder may be any folder (``--out .`` included): the export writes, replaces and removes
only its own files, recorded in the folder's manifest (:mod:`..io.manifest`), and refuses a folder
that is or holds the model file. The graphs are made in a temporary folder and moved in; ``model.json``
leaves first and comes back last, so a crash leaves an incomplete export (no ``model.json``), never
one that loads with graphs of two exports.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..io.atomic import temporary_path, writer_is_dead
from ..io.manifest import MANIFEST_NAME, OutputManifest, refuse_overlap
from ..networks.severity_model import SeverityModel
from .fusion import Fusion
from .onnx_model import (
    EXPORT_FILES,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    GRAPHS,
    OnnxModelError,
    export_folder_of,
    file_sha256,
)

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
    out = Path(out) if out is not None else export_folder_of(model_path)
    refuse_overlap([out], [model_path], "export-onnx")
    model = SeverityModel.load(model_path, torch.device("cpu")).float().eval()
    manifest = OutputManifest.open(out, "export-onnx")
    staging = temporary_path(out / "export", folder=True)
    try:
        digests = _export_graphs(model, staging)
        record = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "source": model_path.name,
                  "source_sha256": file_sha256(model_path), "name": model.name, "demo": model.is_demo,
                  "class_names": list(model.class_names), "preprocess": model.preprocess.to_dict(),
                  "has_lesion_net": model.lesion_net is not None, "lesion_lungs": model.lesion_lungs,
                  "fusion_cnn_weight": model.fusion_cnn_weight,
                  "load_warnings": list(model.metadata.get("load_warnings", [])), "graphs": digests}
        fusion = Fusion.from_model(model)
        if fusion is not None:
            record["involvement"] = fusion.export_record()
        (staging / "model.json").write_text(json.dumps(record, indent=1) + "\n")
        _move_into_place(staging, manifest, [f"{name}.onnx" for name in digests])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _export_graphs(model: SeverityModel, folder: Path) -> dict[str, str]:
    """Write the model's networks as ONNX graphs into ``folder``; their sha256 by graph name."""
    size = model.preprocess.in_plane
    graphs = {"embed": (_Embed(model), torch.rand(4, 1, size, size), "slices", {0: "slices"}),
              "head": (model.head, torch.rand(1, 6, model.slice_classifier.backbone.embedding_dim), "embeddings",
                       {1: "slices"})}
    if model.lesion_net is not None:
        graphs["lesions"] = (model.lesion_net, torch.rand(4, 1, size, size), "slices", {0: "slices"})
    for name, (module, example, input_name, axes) in graphs.items():
        with warnings.catch_warnings():  # the tracer's notes on Python checks of shapes: fine for these graphs
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(folder / f"{name}.onnx"), dynamo=False,
                              input_names=[input_name], dynamic_axes={input_name: axes}, opset_version=OPSET,
                              do_constant_folding=False)  # batch norms unfolded: weights stay float16-exact
        _store_weights_as_float16(folder / f"{name}.onnx")
    return {name: file_sha256(folder / f"{name}.onnx") for name in graphs}


def _move_into_place(staging: Path, manifest: OutputManifest, graph_files: list[str]) -> None:
    """Move the staged graphs and then ``model.json`` into the export folder, replacing only files the
    manifest records (or an export made before manifests, :func:`_set_aside_earlier_export`)."""
    out = manifest.root
    _set_aside_earlier_export(out, staging)
    manifest.claim(*(out / name for name in [*graph_files, "model.json"]))
    (out / "model.json").unlink(missing_ok=True)  # from here until the end, an incomplete export
    for name in GRAPHS:  # a graph of an earlier export that this one has not (a model without lesions)
        earlier = out / f"{name}.onnx"
        if f"{name}.onnx" not in graph_files and earlier.exists() and manifest.owns(earlier):
            manifest.remove(earlier)
    for name in graph_files:
        os.replace(staging / name, out / name)
    os.replace(staging / "model.json", out / "model.json")


def _set_aside_earlier_export(out: Path, staging: Path) -> None:
    """An export made before manifests existed (a folder holding only an export's files, with no
    manifest), such as the one shipped beside the demo model, is ours to replace: its files move into
    the staging folder, removed with it. Any other file in the folder keeps the claim from replacing it
    (a killed run's temporaries excepted: the claim sweeps them)."""
    if (out / MANIFEST_NAME).exists() or not (out / "model.json").is_file():
        return
    try:
        earlier = json.loads((out / "model.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return
    entries = {entry.name for entry in out.iterdir() if entry != staging and not writer_is_dead(entry)}
    if isinstance(earlier, dict) and earlier.get("format") == EXPORT_FORMAT and entries <= set(EXPORT_FILES):
        aside = staging / "earlier"
        aside.mkdir()
        os.replace(out / "model.json", aside / "model.json")  # first: the rest is no export without it
        for name in entries - {"model.json"}:
            os.replace(out / name, aside / name)


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
