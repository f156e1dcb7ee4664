"""What one prediction produces, in the input's own geometry, ready for files or scene nodes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..io.volume import Geometry, canonical_to_original

DEMO_MODEL_NOTICE = "synthetic-data demo model: not for clinical use"


class AnalysisGridLabels:
    """A study's labels (lung bands, or right/left lung) kept on the lungs' analysis grid and made on the
    input's grid, in its storage order, whenever read as an array (``np.asarray``). The command line
    writes no label volume, so a 400-slice study never holds a study-sized copy of them; the scene and
    the views expand them."""

    def __init__(self, coarse: np.ndarray, factors: tuple[int, int, int], canonical_shape: tuple[int, int, int],
                 geometry: Geometry) -> None:
        self.coarse, self.factors, self.canonical_shape, self.geometry = coarse, tuple(factors), canonical_shape, geometry
        self.shape, self.dtype, self.ndim = tuple(int(n) for n in geometry.size[::-1]), coarse.dtype, 3

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        from ..transforms.lungs import to_native  # SciPy: not for the command line's --help

        labels = canonical_to_original(to_native(self.coarse, self.factors, self.canonical_shape), self.geometry)
        return labels if dtype is None else labels.astype(dtype, copy=False)


@dataclass
class Prediction:
    """A study's severity grade with the evidence behind it.

    ``lesion_map_kji`` is the voxel lesion map (0..1: the share of involved lung around each voxel;
    float16 from ``predict``, finer than the 1/255 steps it is stored and shown in) in the input's
    storage order and geometry; ``slice_attention`` has one weight per input slice (its own k
    order) and sums to 1. ``cnn_probabilities`` are the CNN head's own probabilities, before fusion
    with the model's involvement part (which reads the lung features of ``involvement``).
    ``involvement`` holds the lung volumes and HU-band shares measured at the input's resolution (per
    lung and zone, with the MosMed grade they imply) and ``bands_kji`` the band of every lung voxel
    (``transforms.involvement.BAND_NAMES``; 0 outside the lungs), in the input's storage order: an
    array, or from ``predict`` an :class:`AnalysisGridLabels` that ``np.asarray`` turns into one.
    ``lungs_kji`` holds the lungs those figures were measured in, the same way
    (``transforms.lungs.LUNG_NAMES``: 1 right, 2 left, 0 outside).
    """

    label: str
    probabilities: dict[str, float]
    slice_attention: np.ndarray
    lesion_map_kji: np.ndarray
    geometry: Geometry
    model_name: str
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    is_demo_model: bool = False
    cnn_probabilities: dict[str, float] = field(default_factory=dict)
    involvement: dict = field(default_factory=dict)
    bands_kji: np.ndarray | AnalysisGridLabels | None = field(default=None, repr=False)
    lungs_kji: np.ndarray | AnalysisGridLabels | None = field(default=None, repr=False)

    # legacy: remove after 0.3. The lesion map's names in 0.2 (``evidence_kji``) and before
    # (``attention_kji``), read-only, so that console scripts written for them still run.
    @property
    def evidence_kji(self) -> np.ndarray:
        return self.lesion_map_kji

    @property
    def attention_kji(self) -> np.ndarray:
        return self.lesion_map_kji

    @property
    def most_attended_slice(self) -> int:
        return int(np.argmax(self.slice_attention))

    def slice_positions_mm(self) -> np.ndarray:
        """Position of each input slice along its slice axis (mm from the first slice)."""
        return np.arange(len(self.slice_attention)) * self.geometry.spacing[2]

    def involvement_line(self) -> str:
        """One line for people: lung volume (and how much of it the lesion network added), involved share
        and the grade it implies."""
        if not self.involvement:
            return ""
        lungs = self.involvement["lungs"]
        if not lungs["voxels"]:
            return "no lungs found"
        added = self.involvement.get("learned_added_ml")
        learned = f" ({added:.0f} mL from the lesion network)" if added else ""
        return (f"lungs {lungs['volume_ml']:.0f} mL{learned}, {100 * self.involvement['involved_share']:.1f} % "
                f"involved ({self.involvement['grade']} by involvement)")

    def to_json(self) -> dict:
        """The JSON record written beside the outputs (plain types only)."""
        record = {
            "source": self.source,
            "label": self.label,
            "probabilities": {name: float(p) for name, p in self.probabilities.items()},
            "slice_attention": [float(a) for a in self.slice_attention],
            "most_attended_slice": self.most_attended_slice,
            "model": self.model_name,
            "warnings": list(self.warnings),
        }
        if self.cnn_probabilities:
            record["cnn_probabilities"] = {name: float(p) for name, p in self.cnn_probabilities.items()}
        if self.involvement:
            record["involvement"] = self.involvement
        if self.is_demo_model:
            record["notice"] = DEMO_MODEL_NOTICE
        return record
