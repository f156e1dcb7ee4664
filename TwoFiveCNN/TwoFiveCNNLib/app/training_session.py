"""Training from inside Slicer: datasets from volume nodes, a training process to watch, results as nodes.

No Qt here, and MRML (``slicer``/``vtk``) is imported only inside the functions that build or read
nodes, so :class:`TrainingProcess` and :func:`dataset_summary_text` also work in a plain Python.
The training itself runs in a separate process (``python -m TwoFiveCNNLib train --progress-json``);
the GUI calls :meth:`TrainingProcess.poll` from a timer and never waits for it.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import write_text_atomic
from ..data.dataset import CLASS_NAMES, MIN_STUDIES_PER_CLASS, DatasetIndex, normalize_label
from ..io.volume import unique_stem

LABEL_TABLE_NAME = "TwoFiveCNN training labels"
VOLUME_COLUMN, LABEL_COLUMN = "volume", "label"
DATASET_CSV = "dataset.csv"
EXPORT_SUBFOLDER = "volumes"
# Below this many studies a class's recall (and so the balanced accuracy) moves in big steps.
FEW_STUDIES_PER_CLASS = 10
# Slice thickness or pixel size varying more than this factor across a dataset deserves a look.
SPACING_RATIO_WARNING = 2.0
CURVE_STAGES = ("stage1", "stage2")
STAGE_COLOURS = {"stage1": (0.0, 0.447, 0.698), "stage2": (0.835, 0.369, 0.0)}  # Okabe-Ito blue, vermillion
# Share of the whole run each stage takes, for one progress bar over all of them (rough, CPU).
STAGE_PROGRESS = {"preprocess": (0, 10), "stage1": (10, 80), "embed": (80, 90), "stage2": (90, 99),
                  "done": (100, 100)}
STDERR_TAIL_LINES = 40


# ---------------------------------------------------------------------------------------- datasets


def _node_text(node) -> str:
    return f"{node.GetName()!r} ({node.GetID() or 'not in a scene'})"


def _find_volume_node(scene, reference) -> Any:
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


def _check_label(label, volume_name: str) -> str:
    name = normalize_label(str(label if label is not None else ""))
    if name is None:
        shown = "no label" if not str(label or "").strip() else f"unknown label {label!r}"
        raise ValueError(f"{volume_name}: {shown}; use one of {', '.join(CLASS_NAMES)}.")
    return name


def _table_rows(table_node) -> list[tuple[str, str]]:
    """``(volume, label)`` text of every row of a label table node."""
    table = table_node.GetTable()
    columns = {table.GetColumnName(i).strip().lower(): i for i in range(table.GetNumberOfColumns())}
    missing = [c for c in (VOLUME_COLUMN, LABEL_COLUMN) if c not in columns]
    if missing:
        raise ValueError(f"table {table_node.GetName()!r} has no column(s) {', '.join(missing)}: it needs "
                         f"'{VOLUME_COLUMN}' (node name or ID) and '{LABEL_COLUMN}' (CT-0..CT-4).")
    rows = [(table.GetValue(r, columns[VOLUME_COLUMN]).ToString(), table.GetValue(r, columns[LABEL_COLUMN]).ToString())
            for r in range(table.GetNumberOfRows())]
    rows = [(v.strip(), lab.strip()) for v, lab in rows if v.strip() or lab.strip()]
    if not rows:
        raise ValueError(f"table {table_node.GetName()!r} lists no volumes: add one row per volume with "
                         f"its label.")
    return rows


def _content_hash(array_kji: np.ndarray, geometry) -> str:
    """Identifies a volume by its voxels and grid, whatever its node is called."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"dtype": str(array_kji.dtype), "shape": list(array_kji.shape),
                              "geometry": {k: np.round(np.asarray(v, dtype=float), 6).tolist()
                                           for k, v in geometry.to_dict().items()}}).encode())
    digest.update(np.ascontiguousarray(array_kji).tobytes())
    return digest.hexdigest()[:20]


def dataset_from_nodes(volume_label_pairs, scene=None, export_dir: str | os.PathLike = ".",
                       log: Callable[[str], None] | None = None) -> Path:
    """Write ``export_dir/dataset.csv`` (path,label,study_id) for volume nodes and their labels.

    ``volume_label_pairs`` is a list of ``(volume node, name or ID, label)`` pairs or a table node with
    ``volume`` and ``label`` columns. Every volume is written once as ``volumes/<content hash>.nrrd``
    (voxels and geometry hashed), so exporting again, or after renaming a node, adds no file. A
    volume listed twice is refused: the same study in train and test would inflate the metrics.
    """
    import slicer

    from ..scene.nodes import volume_from_node
    from ..io.volume import write_volume

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
        rows.append((path.relative_to(export).as_posix(), label, unique_stem(node.GetName() or content, used_ids)))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "label", "study_id"])
    writer.writerows(rows)
    csv_path = export / DATASET_CSV
    write_text_atomic(csv_path, text.getvalue())
    return csv_path


def _string_column(name: str, values: Iterable[str]):
    import vtk

    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(value)
    return column


def label_table_node(scene, volume_nodes: Sequence, labels=None, table_node=None):
    """Create or update the table (``volume``, ``label`` string columns) the user fills with labels.

    Volumes already in the table keep their label unless ``labels`` (a sequence parallel to
    ``volume_nodes``, or a dict keyed by node or node name) gives a new one; new volumes get an
    empty label to fill in. Rows of volumes no longer given are kept (the user may have typed them).
    """
    import slicer

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


def _spacing_from_header(path: Path) -> tuple[float, float, float] | None:
    """(x, y, z) spacing in mm read from the file header only (no voxels), None for DICOM folders."""
    import SimpleITK as sitk

    if path.is_dir():
        return None
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    spacing = reader.GetSpacing()
    return tuple(float(s) for s in spacing[:3]) if len(spacing) >= 3 else None


def dataset_summary_text(path: str | os.PathLike) -> str:
    """Studies per class plus warnings: tiny classes, unreadable headers, inconsistent voxel spacing."""
    index = DatasetIndex.load(path)
    lines = [index.summary()]
    counts = index.counts()
    present = [name for name, count in counts.items() if count]
    lines += [f"  note: {name} has only {count} studies; its recall will move in steps of "
              f"{1 / max(1, round(count * 0.15)):.0%} on a 15% test split."
              for name, count in counts.items() if MIN_STUDIES_PER_CLASS <= count < FEW_STUDIES_PER_CLASS]
    if len(present) < 2:
        lines.append("  warning: fewer than two classes: there is nothing to tell apart.")
    spacings, unread, dicom = [], [], 0
    for study in index.studies:
        try:
            spacing = _spacing_from_header(study.path)
        except RuntimeError:
            unread.append(study.study_id)
            continue
        if spacing is None:
            dicom += 1
        else:
            spacings.append(spacing)
    if spacings:
        array = np.array(spacings)
        in_plane, slices = array[:, :2].min(axis=1), array[:, 2]
        lines.append(f"  pixel size {in_plane.min():.2f}..{in_plane.max():.2f} mm, "
                     f"slice spacing {slices.min():.2f}..{slices.max():.2f} mm (median {np.median(slices):.2f})")
        for what, values in (("pixel size", in_plane), ("slice spacing", slices)):
            if values.min() > 0 and values.max() / values.min() > SPACING_RATIO_WARNING:
                lines.append(f"  warning: {what} varies more than {SPACING_RATIO_WARNING:g}-fold across studies; "
                             f"check that thin and thick reconstructions are not mixed by accident.")
    if dicom:
        lines.append(f"  ({dicom} DICOM series: spacing not checked)")
    if unread:
        lines.append(f"  warning: {len(unread)} file(s) with unreadable headers, e.g. {unread[0]}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- process


def train_arguments(stage1_epochs: int | None = None, stage2_epochs: int | None = None, seed: int | None = None,
                    device: str | None = None, cache: str | os.PathLike | None = None) -> list[str]:
    """Command-line options of ``twofivecnn train`` for the settings the training panel offers."""
    args = []
    for option, value in (("--stage1-epochs", stage1_epochs), ("--stage2-epochs", stage2_epochs),
                          ("--seed", seed), ("--device", device), ("--cache", cache)):
        if value is not None and value != "":
            args += [option, str(value)]
    return args


def atomic_leftovers(out: str | os.PathLike) -> list[Path]:
    """Temporary files an interrupted run may leave beside its model (model, checkpoint, split)."""
    out = Path(out)
    targets = (out.name, out.name + ".ckpt", out.with_suffix(".split.json").name)
    return sorted(p for name in targets for p in out.parent.glob(f".{glob_escape(name)}.*.tmp*"))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


class TrainingProcess:
    """``python -m TwoFiveCNNLib train ... --progress-json`` in a child process, read without blocking.

    :meth:`poll` returns the progress events that arrived since the last call (dicts with ``stage``
    etc., as :mod:`.progress` writes them; other output lines as ``log`` events). After the last
    one, exactly one ``{"stage": "exit", "returncode": ..., "cancelled": ..., "error": ...}`` event
    follows, so a poller needs no other way to learn that the run ended.
    """

    def __init__(self, data: str | os.PathLike, out: str | os.PathLike, args: Sequence[str] = (),
                 python: str | os.PathLike | None = None) -> None:
        self.data, self.out = Path(data), Path(out)
        self.args = [str(a) for a in args]
        self.python = str(python or sys.executable)
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._reader: threading.Thread | None = None
        self._cancelled = False

    @property
    def checkpoint_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt")

    def command(self, resume: bool = False) -> list[str]:
        return [self.python, "-m", "TwoFiveCNNLib", "train", "--data", str(self.data), "--out", str(self.out),
                "--progress-json", *self.args, *(["--resume"] if resume else [])]

    def start(self, resume: bool = False) -> TrainingProcess:
        if self.is_running:
            raise RuntimeError("training is already running; cancel it first.")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        # PythonSlicer does not see the scripted-modules folder: point it at this library's parent.
        library_parent = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([library_parent, *filter(None, [env.get("PYTHONPATH")])])
        self._cancelled = False
        self._stderr.clear()
        self._process = subprocess.Popen(
            self.command(resume), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=env, cwd=str(self.out.parent))
        stderr_reader = threading.Thread(target=self._read_stderr, args=(self._process,), daemon=True)
        stderr_reader.start()
        self._reader = threading.Thread(target=self._read_stdout, args=(self._process, stderr_reader), daemon=True)
        self._reader.start()
        return self

    def resume(self) -> TrainingProcess:
        """Start again with ``--resume``: continues after the last epoch the checkpoint holds."""
        return self.start(resume=True)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip("\n"))

    def _read_stdout(self, process: subprocess.Popen, stderr_reader: threading.Thread) -> None:
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or "stage" not in event:
                event = {"stage": "log", "message": line}
            self._events.put(event)
        stderr_reader.join()
        returncode = process.wait()
        if returncode != 0:
            self.remove_leftovers()
        self._events.put({"stage": "exit", "returncode": returncode, "cancelled": self._cancelled,
                          "error": None if returncode == 0 or self._cancelled else self.error_message()})

    def poll(self) -> list[dict]:
        """The events that arrived since the last call; never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def is_running(self) -> bool:
        """True until the process has ended and all its output has been read."""
        return self._reader is not None and self._reader.is_alive()

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def error_message(self) -> str:
        """The reason a run failed, from the last lines the process wrote to stderr."""
        lines = list(self._stderr)
        errors = [line for line in lines if "error" in line.lower()]
        return (errors[-1] if errors else "\n".join(lines[-5:])) or f"exit code {self.returncode}"

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the process has ended and its output is read (scripts and tests; not the GUI)."""
        if self._reader is not None:
            self._reader.join(timeout)
        return self.returncode

    def cancel(self, timeout: float = 10.0) -> int | None:
        """Stop the run: SIGTERM, then kill after ``timeout`` s. The last epoch's checkpoint stays."""
        process = self._process
        if process is None or process.poll() is not None:
            return self.returncode
        self._cancelled = True
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.wait(timeout)
        self.remove_leftovers()
        return process.returncode

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files a killed run left beside its outputs (only when it is not running)."""
        if self._process is not None and self._process.poll() is None:
            return []
        leftovers = atomic_leftovers(self.out)
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers


def describe_event(event: dict) -> str:
    """One line for the log box and progress bar: stage, epoch, metrics, time left."""
    stage = event.get("stage", "?")
    if stage == "log":
        return str(event.get("message", ""))
    if stage == "exit":
        if event.get("cancelled"):
            return "cancelled; the last completed epoch is kept in the checkpoint (Resume continues from it)"
        if event.get("returncode") == 0:
            return "training process finished"
        return f"training failed (exit code {event.get('returncode')}): {event.get('error')}"
    if stage == "done":
        test = event.get("test")
        shown = f", test balanced accuracy {test:.3f}" if isinstance(test, float) else ""
        return f"done: model written to {event.get('model')}{shown}"
    parts = [stage + (f" {event['subset']}" if "subset" in event else "")]
    if isinstance(event.get("epoch"), int) and isinstance(event.get("epochs"), int):
        parts.append(f"{event['epoch']}/{event['epochs']}")
    for key, short in (("loss", "loss"), ("val_balanced_accuracy", "val bal. acc."), ("val_kappa", "val kappa")):
        if isinstance(event.get(key), (int, float)):
            parts.append(f"{short} {event[key]:.3f}")
    if isinstance(event.get("eta_s"), (int, float)) and event["eta_s"] > 0:
        parts.append(f"{stage} ends in ~{format_seconds(event['eta_s'])}")
    return ", ".join(parts)


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_percent(event: dict) -> int | None:
    """Overall progress of the run (0..100) after ``event``, or None if the event says nothing of it."""
    stage = event.get("stage")
    if stage not in STAGE_PROGRESS:
        return None
    low, high = STAGE_PROGRESS[stage]
    done, total = event.get("epoch"), event.get("epochs")
    fraction = done / total if isinstance(done, int) and isinstance(total, int) and total > 0 else 0.0
    if stage == "preprocess":  # train, val, test are preprocessed in turn
        fraction = (("train", "val", "test").index(event.get("subset", "train")) + fraction) / 3
    return round(low + (high - low) * min(max(fraction, 0.0), 1.0))


# ---------------------------------------------------------------------------------------- MRML results


class ProgressNodes:
    """Training curves as MRML nodes, growing as events arrive.

    ``curves_table_node`` holds every epoch event (stage, epoch, loss, val_balanced_accuracy); for
    plotting, each stage also gets its own table (a plot series draws whole columns), and
    two chart nodes show one series per stage: training loss, and validation balanced accuracy.
    Nodes are found again by name, so a new instance (e.g. after reloading the module) continues them.
    """

    PREFIX = "TwoFiveCNN training"

    def __init__(self, scene) -> None:
        import slicer

        self.scene = scene
        self._slicer = slicer
        self.curves_table_node = self._node("vtkMRMLTableNode", f"{self.PREFIX} curves")
        if self.curves_table_node.GetNumberOfColumns() == 0:
            self._set_columns(self.curves_table_node, with_stage=True)
        self.loss_chart_node = self._node("vtkMRMLPlotChartNode", f"{self.PREFIX} loss")
        self.accuracy_chart_node = self._node("vtkMRMLPlotChartNode", f"{self.PREFIX} validation balanced accuracy")
        for chart, title, y_title in ((self.loss_chart_node, "Training loss", "loss (cross-entropy)"),
                                      (self.accuracy_chart_node, "Validation balanced accuracy",
                                       "balanced accuracy")):
            chart.SetTitle(title)
            chart.SetXAxisTitle("epoch")
            chart.SetYAxisTitle(y_title)
            chart.SetLegendVisibility(True)

    def _node(self, class_name: str, name: str):
        node = self.scene.GetFirstNode(name, class_name, False, True)
        return node if node is not None else self.scene.AddNewNodeByClass(class_name, name)

    def _set_columns(self, table_node, with_stage: bool) -> None:
        import vtk

        table_node.RemoveAllColumns()
        columns = [("stage", vtk.vtkStringArray)] if with_stage else []
        columns += [("epoch", vtk.vtkIntArray), ("loss", vtk.vtkDoubleArray),
                    ("val_balanced_accuracy", vtk.vtkDoubleArray)]
        for name, array_type in columns:
            column = array_type()
            column.SetName(name)
            table_node.AddColumn(column)

    def stage_table_node(self, stage: str):
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
            series.SetPlotType(self._slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            series.SetMarkerStyle(self._slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            series.SetColor(*STAGE_COLOURS.get(stage, (0.3, 0.3, 0.3)))
            if not chart.HasPlotSeriesNodeID(series.GetID()):
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
        return table

    @staticmethod
    def _append(table_node, values: Sequence) -> None:
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
    from ..io.model_file import load_archive

    _, metadata = load_archive(model_path)
    recorded = metadata.get("metrics") or {}
    for split in ("test", "val"):
        if recorded.get(split):
            return split, recorded[split]["twofive"]
    raise ValueError(f"{model_path}: the model file records no validation or test metrics.")


OVERALL_METRICS = (("balanced_accuracy", "balanced accuracy"), ("quadratic_weighted_kappa", "quadratic kappa"),
                   ("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("roc_auc", "ROC AUC"))


def metrics_summary_text(split: str, metrics: dict) -> str:
    shown = ", ".join(f"{label} {'n/a' if metrics.get(key) is None else format(metrics[key], '.3f')}"
                      for key, label in OVERALL_METRICS)
    return f"{split} split ({metrics.get('n_studies', '?')} studies): {shown}"


def metrics_to_tables(model_path: str | os.PathLike, scene) -> tuple[Any, Any]:
    """The model's test metrics (validation if it has no test split) as two table nodes.

    The metrics table has one row per class (precision, recall, F1, ROC AUC, support; NaN where
    undefined); the overall numbers are its ``TwoFiveCNN.<metric>`` attributes and its description.
    The confusion table has a ``true \\ predicted`` column of class names then one count column per
    predicted class. Nodes of an earlier call (same names) are updated.
    """
    import vtk

    split, metrics = training_metrics(model_path)
    names = list(metrics["class_names"])
    stem = Path(model_path).stem

    def node(name: str):
        found = scene.GetFirstNode(name, "vtkMRMLTableNode", False, True)
        return found if found is not None else scene.AddNewNodeByClass("vtkMRMLTableNode", name)

    def numbers(name: str, values, array_type=vtk.vtkDoubleArray):
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

