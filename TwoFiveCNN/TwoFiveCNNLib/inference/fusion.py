"""The fused model's second part and its mix, in NumPy: written once for both engines and for evaluation.

The involvement part is a logistic model on the lungs' band shares (:data:`..transforms.involvement.
LUNG_FEATURES`), trained apart from the CNN head; the model's probabilities are the CNN head's and
the involvement part's mixed by the CNN's share. Training fits the linear layer with torch; what the
model then predicts, on either engine and in evaluation, goes through :class:`Fusion`, in float64.
Its own module, free of torch and ONNX Runtime, so that the export checks (:mod:`.onnx_model`) and
the graders (:mod:`.engines`) read the same record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io.model_file import fusion_cnn_weight
from ..transforms.involvement import LUNG_FEATURES

if TYPE_CHECKING:
    from ..networks.severity_model import SeverityModel


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of logits along the last axis, in the logits' precision."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare the fields themselves
class Fusion:
    """The involvement part (standardisation and linear layer) and the CNN head's share of the mix."""

    columns: tuple[int, ...]  # the LUNG_FEATURES columns the involvement part reads
    mean: np.ndarray  # (F,) the training studies' mean of those features
    std: np.ndarray  # (F,) and their spread
    weight: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    cnn_weight: float  # the CNN head's share of the fused probabilities; the involvement part has the rest

    def __post_init__(self) -> None:
        for name in ("mean", "std", "weight", "bias"):  # float64, whatever the source stores
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        object.__setattr__(self, "columns", tuple(int(c) for c in self.columns))

    @classmethod
    def from_model(cls, model: SeverityModel) -> Fusion | None:
        """The fusion of a torch model; None when it has no involvement part, or one not fitted yet
        (training measures the features it fits it on with the model's lesion network first)."""
        if model.involvement is None or "involvement_mean" not in model.metadata:
            return None
        return cls(model.involvement_feature_columns, model.metadata["involvement_mean"],
                   model.metadata["involvement_std"], model.involvement.weight.detach().cpu().double().numpy(),
                   model.involvement.bias.detach().cpu().double().numpy(), model.fusion_cnn_weight)

    @classmethod
    def from_model_file(cls, tensors: dict[str, Any], metadata: dict) -> Fusion | None:
        """The fusion of a model file as :func:`..io.model_file.read_archive_without_torch` gives it (no
        torch needed); None without an involvement part, or with one of before 0.2, which read lung
        features this version no longer measures (:meth:`SeverityModel.load` drops it too)."""
        if "involvement" not in tensors or metadata.get("involvement_features") != list(LUNG_FEATURES):
            return None
        return cls([LUNG_FEATURES.index(n) for n in metadata["architecture"]["involvement_features"]],
                   metadata["involvement_mean"], metadata["involvement_std"],
                   tensors["involvement"]["weight"].numpy(), tensors["involvement"]["bias"].numpy(),
                   fusion_cnn_weight(metadata))

    @classmethod
    def from_export(cls, record: dict) -> Fusion | None:
        """The fusion of an ONNX export's checked ``model.json`` record; None without an involvement part."""
        part = record.get("involvement")
        if part is None:
            return None
        return cls(part["columns"], part["mean"], part["std"], part["weight"], part["bias"],
                   record["fusion_cnn_weight"])

    def export_record(self) -> dict:
        """The involvement part as an export's ``model.json`` holds it (the share is a field of its own)."""
        return {"columns": list(self.columns), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weight": self.weight.tolist(), "bias": self.bias.tolist()}

    def involvement_probabilities(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C,)`` or ``(N, C)`` of the involvement part for raw lung features
        ``(F,)`` or ``(N, F)`` (all of :data:`LUNG_FEATURES`; the part picks its columns)."""
        chosen = np.asarray(features, dtype=np.float64)[..., list(self.columns)]
        return softmax(((chosen - self.mean) / self.std) @ self.weight.T + self.bias)

    def mix(self, cnn_probabilities: np.ndarray, involvement_probabilities: np.ndarray) -> np.ndarray:
        """The model's probabilities: the CNN head's and the involvement part's, mixed by the CNN's share."""
        return self.cnn_weight * np.asarray(cnn_probabilities, dtype=np.float64) + \
            (1 - self.cnn_weight) * involvement_probabilities
