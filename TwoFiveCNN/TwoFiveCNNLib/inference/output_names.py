"""What a study's lesion map is called in a prediction folder, in one place and standard library only:
the writer (:mod:`.outputs`) and the watcher of a batch in a child process (``app.processes``, which
imports no NumPy) find the same files."""

from __future__ import annotations

from pathlib import Path

LESION_MAP_SUFFIX = "_lesion_map"  # <name>_lesion_map.nii.gz
LESION_MAP_FORMATS = (".nii.gz", ".nrrd")  # predict --format

# legacy: remove after 0.3. Until then the lesion map of 0.2 and before, <name>_evidence<format>, is
# still found in an output folder: a cut-short study's is cleaned up, a study graded again replaces it.
LEGACY_LESION_MAP_SUFFIXES = ("_evidence",)


def lesion_map_path(out_dir: Path, name: str, file_format: str = LESION_MAP_FORMATS[0]) -> Path:
    """Where the lesion map of the study ``name`` is written: ``<name>_lesion_map.nii.gz`` (or ``.nrrd``)."""
    if file_format not in LESION_MAP_FORMATS:
        raise ValueError(f"lesion map format {file_format!r}: choose one of {list(LESION_MAP_FORMATS)}.")
    return out_dir / f"{name}{LESION_MAP_SUFFIX}{file_format}"


def lesion_map_files(out_dir: Path, name: str, legacy_only: bool = False) -> list[Path]:
    """The lesion map files of the study ``name`` present in ``out_dir``, in either format, under
    today's name and the legacy ones (only the legacy ones with ``legacy_only``)."""
    suffixes = (*(() if legacy_only else (LESION_MAP_SUFFIX,)), *LEGACY_LESION_MAP_SUFFIXES)
    names = [f"{name}{suffix}{file_format}" for suffix in suffixes for file_format in LESION_MAP_FORMATS]
    return [out_dir / file for file in names if (out_dir / file).is_file()]
