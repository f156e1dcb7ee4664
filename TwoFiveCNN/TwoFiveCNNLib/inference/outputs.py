"""Prediction outputs on disk, named after the input: JSON, lesion map volume, PNG montage, Slicer scene;
and batch prediction over many inputs that reports bad studies instead of stopping at them.

The Slicer scene is written by a function the caller passes in (``scene.save_prediction_scene``):
this layer knows nothing of MRML, so it runs where the MRML library is missing.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..io.atomic import write_json_atomic, write_text_atomic
from ..io.manifest import OutputManifest, refuse_overlap
from ..io.timing import StageTimes, timed
from ..io.volume import (
    PROBABILITY_STEP,
    Volume,
    VolumeError,
    study_name,
    write_probability_volume,
)
from ..reports.montage import LazySlices, lesion_map_montage_png
from ..transforms.preprocess import WINDOW_PRESETS, apply_window
from .engines import Grader
from .output_names import lesion_map_files, lesion_map_path
from .predict import predict_volume
from .prediction import DEMO_MODEL_NOTICE, Prediction
from .studies import StudyPrefetcher, expand_inputs, unique_names

# Writes a study's Slicer scene: (prediction, input volume, output folder, name) -> ``<name>.mrml``, with
# its data in ``<name>_data/`` (``scene.save_prediction_scene``).
SceneWriter = Callable[[Prediction, Volume, Path, str], Path]


@dataclass(frozen=True)
class ExtraOutput:
    """One more file per study, ``<name><suffix>``, written by ``write(prediction, volume, path, name)``.

    The name is known before writing, so the batch claims it in the output folder's manifest first.
    """

    suffix: str
    write: Callable[[Prediction, Volume, Path, str], Path]


def scene_outputs(out_dir: Path, name: str) -> tuple[Path, Path]:
    """What a :data:`SceneWriter` writes for the study ``name``."""
    return out_dir / f"{name}.mrml", out_dir / f"{name}_data"

MONTAGE_MAX_PIXELS = 256  # display tiles need no more in-plane resolution than this


@dataclass
class BatchResult:
    """What a batch wrote, per input. ``predictions`` keep grades, probabilities, attention and the
    involvement report; their voxel maps (lesion map, bands) are on disk, not held for the whole batch."""

    written: dict[str, list[Path]] = field(default_factory=dict)
    predictions: dict[str, Prediction] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def without_voxel_maps(prediction: Prediction) -> Prediction:
    """The prediction without its study-sized arrays (they are written): a batch's memory stays flat."""
    empty = np.zeros((0, 0, 0), dtype=np.float16)
    return dataclasses.replace(prediction, lesion_map_kji=empty, bands_kji=None, lungs_kji=None)


def montage_slices(volume: Volume, lesion_map_canonical: np.ndarray) -> tuple[LazySlices, LazySlices]:
    """Lung-windowed canonical slices and their lesion map, subsampled in-plane for display, each made
    only when the montage reads it."""
    step = max(1, int(np.ceil(max(volume.array.shape[1:]) / MONTAGE_MAX_PIXELS)))
    shape = (volume.array.shape[0], *volume.array[0, ::step, ::step].shape)

    def grey(k: int) -> np.ndarray:
        return apply_window(volume.array[k, ::step, ::step], WINDOW_PRESETS["lung"])

    def lesion_map(k: int) -> np.ndarray:
        return np.asarray(lesion_map_canonical[k, ::step, ::step], dtype=np.float32)

    return LazySlices(shape, grey), LazySlices(shape, lesion_map)


def write_montage(prediction: Prediction, volume: Volume, path: Path) -> Path:
    grey, lesion_map = montage_slices(volume, volume_to_canonical(volume, prediction.lesion_map_kji))
    canonical_attention = volume_to_canonical_slices(volume, prediction.slice_attention)
    labels = _input_slice_labels(volume)
    probabilities = ", ".join(f"{k} {v:.2f}" for k, v in prediction.probabilities.items())
    footer = DEMO_MODEL_NOTICE if prediction.is_demo_model else f"model: {prediction.model_name}"
    footer = "  |  ".join(part for part in (prediction.involvement_line(), footer) if part)
    title = f"{study_name(volume.source) or 'study'}: {prediction.label}  ({probabilities})"
    lesion_map_montage_png(grey, lesion_map, canonical_attention, path, title=title, footer=footer,
                           slice_labels=labels,
                           slice_numbers=volume.input_slice_index())  # numbered as the JSON numbers them
    return path


def volume_to_canonical(volume: Volume, array_kji: np.ndarray) -> np.ndarray:
    """The inverse of ``Volume.to_original`` for another array on the same grid."""
    return Volume.from_original(array_kji, volume.geometry).array


def volume_to_canonical_slices(volume: Volume, per_input_slice: np.ndarray) -> np.ndarray:
    """Per-input-slice values back in canonical z order (the two orders differ only by a flip)."""
    index = volume.input_slice_index()
    return np.asarray(per_input_slice) if index is None else np.asarray(per_input_slice)[index]


def _input_slice_labels(volume: Volume) -> list[str]:
    index = volume.input_slice_index()
    if index is None:
        return [f"axial {z}" for z in range(volume.array.shape[0])]
    return [f"slice {int(k)}" for k in index]


def write_prediction(prediction: Prediction, volume: Volume, out_dir: str | os.PathLike, name: str | None = None,
                     scene_writer: SceneWriter | None = None, lesion_map_format: str = ".nii.gz",
                     times: StageTimes | None = None, extra_writers: Sequence[ExtraOutput] = (),
                     manifest: OutputManifest | None = None) -> list[Path]:
    """Write ``<name>.json``, ``<name>_lesion_map<format>``, ``<name>.png`` and, with a ``scene_writer``,
    the file it writes (``<name>.mrml`` and its ``<name>_data/`` folder). An earlier version's lesion map
    of this study, under its legacy name (:mod:`.output_names`), is removed once they are written.

    Each file is claimed in the folder's ``manifest`` first (one is opened if not given): a file of
    that name which twofivecnn did not write is never replaced, and the study fails naming it.
    All or nothing: when one output fails (a full disk), the study's other new outputs and any
    earlier ``<name>.json`` are removed, so no record describes files that do not belong to it.
    """
    out_dir = Path(out_dir)
    name = name or volume.name
    json_path, written = out_dir / f"{name}.json", []
    lesion_map_file = lesion_map_path(out_dir, name, lesion_map_format)
    manifest = manifest or OutputManifest.open(out_dir, "predict")
    manifest.claim(json_path, lesion_map_file, out_dir / f"{name}.png",
                   *(scene_outputs(out_dir, name) if scene_writer is not None else ()),
                   *(out_dir / f"{name}{extra.suffix}" for extra in extra_writers))
    try:
        with timed(times, "write_lesion_map"):
            written.append(write_probability_volume(prediction.lesion_map_kji, prediction.geometry,
                                                    lesion_map_file))
        with timed(times, "write_picture"):
            written.append(write_montage(prediction, volume, out_dir / f"{name}.png"))
        if scene_writer is not None:
            with timed(times, "write_scene"):
                written.append(scene_writer(prediction, volume, out_dir, name))
        for extra in extra_writers:
            with timed(times, "write_other"):
                written.append(extra.write(prediction, volume, out_dir / f"{name}{extra.suffix}", name))
        with timed(times, "write_json"):
            write_json_atomic(json_path, {**prediction.to_json(), "outputs": [p.name for p in written],
                                          "lesion_map_volume": lesion_map_volume_record(written[0])})
    except BaseException:
        for path in [*written, json_path]:
            path.unlink(missing_ok=True)  # each claimed above: ours
            if path.suffix == ".mrml":
                shutil.rmtree(scene_outputs(out_dir, name)[1], ignore_errors=True)
        raise
    for superseded in lesion_map_files(out_dir, name, legacy_only=True):
        if manifest.owns(superseded):
            manifest.remove(superseded)
    return [json_path, *written]


def lesion_map_volume_record(path: Path) -> dict:
    """How the lesion map file stores its values: uint8 steps (see ``io.volume.write_probability_volume``)."""
    nifti = path.name.lower().endswith((".nii", ".nii.gz"))
    return {"file": path.name, "dtype": "uint8", "value_step": PROBABILITY_STEP,
            "scaled_on_read": nifti,  # NIfTI readers apply scl_slope; NRRD voxels read 0..255
            "values": "lesion map in [0, 1]: the share of involved lung around each voxel"}


# A study is written in the background while the next is predicted only up to this size: the study
# being written and the one being predicted are then both in memory (with the one read ahead).
BACKGROUND_WRITE_MAX_VOXELS = 32 * 2**20


def predict_batch(model: Grader, inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike,
                  scene_writer: SceneWriter | None = None, lesion_map_format: str = ".nii.gz",
                  progress: Callable[[int, int, str], None] | None = None,
                  extra_writers: Sequence[ExtraOutput] = (), prefetcher: StudyPrefetcher | None = None,
                  model_source: str | os.PathLike | None = None, allow_uneven_slices: bool = False,
                  ) -> BatchResult:
    """Predict every study; a bad study is recorded in ``failures`` and the others still run.

    The next study is read and its lungs measured in the background while this one runs through the
    network (``prefetcher``; pass one already started to begin before the model loads). Without a
    scene or other writers, a study's files are written in the background while the next study is
    predicted (one study at a time, studies up to ``BACKGROUND_WRITE_MAX_VOXELS``): the writing is
    mostly compression, which leaves the GIL. Each file still appears whole, by rename.

    Only what this command wrote is replaced (``io.manifest``): the output folder may be neither an
    input nor hold one (nor the model file ``model_source``), and a study whose output names are taken
    by files twofivecnn did not write fails, naming them.

    ``allow_uneven_slices``: DICOM series with missing or uneven slices are resampled onto an even grid
    (with a warning) instead of failing (a ``prefetcher`` passed in reads with its own setting).
    """
    inputs = [Path(p) for p in inputs]
    refuse_overlap([out_dir], [*inputs, model_source], "predict")
    check_writable(Path(out_dir))
    manifest = OutputManifest.open(out_dir, "predict")
    manifest.claim(Path(out_dir) / "summary.tsv")
    studies = expand_inputs(inputs)
    result = BatchResult()
    background = scene_writer is None and not extra_writers and len(studies) > 1
    with prefetcher or StudyPrefetcher(allow_uneven_slices=allow_uneven_slices) as ahead, ThreadPoolExecutor(1, thread_name_prefix="twofivecnn-write") as pool:
        if studies:
            ahead.prefetch(studies[0])
        writing: _Writing | None = None
        for done, (path, name) in enumerate(zip(studies, unique_names(studies)), start=1):
            predicted = _predict_one(model, ahead, studies[done:done + 1], path, result)
            if writing is not None:  # one study written at a time: the previous one finishes first
                writing.finish(result, progress, len(studies))
                writing = None
            if predicted is None:
                if progress is not None:
                    progress(done, len(studies), str(path))
                continue
            prediction, volume = predicted
            write = functools.partial(write_prediction, prediction, volume, Path(out_dir), name, scene_writer,
                                      lesion_map_format, extra_writers=extra_writers, manifest=manifest)
            if background and volume.array.size <= BACKGROUND_WRITE_MAX_VOXELS:
                writing = _Writing(path, done, prediction, pool.submit(write))
            else:  # written here and now: its voxel maps are gone before the next study is predicted
                _Writing(path, done, prediction, _written_now(write)).finish(result, progress, len(studies))
            del predicted, prediction, volume
        if writing is not None:
            writing.finish(result, progress, len(studies))
    write_summary(result, Path(out_dir))
    return result


@dataclass
class _Writing:
    """One study's outputs being written, and how to record the outcome in the batch's result."""

    path: Path
    done: int
    prediction: Prediction | None
    future: Future

    def finish(self, result: BatchResult, progress: Callable[[int, int, str], None] | None, total: int) -> None:
        key = str(self.path)
        try:
            result.written[key] = self.future.result()
            result.predictions[key] = without_voxel_maps(self.prediction)
        except Exception as error:  # noqa: BLE001 - one odd study must not stop a batch of thousands
            result.failures[key] = _failure_message(self.path, error)
        self.prediction = None  # its voxel maps are on disk now
        if progress is not None:
            progress(self.done, total, key)


def _written_now(write: Callable[[], list[Path]]) -> Future:
    """``write`` run in this thread, its outcome in a finished future (as the background thread gives it)."""
    future: Future = Future()
    try:
        future.set_result(write())
    except Exception as error:  # noqa: BLE001 - recorded as the study's failure in _Writing.finish
        future.set_exception(error)
    return future


def _failure_message(path: Path, error: BaseException) -> str:
    if isinstance(error, (VolumeError, ValueError, OSError)):
        return str(error)
    message = f"{path}: unexpected error {type(error).__name__}: {error}"
    return message + "\n" + "".join(traceback.format_exception(error, limit=3))


def _predict_one(model: Grader, ahead: StudyPrefetcher, following: list[Path], path: Path,
                 result: BatchResult) -> tuple[Prediction, Volume] | None:
    """One study of a batch predicted, or None with why it failed in ``result``. The next study is read
    while this one is predicted (when both fit in memory together), also when this one failed."""
    prepared = None
    try:
        prepared = ahead.take(path)
        if following:
            ahead.prefetch_next(prepared.volume.array.size, following[0])
        return predict_volume(model, prepared.volume, prepared.times, prepared), prepared.volume
    except Exception as error:  # noqa: BLE001 - one odd study must not stop a batch of thousands
        result.failures[str(path)] = _failure_message(path, error)
        return None
    finally:
        if prepared is None and following:
            ahead.prefetch_next(0, following[0])


def check_writable(folder: Path) -> None:
    """Fail before any work when the output folder cannot be created or written (full, read-only, a file)."""
    if folder.exists() and not folder.is_dir():
        raise OSError(errno.ENOTDIR, f"cannot write to the output folder {folder}: it is a file, not a folder; "
                                     f"give a folder for the outputs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OSError(error.errno, f"cannot write to the output folder {folder} ({error.strerror}); "
                      f"choose a writable folder with free space") from None


def claim_output_files(files: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None],
                       command: str) -> dict[Path, OutputManifest]:
    """Before any work, for a command that writes single files (train's model and its companions,
    evaluate's reports): no file is an input, each one's folder is writable, and each is claimed in its
    folder's manifest, so it may replace only what twofivecnn wrote. The manifest of each file."""
    files = [Path(f) for f in files]
    named = [os.path.realpath(f) for f in files]
    for file, name in zip(files, named):
        if named.count(name) > 1:
            raise ValueError(f"{file}: two outputs of twofivecnn {command} name one file; give each its own.")
    refuse_overlap([], inputs, command, output_files=files)
    manifests: dict[Path, OutputManifest] = {}
    for file in files:
        check_writable(file.parent)
        manifests[file] = OutputManifest.open(file.parent, command)
        manifests[file].claim(file)
    return manifests


def write_summary(result: BatchResult, out_dir: Path) -> None:
    """``summary.tsv`` (one row per study: label, probabilities, lung involvement, or the error) for the batch."""
    class_names = next(iter(result.predictions.values())).probabilities.keys() if result.predictions else []
    involvement_columns = ["lung_volume_ml", "involved_percent", "involvement_grade"]
    rows = ["\t".join(["input", "status", "label", *class_names, *involvement_columns, "message"])]
    for path, prediction in result.predictions.items():
        rows.append("\t".join([path, "ok", prediction.label,
                               *(f"{p:.4f}" for p in prediction.probabilities.values()),
                               *_involvement_cells(prediction), "; ".join(prediction.warnings)]))
    for path, message in result.failures.items():
        rows.append("\t".join([path, "failed", "", *([""] * (len(class_names) + len(involvement_columns))),
                               message.splitlines()[0]]))
    write_text_atomic(out_dir / "summary.tsv", "\n".join(rows) + "\n")


def _involvement_cells(prediction: Prediction) -> list[str]:
    """Lung volume (mL), involved share (%) and the grade it implies; empty without a measurement."""
    report = prediction.involvement
    if not report or not report["lungs"]["voxels"]:
        return ["", "", ""]
    return [f"{report['lungs']['volume_ml']:.1f}", f"{100 * report['involved_share']:.2f}", report["grade"]]
