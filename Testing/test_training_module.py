"""Training from Slicer: volume nodes -> dataset, a real training subprocess -> curves, model, metric tables.

Real MRML (slicer-core), real child processes and real (tiny) training runs; the phantom volumes are
built once per module and the preprocessed cache is shared, so the whole file takes about a minute
or two on a CPU.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN_ARGS, live_members

slicer = pytest.importorskip("slicer")

from TwoFiveCNNLib.app.processes import LIBRARY_PARENT, TrainingProcess, atomic_leftovers, train_arguments
from TwoFiveCNNLib.data.summary import dataset_summary_text
from TwoFiveCNNLib.io.manifest import MANIFEST_NAME
from TwoFiveCNNLib.io.progress import describe_event, progress_percent
from TwoFiveCNNLib.scene.training_nodes import (
    CURVE_COLOURS,
    LABEL_TABLE_NAME,
    ProgressNodes,
    dataset_from_nodes,
    label_table_node,
    metrics_to_tables,
)

STUDIES_PER_CLASS = 3
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def scene():
    """A scene holding 3 phantom CTs per class as volume nodes (as if loaded with Add Data)."""
    from TwoFiveCNNLib.data.phantoms import generate_phantom

    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    for label in range(5):
        for n in range(STUDIES_PER_CLASS):
            phantom = generate_phantom(label, seed=100 + 10 * label + n)
            slicer.util.addVolumeFromArray(phantom.array_kji, phantom.geometry.ijk_to_ras(),
                                           name=f"patient {label}-{n}")
    yield scene
    slicer.mrmlScene = previous


def volume_nodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]


def true_label(node) -> str:
    return f"CT-{node.GetName().split()[1].split('-')[0]}"


@pytest.fixture(scope="module")
def dataset_csv(scene, tmp_path_factory) -> Path:
    nodes = volume_nodes(scene)
    table = label_table_node(scene, nodes, [true_label(node) for node in nodes])
    return dataset_from_nodes(table, scene, tmp_path_factory.mktemp("export"))


def run_until_exit(process: TrainingProcess, on_events: Callable[[list[dict]], object] | None = None,
                   stop_when: Callable[[dict], bool] | None = None,
                   timeout: float = RUN_TIMEOUT_S) -> list[dict]:
    """Poll like the module's timer does, until the exit event (or ``stop_when(event)``)."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = process.poll()
        events += new
        if on_events:
            on_events(new)
        if any(e["stage"] == "exit" for e in new) or (stop_when and any(stop_when(e) for e in new)):
            return events
        time.sleep(0.05)
    process.cancel()
    raise AssertionError(f"training did not finish in {timeout} s; stderr:\n{process.stderr_tail}")


def exit_event(events: list[dict]) -> dict:
    exits = [e for e in events if e["stage"] == "exit"]
    assert len(exits) == 1, events[-5:]
    assert events[-1] is exits[0], "the exit event comes last"
    return exits[0]


def column(table_node, name: str) -> list:
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, f"{table_node.GetName()} has no column {name}"
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


# ---------------------------------------------------------------------------------------- datasets


def test_label_table_lists_volumes_and_keeps_typed_labels(scene):
    nodes = volume_nodes(scene)[:3]
    table = label_table_node(scene, nodes)
    assert table.GetName() == LABEL_TABLE_NAME
    assert column(table, "volume") == [n.GetName() for n in nodes]
    assert column(table, "label") == ["", "", ""]
    table.GetTable().GetColumnByName("label").SetValue(1, "ct-2")  # as typed in the table view
    again = label_table_node(scene, volume_nodes(scene)[:4], table_node=table)
    assert again is table
    assert column(table, "label") == ["", "ct-2", "", ""]
    label_table_node(scene, nodes[:1], {nodes[0].GetName(): "CT-4"}, table_node=table)
    assert column(table, "label")[:2] == ["CT-4", "ct-2"]
    scene.RemoveNode(table)


def test_volume_nodes_become_a_dataset_without_duplicate_files(scene, dataset_csv):
    from TwoFiveCNNLib.data.index import DatasetIndex

    export = dataset_csv.parent
    with open(dataset_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * STUDIES_PER_CLASS
    assert set(rows[0]) == {"path", "label", "study_id"}
    nrrds = sorted(export.rglob("*.nrrd"))
    assert len(nrrds) == len(rows)
    index = DatasetIndex.load(dataset_csv)
    assert index.counts() == {f"CT-{k}": STUDIES_PER_CLASS for k in range(5)}
    by_id = {s.study_id: s for s in index.studies}
    assert by_id["patient_2-1"].label == "CT-2"

    # The exported file holds the node's voxels and geometry.
    from TwoFiveCNNLib.io.volume import read_volume
    from TwoFiveCNNLib.scene.nodes import volume_from_node

    node = scene.GetFirstNodeByName("patient 2-1")
    exported, original = read_volume(by_id["patient_2-1"].path), volume_from_node(node)
    np.testing.assert_array_equal(exported.array, original.array)
    np.testing.assert_allclose(exported.geometry.ijk_to_ras(), original.geometry.ijk_to_ras(), atol=1e-4)

    # Exporting again, after renaming a node and from (node, label) pairs, writes no new file.
    mtimes = {p: p.stat().st_mtime_ns for p in nrrds}
    node.SetName("renamed")
    try:
        pairs = [(n, true_label(n) if n is not node else "CT-2") for n in volume_nodes(scene)]
        assert dataset_from_nodes(pairs, scene, export) == dataset_csv
    finally:
        node.SetName("patient 2-1")
    assert {p: p.stat().st_mtime_ns for p in export.rglob("*.nrrd")} == mtimes
    assert not [p for p in export.rglob("*") if ".tmp" in p.name]

    summary = dataset_summary_text(dataset_csv)
    assert f"{5 * STUDIES_PER_CLASS} studies" in summary and "CT-4: 3" in summary
    assert "slice spacing" in summary


@pytest.mark.parametrize("pairs, message", [
    ([("no such volume", "CT-1")], "no node named"),
    ([("patient 0-0", "CT-7")], "unknown label"),
    ([("patient 0-0", "")], "no label"),
    ([("patient 0-0", "CT-0"), ("patient 0-0", "CT-1")], "same voxels"),
    ([], "no volumes"),
])
def test_dataset_errors_say_what_to_fix(scene, tmp_path, pairs, message):
    with pytest.raises(ValueError, match=message):
        dataset_from_nodes(pairs, scene, tmp_path)


def test_non_volumes_and_empty_tables_are_refused(scene, tmp_path):
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "not a volume")
    try:
        with pytest.raises(ValueError, match="not a CT volume"):
            dataset_from_nodes([(table, "CT-0")], scene, tmp_path)
        with pytest.raises(ValueError, match="no column"):
            dataset_from_nodes(table, scene, tmp_path)
        empty = label_table_node(scene, [], table_node=scene.AddNewNodeByClass("vtkMRMLTableNode", "empty"))
        with pytest.raises(ValueError, match="lists no volumes"):
            dataset_from_nodes(empty, scene, tmp_path)
        scene.RemoveNode(empty)
    finally:
        scene.RemoveNode(table)


# ---------------------------------------------------------------------------------------- training


def test_event_text_and_progress():
    event = {"stage": "stage1", "epoch": 2, "epochs": 4, "loss": 1.5, "val_balanced_accuracy": 0.4,
             "eta_s": 75}
    assert describe_event(event) == "stage1, 2/4, loss 1.500, val bal. acc. 0.400, stage1 ends in ~1 min 15 s"
    assert progress_percent(event) == 45
    assert progress_percent({"stage": "preprocess", "subset": "val", "studies_done": 5, "studies": 5}) == 7
    assert progress_percent({"stage": "done"}) == 100 and progress_percent({"stage": "log"}) is None
    assert train_arguments(3, 20, seed=1, device="cpu") == ["--stage1-epochs", "3", "--stage2-epochs", "20",
                                                           "--seed", "1", "--device", "cpu"]


def test_the_child_process_finds_this_library():
    """PythonSlicer does not see Slicer's scripted-modules folder: PYTHONPATH must lead to the library."""
    assert (LIBRARY_PARENT / "TwoFiveCNNLib" / "__main__.py").is_file()
    first = TrainingProcess.environment()["PYTHONPATH"].split(os.pathsep)[0]
    assert Path(first) == LIBRARY_PARENT


def test_curves_take_the_report_colours_of_their_stages():
    from TwoFiveCNNLib.reports.colours import STAGE_COLOURS_UNIT

    assert list(CURVE_COLOURS.values()) == list(STAGE_COLOURS_UNIT[:2])
    assert CURVE_COLOURS["stage1"] == pytest.approx((0.0, 0.447, 0.698), abs=1e-3)  # Okabe-Ito blue
    assert CURVE_COLOURS["stage2"] == pytest.approx((0.835, 0.369, 0.0), abs=1e-3)  # and vermillion


def test_failed_run_reports_the_error(tmp_path):
    process = TrainingProcess(tmp_path / "missing.csv", tmp_path / "model.pt", ["--quiet"]).start()
    end = exit_event(run_until_exit(process))
    assert end["returncode"] != 0 and not end["cancelled"]
    assert "missing.csv" in end["error"] and "no such CSV" in end["error"]
    assert not process.is_running


def test_training_process_fills_curves_and_the_model_grades_a_node(scene, dataset_csv, cache_dir, tmp_path):
    from TwoFiveCNNLib.scene.nodes import predict_volume_node

    out = tmp_path / "tiny.pt"
    curves = ProgressNodes(scene)
    curves.clear()
    process = TrainingProcess(dataset_csv, out, [*TINY_TRAIN_ARGS, "--cache", str(cache_dir)])
    assert process.command()[1:4] == ["-m", "TwoFiveCNNLib", "train"]
    started = time.monotonic()
    events = run_until_exit(process.start(), on_events=curves.add_events)
    end = exit_event(events)
    assert end["returncode"] == 0, process.stderr_tail
    print(f"tiny training run: {time.monotonic() - started:.1f} s")
    stages = [e["stage"] for e in events]
    for stage in ("log", "preprocess", "stage1", "embed", "stage2", "done"):
        assert stage in stages
    assert out.is_file() and not process.checkpoint_path.exists() and not atomic_leftovers(out)

    table = curves.curves_table_node
    assert column(table, "stage") == ["stage1", "stage2"]
    assert column(table, "epoch") == [1, 4]
    assert all(0 <= v <= 1 for v in column(table, "val_balanced_accuracy"))
    for chart in (curves.loss_chart_node, curves.accuracy_chart_node):
        assert chart.GetNumberOfPlotSeriesNodes() == 2
        series = chart.GetNthPlotSeriesNode(0)
        assert series.GetTableNode().GetTable().GetNumberOfRows() == 1
    # A later instance (module reloaded) finds the same nodes instead of adding new ones.
    assert ProgressNodes(scene).curves_table_node is table

    node = scene.GetFirstNodeByName("patient 3-0")
    result = predict_volume_node(node, out, scene, device="cpu")
    assert result.label in {f"CT-{k}" for k in range(5)}
    assert abs(sum(result.probabilities.values()) - 1) < 1e-4

    metrics_node, confusion_node = metrics_to_tables(out, scene)
    assert metrics_node.GetNumberOfRows() == 5
    assert column(metrics_node, "class") == [f"CT-{k}" for k in range(5)]
    assert sum(column(metrics_node, "support")) == int(metrics_node.GetDescription().split("(")[1].split()[0])
    assert metrics_node.GetAttribute("TwoFiveCNN.split") == "test"
    assert float(metrics_node.GetAttribute("TwoFiveCNN.balanced_accuracy")) >= 0
    assert confusion_node.GetNumberOfRows() == 5 and confusion_node.GetNumberOfColumns() == 1 + 5
    counts = np.array([column(confusion_node, f"CT-{k}") for k in range(5)]).T
    assert counts.sum() == sum(column(metrics_node, "support"))
    assert metrics_to_tables(out, scene)[0] is metrics_node  # re-running updates the same nodes


def test_cancel_leaves_no_model_and_resume_finishes(scene, dataset_csv, cache_dir, tmp_path):
    out = tmp_path / "resumable.pt"
    args = [*TINY_TRAIN_ARGS, "--stage1-epochs", "3", "--stage2-epochs", "4", "--cache", str(cache_dir)]
    process = TrainingProcess(dataset_csv, out, args).start()
    events = run_until_exit(process, stop_when=lambda e: e["stage"] == "stage1" and e.get("epoch", 0) >= 1)
    assert [e["epoch"] for e in events if e["stage"] == "stage1"] == [0, 1]
    started = time.monotonic()
    process.cancel(timeout=20)
    cancel_seconds = time.monotonic() - started
    if Path("/proc/self/stat").is_file():
        assert live_members(process.pid) == []  # the whole process tree has gone when cancel returns
    events += run_until_exit(process, timeout=30)
    end = exit_event(events)
    assert end["cancelled"] and end["returncode"] != 0 and end["error"] is None
    # Stopped by its own SIGTERM handling (exit code 130), not killed after the cancel's timeout (-9);
    # no timing is asserted: a busy machine may take its time.
    assert end["returncode"] == 130, end
    assert not process.is_running
    assert not out.exists()
    assert atomic_leftovers(out) == []
    # No hidden leftovers; the manifest records what the run claimed (io.manifest), so that --resume may replace it.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != MANIFEST_NAME], \
        list(tmp_path.iterdir())
    had_checkpoint = process.checkpoint_path.exists()
    print(f"cancel took {cancel_seconds:.2f} s; checkpoint kept: {had_checkpoint}")

    resumed = run_until_exit(process.resume())
    assert exit_event(resumed)["returncode"] == 0, process.stderr_tail
    assert out.is_file() and not process.checkpoint_path.exists()
    stage1 = [e["epoch"] for e in resumed if e["stage"] == "stage1" and "loss" in e]  # epochs trained
    if had_checkpoint:
        assert any("resuming from" in e.get("message", "") for e in resumed)
        assert stage1 == [2, 3]
    else:  # SIGTERM arrived before the first checkpoint was written: the run starts over
        assert stage1 == [1, 2, 3]
    from TwoFiveCNNLib.networks.severity_model import SeverityModel

    model = SeverityModel.load(out)
    assert [r["epoch"] for r in model.metadata["history"]["stage1"]] == [1, 2, 3]
