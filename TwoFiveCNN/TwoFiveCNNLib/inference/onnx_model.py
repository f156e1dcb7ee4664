"""A model exported for ONNX Runtime: the same grading as :class:`..networks.severity_model.SeverityModel`
with no torch in the process.

Importing torch takes about two seconds, longer than grading a study; a ``predict`` process that runs
its networks on ONNX Runtime starts without it (see the README's performance section). The export is
a folder made by ``twofivecnn export-onnx`` (:mod:`.onnx_export`): the slice backbone, the attention
head and the lesion network as ONNX graphs, and ``model.json`` with everything else the model file
holds that grading needs (preprocessing, class names, the involvement part and its mix with the
CNN). The probabilities agree with eager PyTorch's to float rounding (tested within 1e-4).

ONNX files are data (protobuf), not code: loading one executes nothing stored in it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..transforms.preprocess import PreprocessConfig

EXPORT_FORMAT = "twofivecnn-onnx"
EXPORT_VERSION = 1
GRAPHS = ("embed", "head", "lesions")
SLICES_PER_RUN = {"embed": 32, "lesions": 8}  # bounded activation memory, as the torch model chunks them


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


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass
class OnnxGrade:
    probabilities: np.ndarray  # (C,)
    slice_attention: np.ndarray  # (S,)
    cnn_probabilities: np.ndarray  # (C,)


class OnnxSeverityModel:
    """A model export run by ONNX Runtime on the CPU, with the attributes ``predict`` reads of a model."""

    engine = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, threads: int | None = None) -> None:
        self.folder = self.source_file = Path(folder)
        record_path = self.folder / "model.json"
        if not record_path.is_file():
            raise OnnxModelError(f"{self.folder}: not an ONNX export of a TwoFiveCNN model (no model.json); make one "
                                 f"with `twofivecnn export-onnx --model MODEL.pt`.")
        record = json.loads(record_path.read_text())
        if record.get("format") != EXPORT_FORMAT or record.get("version") != EXPORT_VERSION:
            raise OnnxModelError(f"{self.folder}: an ONNX export of format {record.get('format')!r} version "
                                 f"{record.get('version')!r}; this version of TwoFiveCNN reads {EXPORT_FORMAT!r} "
                                 f"version {EXPORT_VERSION}. Export the model again.")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or max(1, min(os.cpu_count() or 1, 8))
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        # Idle threads sleep rather than spin: between network calls the cores read, segment and write.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.record = record
        self.sessions = {}
        for name in GRAPHS:
            path = self.folder / f"{name}.onnx"
            if name == "lesions" and not record["has_lesion_net"]:
                continue
            if not path.is_file():
                raise OnnxModelError(f"{path}: missing from the export; export the model again.")
            self.sessions[name] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.preprocess = PreprocessConfig.from_dict(record["preprocess"])
        self.class_names = tuple(record["class_names"])
        self.metadata = {"name": record["name"], "demo": record["demo"],
                         "load_warnings": list(record.get("load_warnings", [])),
                         "fusion": {"cnn_weight": record["fusion_cnn_weight"]}}

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def is_demo(self) -> bool:
        return bool(self.metadata["demo"])

    @property
    def lesion_lungs(self) -> bool:
        """Whether the involvement is measured with the lesion network's voxels in the lungs."""
        return bool(self.record.get("lesion_lungs", False)) and "lesions" in self.sessions

    def accelerate(self, half: bool = False, compile: bool = False) -> OnnxSeverityModel:
        if half or compile:
            raise ValueError("--half and --compile are options of the torch engine; add --engine torch.")
        return self

    def _run_in_chunks(self, name: str, slices: np.ndarray) -> np.ndarray:
        step = SLICES_PER_RUN[name]
        session = self.sessions[name]
        return np.concatenate([session.run(None, {"slices": slices[i: i + step]})[0]
                               for i in range(0, len(slices), step)])

    def embed_slices(self, slices: np.ndarray) -> np.ndarray:
        """``(s, 1, H, W)`` slices -> ``(s, D)`` embeddings."""
        return self._run_in_chunks("embed", np.ascontiguousarray(slices, dtype=np.float32))

    def grade(self, grid: np.ndarray, features: np.ndarray | None) -> OnnxGrade:
        """Probabilities, slice attention and the CNN head's own probabilities for one study's model grid."""
        embeddings = self.embed_slices(np.asarray(grid)[:, None])
        logits, attention = self.sessions["head"].run(None, {"embeddings": embeddings[None]})
        cnn = _softmax(logits[0].astype(np.float64))
        probabilities = cnn
        involvement = self.record.get("involvement")
        if involvement is not None and features is not None:
            chosen = np.asarray(features, dtype=np.float64)[involvement["columns"]]
            standardised = (chosen - np.asarray(involvement["mean"])) / np.asarray(involvement["std"])
            aeration = _softmax(np.asarray(involvement["weight"]) @ standardised + np.asarray(involvement["bias"]))
            weight = self.record["fusion_cnn_weight"]
            probabilities = weight * cnn + (1 - weight) * aeration
        return OnnxGrade(probabilities.astype(np.float32), attention[0].astype(np.float32), cnn.astype(np.float32))

    def lesion_probabilities(self, grid: np.ndarray) -> np.ndarray | None:
        """``(s, 2, H, W)`` probabilities of lesion-inclusive lung and of lesion; None without a lesion network."""
        if "lesions" not in self.sessions:
            return None
        logits = self._run_in_chunks("lesions", np.ascontiguousarray(grid, dtype=np.float32)[:, None])
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: probability 0
            return 1.0 / (1.0 + np.exp(-logits))
