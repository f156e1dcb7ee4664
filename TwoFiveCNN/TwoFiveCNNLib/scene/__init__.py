"""MRML adapters (3D Slicer or slicer-core): predictions and training results as scene nodes.

The console API lives here: ``import TwoFiveCNNLib.scene as s; s.predict_volume_node(node)``.
"""

from .nodes import (  # noqa: F401  (the console API)
    NodePrediction,
    PredictionNodes,
    find_prediction_nodes,
    predict_volume_node,
    save_prediction_scene,
    save_scene,
    volume_from_node,
    write_prediction_nodes,
)
