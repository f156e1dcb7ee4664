"""The studies of a batch, and their torch-free first half (reading, lungs and involvement) done ahead.

Reading a study and measuring its lungs need neither torch nor the model, so a background thread does
them for the next study while the current one runs through the network and is written, and for the
first study while a fresh process is still importing torch and loading the model. Nothing here
imports torch: that is what lets the first study start before torch has loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..io.timing import StageTimes, timed
from ..io.volume import Volume, has_volume_suffix, is_hidden, read_volume, study_name, voxel_count

if TYPE_CHECKING:
    from ..transforms.involvement import LungAnalysis

# Two studies in memory at once only while both together stay this small (two 512 x 512 x 120
# studies): a 400-slice study is never read beside another, so its peak memory stays its own.
PREFETCH_MAX_VOXELS = 64 * 2**20


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Volume files, DICOM series folders, and folders of volume files (each file one study; hidden
    files skipped)."""
    studies: list[Path] = []
    for item in map(Path, inputs):
        volume_files = sorted(p for p in item.iterdir() if has_volume_suffix(p) and not is_hidden(p)) \
            if item.is_dir() else []
        studies.extend(volume_files or [item])
    return studies


def unique_names(paths: list[Path]) -> list[str]:
    """Study names for output files; clashing names (same file name in two folders) get a suffix."""
    names, seen = [], {}
    for path in paths:
        base = study_name(path)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


@dataclass
class PreparedStudy:
    """A study read into its canonical volume, with its lungs measured on their analysis grid."""

    volume: Volume
    analysis: LungAnalysis  # transforms.involvement.analyse_lungs of the volume
    times: StageTimes = field(default_factory=StageTimes)


def prepare_study(path: str | os.PathLike, allow_uneven_slices: bool = False) -> PreparedStudy:
    """Read ``path`` and segment and measure its lungs (``read`` and ``lungs_and_involvement`` timed).

    ``allow_uneven_slices``: a DICOM series with missing or uneven slices is resampled onto an even grid
    (with a warning) instead of refused (``io.volume.read_volume``)."""
    from ..transforms.involvement import analyse_lungs  # SciPy: not for --help

    times = StageTimes()
    with timed(times, "read"):
        volume = read_volume(path, allow_uneven_slices=allow_uneven_slices)
    with timed(times, "lungs_and_involvement"):
        analysis = analyse_lungs(volume.array, volume.spacing_zyx)
    return PreparedStudy(volume, analysis, times)


class StudyPrefetcher:
    """Prepares studies (:func:`prepare_study`) in one background thread, ahead of their turn.

    :meth:`take` returns a study's preparation, raising what reading it raised, and prepares it on the
    spot if it was not asked for ahead. :meth:`prefetch_next` asks for the next study only while the
    two fit :data:`PREFETCH_MAX_VOXELS` together. Every study is read with ``allow_uneven_slices``
    (:func:`prepare_study`). Use as a context manager, so the thread ends.
    """

    def __init__(self, max_voxels: int = PREFETCH_MAX_VOXELS, allow_uneven_slices: bool = False) -> None:
        self.max_voxels = max_voxels
        self.allow_uneven_slices = allow_uneven_slices
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twofivecnn-prefetch")
        self._pending: dict[Path, Future] = {}

    def prefetch(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path not in self._pending:
            self._pending[path] = self._pool.submit(prepare_study, path, self.allow_uneven_slices)

    def prefetch_next(self, current_voxels: int, path: str | os.PathLike) -> bool:
        """Prepare ``path`` now if it and the study in hand fit in memory together; whether it was asked for."""
        size = voxel_count(path)
        if size is None or size + current_voxels > self.max_voxels:
            return False
        self.prefetch(path)
        return True

    def take(self, path: str | os.PathLike) -> PreparedStudy:
        future = self._pending.pop(Path(path), None)
        return prepare_study(path, self.allow_uneven_slices) if future is None else future.result()

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> StudyPrefetcher:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
