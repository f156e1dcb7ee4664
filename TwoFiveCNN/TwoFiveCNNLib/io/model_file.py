"""The model file: weights plus a JSON record of how the model was made, loaded without running code.

The file is a ``torch.save`` archive of plain tensors and one JSON string. It is read with
``torch.load(weights_only=True)``, which refuses pickled objects, so a hostile file cannot execute
code; anything else that is not a TwoFiveCNN model is refused with a message naming the file, in
plain words (:func:`read_torch_file`). Where only the metadata or a few small tensors are needed,
:func:`read_archive_without_torch` reads them with an unpickler that knows only the names a model file
holds and runs nothing, in milliseconds rather than torch's import.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
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
    archive = read_torch_file(path, what, map_location)
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
    return renamed_legacy_involvement(archive.get("tensors", {}), metadata)


def read_torch_file(path: str | os.PathLike, what: str, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, its failures as a :class:`ModelFileError` in plain words.

    torch's own message colours its text and suggests loading with ``weights_only=False``, which runs
    whatever code the file holds: the one thing to never do with a file from elsewhere. Neither reaches
    the user; what the file refers to (a Python object) or why it cannot be read does.
    """
    import torch  # here, not at import: the command line's error handling needs this module, not torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for damaged archives
        found = isinstance(error, pickle.UnpicklingError) and \
            _UNSAFE_GLOBAL.search(_ANSI_CODES.sub("", str(error)))
        if found:
            raise ModelFileError(
                f"{path}: refused: the file holds the Python object {found.group(1)}, which would run code when "
                f"loaded. TwoFiveCNN models hold only tensors and JSON; use a model written by "
                f"`twofivecnn train`."
            ) from None
        raise ModelFileError(f"{path}: not a readable {what} file ({plain_reason(error)}). It may be truncated "
                             f"or not a TwoFiveCNN file.") from None


_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
# torch's advice around the reason: to load unsafely, to allowlist objects, to file an issue, its docs.
_TORCH_ADVICE = re.compile(r"weights_only|safe_globals|allowlist|file an issue|documentation|pytorch\.org",
                           re.IGNORECASE)


def plain_reason(error: BaseException, limit: int = 200) -> str:
    """The reason in a torch error, as plain text: no colour codes, none of torch's advice (above all
    not its hint to load with ``weights_only=False``), one line of at most ``limit`` characters."""
    text = _ANSI_CODES.sub("", str(error)).split("WeightsUnpickler error:")[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _TORCH_ADVICE.search(line)]
    return (lines[0] if lines else type(error).__name__)[:limit]


@dataclass(frozen=True)
class StoredTensor:
    """A tensor of a torch archive as stored (its storage's data file, dtype, offset, size, strides),
    read with NumPy by :meth:`numpy`: no torch needed."""

    archive: Path
    data_name: str
    dtype: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def numpy(self) -> np.ndarray:
        import numpy as np

        with zipfile.ZipFile(self.archive) as archive:
            storage = np.frombuffer(archive.read(self.data_name), dtype=np.dtype(self.dtype).newbyteorder("<"))
        itemsize = storage.itemsize
        extent = 1 + sum((n - 1) * step for n, step in zip(self.size, self.stride)) if all(self.size) else 0
        if self.offset < 0 or min(self.stride, default=0) < 0 or self.offset + extent > storage.size:
            raise ValueError(f"{self.archive}: a tensor reaches beyond its stored data; the file is damaged.")
        return np.lib.stride_tricks.as_strided(storage[self.offset:], self.size,
                                               tuple(step * itemsize for step in self.stride)).copy()


_STORAGE_DTYPES = {"HalfStorage": "float16", "FloatStorage": "float32", "DoubleStorage": "float64",
                   "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
                   "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool"}


class _ArchiveReader(pickle.Unpickler):
    """Reads a ``torch.save`` archive's pickle with stand-ins: tensors become :class:`StoredTensor`, and
    nothing is imported or run. Only the names torch's ``weights_only`` loading of our files allows are
    known; any other is refused."""

    def __init__(self, stream, archive: Path, prefix: str) -> None:
        super().__init__(stream)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a TwoFiveCNN model file")

    def persistent_load(self, pid: Any) -> tuple[str, str]:
        kind, storage, key = pid[0], pid[1], pid[2]
        if kind != "storage" or storage not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage {pid[:2]!r}")
        return f"{self.prefix}/data/{key}", _STORAGE_DTYPES[storage]

    def _tensor(self, storage: tuple[str, str], offset: int, size, stride, *_) -> StoredTensor:
        return StoredTensor(self.archive, storage[0], storage[1], int(offset), tuple(size), tuple(stride))


def read_archive_without_torch(path: str | os.PathLike, kind: str = MODEL_FORMAT) -> tuple[dict[str, Any], dict]:
    """``(tensors, metadata)`` of an archive as :func:`load_archive` gives them, with :class:`StoredTensor`
    stand-ins for the tensors: a second's import of torch saved where only the metadata (or a few small
    tensors) is needed, such as checking an ONNX export against the model file it was made from."""
    path = Path(path)
    what = "model" if kind == MODEL_FORMAT else "training checkpoint"
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ModelFileError(f"{path}: not a readable {what} file (not a torch archive).")
            with archive.open(pickles[0]) as stream:
                content = _ArchiveReader(stream, path, pickles[0].rsplit("/", 1)[0]).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            IndexError, AttributeError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"{path}: not a readable {what} file ({plain_reason(error)}). It may be truncated "
                             f"or not a TwoFiveCNN file.") from None
    if not isinstance(content, dict) or content.get("format") != kind \
            or content.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: not a TwoFiveCNN {what} of format version {FORMAT_VERSION}.")
    try:
        metadata = json.loads(content["metadata_json"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ModelFileError(f"{path}: the {what} has no readable metadata.") from None
    return renamed_legacy_involvement(content.get("tensors", {}), metadata)


def fusion_cnn_weight(metadata: dict) -> float:
    """The CNN head's share of a model's fused probabilities (its involvement part has the rest): chosen
    on the validation split when training; an even mix in files from before the choice was made."""
    return float(metadata.get("fusion", {}).get("cnn_weight", 0.5))


# Legacy: remove after 0.3. Up to 0.2 the fused model's involvement part was called "aeration": its
# weight group, its metadata (mean, spread, the features measured), the architecture's switch and the
# result name its metrics are recorded under. The one place the old word is read.
_LEGACY_METADATA = {"aeration_mean": "involvement_mean", "aeration_std": "involvement_std",
                    "aeration_features": "involvement_features"}
_LEGACY_PART, _LEGACY_RESULT = "aeration", "aeration_only"


def renamed_legacy_involvement(tensors: dict[str, Any], metadata: dict) -> tuple[dict[str, Any], dict]:
    """A model file's or checkpoint's tensors and metadata with the involvement part's names of before
    0.3 (see above) renamed to today's, so that nothing past the reading knows the old ones."""
    if not isinstance(tensors, dict) or not isinstance(metadata, dict):
        return tensors, metadata  # not ours to rename: the caller refuses what it cannot use
    tensors = {("involvement" if name == _LEGACY_PART else name): group for name, group in tensors.items()}
    metadata = {_LEGACY_METADATA.get(key, key): value for key, value in metadata.items()}
    for owner in (metadata, metadata.get("train_config"), metadata.get("config")):  # model file, checkpoint
        architecture = owner.get("architecture") if isinstance(owner, dict) else None
        if isinstance(architecture, dict) and _LEGACY_PART in architecture:
            owner["architecture"] = {("involvement" if key == _LEGACY_PART else key): value
                                     for key, value in architecture.items()}
    metrics = metadata.get("metrics")
    if isinstance(metrics, dict):  # by subset, then by result name
        metadata["metrics"] = {subset: {("involvement_only" if name == _LEGACY_RESULT else name): values
                                        for name, values in results.items()} if isinstance(results, dict)
                               else results for subset, results in metrics.items()}
    return tensors, metadata
