"""What the two Slicer modules (TwoFiveCNN and TwoFiveCNN Training) share: keys, links, words, path checks.

Both module files import this when Slicer starts, so it must stay light: standard library only, and
none of TwoFiveCNNLib's heavy parts (torch, numpy), which wait until a module actually needs them.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HOMEPAGE = "https://github.com/twofivecnn/SlicerTwoFiveCNN"
# The model file last trained or chosen: the Training module writes it, the TwoFiveCNN module
# offers it when its own model path is unset.
LAST_MODEL_FILE_SETTING = "TwoFiveCNN/LastModelFile"
# How often a panel collects the events of its background process (training, batch prediction).
POLL_INTERVAL_MS = 500

# The device choices both panels offer, as people read them, and the ``--device`` each one means.
# The one place the two vocabularies meet: a panel shows the keys, the command line gets the values.
DEVICES = {"auto": "auto", "CPU": "cpu", "GPU": "cuda"}
DEVICE_CHOICES = tuple(DEVICES)


def device_option(choice: str | None) -> str:
    """The ``--device`` value of a panel's device choice ("auto", "CPU", "GPU").

    Also takes the command line's own words (``cpu``, ``cuda``, ``gpu``, any case), which scenes
    saved by earlier versions of the training panel hold.
    """
    text = str(choice or "auto").strip()
    for shown, option in DEVICES.items():
        if text.lower() in (shown.lower(), option):
            return option
    raise ValueError(f"device {choice!r}: choose one of {', '.join(DEVICE_CHOICES)}.")


def python_executable() -> str:
    """The Python that runs background work: PythonSlicer inside Slicer.

    Not ``sys.executable`` there, which may be the Slicer application itself and would start a second
    one; PythonSlicer is on Slicer's PATH. Outside Slicer (the tests, the console) this Python.
    """
    return shutil.which("PythonSlicer") or sys.executable


def path_is_set(path: str | Path | None) -> bool:
    """Whether a path parameter holds a path.

    An empty ctkPathLineEdit reads as ``Path(".")``: taking that at its word would train on, or
    write into, Slicer's working directory.
    """
    return path is not None and str(path) not in ("", ".")
