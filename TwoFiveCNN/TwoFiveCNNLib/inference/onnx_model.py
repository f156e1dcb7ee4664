"""A model exported for ONNX Runtime: finding, reading and checking an export, which
:class:`.engines.OnnxGrader` grades with, no torch in the process.

Importing torch takes about two seconds, longer than grading a study; a ``predict`` process that runs
its networks on ONNX Runtime starts without it (see the README's performance section). The export is
a folder made by ``twofivecnn export-onnx`` (:mod:`.onnx_export`): the slice backbone, the attention
head and the lesion network as ONNX graphs, and ``model.json`` with everything else the model file
holds that grading needs (preprocessing, class names, the involvement part and its mix with the
CNN). The probabilities agree with eager PyTorch's to float rounding (tested within 1e-4).

ONNX files are data (protobuf), not code: loading one executes nothing stored in it.

An export is checked as it loads, so a damaged or edited one is an error naming the file rather than
wrong grades: ``model.json``'s fields and types, each graph's sha256 (recorded in ``model.json``), the
graphs' inputs and outputs against the record (image size, classes, embedding width), and, when the
model file it was made from is at hand, the record against that file (classes, preprocessing, the
involvement part and its columns), read without torch (:func:`..io.model_file.read_archive_without_torch`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..data.tasks import TaskDefinition
from ..io.model_file import ModelFileError, read_archive_without_torch
from ..transforms.involvement import LUNG_FEATURES
from ..transforms.preprocess import PreprocessConfig
from .fusion import Fusion

EXPORT_FORMAT = "twofivecnn-onnx"
EXPORT_VERSION = 2  # 2: model.json records each graph's sha256
GRAPHS = ("embed", "head", "lesions")
EXPORT_FILES = ("model.json", *(f"{name}.onnx" for name in GRAPHS))  # every file an export may hold


class OnnxModelError(ValueError):
    """An export folder that is missing, incomplete or from another version."""


def export_folder_of(model_path: str | os.PathLike) -> Path:
    """Where ``export-onnx`` puts a model file's export by default: ``model.pt`` -> ``model.onnx/``."""
    path = Path(model_path)
    return path.with_name(path.stem + ".onnx")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def read_export_record(folder: str | os.PathLike) -> dict:
    """An export's ``model.json``, its fields and types checked: what grading reads from it is usable."""
    path = Path(folder) / "model.json"
    if not path.is_file() and any((Path(folder) / f"{name}.onnx").is_file() for name in GRAPHS):
        raise OnnxModelError(f"{Path(folder)}: an incomplete ONNX export (graphs without model.json, which "
                             f"export-onnx writes last: a run that did not finish); {_export_again(None)}")
    if not path.is_file():
        raise OnnxModelError(f"{Path(folder)}: not an ONNX export of a TwoFiveCNN model (no model.json); make one "
                             f"with `twofivecnn export-onnx --model MODEL.pt`.")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise OnnxModelError(f"{path}: not readable ({str(error).splitlines()[0][:120]}); "
                             f"{_export_again(None)}") from None
    if not isinstance(record, dict):
        raise OnnxModelError(f"{path}: holds {type(record).__name__}, not an export's record; {_export_again(None)}")
    if record.get("format") != EXPORT_FORMAT or record.get("version") != EXPORT_VERSION:
        raise OnnxModelError(f"{Path(folder)}: an ONNX export of format {record.get('format')!r} version "
                             f"{record.get('version')!r}; this version of TwoFiveCNN reads {EXPORT_FORMAT!r} "
                             f"version {EXPORT_VERSION}; {_export_again(record)}")
    problem = _record_problem(record)
    if problem:
        raise OnnxModelError(f"{path}: {problem}; {_export_again(record)}")
    return record


def _export_again(record: dict | None) -> str:
    source = record.get("source") if isinstance(record, dict) else None
    model = source if isinstance(source, str) and source else "MODEL.pt"
    return f"export the model again with `twofivecnn export-onnx --model {model}`."


# model.json's fields and the types grading needs them in (bool is no number here).
_RECORD_FIELDS = {"source": str, "source_sha256": str, "name": str, "demo": bool, "class_names": list,
                  "preprocess": dict, "has_lesion_net": bool, "lesion_lungs": bool, "fusion_cnn_weight": float,
                  "load_warnings": list, "graphs": dict}


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _numbers(value: Any, length: int) -> bool:
    """A list of ``length`` finite numbers."""
    return isinstance(value, list) and len(value) == length and all(_is_a(v, float) for v in value)


def _record_problem(record: dict) -> str | None:
    """What makes a record unusable (a missing field, a wrong type, inconsistent sizes), or None."""
    for name, kind in _RECORD_FIELDS.items():
        if name not in record:
            return f"no {name!r} field"
        if not _is_a(record[name], kind):
            return f"{name!r} is {record[name]!r}, not {'a number' if kind is float else kind.__name__}"
    if Path(record["source"]).name != record["source"]:  # the file beside the folder, never a path elsewhere
        return f"'source' {record['source']!r} is not a file name"
    classes = record["class_names"]
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        return f"'class_names' {classes!r} are not two or more distinct names"
    if not all(isinstance(w, str) for w in record["load_warnings"]):
        return "'load_warnings' holds something other than text"
    if not 0 <= record["fusion_cnn_weight"] <= 1:
        return f"'fusion_cnn_weight' {record['fusion_cnn_weight']} is outside 0..1"
    needed = {"embed", "head", *(("lesions",) if record["has_lesion_net"] else ())}
    digests = record["graphs"]
    if set(digests) != needed or not all(isinstance(d, str) and len(d) == 64 for d in digests.values()):
        return f"'graphs' should give the sha256 of {', '.join(sorted(needed))}, and gives {digests!r}"
    problem = _preprocess_problem(record["preprocess"])
    if problem:
        return problem
    involvement = record.get("involvement")
    return None if involvement is None else _involvement_problem(involvement, len(classes))


def _preprocess_problem(settings: dict) -> str | None:
    try:
        config = PreprocessConfig.from_dict(settings)
    except (TypeError, ValueError) as error:
        return f"'preprocess' is not usable ({str(error)[:120]})"
    for field in fields(PreprocessConfig):
        if field.name != "window" and not _is_a(getattr(config, field.name), type(field.default)):
            return f"'preprocess' {field.name!r} is {getattr(config, field.name)!r}, not {type(field.default).__name__}"
    return None


def _involvement_problem(involvement: Any, n_classes: int) -> str | None:
    if not isinstance(involvement, dict):
        return f"'involvement' is {involvement!r}, not an object"
    columns = involvement.get("columns")
    if not (isinstance(columns, list) and columns and len(set(map(repr, columns))) == len(columns)
            and all(_is_a(c, int) and 0 <= c < len(LUNG_FEATURES) for c in columns)):
        return f"'involvement' 'columns' {columns!r} are not distinct lung feature columns 0..{len(LUNG_FEATURES) - 1}"
    n = len(columns)
    weight = involvement.get("weight")
    if not (_numbers(involvement.get("mean"), n) and _numbers(involvement.get("std"), n)
            and all(v > 0 for v in involvement["std"]) and _numbers(involvement.get("bias"), n_classes)
            and isinstance(weight, list) and len(weight) == n_classes and all(_numbers(row, n) for row in weight)):
        return (f"'involvement' should hold 'mean' and 'std' (std above 0) of {n} numbers, 'weight' of "
                f"{n_classes} x {n} numbers and 'bias' of {n_classes} numbers")
    return None


def model_file_mismatch(record: dict, model_file: Path) -> str | None:
    """Where a record differs from the model file it was made from (what grading takes from it: classes,
    preprocessing, the lesion network, the involvement part and the columns it reads; the model's name
    and whether it is a demo model, which every output shows), or None. Read
    without torch: the check costs a few milliseconds, not torch's import."""
    tensors, metadata = read_archive_without_torch(model_file)
    try:
        expected = {"demo": bool(metadata.get("demo", False)),  # the notice "not for clinical use"
                    "class_names": list(TaskDefinition.from_dict(metadata["task"]).class_names),
                    "preprocess": PreprocessConfig.from_dict(metadata["preprocess"]).to_dict(),
                    "has_lesion_net": "lesion_net" in tensors}
        if "name" in metadata:
            expected["name"] = metadata["name"]
        if "fusion" in metadata:
            expected["fusion_cnn_weight"] = float(metadata["fusion"]["cnn_weight"])
        fusion = Fusion.from_model_file(tensors, metadata)
        expected["involvement"] = None if fusion is None else fusion.export_record()
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ModelFileError(f"{model_file}: the model does not match this version of TwoFiveCNN "
                             f"({str(error)[:120]}); retrain it or update TwoFiveCNN.") from None
    for name, value in expected.items():
        if record.get(name) != value:
            return f"{name!r} is {_short(record.get(name))} here but {_short(value)} in {model_file}"
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _graph_shape_problem(name: str, session: Any, record: dict, embedding_dim: int) -> str | None:
    """How a graph's inputs and outputs differ from what the record says they take and give, or None."""
    size, n_classes = record["preprocess"]["in_plane"], len(record["class_names"])
    slices = ("slices", [None, 1, size, size])
    expected = {"embed": ([slices], [[None, embedding_dim]]),
                "head": ([("embeddings", [1, None, embedding_dim])], [[None, n_classes], [None, None]]),
                "lesions": ([slices], [[None, 2, size, size]])}[name]
    inputs = [(i.name, list(i.shape)) for i in session.get_inputs()]
    outputs = [list(o.shape) for o in session.get_outputs()]
    types = {value.type for value in [*session.get_inputs(), *session.get_outputs()]}
    if types != {"tensor(float)"}:
        return f"takes or gives {', '.join(sorted(types))}; grading gives and reads tensor(float) alone"

    def fits(shape: list, pattern: list) -> bool:
        return len(shape) == len(pattern) and all(p is None or s == p for s, p in zip(shape, pattern))

    if len(inputs) != 1 or inputs[0][0] != expected[0][0][0] or not fits(inputs[0][1], expected[0][0][1]) \
            or len(outputs) != len(expected[1]) or not all(fits(s, p) for s, p in zip(outputs, expected[1])):
        def show(pattern: list) -> str:
            return "[" + ", ".join("any" if p is None else str(p) for p in pattern) + "]"

        return (f"takes {', '.join(f'{n} {s}' for n, s in inputs)} and gives {', '.join(map(str, outputs))}; "
                f"model.json (image size {size}, {n_classes} classes) needs {expected[0][0][0]} "
                f"{show(expected[0][0][1])} giving {', '.join(show(p) for p in expected[1])}")
    return None


def _open_graph(onnxruntime: Any, path: Path, options: Any, record: dict) -> Any:
    """An ONNX Runtime session of one graph of the export, once its bytes are the ones model.json records."""
    name = path.stem
    if not path.is_file():
        raise OnnxModelError(f"{path}: missing from the export; {_export_again(record)}")
    if file_sha256(path) != record["graphs"][name]:
        raise OnnxModelError(f"{path}: not the graph model.json records (its sha256 differs: truncated, damaged "
                             f"or replaced); {_export_again(record)}")
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own types for unreadable graphs
        reason = " ".join(str(error).split())[:160]
        raise OnnxModelError(f"{path}: ONNX Runtime cannot load it ({reason}); {_export_again(record)}") from None


def open_export(folder: str | os.PathLike, threads: int | None = None,
                model_file: str | os.PathLike | None = None) -> tuple[dict, dict[str, Any]]:
    """Open and check the export in ``folder``: its checked ``model.json`` record and an ONNX Runtime
    session by graph name. ``model_file``: the model file it must have been made from (an export made
    from another version of it is refused); by default the file ``model.json`` names beside the folder,
    when it is the one the export was made from."""
    folder = Path(folder)
    record = read_export_record(folder)
    _check_source(folder, record, None if model_file is None else Path(model_file))
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or max(1, min(os.cpu_count() or 1, 8))
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    # Idle threads sleep rather than spin: between network calls the cores read, segment and write.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    embedding_dim = 0
    for name in GRAPHS:
        if name == "lesions" and not record["has_lesion_net"]:
            continue
        path = folder / f"{name}.onnx"
        sessions[name] = _open_graph(onnxruntime, path, options, record)
        if name == "embed":  # the embedding width the head must take
            width = sessions[name].get_outputs()[0].shape[-1]
            embedding_dim = width if isinstance(width, int) and width > 0 else 0
        problem = _graph_shape_problem(name, sessions[name], record, embedding_dim)
        if problem:
            raise OnnxModelError(f"{path}: {problem}; {_export_again(record)}")
    return record, sessions


def _check_source(folder: Path, record: dict, model_file: Path | None) -> None:
    """Refuse an export made from another version of ``model_file``, or that says other than the
    model file it was made from (by default the one beside the folder, if it is that file). Without
    the model file, the export runs as it is: its graphs are checked against model.json alone."""
    if model_file is None:
        beside = folder.parent / record["source"]
        if beside.is_file() and file_sha256(beside) == record["source_sha256"]:
            model_file = beside
    elif not model_file.is_file():
        model_file = None
    elif file_sha256(model_file) != record["source_sha256"]:
        raise OnnxModelError(f"{folder}: made from another version of {model_file} (model.json's "
                             f"source_sha256 differs from the file's); export the model again with "
                             f"`twofivecnn export-onnx --model {model_file}`.")
    if model_file is not None:
        try:
            mismatch = model_file_mismatch(record, model_file)
        except (ModelFileError, ValueError) as error:  # torch, which reads it for the torch engine, decides
            raise OnnxModelError(f"{folder}: cannot be checked against {model_file} ({error})") from None
        if mismatch:
            raise OnnxModelError(f"{folder / 'model.json'}: {mismatch}, the model file it was made "
                                 f"from; export the model again with `twofivecnn export-onnx --model "
                                 f"{model_file}`.")
