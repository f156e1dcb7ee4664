"""Which studies there are: a validated dataset index of studies and their MosMed labels.

A dataset is either a MosMed-style folder (``ROOT/studies/CT-k/...`` or ``ROOT/CT-k/...``) or a
CSV with ``path,label`` columns; errors name the file and the fix.

A study may name its patient, so that splits keep a patient's studies together: the CSV's ``patient``
column, a DICOM series' PatientID, or (for a folder ``twofivecnn synth`` made) the base CT its
``synth.json`` records. A study without one is its own patient.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..io.dicom_series import dicom_patient_id
from ..io.volume import VOLUME_SUFFIXES, has_volume_suffix, is_hidden, study_name

CLASS_NAMES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
# Below this many studies a class cannot have one study in each of train, val and test.
MIN_STUDIES_PER_CLASS = 3
SYNTH_SUMMARY = "synth.json"  # what `twofivecnn synth` writes beside studies/: each study's base CT, its patient

FOLDER_LAYOUT = (
    "ROOT/studies/CT-0..CT-4/<study>.nii.gz or ROOT/CT-0..CT-4/<study> (volume files or DICOM folders)"
)


class DatasetError(ValueError):
    """A dataset, split or task definition that cannot be used; the message names the file and the fix."""


def normalize_label(label: str) -> str | None:
    """The canonical class name for ``label`` (case and surrounding spaces ignored), or None if unknown."""
    wanted = label.strip().upper()
    return next((name for name in CLASS_NAMES if name == wanted), None)


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and has_volume_suffix(path)


def _series_files(folder: Path) -> list[Path]:
    """The non-hidden files directly inside a DICOM series folder, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not is_hidden(p)), key=lambda p: p.name)


def study_size(path: Path) -> int:
    """Bytes of a study: the file, or all files of a DICOM series folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in _series_files(path))
    return path.stat().st_size


def base_patient(base_name: str) -> str:
    """The patient of every study ``synth`` makes from the base CT file ``base_name``: its name without
    extension. Readable in split files, the same for every cohort made from that file, and equal to the
    base's own study id when the base is itself a study of a dataset (MosMed's CT-0 studies), so its
    lesion-inserted variants stay on its side of a split. Two bases of one name are taken for one
    patient: the cautious side (a split can only be coarser, never leak)."""
    return study_name(base_name)


@dataclass(frozen=True)
class Study:
    """One CT study: a unique id (file stem or folder name), where it is, its class name, and its patient
    when known (else the study is its own patient)."""

    study_id: str
    path: Path
    label: str
    patient: str = ""

    @property
    def patient_id(self) -> str:
        """The patient splits keep together: the one named, else the study itself."""
        return self.patient or self.study_id

    def to_dict(self) -> dict:
        return {"study_id": self.study_id, "path": str(self.path), "label": self.label,
                **({"patient": self.patient} if self.patient else {})}


@dataclass
class DatasetIndex:
    """The studies of a dataset, sorted by id so anything derived from it ignores file listing order."""

    studies: list[Study]
    classes: tuple[str, ...] = CLASS_NAMES
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # hidden files a CSV lists, left out (``._x.nii.gz``)

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if not self.studies:
            raise DatasetError(f"{self.source or 'dataset'}: contains no studies.")
        seen: dict[str, Study] = {}
        for study in self.studies:
            if study.label not in self.classes:
                raise DatasetError(
                    f"{study.path}: unknown label {study.label!r}; use one of {', '.join(self.classes)}."
                )
            if study.study_id in seen:
                raise DatasetError(
                    f"duplicate study {study.study_id!r}: {seen[study.study_id].path} and {study.path}. "
                    f"Study ids (file names without extension) must be unique, also across datasets used together; "
                    f"rename or remove one (`twofivecnn synth --prefix` names synthetic studies apart)."
                )
            seen[study.study_id] = study
        refuse_repeated(self.studies, same_file, "is also listed as")
        self.studies = sorted(self.studies, key=lambda s: s.study_id)

    def __len__(self) -> int:
        return len(self.studies)

    def patients(self) -> dict[str, list[Study]]:
        """Each patient's studies, by patient id (sorted by study id, as the index is)."""
        groups: dict[str, list[Study]] = {}
        for study in self.studies:
            groups.setdefault(study.patient_id, []).append(study)
        return groups

    def named_patients(self) -> dict[str, str]:
        """study id -> patient, for the studies whose patient is not the study itself (what a split records)."""
        return {s.study_id: s.patient_id for s in self.studies if s.patient_id != s.study_id}

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> DatasetIndex:
        """Index a MosMed-style folder; every class folder present must hold at least one study."""
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"{root}: no such folder. Expected a dataset laid out as {FOLDER_LAYOUT}.")
        class_root = root / "studies" if (root / "studies").is_dir() else root
        recorded = _synth_patients(root)
        studies: list[Study] = []
        for folder in sorted(p for p in class_root.iterdir() if p.is_dir() and not is_hidden(p)):
            label = normalize_label(folder.name)
            if label is None:
                raise DatasetError(
                    f"{folder}: folder {folder.name!r} is not a class; class folders must be named "
                    f"{', '.join(CLASS_NAMES)}. Rename it or move it out of {class_root}."
                )
            class_studies = _studies_in_class_folder(folder, label, lambda path: recorded.get(
                path.relative_to(root).as_posix()))
            if not class_studies:
                raise DatasetError(
                    f"{folder}: class folder holds no studies. Add volume files "
                    f"({', '.join(VOLUME_SUFFIXES)}) or DICOM series folders, or remove the empty folder."
                )
            studies.extend(class_studies)
        if not studies:
            raise DatasetError(
                f"{root}: no class folders found. Expected a dataset laid out as {FOLDER_LAYOUT}."
            )
        return cls(studies, CLASS_NAMES, str(root))

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> DatasetIndex:
        """Index a CSV with ``path,label`` (optionally ``study_id`` and ``patient``), paths relative to the
        CSV's folder."""
        csv_path = Path(path).expanduser().resolve()
        if not csv_path.is_file():
            raise DatasetError(f"{csv_path}: no such CSV file.")
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip().lower() for c in reader.fieldnames or []]
            missing = [c for c in ("path", "label") if c not in columns]
            if missing:
                raise DatasetError(
                    f"{csv_path}: missing column(s) {', '.join(missing)} (found {columns or 'none'}). "
                    f"The first line must be a header with 'path,label' and optionally 'study_id' and "
                    f"'patient'."
                )
            reader.fieldnames = columns
            rows = [(line, row) for line, row in enumerate(reader, start=2)
                    if any((value or "").strip() for value in row.values())]
        # A listing made with `find` on a copy from a Mac names its ._ metadata files too: skipped, as in folders.
        skipped = [f"line {line}: {row['path'].strip()}" for line, row in rows if is_hidden(_row_path(row, csv_path))]
        studies = [_study_from_row(row, csv_path, line) for line, row in rows
                   if not is_hidden(_row_path(row, csv_path))]
        if not studies:
            raise DatasetError(f"{csv_path}: lists no studies. Add one 'path,label' row per study.")
        return cls(studies, CLASS_NAMES, str(csv_path), skipped)

    @classmethod
    def load(cls, path: str | os.PathLike) -> DatasetIndex:
        """Index a MosMed-style folder or a ``.csv`` file."""
        p = Path(path).expanduser()
        if p.is_dir():
            return cls.from_folder(p)
        if p.suffix.lower() == ".csv":
            return cls.from_csv(p)
        raise DatasetError(
            f"{p}: not a dataset. Pass a folder laid out as {FOLDER_LAYOUT}, "
            f"or a .csv file with 'path,label' columns."
        )

    @classmethod
    def load_all(cls, paths: Sequence[str | os.PathLike]) -> DatasetIndex:
        """Index one or several datasets as one (for example phantoms beside lesion-inserted real CT);
        study ids must be unique across them (``twofivecnn synth --prefix`` keeps them apart)."""
        if isinstance(paths, (str, os.PathLike)):
            return cls.load(paths)
        indexes = [cls.load(path) for path in paths]
        if len(indexes) == 1:
            return indexes[0]
        return cls([s for index in indexes for s in index.studies], CLASS_NAMES,
                   " + ".join(index.source for index in indexes))

    def counts(self) -> dict[str, int]:
        """Studies per class, including classes with none."""
        counts = dict.fromkeys(self.classes, 0)
        for study in self.studies:
            counts[study.label] += 1
        return counts

    def patient_counts(self) -> dict[str, int]:
        """Patients with a study of each class (a patient with studies of two grades counts in both)."""
        return {name: len({s.patient_id for s in self.studies if s.label == name}) for name in self.classes}

    def summary(self, subsets: int = 3) -> str:
        """Human-readable class counts, with a warning for classes too small to stratify into ``subsets``
        (train, val and test; or k folds): a patient's studies all go to one subset."""
        counts, patients = self.counts(), self.patient_counts()
        lines = [f"{len(self.studies)} studies of {len(self.patients())} patients from {self.source or 'dataset'}"]
        lines += [f"  {name}: {count} studies of {patients[name]} patients" for name, count in counts.items()]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} hidden file(s) (such as the ._ files macOS writes beside "
                         f"copies; not images): {', '.join(self.skipped[:3])}")
        lines += [
            f"  warning: {name} has {count} studies; at least {MIN_STUDIES_PER_CLASS} are needed "
            f"for one in each of train, val and test."
            for name, count in counts.items()
            if count < MIN_STUDIES_PER_CLASS
        ]
        lines += [
            f"  warning: {name} has {count} studies but only {patients[name]} patient(s), fewer than the {subsets} "
            f"subsets; a patient's studies stay in one subset, so some subset has no {name} study. Add "
            f"{name} studies of other patients, or check the patients (the CSV's patient column, DICOM "
            f"PatientID, synth's base)."
            for name, count in counts.items()
            if count >= MIN_STUDIES_PER_CLASS and 0 < patients[name] < subsets
        ]
        return "\n".join(lines)

    def fingerprint(self) -> str:
        """Identifies the dataset's content (ids, labels, sizes) independently of where it is stored."""
        rows = sorted((s.study_id, s.label, study_size(s.path)) for s in self.studies)
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"source": self.source, "classes": list(self.classes),
                "studies": [s.to_dict() for s in self.studies]}

    @classmethod
    def from_dict(cls, data: dict) -> DatasetIndex:
        studies = [Study(s["study_id"], Path(s["path"]), s["label"], s.get("patient", "")) for s in data["studies"]]
        return cls(studies, tuple(data.get("classes", CLASS_NAMES)), data.get("source", ""))


def _studies_in_class_folder(folder: Path, label: str, recorded: Callable[[Path], str | None]) -> list[Study]:
    """Volume files and DICOM series folders directly inside a class folder (other files are ignored),
    with the patient ``recorded`` for a file (by synth), or a series' PatientID."""
    studies = []
    for entry in sorted(p for p in folder.iterdir() if not is_hidden(p)):
        if entry.is_dir():
            if not _series_files(entry):
                raise DatasetError(
                    f"{entry}: folder holds no files. A study folder must hold the DICOM files of one "
                    f"series directly; move them up or remove the folder."
                )
            studies.append(Study(entry.name, entry, label, dicom_patient_id(entry) or ""))
        elif _is_volume_file(entry):
            studies.append(Study(study_name(entry), entry, label, recorded(entry) or ""))
    return studies


def _synth_patients(root: Path) -> dict[str, str]:
    """Study path (relative to ``root``, as ``synth.json`` writes it) -> patient, for a folder that
    ``twofivecnn synth`` made: the base each study was made from. Cohorts made before synth recorded a
    patient name their base, which gives the same patient."""
    summary = root / SYNTH_SUMMARY
    if not summary.is_file():
        return {}
    try:
        records = json.loads(summary.read_text(encoding="utf-8"))["studies"]
        return {str(r["path"]): str(r.get("patient") or base_patient(str(r["base"]))) for r in records}
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(
            f"{summary}: not a synth summary ({type(error).__name__}: {error}), so the patients of the "
            f"studies beside it are unknown. Restore it (re-running the same `twofivecnn synth` command "
            f"rewrites it), or move it away if the folder is not a synth cohort.") from None


def _row_path(row: dict, csv_path: Path) -> Path:
    """A CSV row's path, absolute (relative paths are relative to the CSV's folder)."""
    path = Path((row.get("path") or "").strip()).expanduser()
    return (path if path.is_absolute() else csv_path.parent / path).resolve()


def _study_from_row(row: dict, csv_path: Path, line: int) -> Study:
    where = f"{csv_path}, line {line}"
    raw_label = (row.get("label") or "").strip()
    if not (row.get("path") or "").strip():
        raise DatasetError(f"{where}: empty path.")
    path = _row_path(row, csv_path)
    if not path.exists():
        raise DatasetError(f"{where}: {path} does not exist. Paths are relative to the CSV's folder.")
    if not (path.is_dir() or has_volume_suffix(path)):
        raise DatasetError(
            f"{where}: {path} is not a volume file ({', '.join(VOLUME_SUFFIXES)}) or a DICOM series folder."
        )
    label = normalize_label(raw_label)
    if label is None:
        raise DatasetError(
            f"{where}: unknown label {raw_label!r} for {path}; use one of {', '.join(CLASS_NAMES)}."
        )
    study_id = (row.get("study_id") or "").strip() or study_name(path)
    patient = (row.get("patient") or "").strip() or (dicom_patient_id(path) if path.is_dir() else None)
    return Study(study_id, path, label, patient or "")


def same_file(study: Study) -> str:
    """What names one file, however it is written (relative, through a symbolic link)."""
    return str(study.path.resolve())


def refuse_repeated(studies: Sequence[Study], key: Callable[[Study], str | None], how: str) -> None:
    """Refuse two studies with one ``key`` (their file, their bytes, their voxels): one image is one
    patient, so listed twice it would be two patients, perhaps with two labels, and a patient-level
    split could put it on both sides. ``how`` says what they share: "X <how> study Y".
    Studies whose key is None are not compared."""
    first: dict[str, Study] = {}
    for study in studies:
        value = key(study)
        if value is None:
            continue
        if value not in first:
            first[value] = study
            continue
        other = first[value]
        labels = (f"labelled {other.label} and {study.label}, which contradict each other"
                  if other.label != study.label else f"both labelled {study.label}")
        where = "" if other.path.resolve() == study.path.resolve() else f" ({other.path})"
        raise DatasetError(
            f"{study.path}: {how} study {other.study_id!r}{where}; one image is listed under the "
            f"study ids {other.study_id!r} and {study.study_id!r}, {labels}. One image is one patient: keep it "
            f"under one id and remove the other from the dataset (the folder or the CSV), or the split could "
            f"put the same patient in training and in test.")
