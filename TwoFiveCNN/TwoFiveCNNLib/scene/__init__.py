"""MRML adapters (3D Slicer or slicer-core): predictions and training results as scene nodes.

The console API lives here: ``import TwoFiveCNNLib.scene as s; s.predict_volume_node(node)``; its
names are those of ``nodes.__all__``, plus ``s.show_segmentations_3d([...])`` (a result's surfaces)
and ``s.show_results_layout(scene, table, chart)`` (the results layout).
"""

from .layout import show_results_layout as show_results_layout
from .nodes import *  # the console API: nodes.__all__
from .segmentations import show_segmentations_3d as show_segmentations_3d
