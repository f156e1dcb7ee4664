"""One grading contract, whatever runs the networks: a :class:`Grader` takes and gives NumPy arrays.

Two engines keep it: torch (:class:`TorchGrader`, which owns the tensors, the device, the channels-last
layout and half precision) and ONNX Runtime (:class:`OnnxGrader`, in a process that never imports
torch: torch is imported only by a torch grader). Both fuse the CNN head with the involvement part
through the same :class:`.fusion.Fusion`. :func:`load_model` picks and loads the engine; nothing
outside ``inference/engines*`` asks which engine a grader is, so ``predict`` and the scripts call both
alike.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..transforms.preprocess import PreprocessConfig
from .fusion import Fusion, softmax
from .onnx_model import EXPORT_FILES, OnnxModelError, export_folder_of, onnxruntime_available, open_export

if TYPE_CHECKING:
    import torch

    from ..networks.severity_model import SeverityModel

BUNDLED_MODEL = Path(__file__).with_name("demo_model.pt")
ENGINES = ("auto", "torch", "onnx")
# Slices per ONNX Runtime session run, which bounds activation memory. The lesion network runs 8, as the
# torch model does; the embedding 32, half the torch model's 64 (networks.severity_model.SLICE_BATCH).
SLICES_PER_RUN = {"embed": 32, "lesions": 8}


@dataclass
class GridResult:
    """One study graded on the model grid."""

    probabilities: np.ndarray  # (C,) float32: the model's, fused when it has an involvement part
    slice_attention: np.ndarray  # (S,) float32 over the model's slices
    cnn_probabilities: np.ndarray  # (C,) float32: the CNN head's alone, before fusion with the lung features

    @classmethod
    def fused(cls, cnn_probabilities: np.ndarray, slice_attention: np.ndarray, fusion: Fusion | None,
              features: np.ndarray | None) -> GridResult:
        """The result of the CNN head's output, mixed with the involvement part's for ``features`` when
        the model has one and the features are given."""
        probabilities = cnn_probabilities if fusion is None or features is None else \
            fusion.mix(cnn_probabilities, fusion.involvement_probabilities(features))
        return cls(np.asarray(probabilities, np.float32), np.asarray(slice_attention, np.float32),
                   np.asarray(cnn_probabilities, np.float32))


class Grader(Protocol):
    """A loaded model, as ``predict`` uses it: NumPy in and out, the same on every engine."""

    engine: str  # "torch" or "onnxruntime"
    name: str
    class_names: tuple[str, ...]
    preprocess: PreprocessConfig  # how a study becomes the model grid
    is_demo: bool  # every output then says: a demo model, not for clinical use
    warnings: tuple[str, ...]  # said when loading, shown with every prediction
    lesion_lungs: bool  # the involvement is measured with the lesion network's voxels in the lungs
    source_file: Path | None  # the model file or export folder, named in errors
    fusion: Fusion | None  # the involvement part and its mix; None without one

    def grade(self, grid: np.ndarray, features: np.ndarray | None = None) -> GridResult:
        """One study's ``(s, H, W)`` float32 model grid and its lung features ``(F,)`` (None: the CNN
        head alone) -> probabilities, slice attention and the CNN head's own probabilities."""

    def lesion_probabilities(self, grid: np.ndarray) -> np.ndarray | None:
        """``(s, H, W)`` model grid -> ``(s, 2, H, W)`` float32 probabilities of lesion-inclusive lung and
        of lesion; None without a lesion network."""

    def embed_slices(self, grid: np.ndarray) -> np.ndarray:
        """``(s, H, W)`` model grid -> ``(s, D)`` float32 slice embeddings."""


def onnx_export_for(path: str | os.PathLike | None) -> Path | None:
    """The ONNX export for a model: the folder itself, or the export beside a model file (for the
    bundled model, the one shipped beside it); None when there is none. Whether it was made from this
    very file, and is whole, :func:`.onnx_model.open_export` checks as it opens it."""
    source = Path(path) if path is not None else BUNDLED_MODEL
    if source.is_dir():
        return source
    folder = export_folder_of(source)
    # Graphs alone are an incomplete export, which the loader reports as such.
    return folder if any((folder / name).is_file() for name in EXPORT_FILES) else None


def load_model(path: str | os.PathLike | None = None, device: str = "auto", engine: str = "torch",
               warn: Callable[[str], None] | None = None, half: bool = False, compile: bool = False) -> Grader:
    """Load a model file, or the bundled synthetic-data demo model when ``path`` is None, as a grader.

    ``engine``: ``torch``; ``onnx`` (ONNX Runtime, CPU: the export folder ``path``, or the export made
    from the model file ``path`` by ``twofivecnn export-onnx``); ``auto``: ONNX Runtime when it is
    installed, the device is the CPU and such an export exists, torch otherwise. Under ``auto``, an
    export that is damaged, or made from another version of the model file, is passed over for torch
    with a one-line ``warn`` (default: :func:`warnings.warn`); under ``onnx`` it is an error.

    ``half`` (float16 backbone, CUDA only) and ``compile`` (``torch.compile`` of the backbone) are
    options of the torch engine: with them ``auto`` means torch, and ``onnx`` is an error.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}.")
    if half or compile:
        if engine == "onnx":
            raise ValueError("--half and --compile are options of the torch engine; add --engine torch.")
        engine = "torch"
    if engine != "torch":
        grader = _onnx_grader(path, device, engine, warn or _warn)
        if grader is not None:
            return grader
    return TorchGrader(load_torch_model(path, device), half, compile)


def load_torch_model(path: str | os.PathLike | None = None, device: str = "auto") -> SeverityModel:
    """The model file ``path`` (default: the bundled demo model) as the torch model itself, for what
    needs more than grading (``evaluate`` scores the slice classifier's pure-2D baseline too)."""
    if path is not None and (Path(path) / "model.json").is_file():
        raise OnnxModelError(f"{path}: an ONNX export, which runs on ONNX Runtime; use --engine onnx (or auto), or "
                             f"give the model file it was exported from for torch.")
    from ..networks.severity_model import SeverityModel, resolve_device

    return SeverityModel.load(path or BUNDLED_MODEL, resolve_device(device))


def _onnx_grader(path: str | os.PathLike | None, device: str, engine: str, warn: Callable[[str], None]) -> Grader | None:
    """The model on ONNX Runtime for ``engine`` onnx or auto; None when auto runs it on torch."""
    source = Path(path) if path is not None else BUNDLED_MODEL
    folder = onnx_export_for(path)
    model_file = None if source.is_dir() else source
    on_cpu = device.lower() in ("auto", "cpu")
    if engine == "onnx":
        if not onnxruntime_available():
            raise ValueError("--engine onnx needs ONNX Runtime: pip install onnxruntime (or use --engine torch).")
        if not on_cpu:
            raise ValueError("--engine onnx runs on the CPU; leave out --device or use --engine torch.")
        if folder is None:
            raise OnnxModelError(f"{source}: no ONNX export made from this model file; make one "
                                 f"with `twofivecnn export-onnx --model {source}`.")
        return OnnxGrader(folder, model_file=model_file)
    if folder is None or not onnxruntime_available() or not on_cpu:
        return None
    try:
        return OnnxGrader(folder, model_file=model_file)
    except OnnxModelError as problem:
        if model_file is None or not model_file.is_file() or importlib.util.find_spec("torch") is None:
            raise  # no model file to run on torch instead, or no torch to run it
        warn(f"{problem} Running on torch instead (--engine auto).")
        return None


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, stacklevel=4)  # at the line that called load_model


def _compiled(function: Callable) -> Callable:
    """``torch.compile(function)``, or a clear error where torch's compiler cannot start: it reads its own
    templates in the locale's text encoding, so under a plain C/POSIX locale (ASCII) it fails on import."""
    import torch

    try:
        return torch.compile(function)
    except UnicodeDecodeError:
        import locale

        raise ValueError(f"--compile: torch.compile cannot start with this process's text encoding "
                         f"({locale.getpreferredencoding(False)}); set a UTF-8 locale (export LC_ALL=C.UTF-8, "
                         f"or PYTHONUTF8=1) or leave out --compile.") from None


class TorchGrader:
    """Grades with a :class:`SeverityModel` (``model``, kept for what only torch offers, such as bench's
    FLOP counts). Its convolution weights (backbone and lesion network) are laid out channels-last, the
    layout their inputs are given in: faster convolutions on CPUs, the same results."""

    engine = "torch"

    def __init__(self, model: SeverityModel, half: bool = False, compile: bool = False) -> None:
        """``half``: float16 backbone (CUDA only); ``compile``: ``torch.compile`` of the backbone, which
        costs a minute or so of compiling and pays back over large batches (see ``twofivecnn bench``)."""
        import torch

        self.model = model
        self._device = next(model.parameters()).device
        if half and self._device.type != "cuda":
            raise ValueError("half precision needs a CUDA GPU (on the CPU float16 is slower than float32); "
                             "leave out --half or use --device cuda.")
        model.slice_classifier.to(memory_format=torch.channels_last)
        if model.lesion_net is not None:
            model.lesion_net.to(memory_format=torch.channels_last)
        if half:
            model.slice_classifier.half()
        self._embed = _compiled(model.slice_classifier.embed) if compile else model.slice_classifier.embed
        self.name, self.class_names, self.preprocess = model.name, model.class_names, model.preprocess
        self.is_demo, self.lesion_lungs = model.is_demo, model.lesion_lungs
        self.warnings = tuple(model.metadata.get("load_warnings", []))
        self.source_file: Path | None = model.source_file
        self.fusion = Fusion.from_model(model)

    @staticmethod
    def _slices(grid: np.ndarray) -> torch.Tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(grid, dtype=np.float32))[:, None]

    def _embeddings(self, grid: np.ndarray) -> torch.Tensor:
        """Call within ``torch.inference_mode()``."""
        return self.model.in_slice_chunks(self._embed, self._slices(grid))

    def embed_slices(self, grid: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self._embeddings(grid).cpu().numpy()

    def grade(self, grid: np.ndarray, features: np.ndarray | None = None) -> GridResult:
        import torch

        with torch.inference_mode():
            logits, attention = self.model.head(self._embeddings(grid)[None].to(self._device))
            cnn, attention = logits[0].float().softmax(-1).cpu().numpy(), attention[0].float().cpu().numpy()
        return GridResult.fused(cnn, attention, self.fusion, features)

    def lesion_probabilities(self, grid: np.ndarray) -> np.ndarray | None:
        probabilities = self.model.lesion_probabilities(self._slices(grid))  # in inference mode itself
        return None if probabilities is None else probabilities.numpy()


class OnnxGrader:
    """A model export run by ONNX Runtime on the CPU."""

    engine = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, threads: int | None = None,
                 model_file: str | os.PathLike | None = None) -> None:
        """Open and check the export in ``folder`` (:func:`.onnx_model.open_export`). ``model_file``: the
        model file it must have been made from (an export made from another version of it is refused);
        by default the file ``model.json`` names beside the folder, when it is the one the export was
        made from."""
        record, self._sessions = open_export(folder, threads, model_file)
        self.source_file: Path | None = Path(folder)
        self.name, self.class_names = record["name"], tuple(record["class_names"])
        self.preprocess = PreprocessConfig.from_dict(record["preprocess"])
        self.is_demo, self.warnings = record["demo"], tuple(record["load_warnings"])
        self.lesion_lungs = record["lesion_lungs"] and "lesions" in self._sessions
        self.fusion = Fusion.from_export(record)

    def _run_in_chunks(self, name: str, grid: np.ndarray) -> np.ndarray:
        slices = np.ascontiguousarray(grid, dtype=np.float32)[:, None]
        step, session = SLICES_PER_RUN[name], self._sessions[name]
        return np.concatenate([session.run(None, {"slices": slices[i: i + step]})[0]
                               for i in range(0, len(slices), step)])

    def embed_slices(self, grid: np.ndarray) -> np.ndarray:
        return self._run_in_chunks("embed", grid)

    def grade(self, grid: np.ndarray, features: np.ndarray | None = None) -> GridResult:
        logits, attention = self._sessions["head"].run(None, {"embeddings": self.embed_slices(grid)[None]})
        return GridResult.fused(softmax(logits[0].astype(np.float64)), attention[0], self.fusion, features)

    def lesion_probabilities(self, grid: np.ndarray) -> np.ndarray | None:
        if "lesions" not in self._sessions:
            return None
        logits = self._run_in_chunks("lesions", grid)
        with np.errstate(over="ignore"):  # exp overflows to inf for very negative logits: probability 0
            return 1.0 / (1.0 + np.exp(-logits))
