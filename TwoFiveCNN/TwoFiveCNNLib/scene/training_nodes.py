"""Training in the Slicer scene: datasets from volume nodes, and the results of a run as nodes.

Volume nodes and a label table become a dataset on disk (the training runs in a child process that
reads files); its progress events become curve tables and charts; its model's metrics become table
nodes. The progress text itself is :mod:`TwoFiveCNNLib.io.progress`'s, the process
:mod:`TwoFiveCNNLib.app.processes`'s, the dataset summary :mod:`TwoFiveCNNLib.data.summary`'s.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import slicer.util
import vtk

from ..data.index import CLASS_NAMES, normalize_label
from ..io.atomic import write_text_atomic
from ..io.volume import Geometry, unique_stem, write_volume
from ..reports.colours import MUTED, STAGE_COLOURS_UNIT, unit_rgb
from .nodes import volume_from_node

LABEL_TABLE_NAME = "TwoFiveCNN training labels"
VOLUME_COLUMN, LABEL_COLUMN = "volume", "label"
DATASET_CSV = "dataset.csv"
EXPORT_SUBFOLDER = "volumes"
CURVE_STAGES = ("stage1", "stage2")
# The order of the report pictures' training curves, so that a stage has one colour everywhere.
CURVE_COLOURS = dict(zip(CURVE_STAGES, STAGE_COLOURS_UNIT))
OTHER_CURVE_COLOUR = unit_rgb(MUTED)
# (metric key, name shown) of the overall numbers in the metrics table's description and attributes.
OVERALL_METRICS = (
    ("balanced_accuracy", "balanced accuracy"), ("quadratic_weighted_kappa", "quadratic kappa"),
    ("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("roc_auc", "ROC AUC"),
)


# ---------------------------------------------------------------------------------------- datasets


def _node_text(node: Any) -> str:
    return f"{node.GetName()!r} ({node.GetID() or 'not in a scene'})"


def _find_volume_node(scene: Any, reference: Any) -> Any:
    """A volume node given itself, its ID or its (unique) name; errors say what to fix."""
    if not isinstance(reference, str):
        node = reference
    else:
        text = reference.strip()
        if not text:
            raise ValueError("empty volume name: every row of the label table must name a volume node.")
        node = scene.GetNodeByID(text)
        if node is None:
            matches = scene.GetNodesByName(text)
            if matches.GetNumberOfItems() > 1:
                raise ValueError(f"{matches.GetNumberOfItems()} nodes are named {text!r}: rename them or "
                                 f"use the node ID (e.g. {matches.GetItemAsObject(0).GetID()}).")
            node = matches.GetItemAsObject(0) if matches.GetNumberOfItems() else None
        if node is None:
            raise ValueError(f"no node named {text!r} (or with that ID) in the scene: load the volume or "
                             f"correct the label table.")
    if node is None:
        raise ValueError("no volume node given.")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"{_node_text(node)} is a {node.GetClassName()}, not a CT volume: list scalar "
                         f"volume nodes only.")
    return node


def _check_label(label: Any, volume_name: str) -> str:
    name = normalize_label(str(label if label is not None else ""))
    if name is None:
        shown = "no label" if not str(label or "").strip() else f"unknown label {label!r}"
        raise ValueError(f"{volume_name}: {shown}; use one of {', '.join(CLASS_NAMES)}.")
    return name


def _table_rows(table_node: Any) -> list[tuple[str, str]]:
    """``(volume, label)`` text of every row of a label table node."""
    table = table_node.GetTable()
    columns = {table.GetColumnName(i).strip().lower(): i for i in range(table.GetNumberOfColumns())}
    missing = [c for c in (VOLUME_COLUMN, LABEL_COLUMN) if c not in columns]
    if missing:
        raise ValueError(f"table {table_node.GetName()!r} has no column(s) {', '.join(missing)}: it needs "
                         f"'{VOLUME_COLUMN}' (node name or ID) and '{LABEL_COLUMN}' (CT-0..CT-4).")
    rows = [tuple(table.GetValue(r, columns[name]).ToString() for name in (VOLUME_COLUMN, LABEL_COLUMN))
            for r in range(table.GetNumberOfRows())]
    rows = [(v.strip(), lab.strip()) for v, lab in rows if v.strip() or lab.strip()]
    if not rows:
        raise ValueError(f"table {table_node.GetName()!r} lists no volumes: add one row per volume with "
                         f"its label.")
    return rows


def _content_hash(array_kji: np.ndarray, geometry: Geometry) -> str:
    """Identifies a volume by its voxels and grid, whatever its node is called."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"dtype": str(array_kji.dtype), "shape": list(array_kji.shape),
                              "geometry": {k: np.round(np.asarray(v, dtype=float), 6).tolist()
                                           for k, v in geometry.to_dict().items()}}).encode())
    digest.update(np.ascontiguousarray(array_kji).tobytes())
    return digest.hexdigest()[:20]


def dataset_from_nodes(volume_label_pairs: Any, scene: Any = None, export_dir: str | os.PathLike = ".",
                       log: Callable[[str], None] | None = None) -> Path:
    """Write ``export_dir/dataset.csv`` (path,label,study_id) for volume nodes and their labels.

    ``volume_label_pairs`` is a list of ``(volume node, name or ID, label)`` pairs or a table node with
    ``volume`` and ``label`` columns. Every volume is written once as ``volumes/<content hash>.nrrd``
    (voxels and geometry hashed), so exporting again, or after renaming a node, adds no file. A
    volume listed twice is refused: the same study in train and test would inflate the metrics.
    """
    if scene is None:
        scene = getattr(slicer, "mrmlScene", None)
    if hasattr(volume_label_pairs, "IsA") and volume_label_pairs.IsA("vtkMRMLTableNode"):
        pairs = _table_rows(volume_label_pairs)
    else:
        pairs = list(volume_label_pairs or [])
        if not pairs:
            raise ValueError("no volumes given: list (volume node, label) pairs or fill the label table.")
    if scene is None and any(isinstance(volume, str) for volume, _ in pairs):
        raise ValueError("volumes given by name need a scene: pass scene=...")
    resolved = []
    for volume, label in pairs:
        node = _find_volume_node(scene, volume)
        resolved.append((node, _check_label(label, _node_text(node))))

    export = Path(export_dir).expanduser().resolve()
    (export / EXPORT_SUBFOLDER).mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    used_ids: set[str] = set()
    rows = []
    for node, label in resolved:
        volume = volume_from_node(node)
        array_kji = volume.to_original(volume.array)
        content = _content_hash(array_kji, volume.geometry)
        if content in seen:
            raise ValueError(f"{_node_text(node)} holds the same voxels as {seen[content]}: list every study "
                             f"once (a study in both training and test data would inflate the metrics).")
        seen[content] = _node_text(node)
        path = export / EXPORT_SUBFOLDER / f"{content}.nrrd"
        if not path.is_file():
            write_volume(array_kji, volume.geometry, path)
            if log:
                log(f"exported {_node_text(node)} to {path.name}")
        for warning in volume.warnings:
            if log:
                log(f"warning: {warning}")
        study_id = unique_stem(node.GetName() or content, used_ids)
        rows.append((path.relative_to(export).as_posix(), label, study_id))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "study_id"])
    writer.writerows(rows)
    csv_path = export / DATASET_CSV
    write_text_atomic(csv_path, text.getvalue())
    return csv_path


def _string_column(name: str, values: Iterable[str]) -> vtk.vtkStringArray:
    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(value)
    return column


def label_table_node(scene: Any, volume_nodes: Sequence, labels: Sequence | dict | None = None,
                     table_node: Any = None) -> Any:
    """Create or update the table (``volume``, ``label`` string columns) the user fills with labels.

    Volumes already in the table keep their label unless ``labels`` (a sequence parallel to
    ``volume_nodes``, or a dict keyed by node or node name) gives a new one; new volumes get an
    empty label to fill in. Rows of volumes no longer given are kept (the user may have typed them).
    """
    if table_node is None:
        table_node = scene.GetFirstNode(LABEL_TABLE_NAME, "vtkMRMLTableNode", False, True)
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", LABEL_TABLE_NAME)
    existing: dict[str, str] = {}
    order: list[str] = []
    if table_node.GetNumberOfColumns() > 0:
        try:
            for volume, label in _table_rows(table_node):
                existing[volume] = label
                order.append(volume)
        except ValueError:
            pass  # an empty or foreign table: start afresh
    for index, node in enumerate(volume_nodes):
        node = _find_volume_node(scene, node)
        name = node.GetName()
        key = name if scene.GetNodesByName(name).GetNumberOfItems() == 1 else node.GetID()
        given = None
        if isinstance(labels, dict):
            given = labels.get(node, labels.get(name, labels.get(node.GetID())))
        elif labels is not None:
            given = labels[index]
        if key not in existing:
            order.append(key)
            existing[key] = ""
        if given is not None:
            existing[key] = _check_label(given, _node_text(node))
    with slicer.util.NodeModify(table_node):
        table_node.RemoveAllColumns()
        table_node.AddColumn(_string_column(VOLUME_COLUMN, order))
        table_node.AddColumn(_string_column(LABEL_COLUMN, [existing[v] for v in order]))
        table_node.SetColumnDescription(VOLUME_COLUMN, "volume node name (or ID if the name is not unique)")
        table_node.SetColumnDescription(LABEL_COLUMN, "MosMed class: " + ", ".join(CLASS_NAMES))
        table_node.SetLocked(False)
    return table_node


# ---------------------------------------------------------------------------------------- training results


class ProgressNodes:
    """Training curves as MRML nodes, growing as events arrive.

    ``curves_table_node`` holds every epoch event (stage, epoch, loss, val_balanced_accuracy); for
    plotting, each stage also gets its own table (a plot series draws whole columns), and
    two chart nodes show one series per stage: training loss, and validation balanced accuracy.
    Nodes are found again by name, so a new instance (e.g. after reloading the module) continues them.
    """

    PREFIX = "TwoFiveCNN training"

    def __init__(self, scene: Any) -> None:
        self.scene = scene
        self.curves_table_node = self._node("vtkMRMLTableNode", f"{self.PREFIX} curves")
        if self.curves_table_node.GetNumberOfColumns() == 0:
            self._set_columns(self.curves_table_node, with_stage=True)
        self.loss_chart_node = self._node("vtkMRMLPlotChartNode", f"{self.PREFIX} loss")
        self.accuracy_chart_node = self._node("vtkMRMLPlotChartNode",
                                              f"{self.PREFIX} validation balanced accuracy")
        for chart, title, y_title in ((self.loss_chart_node, "Training loss", "loss (cross-entropy)"),
                                      (self.accuracy_chart_node, "Validation balanced accuracy",
                                       "balanced accuracy")):
            chart.SetTitle(title)
            chart.SetXAxisTitle("epoch")
            chart.SetYAxisTitle(y_title)
            chart.SetLegendVisibility(True)

    def _node(self, class_name: str, name: str) -> Any:
        node = self.scene.GetFirstNode(name, class_name, False, True)
        return node if node is not None else self.scene.AddNewNodeByClass(class_name, name)

    def _set_columns(self, table_node: Any, with_stage: bool) -> None:
        table_node.RemoveAllColumns()
        columns = [("stage", vtk.vtkStringArray)] if with_stage else []
        columns += [("epoch", vtk.vtkIntArray), ("loss", vtk.vtkDoubleArray),
                    ("val_balanced_accuracy", vtk.vtkDoubleArray)]
        for name, array_type in columns:
            column = array_type()
            column.SetName(name)
            table_node.AddColumn(column)

    def stage_table_node(self, stage: str) -> Any:
        """The per-stage table the plot series of ``stage`` draw, with its two series on the charts."""
        table = self._node("vtkMRMLTableNode", f"{self.PREFIX} curves {stage}")
        if table.GetNumberOfColumns() == 0:
            self._set_columns(table, with_stage=False)
        for chart, column, what in ((self.loss_chart_node, "loss", "loss"),
                                    (self.accuracy_chart_node, "val_balanced_accuracy", "val bal. acc.")):
            series = self._node("vtkMRMLPlotSeriesNode", f"{stage} {what}")
            series.SetAndObserveTableNodeID(table.GetID())
            series.SetXColumnName("epoch")
            series.SetYColumnName(column)
            series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*CURVE_COLOURS.get(stage, OTHER_CURVE_COLOUR))
            if not chart.HasPlotSeriesNodeID(series.GetID()):
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return table

    @staticmethod
    def _append(table_node: Any, values: Sequence) -> None:
        table = table_node.GetTable()
        for index, value in enumerate(values):
            table.GetColumn(index).InsertNextValue(value)
        table.Modified()
        table_node.Modified()

    def add_events(self, events: Iterable[dict]) -> int:
        """Append the epoch events (those with a loss) of ``events``; returns how many rows were added."""
        added = 0
        for event in events:
            stage = event.get("stage")
            if stage not in CURVE_STAGES or not isinstance(event.get("loss"), (int, float)):
                continue
            accuracy = event.get("val_balanced_accuracy")
            accuracy = float(accuracy) if isinstance(accuracy, (int, float)) else float("nan")
            row = [int(event.get("epoch", 0)), float(event["loss"]), accuracy]
            self._append(self.curves_table_node, [stage, *row])
            self._append(self.stage_table_node(stage), row)
            added += 1
        return added

    def clear(self) -> None:
        """Empty every curve (a new run); the nodes stay, so views showing them keep showing them."""
        self._set_columns(self.curves_table_node, with_stage=True)
        for stage in CURVE_STAGES:
            table = self.scene.GetFirstNode(f"{self.PREFIX} curves {stage}", "vtkMRMLTableNode", False, True)
            if table is not None:
                self._set_columns(table, with_stage=False)


def training_metrics(model_path: str | os.PathLike) -> tuple[str, dict]:
    """``(split name, metrics)`` of a model file: its test split, else its validation split."""
    from ..io.model_file import load_archive  # imports torch: only once a model is read

    _, metadata = load_archive(model_path)
    recorded = metadata.get("metrics") or {}
    for split in ("test", "val"):
        if recorded.get(split):
            return split, recorded[split]["twofive"]
    raise ValueError(f"{model_path}: the model file records no validation or test metrics.")


def metrics_summary_text(split: str, metrics: dict) -> str:
    """One line of the overall numbers, e.g. for the metrics table's description and the panel."""
    shown = ", ".join(f"{label} {'n/a' if metrics.get(key) is None else format(metrics[key], '.3f')}"
                      for key, label in OVERALL_METRICS)
    return f"{split} split ({metrics.get('n_studies', '?')} studies): {shown}"


def metrics_to_tables(model_path: str | os.PathLike, scene: Any) -> tuple[Any, Any]:
    """The model's test metrics (validation if it has no test split) as two table nodes.

    The metrics table has one row per class (precision, recall, F1, ROC AUC, support; NaN where
    undefined); the overall numbers are its ``TwoFiveCNN.<metric>`` attributes and its description.
    The confusion table has a ``true \\ predicted`` column of class names then one count column per
    predicted class. Nodes of an earlier call (same names) are updated.
    """
    split, metrics = training_metrics(model_path)
    names = list(metrics["class_names"])
    stem = Path(model_path).stem

    def node(name: str) -> Any:
        found = scene.GetFirstNode(name, "vtkMRMLTableNode", False, True)
        return found if found is not None else scene.AddNewNodeByClass("vtkMRMLTableNode", name)

    def numbers(name: str, values: Iterable, array_type: type = vtk.vtkDoubleArray) -> Any:
        column = array_type()
        column.SetName(name)
        for value in values:
            column.InsertNextValue(float("nan") if value is None else value)
        return column

    metrics_node = node(f"{stem} metrics")
    per_class = metrics["per_class"]
    auc = metrics.get("roc_auc_per_class") or {}
    metrics_node.RemoveAllColumns()
    metrics_node.AddColumn(_string_column("class", names))
    for key in ("precision", "recall", "f1"):
        metrics_node.AddColumn(numbers(key, [per_class[n][key] for n in names]))
    metrics_node.AddColumn(numbers("roc_auc", [auc.get(n) for n in names]))
    metrics_node.AddColumn(numbers("support", [per_class[n]["support"] for n in names], vtk.vtkIntArray))
    metrics_node.SetAttribute("TwoFiveCNN.split", split)
    metrics_node.SetAttribute("TwoFiveCNN.model", str(model_path))
    for key, _ in OVERALL_METRICS:
        value = metrics.get(key)
        metrics_node.SetAttribute(f"TwoFiveCNN.{key}", "" if value is None else f"{value:.6g}")
    metrics_node.SetDescription(metrics_summary_text(split, metrics))

    confusion_node = node(f"{stem} confusion matrix")
    matrix = metrics["confusion_matrix"]
    confusion_node.RemoveAllColumns()
    confusion_node.AddColumn(_string_column("true \\ predicted", names))
    for j, name in enumerate(names):
        confusion_node.AddColumn(numbers(name, [row[j] for row in matrix], vtk.vtkIntArray))
    confusion_node.SetAttribute("TwoFiveCNN.split", split)
    confusion_node.SetDescription(f"{split} split: rows are the true classes, columns the predicted ones")
    return metrics_node, confusion_node

