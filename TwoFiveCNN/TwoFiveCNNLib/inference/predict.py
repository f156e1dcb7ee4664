"""Predict one study: model grid -> slice embeddings -> head -> probabilities and slice attention; beside
them the lungs' involvement and the voxel lesion map, on the input's own grid.

The networks run on whichever engine :func:`.engines.load_model` loaded, through the one grading
contract (:class:`.engines.Grader`); nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.memory import release_freed_memory
from ..io.timing import StageTimes, timed
from ..io.volume import Volume, read_volume
from ..networks.lesion_channels import LESIONS, LUNGS
from ..transforms.involvement import (
    LUNG_FEATURES,
    InvolvementSettings,
    LungAnalysis,
    analyse_lungs,
    lesion_map,
    lung_features,
    with_learned_lesions,
)
from ..transforms.lungs import to_native
from ..transforms.preprocess import (
    GridMapping,
    grid_map_to_canonical,
    slice_values_to_canonical,
    to_model_grid,
)
from .engines import BUNDLED_MODEL, Grader, load_model  # noqa: F401 - both also imported from here
from .prediction import AnalysisGridLabels, Prediction
from .studies import PreparedStudy


def learned_lesions(model: Grader, grid: np.ndarray, mapping: GridMapping,
                    factors: tuple[int, int, int]) -> np.ndarray | None:
    """The lesion network's lesion probability (float16) on the lungs' analysis grid (every
    ``factors``-th voxel), where it sees lesion-inclusive lung; None when the model has no lesion network."""
    probabilities = model.lesion_probabilities(grid)
    if probabilities is None:
        return None
    inside_lungs = probabilities[:, LESIONS] * (probabilities[:, LUNGS] > 0.5)
    return grid_map_to_canonical(inside_lungs, mapping, np.float16, factors)


def study_lungs(model: Grader, volume: Volume, grid: np.ndarray, mapping: GridMapping,
                analysis: LungAnalysis | None = None, times: StageTimes | None = None,
                ) -> tuple[LungAnalysis, np.ndarray | None]:
    """The study's lungs and involvement as this model measures them, and its lesion network's map.

    ``analysis`` (the HU lung mask's, :func:`..transforms.involvement.analyse_lungs`) is measured here
    when not given. A model trained with ``Architecture.lesion_lungs`` adds the voxels its lesion
    network calls lesion to the lungs (:func:`..transforms.involvement.with_learned_lesions`); it read
    its involvement features so measured in training, so they are measured so here too.
    """
    if analysis is None:
        with timed(times, "lungs_and_involvement"):
            analysis = analyse_lungs(volume.array, volume.spacing_zyx)
            release_freed_memory()
    with timed(times, "lesion_network"):
        learned = learned_lesions(model, grid, mapping, analysis.factors)
    if learned is not None:
        require_finite(model, volume, "lesion probabilities", learned)
    if learned is not None and model.lesion_lungs:
        with timed(times, "lungs_and_involvement"):
            analysis = with_learned_lesions(analysis, volume.array, learned > 0.5)
    return analysis, learned


def measure_lung_features(model: Grader, paths: list[str | os.PathLike],
                          progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, F) lung features of each study as :func:`predict_volume` measures them for this model: what
    training fits a :attr:`lesion_lungs` model's involvement part on, once its lesion network is trained."""
    features = []
    for done, path in enumerate(paths, start=1):
        volume = read_volume(path)
        grid, mapping = to_model_grid(volume, model.preprocess)
        analysis, _ = study_lungs(model, volume, grid, mapping)
        features.append(lung_features(analysis.report))
        if progress is not None:
            progress(done, len(paths))
    return np.stack(features) if features else np.zeros((0, len(LUNG_FEATURES)), dtype=np.float32)


def require_finite(model: Grader, volume: Volume, what: str, values: np.ndarray) -> None:
    """Refuse a network output that holds NaN or infinity, naming the study and the model: weights that
    hold NaN (a damaged file, a training run that diverged) give NaN for every study, and without this
    the first to notice is a function drawing the picture, which names neither."""
    if not np.all(np.isfinite(values)):
        raise non_finite_output_error(model.name, model.source_file, volume.source or volume.name,
                                      f"{what} for this study")


def non_finite_output_error(model_name: str, model_file: Path | None, where: str, what: str) -> ValueError:
    """The error for a network output holding NaN or infinity at ``where`` (a study, or several)."""
    named_file = f" ({model_file})" if model_file is not None else ""
    return ValueError(f"{where}: the model {model_name!r}{named_file} gave NaN or infinite {what}; its weights "
                      f"may hold NaN (a damaged file, or a training run that diverged). Retrain the model or "
                      f"use another one.")


def map_slice_attention(volume: Volume, attention: np.ndarray, mapping: GridMapping) -> tuple[np.ndarray, list[str]]:
    """One weight per input slice (its own order, summing to 1), interpolated from the model's slices."""
    canonical = np.clip(slice_values_to_canonical(attention, mapping), 0, None)
    canonical /= max(canonical.sum(), 1e-12)
    per_input = volume.to_original_slices(canonical)
    if per_input is None:
        return canonical, [("the input's slices are not axial; slice attention is given per axial slice, "
                            "feet to head")]
    return per_input, []


def grade_disagreement(cnn_label: str, involvement_grade: str | None) -> str | None:
    """A warning when the CNN's grade and the involvement's differ by two grades or more."""
    grades = [label for label in (cnn_label, involvement_grade) if label and label.startswith("CT-")]
    if len(grades) < 2 or not all(g[3:].isdigit() for g in grades):
        return None
    if abs(int(grades[0][3:]) - int(grades[1][3:])) < 2:
        return None
    return (f"the CNN grades {cnn_label} but the lung involvement measured corresponds to {involvement_grade}: "
            f"two grades or more apart; review the study")


def predict_volume(model: Grader, volume: Volume, times: StageTimes | None = None,
                   prepared: PreparedStudy | None = None) -> Prediction:
    """Grade one canonical volume and map its slice attention and lesion map back onto its original grid.

    The lungs are segmented and their involvement measured on a grid of at most 2 mm
    (:func:`study_lungs`): a result beside the grade, the features the model's involvement part
    reads, and the lesion map. ``prepared`` brings them measured
    ahead (:func:`.studies.prepare_study` on this ``volume``).
    """
    # Between stages, the heap's freed temporaries go back to the system (release_freed_memory), so
    # one stage's leftovers never add to the next stage's peak: a 400-slice study stays within 1 GB.
    with timed(times, "preprocess"):
        grid, mapping = to_model_grid(volume, model.preprocess)
        release_freed_memory()
    analysis, learned = study_lungs(model, volume, grid, mapping, None if prepared is None else prepared.analysis,
                                   times)
    report, coarse_bands, factors = analysis.report, analysis.bands, analysis.factors
    with timed(times, "network"):
        result = model.grade(grid, lung_features(report))
    require_finite(model, volume, "probabilities", result.probabilities)
    require_finite(model, volume, "slice attention", result.slice_attention)
    probabilities = result.probabilities
    with timed(times, "lesion_map"):
        slice_attention, warnings = map_slice_attention(volume, result.slice_attention, mapping)
        if learned is not None:  # beyond the lungs, dense voxels only (consolidation against the chest wall)
            coarse_hu = volume.array[:: factors[0], :: factors[1], :: factors[2]]
            learned[coarse_hu < InvolvementSettings().ground_glass_below] = 0  # a boolean write: float16 math is slow
        # The voxel lesion map, on the lungs' analysis grid and mapped back block by block (float16: half
        # the memory of float32 for a map shown and stored in steps of 1/255 anyway).
        lesions = lesion_map(coarse_bands, analysis.spacing_zyx, beyond_lungs=learned)
        del learned
        release_freed_memory()  # before the largest array of the prediction: the map on the input grid
        lesion_map_kji = volume.to_original(to_native(lesions, factors, volume.array.shape))
        del lesions
        bands_kji = AnalysisGridLabels(coarse_bands, factors, volume.array.shape, volume.geometry)
        lungs_kji = AnalysisGridLabels(analysis.lungs, factors, volume.array.shape, volume.geometry)
    names = model.class_names
    label = names[int(np.argmax(probabilities))]
    disagreement = grade_disagreement(label, report.get("grade"))
    warnings = list(model.warnings) + warnings + ([disagreement] if disagreement else [])
    return Prediction(
        label=label,
        probabilities={name: float(p) for name, p in zip(names, probabilities)},
        slice_attention=slice_attention, lesion_map_kji=lesion_map_kji,
        geometry=volume.geometry, model_name=model.name, source=volume.source,
        warnings=list(volume.warnings) + warnings + _plausibility_warnings(volume), is_demo_model=model.is_demo,
        cnn_probabilities={name: float(p) for name, p in zip(names, result.cnn_probabilities)},
        involvement=report, bands_kji=bands_kji, lungs_kji=lungs_kji,
    )


def _plausibility_warnings(volume: Volume) -> list[str]:
    """Hints that an input may not be a chest CT in HU (the model will still answer)."""
    array, warnings = volume.array, []
    if array.dtype.kind == "f":
        non_finite = array.size - int(np.count_nonzero(np.isfinite(array)))
        if non_finite:
            warnings.append(f"{non_finite} voxels ({100 * non_finite / array.size:.2g}%) are NaN or infinite; "
                            f"they were read as air (NaN, -inf) or the densest tissue (+inf)")
    sample = array[:: max(1, array.shape[0] // 8), ::4, ::4]
    sample = sample[np.isfinite(sample)] if array.dtype.kind == "f" else sample.ravel()
    low, high = np.percentile(sample, [1, 99]) if sample.size else (0.0, 0.0)
    if low > -500:
        warnings.append(f"no air found (1st percentile {low:.0f}); values may not be Hounsfield units")
    elif low < -3100 or high > 4000:  # scanners pad outside the field of view with -3024 or -2048
        warnings.append(f"values span {low:.3g}..{high:.3g} (1st..99th percentile), beyond the Hounsfield "
                        f"units of CT (-1024..3071, -3024 outside the field of view); the result is not meaningful")
    if high - low < 100:
        warnings.append("almost constant image; the result is meaningless")
    if array.shape[0] < 8:
        plural = "s" * (array.shape[0] != 1)
        warnings.append(f"only {array.shape[0]} slice{plural}; a chest CT study normally has dozens")
    return warnings


def predict_path(model: Grader, path: str | os.PathLike,
                 times: StageTimes | None = None) -> tuple[Prediction, Volume]:
    with timed(times, "read"):
        volume = read_volume(path)
    return predict_volume(model, volume, times), volume
