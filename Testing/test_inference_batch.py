"""The TwoFiveCNN module grades a folder in the background: its Logic, a real child process tree, real MRML.

The module file is loaded as test_inference_module.py loads it (``slicer_stubbed``: only the Qt-only
parts are stand-ins); the batch runs ``python -m TwoFiveCNNLib predict --progress-json`` with a
really trained tiny model on 20 small phantom studies. How long a cancel took is printed, never
asserted: a busy machine may take its time.
"""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")

from helpers import find_class, live_members, load_module, module_tree
from TwoFiveCNNLib.io.manifest import MANIFEST_NAME

STUDIES = 20
BATCH_TIMEOUT_S = 600  # a safety net for a broken test, not a measurement


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory) -> Path:
    """20 small phantom CTs (every class, both orientations the generator draws), one file each."""
    from TwoFiveCNNLib.data.phantoms import generate_phantom
    from TwoFiveCNNLib.io.volume import write_volume

    folder = tmp_path_factory.mktemp("studies")
    for index in range(STUDIES):
        phantom = generate_phantom(index % 5, seed=300 + index, shape_zyx=(24, 64, 64))
        write_volume(phantom.array_kji, phantom.geometry, folder / f"study_{index:02d}.nrrd")
    return folder


@pytest.fixture
def logic(request):
    request.getfixturevalue("slicer_stubbed")
    return load_module("TwoFiveCNN").TwoFiveCNNLogic()


def collect(logic, until, timeout: float = BATCH_TIMEOUT_S) -> list[dict]:
    """Call ``batchEvents`` as the panel's timer does until ``until(events)``."""
    events, deadline = [], time.monotonic() + timeout
    while not until(events):
        if time.monotonic() > deadline:
            logic.cancelBatch(wait=True)
            raise AssertionError(f"batch events stopped short: {events[-3:]}\n{logic.batchProcess.stderr_tail}")
        events += logic.batchEvents()
        time.sleep(0.05)
    return events


def ended(events: list[dict]) -> bool:
    return bool(events) and events[-1]["stage"] == "exit"




def table_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLTableNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode"))]


def column(table_node, name: str) -> list:
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, f"no column {name}"
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


def test_a_folder_is_graded_in_the_background_and_its_summary_becomes_a_table(
        logic, study_folder, tiny_model, tmp_path):
    scene = slicer.mrmlScene
    out = tmp_path / "out"
    nodes_before = scene.GetNumberOfNodes()
    process = logic.startBatch([study_folder], out, tiny_model, device="CPU")
    assert process.command()[2:4] == ["TwoFiveCNNLib", "predict"]
    assert "--device" in process.command() and "cpu" in process.command()  # the panel's word, mapped

    events = collect(logic, ended)

    end = events[-1]
    assert end["ok"] and end["returncode"] == 0 and not end["cancelled"], logic.batchProcess.stderr_tail
    progress = [e for e in events if e["stage"] == "predict"]
    names = [f"study_{i:02d}" for i in range(STUDIES)]
    assert [e["studies_done"] for e in progress] == list(range(STUDIES + 1))
    assert {e["studies"] for e in progress} == {STUDIES}
    assert [e.get("current") for e in progress] == [*names, None]  # the study at work, then none
    assert [e.get("finished") for e in progress[1:]] == names
    assert logic.batchProgress(progress[3]) == (3, STUDIES, f"3/{STUDIES} studies, now study_03")
    assert logic.batchProgress(end) is None

    # summary.tsv as a table node: one row per study, numbers as numbers; the only node added.
    table = logic.batchSummaryNode
    assert table is not None and scene.IsNodePresent(table)
    assert scene.GetNumberOfNodes() == nodes_before + 1
    assert table.GetNumberOfRows() == STUDIES
    assert [Path(p).name for p in column(table, "input")] == [f"{n}.nrrd" for n in names]
    assert set(column(table, "status")) == {"ok"}
    assert set(column(table, "label")) <= {f"CT-{k}" for k in range(5)}
    probabilities = [column(table, f"CT-{k}") for k in range(5)]
    assert all(abs(sum(row) - 1) < 1e-3 for row in zip(*probabilities))
    assert table.GetTable().GetColumnByName("CT-0").IsA("vtkDoubleArray")
    assert table.GetDescription().startswith(f"{STUDIES} studies graded, 0 failed")
    for name in names:
        assert {f"{name}.json", f"{name}.png", f"{name}_lesion_map.nii.gz"} <= {p.name for p in out.iterdir()}

    # Again into the same folder (two studies this time): the same node shows the new summary.
    small = tmp_path / "two"
    small.mkdir()
    for name in names[:2]:
        (small / f"{name}.nrrd").write_bytes((study_folder / f"{name}.nrrd").read_bytes())
    logic.startBatch([small], out, tiny_model, device="CPU")
    assert ended(collect(logic, ended))
    assert logic.batchSummaryNode is table and table.GetNumberOfRows() == 2
    assert scene.GetNumberOfNodes() == nodes_before + 1
    assert len([t for t in table_nodes(scene) if t.GetAttribute("TwoFiveCNN.batchSummary")]) == 1


def test_cancel_at_the_third_study_ends_the_tree_and_keeps_complete_studies(
        logic, study_folder, tiny_model, tmp_path):
    out = tmp_path / "out"
    nodes_before = slicer.mrmlScene.GetNumberOfNodes()
    process = logic.startBatch([study_folder], out, tiny_model, device="CPU")
    parameters = types.SimpleNamespace(inputVolume=object(), useDemoModel=False, modelPath=tiny_model,
                                       batchInputFolder=study_folder, batchOutputFolder=tmp_path / "other")
    assert logic.isBatchRunning()

    def third_study_started(events):
        return any(e["stage"] == "predict" and e.get("current") == "study_02" for e in events) or ended(events)

    events = collect(logic, third_study_started)
    assert not ended(events), f"the batch ended before its third study: {events[-1]}"
    # While it runs, Apply and Run on folder say why they are off (one model at a time).
    assert "batch is running" in logic.applyProblem(parameters)
    assert "batch is running" in logic.batchProblem(parameters)
    pgid = process.pid
    assert live_members(pgid), "the batch process group is running"

    started = time.monotonic()
    logic.cancelBatch(wait=True)
    print(f"cancel at the third study took {time.monotonic() - started:.2f} s")

    assert live_members(pgid) == []  # no process of the tree is left
    events += logic.batchEvents()
    end = events[-1]
    assert end["stage"] == "exit" and end["cancelled"] and not end["ok"]
    assert end["returncode"] == 130, logic.batchProcess.stderr_tail  # the command line's own clean stop
    assert logic.applyProblem(parameters) is None and not logic.isBatchRunning()

    # Studies graded before the cancel are complete; the one at work left nothing; no temporaries.
    # The manifest records what the batch claimed (io.manifest): the only hidden file.
    files = sorted(p.name for p in out.iterdir())
    graded = sorted(p.name[: -len(".json")] for p in out.glob("*.json") if not p.name.startswith("."))
    assert 2 <= len(graded) < STUDIES, files
    assert files == sorted([MANIFEST_NAME, *(f"{name}{suffix}" for name in graded
                                             for suffix in (".json", ".png", "_lesion_map.nii.gz"))]), files
    for name in graded:
        record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        assert record["label"] in {f"CT-{k}" for k in range(5)}
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}_lesion_map.nii.gz").stat().st_size > 0
    # A cancelled batch has no summary, and the scene gets no table.
    assert logic.batchSummaryNode is None
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_before


def test_a_batch_that_cannot_start_says_why_and_adds_nothing(logic, study_folder, tmp_path):
    scene = slicer.mrmlScene
    count = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="the output folder is the input"):
        logic.startBatch([study_folder], study_folder)
    with pytest.raises(ValueError, match="no such model file"):
        logic.startBatch([study_folder], tmp_path / "out", tmp_path / "missing.pt")
    assert logic.batchProcess is None and not logic.isBatchRunning()

    # A child that fails (here: a file that is not a model) ends with its error and no summary node.
    notes = tmp_path / "notes.pt"
    notes.write_text("not a model\n", encoding="utf-8")
    logic.startBatch([study_folder], tmp_path / "out", notes, device="CPU")
    end = collect(logic, ended)[-1]
    assert not end["ok"] and not end["cancelled"] and end["returncode"] == 2
    assert "not a readable model file" in end["error"]
    assert logic.batchSummaryNode is None and scene.GetNumberOfNodes() == count
    logs = []
    logic.logCallback = logs.append
    assert logic.batchEvents() == [] and logs == []  # the end was collected once


def test_the_inference_widget_polls_and_never_waits():
    """The panel starts the batch and reads it from a QTimer; a blocking call would freeze Slicer."""
    import ast
    import re


    widget = find_class(module_tree("TwoFiveCNN"), "TwoFiveCNNWidget")
    calls = {ast.unparse(n.func) for n in ast.walk(widget) if isinstance(n, ast.Call)}
    assert {"qt.QTimer", "self.batchTimer.start", "self.logic.startBatch", "self.logic.batchEvents"} <= calls
    assert "self.logic.runOnFiles" not in calls
    assert not {c for c in calls if re.search(r"\.wait$|time\.sleep|communicate|subprocess|processEvents", c)}
    # The decisions are the Logic's: the widget asks it why a button is off.
    assert {"self.logic.applyProblem", "self.logic.batchProblem"} <= calls


def test_both_panels_offer_the_same_device_words(request):
    """One vocabulary: both parameter nodes offer module_settings' choices, mapped to --device in one place."""
    import typing

    from TwoFiveCNNLib.app import module_settings

    request.getfixturevalue("slicer_stubbed")
    for module, parameters in (("TwoFiveCNN", "TwoFiveCNNParameterNode"),
                               ("TwoFiveCNNTraining", "TwoFiveCNNTrainingParameterNode")):
        loaded = load_module(module)
        device = typing.get_type_hints(getattr(loaded, parameters), include_extras=True)["device"]
        assert device.__metadata__ == (("Choice", module_settings.DEVICE_CHOICES),), module
        assert getattr(loaded, parameters).device == "auto"
