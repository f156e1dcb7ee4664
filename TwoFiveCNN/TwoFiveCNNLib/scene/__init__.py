"""MRML adapters (3D Slicer or slicer-core): predictions and training results as scene nodes.

The console API lives here: ``import TwoFiveCNNLib.scene as s; s.predict_volume_node(node)``. Its
names resolve on first use, so importing a sibling such as ``scene.training_nodes`` costs no more.
"""

from __future__ import annotations

CONSOLE_API = (
    "NodePrediction", "PredictionNodes", "find_prediction_nodes", "predict_volume_node",
    "save_prediction_scene", "save_scene", "show_overlay", "volume_from_node", "write_prediction_nodes",
)
__all__ = list(CONSOLE_API)


def __getattr__(name: str) -> object:
    if name in CONSOLE_API:
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *CONSOLE_API])
