"""MRML adapters (3D Slicer or slicer-core): predictions and training results as scene nodes.

The console API lives here: ``import TwoFiveCNNLib.scene as s; s.predict_volume_node(node)``; its
names are those of ``nodes.__all__``.
"""

from .nodes import *  # the console API: nodes.__all__
