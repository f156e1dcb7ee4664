"""One grading contract for both engines (torch and ONNX Runtime): the same calls, shapes, dtypes and
names, and the same numbers to float rounding; the involvement part's fusion written once; model files
that call that part by its name of before 0.3 ("aeration") load and grade as today's."""

from __future__ import annotations

import copy
import locale
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from TwoFiveCNNLib.inference.engines import BUNDLED_MODEL, GridResult, load_model
from TwoFiveCNNLib.inference.fusion import Fusion
from TwoFiveCNNLib.inference.onnx_model import export_folder_of, model_file_mismatch, read_export_record
from TwoFiveCNNLib.io.model_file import (
    load_archive,
    read_archive_without_torch,
    renamed_legacy_involvement,
    save_archive,
)
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.networks.severity_model import SeverityModel
from TwoFiveCNNLib.transforms.involvement import LUNG_FEATURES, analyse_lungs, lung_features
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig, to_model_grid

ENGINES = {"torch": "torch", "onnx": "onnxruntime"}  # load_model's engine -> the grader's ``engine``


@pytest.fixture(scope="module")
def graders() -> dict:
    return {engine: load_model(None, "cpu", engine) for engine in ENGINES}


@pytest.fixture(scope="module")
def study(chest_ct_path, graders) -> tuple[np.ndarray, np.ndarray]:
    """slicerio's real chest CT on the demo model's grid, and its lung features."""
    volume = read_volume(chest_ct_path)
    grid, _ = to_model_grid(volume, graders["onnx"].preprocess)
    return grid, lung_features(analyse_lungs(volume.array, volume.spacing_zyx).report)


@pytest.mark.parametrize("engine", list(ENGINES))
def test_each_engine_keeps_the_contract(graders, study, engine):
    grader, (grid, features) = graders[engine], study
    s, size = grid.shape[0], grid.shape[1]
    assert grader.engine == ENGINES[engine] and grader.name and grader.is_demo is True
    assert grader.class_names == ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4") and isinstance(grader.warnings, tuple)
    assert isinstance(grader.preprocess, PreprocessConfig) and grader.preprocess.in_plane == size
    assert isinstance(grader.source_file, Path) and grader.lesion_lungs is True
    result = grader.grade(grid, features)
    assert isinstance(result, GridResult)
    for values, shape in ((result.probabilities, (5,)), (result.cnn_probabilities, (5,)),
                          (result.slice_attention, (s,))):
        assert values.dtype == np.float32 and values.shape == shape
        assert values.sum() == pytest.approx(1.0, abs=1e-5) and (values >= 0).all()
    fusion = grader.fusion
    involvement = fusion.involvement_probabilities(features)
    assert result.probabilities == pytest.approx(fusion.mix(result.cnn_probabilities, involvement), abs=1e-6)
    assert not np.allclose(result.probabilities, result.cnn_probabilities), "the lung features count"
    alone = grader.grade(grid, None)  # no features: the CNN head alone
    assert np.array_equal(alone.probabilities, alone.cnn_probabilities)
    assert np.array_equal(alone.cnn_probabilities, result.cnn_probabilities)
    lesions = grader.lesion_probabilities(grid)
    assert lesions.dtype == np.float32 and lesions.shape == (s, 2, size, size)
    assert 0 <= lesions.min() and lesions.max() <= 1
    embeddings = grader.embed_slices(grid)
    assert embeddings.dtype == np.float32 and embeddings.ndim == 2 and len(embeddings) == s


def test_both_engines_grade_alike(graders, study):
    grid, features = study
    torch_grader, onnx_grader = graders["torch"], graders["onnx"]
    for name in ("name", "class_names", "preprocess", "is_demo", "warnings", "lesion_lungs"):
        assert getattr(torch_grader, name) == getattr(onnx_grader, name), name
    a, b = torch_grader.fusion, onnx_grader.fusion  # from the model file, and from the export's record
    assert a.columns == b.columns and a.cnn_weight == b.cnn_weight
    for name in ("mean", "std", "weight", "bias"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    graded = torch_grader.grade(grid, features), onnx_grader.grade(grid, features)
    for name in ("probabilities", "cnn_probabilities", "slice_attention"):
        assert np.abs(getattr(graded[0], name) - getattr(graded[1], name)).max() < 1e-4, name
    assert np.abs(torch_grader.lesion_probabilities(grid) - onnx_grader.lesion_probabilities(grid)).max() < 1e-4
    assert np.abs(torch_grader.embed_slices(grid) - onnx_grader.embed_slices(grid)).max() < 1e-3


def test_the_fusion_standardises_the_chosen_columns_and_mixes():
    """Counted by hand: the involvement part reads columns 2 and 0, standardised, through its linear layer."""
    fusion = Fusion(columns=(2, 0), mean=[1.0, 2.0], std=[2.0, 4.0], weight=[[1.0, 0.0], [0.0, -1.0]],
                    bias=[0.0, 0.5], cnn_weight=0.25)
    features = np.zeros(len(LUNG_FEATURES), np.float32)
    features[[2, 0]] = [5.0, 6.0]  # standardised: (5 - 1) / 2 = 2 and (6 - 2) / 4 = 1; logits 2 and -0.5
    expected = np.exp([2.0, -0.5]) / np.exp([2.0, -0.5]).sum()
    assert fusion.involvement_probabilities(features) == pytest.approx(expected, abs=1e-12)
    batch = np.stack([features, np.zeros_like(features)])
    assert fusion.involvement_probabilities(batch)[0] == pytest.approx(expected, abs=1e-12)
    assert fusion.mix([1.0, 0.0], expected) == pytest.approx(0.25 * np.array([1.0, 0.0]) + 0.75 * expected)
    assert np.array_equal(replace(fusion, cnn_weight=1.0).mix([0.6, 0.4], expected), [0.6, 0.4])


def test_the_fusion_read_without_torch_is_torchs():
    """The export is checked against the model file read without torch: the same fusion as torch reads."""
    tensors, metadata = read_archive_without_torch(BUNDLED_MODEL)
    a, b = Fusion.from_model_file(tensors, metadata), Fusion.from_model(SeverityModel.load(BUNDLED_MODEL))
    assert a.export_record() == b.export_record() and a.cnn_weight == b.cnn_weight


def test_acceleration_options_belong_to_torch():
    with pytest.raises(ValueError, match="--half and --compile are options of the torch engine"):
        load_model(None, "cpu", "onnx", compile=True)
    if "utf" not in locale.getpreferredencoding(False).lower():  # torch's compiler cannot start here
        with pytest.raises(ValueError, match="set a UTF-8 locale"):
            load_model(None, "cpu", "auto", compile=True)
    else:
        compiled = load_model(None, "cpu", "auto", compile=True)
        assert compiled.engine == "torch"  # compiled lazily, at first use
        # Grading runs torch.compile's wrapper of the very embedding the eager grader runs (before 0.3
        # the option compiled a function grading never called).
        assert getattr(compiled._embed, "_torchdynamo_orig_callable", None) == compiled.model.slice_classifier.embed
    assert not hasattr(load_model(None, "cpu")._embed, "_torchdynamo_orig_callable")
    with pytest.raises(ValueError, match="half precision needs a CUDA GPU"):
        load_model(None, "cpu", "auto", half=True)


def test_no_model_class_dispatch_outside_the_engines():
    library = Path(__file__).parents[1] / "TwoFiveCNN" / "TwoFiveCNNLib"
    dispatch = re.compile(r"isinstance\([^,]+,\s*\(?\s*\w*(SeverityModel|Grader)|__class__|\.engine\s*[!=]=")
    found = [f"{path.relative_to(library)}:{number}" for path in library.rglob("*.py")
             if path.parent.name != "inference" or not path.name.startswith("engines")
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if dispatch.search(line)]
    assert not found, found


# --- model files of before 0.3, which called the involvement part "aeration" --------------------------

def with_legacy_names(tensors: dict, metadata: dict) -> tuple[dict, dict]:
    """A model file's contents as 0.2 wrote them."""
    old = {("aeration" if name == "involvement" else name): group for name, group in tensors.items()}
    meta = {k.replace("involvement_", "aeration_") if k in ("involvement_mean", "involvement_std",
                                                            "involvement_features") else k: v
            for k, v in copy.deepcopy(metadata).items()}
    for owner in (meta, meta["train_config"]):
        owner["architecture"] = {("aeration" if k == "involvement" else k): v
                                 for k, v in owner["architecture"].items()}
    meta["metrics"] = {subset: {("aeration_only" if k == "involvement_only" else k): v for k, v in results.items()}
                       for subset, results in meta["metrics"].items()}
    return old, meta


def test_a_model_file_with_the_old_names_loads_and_grades_identically(graders, study, tmp_path):
    tensors, metadata = load_archive(BUNDLED_MODEL)
    old_tensors, old_metadata = with_legacy_names(tensors, metadata)
    assert "aeration" in old_tensors and "aeration_mean" in old_metadata
    assert "aeration_only" in old_metadata["metrics"]["test"] and "aeration" in old_metadata["architecture"]
    old = save_archive(tmp_path / "old.pt", "twofivecnn-model", old_tensors, old_metadata)
    for read in (load_archive, read_archive_without_torch):
        renamed_tensors, renamed_metadata = read(old)
        assert renamed_metadata == metadata and set(renamed_tensors) == set(tensors), read.__name__
    checkpoint = {"config": {"architecture": {"aeration": False, "lesion_net": True}}, "epoch": 3}
    assert renamed_legacy_involvement({}, checkpoint)[1] == {
        "config": {"architecture": {"involvement": False, "lesion_net": True}}, "epoch": 3}  # resumes as today's
    # The bundled export was made from today's file; its record agrees with the old-named one too.
    assert model_file_mismatch(read_export_record(export_folder_of(BUNDLED_MODEL)), old) is None
    grid, features = study
    grader = load_model(old, "cpu", "torch")
    assert grader.fusion is not None and grader.warnings == graders["torch"].warnings
    graded, today = grader.grade(grid, features), graders["torch"].grade(grid, features)
    for name in ("probabilities", "cnn_probabilities", "slice_attention"):
        assert np.array_equal(getattr(graded, name), getattr(today, name)), name
    assert np.array_equal(grader.lesion_probabilities(grid), graders["torch"].lesion_probabilities(grid))
