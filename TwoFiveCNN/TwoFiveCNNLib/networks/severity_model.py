"""The assembled 2.5D model: stage-1 slice classifier (backbone + linear) and stage-2 attention head.

Saved as one model file (see :mod:`..io.model_file`) with everything needed to rebuild and use it:
architecture, task classes, preprocessing, and the record of how it was trained.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.tasks import TaskDefinition
from ..io.model_file import MODEL_FORMAT, ModelFileError, fusion_cnn_weight, load_archive, save_archive
from ..transforms.involvement import LUNG_FEATURES
from ..transforms.preprocess import PreprocessConfig
from .backbones import SliceClassifier, build_backbone
from .heads import AttentionHead
from .lesion_net import LesionNet

SLICE_BATCH = 64  # slices per forward pass: fast on CPU, bounded memory on GPU
LESION_NET_WIDTH = 8  # channels of the lesion network's first level (doubling at each of its four)


@dataclass
class Architecture:
    backbone: str = "compact_resnet"
    backbone_kwargs: dict = field(default_factory=dict)
    dropout: float = 0.25
    head_hidden: int = 128
    head_context_kernel: int = 3
    head_dropout: float = 0.25
    involvement: bool = True  # fuse the CNN with a logistic model on the lungs' HU-band shares
    lesion_net: bool = False  # a lesion network (trained where voxel masks exist) for the lesion map
    # The lung features (of LUNG_FEATURES) the involvement part reads; files from before this field read all.
    involvement_features: tuple[str, ...] = LUNG_FEATURES
    # The lesion network's lesion voxels join the HU lung mask for the involvement figures and features
    # (transforms.involvement.with_learned_lesions); files from before this field measured the HU mask alone.
    lesion_lungs: bool = False

    def __post_init__(self) -> None:
        self.involvement_features = tuple(self.involvement_features)  # a JSON list when read back

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class SeverityModel(nn.Module):
    """Stage 1 (``slice_classifier``) embeds and classifies slices; stage 2 (``head``) grades the study."""

    source_file: Path | None = None  # the model file it was loaded from, named in errors

    def __init__(self, task: TaskDefinition, preprocess: PreprocessConfig, architecture: Architecture,
                 metadata: dict | None = None) -> None:
        super().__init__()
        self.task, self.preprocess, self.architecture = task, preprocess, architecture
        self.metadata = dict(metadata or {})
        backbone = build_backbone(architecture.backbone, **architecture.backbone_kwargs)
        self.slice_classifier = SliceClassifier(backbone, task.num_classes, architecture.dropout)
        self.head = AttentionHead(backbone.embedding_dim, task.num_classes, architecture.head_hidden,
                                  architecture.head_context_kernel, architecture.head_dropout)
        # Late fusion: a logistic model on the lungs' band shares, trained apart from the CNN head, whose
        # probabilities are averaged with the head's. Trained jointly, the head learned to ignore the
        # features, because the backbone's embeddings of its own training slices looked more certain.
        unknown = [name for name in architecture.involvement_features if name not in LUNG_FEATURES]
        if unknown or not architecture.involvement_features:
            raise ValueError(f"involvement features {list(architecture.involvement_features)}: choose one or more "
                             f"of {', '.join(LUNG_FEATURES)}.")
        self._feature_columns = [LUNG_FEATURES.index(name) for name in architecture.involvement_features]
        self.involvement = nn.Linear(len(self._feature_columns), task.num_classes) if architecture.involvement \
            else None
        self.lesion_net = LesionNet(LESION_NET_WIDTH) if architecture.lesion_net else None

    @property
    def lesion_lungs(self) -> bool:
        """Whether this model's involvement is measured with its lesion network's voxels in the lungs."""
        return self.architecture.lesion_lungs and self.lesion_net is not None

    def attach_lesion_net(self) -> LesionNet:
        """Add an untrained lesion network (on the backbone's device), recorded in the architecture."""
        self.architecture.lesion_net = True
        self.lesion_net = LesionNet(LESION_NET_WIDTH).to(next(self.parameters()).device)
        return self.lesion_net

    @torch.inference_mode()
    def lesion_probabilities(self, grid: torch.Tensor) -> torch.Tensor | None:
        """``(s, 1, H, W)`` model-grid slices -> ``(s, 2, H, W)`` probabilities of lesion-inclusive lung and of
        lesion from the lesion network; None without one."""
        if self.lesion_net is None:
            return None
        self.lesion_net.eval()
        device = next(self.lesion_net.parameters()).device
        # A few slices at a time: the U-Net's full-resolution activations are what cost memory here. Channels
        # last, the layout CPU convolutions run fastest in (about 1.4x here), whatever the weights' layout.
        return torch.cat([self.lesion_net(chunk.to(device).contiguous(memory_format=torch.channels_last)).sigmoid()
                          .cpu().contiguous() for chunk in grid.split(8)])

    def set_involvement_normalisation(self, features: torch.Tensor) -> None:
        """Standardise lung features with the training studies' mean and spread (kept in metadata, with
        the features' names: a file read by a version that measures other features is recognised)."""
        self.metadata["involvement_features"] = list(LUNG_FEATURES)
        chosen = features[:, self._feature_columns]
        self.metadata["involvement_mean"] = chosen.mean(0).tolist()
        self.metadata["involvement_std"] = chosen.std(0).clamp(min=1e-3).tolist()

    def normalise_involvement_features(self, features: torch.Tensor) -> torch.Tensor:
        """The features the involvement part reads (``architecture.involvement_features``), standardised."""
        mean = torch.tensor(self.metadata["involvement_mean"])
        std = torch.tensor(self.metadata["involvement_std"])
        return (features[:, self._feature_columns] - mean) / std

    @property
    def fusion_cnn_weight(self) -> float:
        """The CNN head's share of the fused probabilities, chosen on the validation split when training
        (:func:`..training.stages.choose_fusion_weight`)."""
        return fusion_cnn_weight(self.metadata)

    def weight_groups(self) -> tuple[str, ...]:
        groups = ("slice_classifier", "head") + (("involvement",) if self.involvement is not None else ())
        return groups + (("lesion_net",) if self.lesion_net is not None else ())

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.task.class_names

    @property
    def name(self) -> str:
        return self.metadata.get("name", "TwoFiveCNN model")

    @property
    def is_demo(self) -> bool:
        return bool(self.metadata.get("demo", False))

    @property
    def involvement_feature_columns(self) -> list[int]:
        """Columns of :data:`LUNG_FEATURES` the involvement part reads."""
        return list(self._feature_columns)

    def in_slice_chunks(self, function: Callable[[torch.Tensor], torch.Tensor],
                        slices: torch.Tensor) -> torch.Tensor:
        """Apply ``function`` to ``(s, 1, H, W)`` slices in chunks of :data:`SLICE_BATCH` (bounded memory),
        on the model's device, in its backbone's precision and channels-last; the result is float32."""
        parameter = next(self.slice_classifier.parameters())
        return torch.cat([function(chunk.to(parameter.device, parameter.dtype).contiguous(
            memory_format=torch.channels_last)) for chunk in slices.split(SLICE_BATCH)]).float()

    @torch.inference_mode()
    def embed_slices(self, slices: torch.Tensor) -> torch.Tensor:
        """``(s, 1, H, W)`` slices -> ``(s, D)`` embeddings."""
        return self.in_slice_chunks(self.slice_classifier.embed, slices)

    def round_to_stored_precision(self, groups: tuple[str, ...] | None = None) -> SeverityModel:
        """Round the weights (of ``groups``, default all) through float16, as :meth:`save` stores them,
        so that what is measured now (the metrics a model file records) is what a loaded file will do."""
        for name in groups or self.weight_groups():
            module = getattr(self, name)
            state = module.state_dict()
            module.load_state_dict({k: v.to(state[k].device, state[k].dtype)
                                    for k, v in float16_on_cpu(state).items()})
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model file; float weights are stored as float16 to keep files small."""
        tensors = {name: float16_on_cpu(getattr(self, name).state_dict()) for name in self.weight_groups()}
        metadata = {**self.metadata, "task": self.task.to_dict(), "preprocess": self.preprocess.to_dict(),
                    "architecture": self.architecture.to_dict()}
        return save_archive(path, MODEL_FORMAT, tensors, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> SeverityModel:
        """Rebuild a model from its file without executing any code stored in it."""
        tensors, metadata = load_archive(path)
        tensors = _renamed_weight_groups(tensors)
        try:
            model = cls(TaskDefinition.from_dict(metadata["task"]),
                        PreprocessConfig.from_dict(metadata["preprocess"]),
                        Architecture(**metadata["architecture"]), metadata)
            for name in model.weight_groups():
                module = getattr(model, name)
                reference = module.state_dict()
                module.load_state_dict({k: v.to(reference[k].dtype) for k, v in tensors[name].items()})
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ModelFileError(
                f"{path}: the model does not match this version of TwoFiveCNN ({str(error)[:200]}); "
                f"retrain it or update TwoFiveCNN."
            ) from None
        if model.involvement is not None and metadata.get("involvement_features") != list(LUNG_FEATURES):
            # Trained on the 96-px lung features of 0.1, which this version no longer measures.
            model.involvement = None
            model.metadata["load_warnings"] = [
                (f"{Path(path).name} was trained before 0.2 on lung features this version no longer measures: its "
                f"CNN head alone grades (retrain the model to fuse it with the lung involvement again)")]
        model.source_file = Path(path)
        return model.to(device).eval()


def float16_on_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float tensors as float16 on the CPU, how model files store weights (half the size)."""
    return {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in state.items()}


def renamed_slice_classifier_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A slice classifier's state from before 0.2, when its linear layer was called ``classifier``."""
    return {("linear." + k.removeprefix("classifier.") if k.startswith("classifier.") else k): v
            for k, v in state.items()}


def _renamed_weight_groups(tensors: dict) -> dict:
    """Model files written before 0.2 name the slice classifier ``classifier`` and its layer ``classifier``."""
    if "classifier" not in tensors:
        return tensors
    renamed = {k: v for k, v in tensors.items() if k != "classifier"}
    renamed["slice_classifier"] = renamed_slice_classifier_keys(tensors["classifier"])
    return renamed


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable explicit choice is an error."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available to this torch build; choose the CPU device.")
    return torch.device("cuda" if name == "gpu" else name)
