"""The model file: weights plus a JSON record of how the model was made, loaded without running code.

The file is a ``torch.save`` archive of plain tensors and one JSON string. It is read with
``torch.load(weights_only=True)``, which refuses pickled objects, so a hostile file cannot execute
code; anything else that is not a TwoFiveCNN model is refused with a message naming the file.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .atomic import atomic_path

MODEL_FORMAT = "twofivecnn-model"
CHECKPOINT_FORMAT = "twofivecnn-checkpoint"
FORMAT_VERSION = 1


class ModelFileError(ValueError):
    """A file that cannot be used as a TwoFiveCNN model or checkpoint; the message names it."""


def save_archive(path: str | os.PathLike, kind: str, tensors: dict[str, Any], metadata: dict) -> Path:
    """Write tensors (nested dicts of tensors, numbers, strings) and JSON metadata atomically."""
    archive = {"format": kind, "format_version": FORMAT_VERSION, "metadata_json": json.dumps(metadata),
               "tensors": tensors}
    import torch  # here, not at import: the command line's error handling needs this module, not torch

    with atomic_path(path) as tmp:
        torch.save(archive, tmp)
    return Path(path)


def load_archive(path: str | os.PathLike, kind: str = MODEL_FORMAT,
                 map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict]:
    """Read an archive written by :func:`save_archive`; returns ``(tensors, metadata)``."""
    path = Path(path)
    what = "model" if kind == MODEL_FORMAT else "training checkpoint"
    if not path.is_file():
        raise ModelFileError(f"{path}: no such {what} file.")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: not a readable {what} file (not a torch archive); it may be truncated "
                             f"or not a TwoFiveCNN file.")
    import torch

    try:
        archive = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ModelFileError(
            f"{path}: refused: the file contains Python objects that would run code when loaded "
            f"({str(error).splitlines()[0][:200]}). TwoFiveCNN models hold only tensors and JSON; "
            f"use a model written by `twofivecnn train`."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as error:
        raise ModelFileError(
            f"{path}: not a readable {what} file ({str(error).splitlines()[0][:200]}). "
            f"It may be truncated or not a TwoFiveCNN file."
        ) from None
    if not isinstance(archive, dict) or archive.get("format") != kind:
        found = archive.get("format") if isinstance(archive, dict) else type(archive).__name__
        raise ModelFileError(f"{path}: not a TwoFiveCNN {what} (found {found!r}); train one with "
                             f"`twofivecnn train`, or use the bundled demo model.")
    if archive.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: {what} format version {archive.get('format_version')} is not supported by this "
            f"TwoFiveCNN (expects {FORMAT_VERSION}); update TwoFiveCNN or retrain the model."
        )
    try:
        metadata = json.loads(archive["metadata_json"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: the {what} has no readable metadata.") from None
    return archive.get("tensors", {}), metadata
