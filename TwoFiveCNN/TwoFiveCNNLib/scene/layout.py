"""The "Show results" layout: the three slice views and the 3D view above a table view holding the
involvement table and a plot view holding the attention chart, as Lung CT Analyzer shows its results.

The view nodes are made (or found) here by the layout's singleton tags and bound to the result's nodes,
so the same call works in the application, where the layout manager then shows them, and in slicer-core.
"""

from __future__ import annotations

import slicer

RESULTS_LAYOUT_ID = 2828  # a custom layout number Slicer's own layouts do not use
TABLE_VIEW_TAG, PLOT_VIEW_TAG, THREE_D_VIEW_TAG = "TableView1", "PlotView1", "1"
LAYOUT_NODE_TAG = "vtkMRMLLayoutNode"  # the application's one layout node

_SLICE_VIEWS = (("Red", "Axial", "R", "#F34A33"), ("Yellow", "Sagittal", "Y", "#EDD54C"),
                ("Green", "Coronal", "G", "#6EB04B"))


def _view(class_name: str, tag: str, label: str, extra: str = "") -> str:
    return (f'<item><view class="{class_name}" singletontag="{tag}">{extra}'
            f'<property name="viewlabel" action="default">{label}</property></view></item>')


def results_layout_xml() -> str:
    """Slice views across the top, then the 3D view, the table and the plot side by side."""
    slices = "".join(
        _view("vtkMRMLSliceNode", tag, label,
              f'<property name="orientation" action="default">{orientation}</property>'
              f'<property name="viewcolor" action="default">{colour}</property>')
        for tag, orientation, label, colour in _SLICE_VIEWS)
    bottom = (_view("vtkMRMLViewNode", THREE_D_VIEW_TAG, "1")
              + _view("vtkMRMLTableViewNode", TABLE_VIEW_TAG, "T")
              + _view("vtkMRMLPlotViewNode", PLOT_VIEW_TAG, "P"))
    return (f'<layout type="vertical" split="true"><item><layout type="horizontal">{slices}</layout></item>'
            f'<item><layout type="horizontal">{bottom}</layout></item></layout>')


def _singleton(scene: slicer.vtkMRMLScene, class_name: str, tag: str) -> slicer.vtkMRMLNode:
    """The scene's ``class_name`` node with singleton ``tag``, made when missing (slicer-core has none)."""
    node = scene.GetSingletonNode(tag, class_name)
    if node is None:
        node = scene.CreateNodeByClass(class_name)
        node.SetSingletonTag(tag)
        if node.IsA("vtkMRMLAbstractViewNode"):
            node.SetLayoutName(tag)
        scene.AddNode(node)
    return node


def show_results_layout(scene: slicer.vtkMRMLScene, table_node: slicer.vtkMRMLTableNode,
                        chart_node: slicer.vtkMRMLPlotChartNode) -> int:
    """Register the results layout, bind its table view to ``table_node`` (the involvement table) and its
    plot view to ``chart_node`` (the attention chart), and switch to it; returns the layout's number."""
    layout = scene.GetFirstNodeByClass("vtkMRMLLayoutNode") or _singleton(scene, "vtkMRMLLayoutNode",
                                                                            LAYOUT_NODE_TAG)
    if layout.IsLayoutDescription(RESULTS_LAYOUT_ID):
        layout.SetLayoutDescription(RESULTS_LAYOUT_ID, results_layout_xml())
    else:
        layout.AddLayoutDescription(RESULTS_LAYOUT_ID, results_layout_xml())
    _singleton(scene, "vtkMRMLTableViewNode", TABLE_VIEW_TAG).SetTableNodeID(table_node.GetID())
    _singleton(scene, "vtkMRMLPlotViewNode", PLOT_VIEW_TAG).SetPlotChartNodeID(chart_node.GetID())
    layout.SetViewArrangement(RESULTS_LAYOUT_ID)
    return RESULTS_LAYOUT_ID
