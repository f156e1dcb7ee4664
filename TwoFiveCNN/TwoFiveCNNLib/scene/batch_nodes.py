"""A batch's ``summary.tsv`` as a table node: the folder's grades where Slicer shows tables.

The file is parsed completely before the scene is touched, so an unreadable summary adds no node;
a batch written again into the same folder updates its node instead of adding another.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import slicer
import slicer.util
import vtk

from .nodes import ATTRIBUTE_PREFIX

SUMMARY_ATTRIBUTE = ATTRIBUTE_PREFIX + "batchSummary"  # the summary file's absolute path
TEXT_COLUMNS = ("input", "status", "label", "involvement_grade", "message")  # never numbers


def read_summary(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a ``summary.tsv`` (``inference.outputs.write_summary``'s format)."""
    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines or lines[0][:2] != ["input", "status"]:
        raise ValueError(f"{path} is not a TwoFiveCNN batch summary (no input/status header).")
    header, rows = lines[0], [row for row in lines[1:] if row]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}, line {number}: {len(row)} cells under {len(header)} column names.")
    return header, rows


def _number(text: str) -> float | None:
    try:
        return float(text) if text != "" else math.nan
    except ValueError:
        return None


def _column(name: str, cells: list[str]) -> vtk.vtkAbstractArray:
    """Numbers as doubles (an empty cell is NaN) when every cell is one; otherwise strings."""
    numbers = [_number(cell) for cell in cells]
    numeric = name not in TEXT_COLUMNS and any(c != "" for c in cells) and None not in numbers
    column = vtk.vtkDoubleArray() if numeric else vtk.vtkStringArray()
    column.SetName(name)
    for cell, number in zip(cells, numbers):
        column.InsertNextValue(number if numeric else cell)
    return column


def find_summary_table_node(scene: Any, path: str | os.PathLike) -> Any:
    """The table node an earlier call made of this summary file, or None."""
    key = str(Path(path).absolute())
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        node = scene.GetNthNodeByClass(index, "vtkMRMLTableNode")
        if node.GetAttribute(SUMMARY_ATTRIBUTE) == key:
            return node
    return None


def summary_table_node(scene: Any, path: str | os.PathLike) -> Any:
    """Show ``summary.tsv`` as a (read-only) table node: one row per study, one column per field.

    Probabilities and lung figures are number columns, so that a table view sorts them and a plot can
    draw them; the node's description counts the graded and failed studies.
    """
    header, rows = read_summary(path)  # before any node exists: a bad file leaves the scene alone
    columns = [_column(name, [row[i] for row in rows]) for i, name in enumerate(header)]
    failed = sum(row[1] == "failed" for row in rows)
    node = find_summary_table_node(scene, path)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode",
                                       scene.GenerateUniqueName(f"{Path(path).absolute().parent.name} summary"))
    with slicer.util.NodeModify(node):
        node.SetLocked(False)
        node.RemoveAllColumns()
        for column in columns:
            node.AddColumn(column)
        node.SetAttribute(SUMMARY_ATTRIBUTE, str(Path(path).absolute()))
        node.SetDescription(f"{len(rows) - failed} studies graded, {failed} failed ({path})")
        node.SetLocked(True)  # the file is the record: edits in the table would not reach it
    return node
