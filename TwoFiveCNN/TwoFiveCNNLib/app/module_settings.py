"""What the two Slicer modules (TwoFiveCNN and TwoFiveCNN Training) share: keys, links, path checks.

Both module files import this when Slicer starts, so it must stay light: standard library only, and
none of TwoFiveCNNLib's heavy parts (torch, numpy), which wait until a module actually needs them.
"""

from __future__ import annotations

from pathlib import Path

HOMEPAGE = "https://github.com/twofivecnn/SlicerTwoFiveCNN"
# The model file last trained or chosen: the Training module writes it, the TwoFiveCNN module
# offers it when its own model path is unset.
LAST_MODEL_FILE_SETTING = "TwoFiveCNN/LastModelFile"


def path_is_set(path: str | Path | None) -> bool:
    """Whether a path parameter holds a path.

    An empty ctkPathLineEdit reads as ``Path(".")``: taking that at its word would train on, or
    write into, Slicer's working directory.
    """
    return path is not None and str(path) not in ("", ".")
