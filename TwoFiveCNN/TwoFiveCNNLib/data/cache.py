"""On-disk cache of studies already prepared for the model, so each epoch skips reading and resampling.

Entries are keyed by the study's content (not its path) and the preprocessing fingerprint, so
renaming or copying a study still hits, while editing the file or any setting misses. Beside them,
whatever the settings, each study's voxel hash (:func:`voxel_hash`), recorded when its voxels are
read anyway, so that finding one image listed twice costs no second read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from ..io.volume import is_hidden, read_volume
from ..transforms.involvement import LUNG_FEATURES, lung_features, lung_involvement, measurement_fingerprint
from ..transforms.preprocess import GridMapping, PreprocessConfig, to_model_grid
from .index import Study
from .workers import map_in_order

CACHE_ENV = "TWOFIVECNN_CACHE"
# Part of every entry's folder name; bump when the entry format changes so old entries are ignored.
CACHE_FORMAT = "v2"  # v2: entries also hold the study's lung features
_CHUNK = 1 << 20
# Folder of the voxel hashes, one small file per study content; bump when voxel_hash changes.
VOXELS_FOLDER = "voxels-v1"

# Header formats whose voxels live in a separate file, and the header line that names it.
_DATA_FILE_FIELDS = {".mhd": re.compile(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE),
                     ".nhdr": re.compile(r"^\s*data ?file\s*:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)}

Progress = Callable[[int, int], None]


def default_cache_root() -> Path:
    """``$TWOFIVECNN_CACHE`` if set, else ``~/.cache/twofivecnn``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "twofivecnn").expanduser()


def study_files(path: Path) -> list[Path]:
    """Files whose bytes define a study: the file (plus a header's data file) or a DICOM folder's files."""
    if path.is_dir():
        return sorted((p for p in path.iterdir() if p.is_file() and not is_hidden(p)),
                      key=lambda p: p.name)
    pattern = _DATA_FILE_FIELDS.get(path.suffix.lower())
    if pattern is None:
        return [path]
    match = pattern.search(path.read_text(encoding="latin-1", errors="replace")[:65536])
    data_file = path.parent / match.group(1) if match else None
    return [path, data_file] if data_file is not None and data_file.is_file() else [path]


def voxel_hash(array: np.ndarray) -> str:
    """sha256 of an image's voxel values (canonical order, as float32) and shape: the same for one image
    whatever file format, compression, voxel type or stored orientation holds it. Slice by slice, so a
    large study is never copied whole."""
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    for plane in array:
        digest.update(np.ascontiguousarray(plane, dtype="<f4").tobytes())
    return digest.hexdigest()


class PreprocessedCache:
    """Model-grid arrays of studies, stored as float16 ``.npz`` under ``root`` and returned as float32.

    ``hits`` and ``misses`` count lookups; a corrupt entry counts as a miss and is rebuilt.
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.hits = 0
        self.misses = 0
        self._hashes: dict[tuple[str, int, int], str] = {}

    def _file_hash(self, path: Path) -> str:
        """sha256 of a file, memoized by (path, size, mtime) so unchanged files are read once per session."""
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    digest.update(chunk)
            self._hashes[key] = digest.hexdigest()
        return self._hashes[key]

    def content_hash(self, study_path: str | os.PathLike) -> str:
        """Hash of the bytes of every file of a study, independent of where the study is stored."""
        path = Path(study_path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such study file or folder.")
        digests = [self._file_hash(p) for p in study_files(path)]
        if len(digests) == 1:
            return digests[0]
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()

    def content_fingerprint(self, studies: Iterable[Study]) -> str:
        """Identifies the bytes of every study with its id: unlike ``DatasetIndex.fingerprint`` (sizes), it
        changes when a file is replaced by another of the same size. Costs no extra read in a run that
        preprocesses the studies: their hashes are the cache keys, memoized."""
        rows = sorted((study.study_id, self.content_hash(study.path)) for study in studies)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def image_hash(self, study_path: str | os.PathLike) -> str:
        """The study's :func:`voxel_hash`: recorded when it was preprocessed, else read now (and recorded).
        Entries from before the record existed still hit; their studies are read here once."""
        record = self._voxel_record(study_path)
        try:
            recorded = record.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            recorded = ""
        if re.fullmatch(r"[0-9a-f]{64}", recorded):
            return recorded
        return self._record_voxels(record, read_volume(study_path).array)

    def _voxel_record(self, study_path: str | os.PathLike) -> Path:
        return self.root / VOXELS_FOLDER / f"{self.content_hash(study_path)[:40]}.sha256"

    @staticmethod
    def _record_voxels(record: Path, array: np.ndarray) -> str:
        digest = voxel_hash(array)
        remove_stale_temporaries(record)  # as for entries: a killed run's half-written record
        write_text_atomic(record, digest + "\n")
        return digest

    def entry_path(self, study_path: str | os.PathLike, config: PreprocessConfig) -> Path:
        # The entry holds lung features: a new way of measuring them must not reuse old ones.
        folder = self.root / f"{CACHE_FORMAT}-{config.fingerprint()}-{measurement_fingerprint()}"
        return folder / f"{self.content_hash(study_path)[:40]}.npz"

    def get(self, study_path: str | os.PathLike, config: PreprocessConfig) -> np.ndarray:
        """The study on the model grid, float32 in 0..1."""
        return self.get_with_mapping(study_path, config)[0]

    def get_with_mapping(self, study_path: str | os.PathLike,
                         config: PreprocessConfig) -> tuple[np.ndarray, GridMapping]:
        """The study on the model grid plus where that grid sits in the canonical volume."""
        grid, mapping, _ = self.get_study(study_path, config)
        return grid, mapping

    def get_study(self, study_path: str | os.PathLike,
                  config: PreprocessConfig) -> tuple[np.ndarray, GridMapping, np.ndarray]:
        """The study on the model grid, where that grid sits, and its lung features
        (:func:`..transforms.involvement.lung_features`, measured at the study's own resolution)."""
        entry = self.entry_path(study_path, config)
        if entry.exists():
            cached = _read_entry(entry)
            if cached is not None:
                self.hits += 1
                return cached
            entry.unlink(missing_ok=True)
        self.misses += 1
        volume = read_volume(study_path)
        self._record_voxels(self._voxel_record(study_path), volume.array)
        grid, mapping = to_model_grid(volume, config)
        features = lung_features(lung_involvement(volume.array, volume.spacing_zyx)[0])
        _write_entry(entry, grid, mapping, features)
        # Return what later hits will return, so results never depend on whether the cache was warm.
        return grid.astype(np.float16).astype(np.float32), mapping, features

    def warm(self, studies: Iterable[Study | str | os.PathLike], config: PreprocessConfig,
             progress: Progress | None = None, workers: int = 0) -> int:
        """Make sure every study is cached; returns how many had to be preprocessed.

        ``workers > 1`` preprocesses in that many processes (spawned, as forking after torch
        has started threads can deadlock). ``progress(done, total)`` is called after each study.
        """
        paths = [s.path if isinstance(s, Study) else Path(s) for s in studies]
        built = 0
        if workers > 1:
            # Workers exit with this process (a killed run leaves none computing for nobody).
            jobs = map_in_order(_warm_one, ((self.root, path, config) for path in paths), workers)
            for done, was_built in enumerate(jobs, start=1):
                built += was_built
                if progress:
                    progress(done, len(paths))
            self.misses += built
            self.hits += len(paths) - built
        else:
            for done, path in enumerate(paths, start=1):
                misses = self.misses
                self.get_with_mapping(path, config)
                built += self.misses - misses
                if progress:
                    progress(done, len(paths))
        return built


def _warm_one(root: Path, path: Path, config: PreprocessConfig) -> bool:
    """Cache one study in a worker process; True if it had to be preprocessed."""
    cache = PreprocessedCache(root)
    cache.get_with_mapping(path, config)
    return cache.misses > 0


def _write_entry(entry: Path, grid: np.ndarray, mapping: GridMapping, features: np.ndarray) -> None:
    remove_stale_temporaries(entry)  # a killed run's half-written entry, left because the entry was missing
    with atomic_path(entry) as tmp, open(tmp, "wb") as f:
        np.savez(f, grid=grid.astype(np.float16), mapping=np.array(json.dumps(mapping.to_dict())),
                 features=features.astype(np.float32))


def _read_entry(entry: Path) -> tuple[np.ndarray, GridMapping, np.ndarray] | None:
    """An entry's content, or None if it is unreadable or inconsistent (truncated, half-copied, ...)."""
    try:
        with np.load(entry, allow_pickle=False) as data:
            grid = data["grid"].astype(np.float32)
            mapping = GridMapping.from_dict(json.loads(str(data["mapping"])))
            features = data["features"].astype(np.float32)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile):
        return None
    if grid.shape != tuple(mapping.grid_shape) or not np.isfinite(grid).all() \
            or features.shape != (len(LUNG_FEATURES),) or not np.isfinite(features).all():
        return None
    return grid, mapping, features
