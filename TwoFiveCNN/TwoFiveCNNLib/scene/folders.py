"""One subject-hierarchy folder per result: "TwoFiveCNN: <name>" under the input's study in the Data module.

A user finds the results where the CT is, under its patient and study, and removes a result by
deleting its folder. In slicer-core, data nodes get no subject-hierarchy item by themselves (in the
application they do), so the items are created here when missing.
"""

from __future__ import annotations

import slicer

FOLDER_NAME = "TwoFiveCNN: {}"
FOLDER_ATTRIBUTE = "TwoFiveCNN.resultFolder"  # marks a folder this module made (value: "1")
STUDY_LEVEL = "Study"


def subject_hierarchy(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLSubjectHierarchyNode:
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def node_item(hierarchy: slicer.vtkMRMLSubjectHierarchyNode, node: slicer.vtkMRMLNode) -> int:
    """``node``'s subject-hierarchy item, made at the scene's top level when it has none."""
    item = hierarchy.GetItemByDataNode(node)
    return item or hierarchy.CreateItem(hierarchy.GetSceneItemID(), node)


def _is_result_folder(hierarchy: slicer.vtkMRMLSubjectHierarchyNode, item: int) -> bool:
    return bool(item) and hierarchy.GetItemAttribute(item, FOLDER_ATTRIBUTE) == "1"


def folder_parent(hierarchy: slicer.vtkMRMLSubjectHierarchyNode, input_node: slicer.vtkMRMLNode) -> int:
    """Where the input's result folder belongs: the input's study, or the input's own parent (beside
    the input) when it has no study."""
    input_item = node_item(hierarchy, input_node)
    study = hierarchy.GetItemAncestorAtLevel(input_item, STUDY_LEVEL)
    return study or hierarchy.GetItemParent(input_item)


def find_result_folder(hierarchy: slicer.vtkMRMLSubjectHierarchyNode, input_node: slicer.vtkMRMLNode,
                       result_nodes: list[slicer.vtkMRMLNode]) -> int:
    """The folder of an earlier run on ``input_node`` (0 if none): the folder holding one of its result
    nodes (even renamed or moved by the user), else the folder named for the input beside it."""
    for node in result_nodes:
        item = hierarchy.GetItemByDataNode(node)
        parent = hierarchy.GetItemParent(item) if item else 0
        if _is_result_folder(hierarchy, parent):
            return parent
    named = hierarchy.GetItemChildWithName(folder_parent(hierarchy, input_node),
                                           FOLDER_NAME.format(input_node.GetName()))
    return named if _is_result_folder(hierarchy, named) else 0


def place_results(scene: slicer.vtkMRMLScene, input_node: slicer.vtkMRMLNode,
                  result_nodes: list[slicer.vtkMRMLNode]) -> int:
    """Put ``result_nodes`` (and nothing else) in the input's result folder, made or moved under the
    input's study when needed; returns the folder's item.

    Nodes several results share (colour tables) must not be passed: deleting one result's folder
    would remove them from the others.
    """
    hierarchy = subject_hierarchy(scene)
    parent = folder_parent(hierarchy, input_node)
    folder = find_result_folder(hierarchy, input_node, result_nodes)
    if not folder:
        folder = hierarchy.CreateFolderItem(parent, FOLDER_NAME.format(input_node.GetName()))
        hierarchy.SetItemAttribute(folder, FOLDER_ATTRIBUTE, "1")
    elif hierarchy.GetItemParent(folder) != parent:  # the input was moved into a study since
        hierarchy.SetItemParent(folder, parent)
    for node in result_nodes:
        item = hierarchy.GetItemByDataNode(node)
        if not item:
            hierarchy.CreateItem(folder, node)
        elif hierarchy.GetItemParent(item) != folder:
            hierarchy.SetItemParent(item, folder)
    return folder
