"""What the two Slicer modules (TwoFiveCNN and TwoFiveCNN Training) share: keys, links, words, path checks,
the PyTorch floor.

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
# The inference panel's overlay choices (the words shown) and the result node each one shows.
# The panel's overlay choice: shown name -> overlay (the voxel lesion map, or the lungs' HU band labels).
OVERLAY_KINDS = {"lesion map": "lesion-map", "lung bands": "bands"}


# PyTorch, which PyTorchUtils (the PyTorch extension) installs on first use. The floor is the first
# torch release built for NumPy 2 (pytorch/pytorch#107302): Slicer >= 5.10 ships NumPy 2, and an older
# torch fails there on the first array it is given. Both modules ask for it; the package's own
# requirement in pyproject.toml is checked against it (Testing/test_first_run_torch.py).
TORCH_MINIMUM_VERSION = (2, 3)
TORCH_VERSION_REQUIREMENT = ">={}.{}".format(*TORCH_MINIMUM_VERSION)
# Said in the panel's log before anything is downloaded, and in the question that follows: a first
# Apply that silently goes away for minutes looks like a hang.
TORCH_INSTALL_NOTICE = (
    f"PyTorch (torch{TORCH_VERSION_REQUIREMENT}) is not installed yet. It will be downloaded and installed "
    "through the PyTorch extension: about 200 MB for the CPU build, over 2 GB for the CUDA build chosen when "
    "an NVIDIA GPU is found. This takes a few minutes, longer on a slow connection, and Slicer may not "
    "respond until it is done. It happens only once."
)
# Why a self-test that needs torch did not run: Slicer's build machines may test the extension without
# PyTorch, and a test must not download gigabytes there. Starts like every other skip message.
TORCH_SKIP_MESSAGE = (
    "Skipped: PyTorch is not installed, and the self-tests never install it while Slicer runs its tests. "
    "Install PyTorch in the PyTorch Utils module to run this test."
)


def torch_importable() -> bool:
    """Whether ``import torch`` works here, installing nothing.

    The self-tests ask this before a test that needs torch. It imports torch when present (those tests
    need it anyway); only a failed import means absent, whatever the installed files say.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


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
