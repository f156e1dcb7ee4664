"""Exports that fail safe: export-onnx writes, replaces and removes only its own files; a damaged,
edited or stale export is an error under --engine onnx and a one-line warning under auto (which runs
on torch); model-file errors are plain text without torch's hint to load unsafely; a NaN model's
failure names the study and the model."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.inference.engines import OnnxGrader
from TwoFiveCNNLib.inference.onnx_model import OnnxModelError, export_folder_of
from TwoFiveCNNLib.inference.predict import BUNDLED_MODEL, load_model, predict_volume
from TwoFiveCNNLib.io.model_file import ModelFileError
from TwoFiveCNNLib.io.volume import read_volume
from TwoFiveCNNLib.networks.backbones import build_backbone, load_pretrained
from TwoFiveCNNLib.networks.severity_model import SeverityModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MANIFEST = ".twofivecnn-manifest.json"
EXPORT_FILES = {"embed.onnx", "head.onnx", "model.json"}  # the tiny model has no lesion network


@pytest.fixture(scope="module")
def exported(tiny_model, tmp_path_factory) -> Path:
    """``mine.pt`` (the tiny model) and its export ``mine.onnx`` beside it, made once by the command line."""
    folder = tmp_path_factory.mktemp("exported")
    shutil.copy(tiny_model, folder / "mine.pt")
    assert main(["export-onnx", "--model", str(folder / "mine.pt")]) == 0
    return folder


@pytest.fixture
def model_and_export(exported, tmp_path) -> tuple[Path, Path]:
    """A fresh copy of the model file and its export, for a test to damage."""
    shutil.copy(exported / "mine.pt", tmp_path / "mine.pt")
    shutil.copytree(exported / "mine.onnx", tmp_path / "mine.onnx")
    return tmp_path / "mine.pt", tmp_path / "mine.onnx"


def edit_record(folder: Path, **changes) -> None:
    record = json.loads((folder / "model.json").read_text())
    record.update(changes)
    (folder / "model.json").write_text(json.dumps(record))


def predict_args(study: Path, out: Path, model: Path, engine: str) -> list[str]:
    return ["predict", str(study), "--out", str(out), "--model", str(model), "--engine", engine]


# --- export-onnx writes only its own files ---------------------------------------------------------


def test_export_into_the_working_folder_keeps_the_users_files(tiny_model, tmp_path, monkeypatch, capsys):
    """`--out .` wiped the working folder. Now the export goes in beside the user's files, and a file of
    the user's that carries an export's name is refused by name, not replaced."""
    work = tmp_path / "work"
    (work / "notes").mkdir(parents=True)
    (work / "notes" / "scan.txt").write_text("the user's notes")
    (work / "report.pdf").write_bytes(b"%PDF the user's report")
    monkeypatch.chdir(work)
    assert main(["export-onnx", "--model", str(tiny_model), "--out", "."]) == 0
    assert (work / "notes" / "scan.txt").read_text() == "the user's notes"
    assert (work / "report.pdf").read_bytes() == b"%PDF the user's report"
    assert EXPORT_FILES <= {p.name for p in work.iterdir()}
    assert OnnxGrader(work).class_names == SeverityModel.load(tiny_model).class_names
    assert not [p for p in work.iterdir() if ".tmp" in p.name], "no staging folder left behind"

    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text('{"the user\'s": "settings"}')
    monkeypatch.chdir(other)
    assert main(["export-onnx", "--model", str(tiny_model), "--out", "."]) == 2
    message = capsys.readouterr().err
    assert "model.json" in message and "did not write" in message and "Traceback" not in message
    assert (other / "model.json").read_text() == '{"the user\'s": "settings"}'
    assert not (other / "embed.onnx").exists()


def test_export_into_the_models_own_folder_is_refused(tiny_model, tmp_path, capsys):
    """`--out` set to the model's folder deleted model.pt and reported success."""
    model = tmp_path / "models" / "mine.pt"
    model.parent.mkdir()
    shutil.copy(tiny_model, model)
    before = model.read_bytes()
    for out in (model.parent, tmp_path, model):
        assert main(["export-onnx", "--model", str(model), "--out", str(out)]) == 2
        message = capsys.readouterr().err
        assert f"twofivecnn export-onnx: error: {out}" in message and str(model) in message
        assert model.read_bytes() == before
    assert sorted(p.name for p in model.parent.iterdir()) == ["mine.pt"]


def test_re_export_replaces_its_own_export_and_an_export_made_before_manifests(exported, tmp_path, capsys):
    """Re-exporting into its own earlier export (the default place beside the model) stays allowed, also
    for an export made before manifests existed; but not into such a folder holding a file of the user's."""
    model = tmp_path / "mine.pt"
    shutil.copy(exported / "mine.pt", model)
    folder = tmp_path / "mine.onnx"
    shutil.copytree(exported / "mine.onnx", folder)
    (folder / MANIFEST).unlink(missing_ok=True)  # as export-onnx left it before this version
    (folder / "notes.txt").write_text("the user's")
    assert main(["export-onnx", "--model", str(model)]) == 2
    assert f"{folder}{os.sep}" in capsys.readouterr().err  # names the export's file it would not replace
    assert (folder / "notes.txt").read_text() == "the user's" and (folder / "model.json").is_file()
    (folder / "notes.txt").unlink()
    for _ in range(2):  # once taking over the old export, once into its own
        assert main(["export-onnx", "--model", str(model)]) == 0
        assert {p.name for p in folder.iterdir()} == EXPORT_FILES | {MANIFEST}
        assert load_model(model, "cpu", "onnx").class_names == SeverityModel.load(model).class_names


def test_an_export_that_dies_before_model_json_is_reported_incomplete(exported, tmp_path, monkeypatch, capsys):
    """model.json goes first and comes back last: an export cut short never loads with graphs of two exports."""
    model = tmp_path / "mine.pt"
    shutil.copy(exported / "mine.pt", model)
    shutil.copytree(exported / "mine.onnx", tmp_path / "mine.onnx")
    real_replace = os.replace

    def crash_at_model_json(source, target):
        if Path(target).name == "model.json":
            raise OSError(28, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", crash_at_model_json)
    assert main(["export-onnx", "--model", str(model)]) == 2
    monkeypatch.setattr(os, "replace", real_replace)
    capsys.readouterr()
    folder = tmp_path / "mine.onnx"
    assert not (folder / "model.json").exists() and (folder / "embed.onnx").is_file()
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]
    with pytest.raises(OnnxModelError, match="incomplete ONNX export"):
        load_model(model, "cpu", "onnx")


# --- damaged or edited exports ---------------------------------------------------------------------


def test_a_truncated_graph_is_an_error_under_onnx_and_a_warning_under_auto(model_and_export, chest_ct_path,
                                                                            tmp_path, capsys):
    model, folder = model_and_export
    graph = folder / "embed.onnx"
    graph.write_bytes(graph.read_bytes()[:50_000])
    assert main(predict_args(chest_ct_path, tmp_path / "a", model, "onnx")) == 2
    error = capsys.readouterr().err
    assert str(graph) in error and "Traceback" not in error
    assert main(predict_args(chest_ct_path, tmp_path / "b", model, "auto")) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and str(graph) in warnings[0] and "torch" in warnings[0]
    assert "CT-" in captured.out

    # Recorded as it now is (its sha256 updated): ONNX Runtime's own refusal, in a sentence naming it.
    record = json.loads((folder / "model.json").read_text())
    edit_record(folder, graphs={**record["graphs"], "embed": hashlib.sha256(graph.read_bytes()).hexdigest()})
    with pytest.raises(OnnxModelError, match=f"{graph}: ONNX Runtime cannot load it"):
        load_model(model, "cpu", "onnx")


@pytest.mark.parametrize("content, reason", [
    ('{"format": "twofivecnn-onnx", "version": ', "not readable"),
    ('["twofivecnn-onnx"]', "holds list"),
])
def test_model_json_that_is_not_a_record_is_an_error_naming_it(model_and_export, content, reason):
    model, folder = model_and_export
    (folder / "model.json").write_text(content)
    with pytest.raises(OnnxModelError, match=f"{folder / 'model.json'}: {reason}"):
        load_model(model, "cpu", "onnx")


@pytest.mark.parametrize("changes, reason", [
    ({"fusion_cnn_weight": "0.25"}, "'fusion_cnn_weight' is '0.25', not a number"),
    ({"class_names": "CT-0,CT-1"}, "'class_names' is 'CT-0,CT-1', not list"),
    ({"has_lesion_net": 1}, "'has_lesion_net' is 1, not bool"),
    ({"preprocess": {"in_plane": "48"}}, "'preprocess'"),
    ({"load_warnings": [3]}, "'load_warnings'"),
    ({"graphs": {}}, "'graphs'"),
    ({"name": None}, "'name' is None"),
    ({"source": "../../elsewhere/model.pt"}, "'source' '../../elsewhere/model.pt' is not a file name"),
])
def test_model_json_with_wrong_types_is_an_error_naming_the_field(model_and_export, changes, reason):
    """Wrong types failed every study with a NumPy traceback."""
    model, folder = model_and_export
    edit_record(folder, **changes)
    with pytest.raises(OnnxModelError, match=f"{folder / 'model.json'}: {reason}"):
        load_model(model, "cpu", "onnx")


def test_wrongly_sized_involvement_is_an_error(model_and_export):
    _, folder = model_and_export
    involvement = json.loads((folder / "model.json").read_text())["involvement"]
    edit_record(folder, involvement={**involvement, "bias": involvement["bias"][:-1]})
    with pytest.raises(OnnxModelError, match="'involvement' should hold"):
        OnnxGrader(folder)
    edit_record(folder, involvement={**involvement, "columns": ["involved"]})
    with pytest.raises(OnnxModelError, match="'columns'"):
        OnnxGrader(folder)


def test_reordered_class_names_are_caught_against_the_model_file(model_and_export, chest_ct_path, tmp_path,
                                                                 capsys):
    """Reordered class_names printed CT-4 for a CT-2 study; the record now has to agree with its model file."""
    model, folder = model_and_export
    classes = json.loads((folder / "model.json").read_text())["class_names"]
    edit_record(folder, class_names=classes[::-1])
    with pytest.raises(OnnxModelError, match=f"{folder / 'model.json'}: 'class_names' is .* here but .* in {model}"):
        load_model(model, "cpu", "onnx")
    with pytest.raises(OnnxModelError, match="'class_names'"):
        OnnxGrader(folder)  # the export folder alone: the model file beside it is found and checked
    out = tmp_path / "out"
    assert main(predict_args(chest_ct_path, out, model, "auto")) == 0
    assert "warning" in capsys.readouterr().err
    torch_label = predict_volume(load_model(model, "cpu", "torch"), read_volume(chest_ct_path)).label
    assert json.loads((out / "CTChest4.json").read_text())["label"] == torch_label


@pytest.mark.parametrize("field", ["involvement columns", "preprocess", "lesion network"])
def test_a_record_that_differs_from_its_model_file_is_refused(model_and_export, field):
    model, folder = model_and_export
    record = json.loads((folder / "model.json").read_text())
    if field == "involvement columns":
        edit_record(folder, involvement={**record["involvement"], "columns": [0]})
    elif field == "preprocess":
        edit_record(folder, preprocess={**record["preprocess"], "window": [-1200.0, 300.0]})
    else:
        edit_record(folder, lesion_lungs=True, has_lesion_net=True, graphs={**record.get("graphs", {}), "lesions": "0" * 64})
        shutil.copy(folder / "embed.onnx", folder / "lesions.onnx")
    with pytest.raises(OnnxModelError, match=f"here but .* in {model}, the model file it was made from"):
        load_model(model, "cpu", "onnx")


def test_the_demo_models_export_cannot_drop_its_notice(tmp_path):
    """The shipped export edited to say it is no demo model: every output would lose "not for clinical use"."""
    shutil.copy(BUNDLED_MODEL, tmp_path / BUNDLED_MODEL.name)
    folder = shutil.copytree(export_folder_of(BUNDLED_MODEL), tmp_path / export_folder_of(BUNDLED_MODEL).name)
    assert load_model(tmp_path / BUNDLED_MODEL.name, "cpu", "onnx").is_demo
    edit_record(folder, demo=False)
    with pytest.raises(OnnxModelError, match="'demo' is false here but true in"):
        load_model(tmp_path / BUNDLED_MODEL.name, "cpu", "onnx")


def test_without_the_model_file_the_graphs_are_checked_against_model_json(model_and_export, tmp_path):
    """An export moved away from its model file: the graphs' inputs and outputs must still fit model.json."""
    _, folder = model_and_export
    alone = tmp_path / "elsewhere" / "mine.onnx"
    shutil.move(folder, alone)
    record = json.loads((alone / "model.json").read_text())
    edit_record(alone, class_names=record["class_names"][:4], involvement=None)  # None: no involvement part
    with pytest.raises(OnnxModelError, match=f"{alone / 'head.onnx'}: takes .* 4 classes"):
        load_model(alone, "cpu", "onnx")
    edit_record(alone, class_names=record["class_names"],
                preprocess={**record["preprocess"], "in_plane": record["preprocess"]["in_plane"] * 2})
    with pytest.raises(OnnxModelError, match=f"{alone / 'embed.onnx'}: takes .*image size 96"):
        load_model(alone, "cpu", "auto")  # no model file to fall back on: an error under auto too


ODD_JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True)
                        | st.text(max_size=6), lambda inner: st.lists(inner, max_size=6)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@st.composite
def edited_records(draw, record: dict) -> dict:
    """model.json with one to three fields, top-level or nested, deleted or given odd JSON values."""
    record = json.loads(json.dumps(record))
    for _ in range(draw(st.integers(1, 3))):
        parent = record
        nested = [k for k, v in record.items() if isinstance(v, dict) and v]
        if nested and draw(st.booleans()):
            parent = record[draw(st.sampled_from(sorted(nested)))]
        key = draw(st.sampled_from(sorted(parent)))
        if draw(st.integers(0, 4)) == 0:
            del parent[key]
        else:
            parent[key] = draw(ODD_JSON)
    return record


@pytest.fixture(scope="module")
def fuzz_folder(exported, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copy(exported / "mine.pt", folder / "mine.pt")
    shutil.copytree(exported / "mine.onnx", folder / "mine.onnx")
    return folder


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_edited_model_json_loads_and_grades_or_is_refused_naming_it(fuzz_folder, data):
    """Whatever model.json says, an export either loads and grades a study (finite probabilities summing
    to 1, one per class) or is refused with an OnnxModelError naming its folder: never another error."""
    folder = fuzz_folder / "mine.onnx"
    original = (folder / "model.json").read_text()
    try:
        (folder / "model.json").write_text(json.dumps(data.draw(edited_records(json.loads(original)))))
        for model_file in (fuzz_folder / "mine.pt", folder):  # checked against the model file, and alone
            try:
                model = load_model(model_file, "cpu", "onnx")
            except OnnxModelError as refused:
                assert str(folder) in str(refused) and "\n" not in str(refused)
                continue
            size = model.preprocess.in_plane
            grid = np.random.default_rng(0).random((5, size, size), dtype=np.float32)
            graded = model.grade(grid, np.full(4, 0.3))
            assert graded.probabilities.shape == (len(model.class_names),)
            assert np.isfinite(graded.probabilities).all() and abs(graded.probabilities.sum() - 1) < 1e-4
    finally:
        (folder / "model.json").write_text(original)


def test_a_swapped_graph_is_caught_by_its_inputs_and_outputs(tmp_path):
    """One graph put in another's place (and model.json's digest made to match): the lesion network as the
    slice backbone of the shipped demo export takes the same slices but gives masks, not embeddings."""
    shipped = export_folder_of(BUNDLED_MODEL)
    folder = tmp_path / "demo.onnx"
    shutil.copytree(shipped, folder)
    shutil.copy(folder / "lesions.onnx", folder / "embed.onnx")
    record = json.loads((folder / "model.json").read_text())
    edit_record(folder, graphs={**record.get("graphs", {}),
                                "embed": hashlib.sha256((folder / "embed.onnx").read_bytes()).hexdigest()})
    with pytest.raises(OnnxModelError, match=f"{folder / 'embed.onnx'}: takes slices .* gives .*2, 96, 96"):
        load_model(folder, "cpu", "onnx")


def test_an_export_whose_model_file_is_gone_runs_on_its_own(model_and_export):
    """The export beside a model file that was moved away still runs (its graphs checked against model.json)."""
    model, folder = model_and_export
    model.unlink()
    for engine in ("onnx", "auto"):
        assert load_model(model, "cpu", engine).engine == "onnxruntime"
    edit_record(folder, class_names=["CT-0", "CT-1..4"], involvement=None)
    with pytest.raises(OnnxModelError, match="head.onnx: takes"):
        load_model(model, "cpu", "auto")  # nothing to run on torch instead: an error under auto too


def test_a_stale_export_is_a_warning_under_auto_and_an_error_under_onnx(model_and_export):
    """A model file retrained after its export: auto says it runs on torch, and why."""
    model, folder = model_and_export
    retrained = SeverityModel.load(model)
    retrained.metadata["name"] = "retrained"
    retrained.save(model)
    with pytest.warns(UserWarning) as said:
        assert load_model(model, "cpu", "auto").engine == "torch"
    assert len(said) == 1 and "made from another version" in str(said[0].message)
    assert "torch" in str(said[0].message) and "\n" not in str(said[0].message)
    lines = []
    assert load_model(model, "cpu", "auto", warn=lines.append).engine == "torch"  # the CLI's printer
    assert lines == [str(said[0].message)]
    with pytest.raises(OnnxModelError, match=f"{folder}: made from another version of {model}"):
        load_model(model, "cpu", "onnx")


# --- model-file errors and NaN models --------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return os.system, ("true",)


def hostile_files(folder: Path, tiny_model: Path) -> list[Path]:
    """Files torch's weights_only loading refuses, each with its own wording in torch's message."""
    a_global = folder / "global.pt"
    torch.save({"format": "twofivecnn-model", "callback": print}, a_global)
    pickles = {"blocked.pt": pickle.dumps(_RunsCode(), protocol=2), "garbage.pt": b"\x80\x02garbage"}
    with zipfile.ZipFile(tiny_model) as source:
        for name, payload in pickles.items():
            with zipfile.ZipFile(folder / name, "w") as archive:
                for member in source.namelist():
                    archive.writestr(member, payload if member.endswith("data.pkl") else source.read(member))
    return [a_global, *(folder / name for name in pickles)]


def test_model_file_errors_are_plain_text_without_the_hint_to_load_unsafely(tiny_model, tmp_path, capsys):
    for path in hostile_files(tmp_path, tiny_model):
        with pytest.raises(ModelFileError) as refused:
            load_model(path, "cpu")
        message = str(refused.value)
        assert message.startswith(str(path)) and "\x1b" not in message
        assert "weights_only" not in message and "safe_globals" not in message
        assert main(["predict", "--model", str(path), str(tiny_model), "--out", str(tmp_path / "o")]) == 2
        error = capsys.readouterr().err
        assert str(path) in error and "weights_only" not in error and "\x1b" not in error
        with pytest.raises(ValueError) as refused:  # --pretrained reads files the same way
            load_pretrained(build_backbone("compact_resnet"), path)
        assert str(path) in str(refused.value) and "weights_only" not in str(refused.value)
        assert "\x1b" not in str(refused.value)


@pytest.fixture(scope="module")
def nan_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with NaN in its attention head's weights, as a diverged training run leaves it."""
    model = SeverityModel.load(tiny_model)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.fill_(float("nan"))
    return model.save(tmp_path_factory.mktemp("nan") / "diverged.pt")


def test_a_nan_models_failure_names_the_study_and_the_model(nan_model, phantom_cohort, cache_dir, tmp_path,
                                                            capsys):
    study = next((phantom_cohort / "studies" / "CT-1").glob("*.nii.gz"))
    out = tmp_path / "out"
    assert main(["predict", str(study), "--out", str(out), "--model", str(nan_model), "--engine", "torch"]) == 3
    failure = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert len(failure) == 1 and str(study) in failure[0] and str(nan_model) in failure[0]
    assert "NaN" in failure[0]
    assert str(nan_model) in (out / "summary.tsv").read_text()
    assert main(["evaluate", "--model", str(nan_model), "--data", str(phantom_cohort), "--subset", "all",
                 "--cache", str(cache_dir)]) == 2
    error = capsys.readouterr().err
    assert str(nan_model) in error and "studies study_" in error and "NaN" in error


def test_a_model_files_metadata_and_tensors_read_without_torch_are_torchs(tiny_model):
    """What the export is checked against is what torch reads from the model file."""
    from TwoFiveCNNLib.io.model_file import load_archive, read_archive_without_torch

    tensors, metadata = load_archive(tiny_model)
    stand_ins, read_metadata = read_archive_without_torch(tiny_model)
    assert read_metadata == metadata and stand_ins.keys() == tensors.keys()
    for group, values in tensors.items():
        assert stand_ins[group].keys() == values.keys()
        for name, value in values.items():
            assert (stand_ins[group][name].numpy() == value.numpy()).all(), (group, name)
