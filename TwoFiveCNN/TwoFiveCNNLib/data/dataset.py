"""Which studies a model is trained on: a validated dataset index, study-level splits and class grouping.

A dataset is either a MosMed-style folder (``ROOT/studies/CT-k/...`` or ``ROOT/CT-k/...``) or a
CSV with ``path,label`` columns. Splits are stratified per class and deterministic, and they carry
the dataset's fingerprint so a split can never silently be applied to a different dataset.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..io.atomic import write_json_atomic
from ..io.volume import VOLUME_SUFFIXES, study_name

CLASS_NAMES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
SUBSETS = ("train", "val", "test")
# Below this many studies a class cannot have one study in each of train, val and test.
MIN_STUDIES_PER_CLASS = 3

FOLDER_LAYOUT = (
    "ROOT/studies/CT-0..CT-4/<study>.nii.gz or ROOT/CT-0..CT-4/<study> (volume files or DICOM folders)"
)


class DatasetError(ValueError):
    """A dataset, split or task definition that cannot be used; the message names the file and the fix."""


def normalize_label(label: str) -> str | None:
    """The canonical class name for ``label`` (case and surrounding spaces ignored), or None if unknown."""
    wanted = label.strip().upper()
    return next((name for name in CLASS_NAMES if name == wanted), None)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _series_files(folder: Path) -> list[Path]:
    """The non-hidden files directly inside a DICOM series folder, sorted by name."""
    return sorted((p for p in folder.iterdir() if p.is_file() and not _is_hidden(p)), key=lambda p: p.name)


def study_size(path: Path) -> int:
    """Bytes of a study: the file, or all files of a DICOM series folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in _series_files(path))
    return path.stat().st_size


@dataclass(frozen=True)
class Study:
    """One CT study: a unique id (file stem or folder name), where it is, and its class name."""

    study_id: str
    path: Path
    label: str

    def to_dict(self) -> dict:
        return {"study_id": self.study_id, "path": str(self.path), "label": self.label}


@dataclass
class DatasetIndex:
    """The studies of a dataset, sorted by id so anything derived from it ignores file listing order."""

    studies: list[Study]
    classes: tuple[str, ...] = CLASS_NAMES
    source: str = ""

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
                    f"Study ids (file names without extension) must be unique; rename or remove one."
                )
            seen[study.study_id] = study
        self.studies = sorted(self.studies, key=lambda s: s.study_id)

    def __len__(self) -> int:
        return len(self.studies)

    @classmethod
    def from_folder(cls, path: str | os.PathLike) -> DatasetIndex:
        """Index a MosMed-style folder; every class folder present must hold at least one study."""
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise DatasetError(f"{root}: no such folder. Expected a dataset laid out as {FOLDER_LAYOUT}.")
        class_root = root / "studies" if (root / "studies").is_dir() else root
        studies: list[Study] = []
        for folder in sorted(p for p in class_root.iterdir() if p.is_dir() and not _is_hidden(p)):
            label = normalize_label(folder.name)
            if label is None:
                raise DatasetError(
                    f"{folder}: folder {folder.name!r} is not a class; class folders must be named "
                    f"{', '.join(CLASS_NAMES)}. Rename it or move it out of {class_root}."
                )
            class_studies = _studies_in_class_folder(folder, label)
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
        """Index a CSV with ``path,label`` (optionally ``study_id``), paths relative to the CSV's folder."""
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
                    f"The first line must be a header with 'path,label' and optionally 'study_id'."
                )
            reader.fieldnames = columns
            studies = [
                _study_from_row(row, csv_path, line)
                for line, row in enumerate(reader, start=2)
                if any((value or "").strip() for value in row.values())
            ]
        if not studies:
            raise DatasetError(f"{csv_path}: lists no studies. Add one 'path,label' row per study.")
        return cls(studies, CLASS_NAMES, str(csv_path))

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

    def counts(self) -> dict[str, int]:
        """Studies per class, including classes with none."""
        counts = dict.fromkeys(self.classes, 0)
        for study in self.studies:
            counts[study.label] += 1
        return counts

    def summary(self) -> str:
        """Human-readable class counts, with a warning for classes too small to stratify."""
        counts = self.counts()
        lines = [f"{len(self.studies)} studies from {self.source or 'dataset'}"]
        lines += [f"  {name}: {count}" for name, count in counts.items()]
        lines += [
            f"  warning: {name} has {count} studies; at least {MIN_STUDIES_PER_CLASS} are needed "
            f"for one in each of train, val and test."
            for name, count in counts.items()
            if count < MIN_STUDIES_PER_CLASS
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
        studies = [Study(s["study_id"], Path(s["path"]), s["label"]) for s in data["studies"]]
        return cls(studies, tuple(data.get("classes", CLASS_NAMES)), data.get("source", ""))


def _studies_in_class_folder(folder: Path, label: str) -> list[Study]:
    """Volume files and DICOM series folders directly inside a class folder (other files are ignored)."""
    studies = []
    for entry in sorted(p for p in folder.iterdir() if not _is_hidden(p)):
        if entry.is_dir():
            if not _series_files(entry):
                raise DatasetError(
                    f"{entry}: folder holds no files. A study folder must hold the DICOM files of one "
                    f"series directly; move them up or remove the folder."
                )
            studies.append(Study(entry.name, entry, label))
        elif _is_volume_file(entry):
            studies.append(Study(study_name(entry), entry, label))
    return studies


def _study_from_row(row: dict, csv_path: Path, line: int) -> Study:
    where = f"{csv_path}, line {line}"
    raw_path = (row.get("path") or "").strip()
    raw_label = (row.get("label") or "").strip()
    if not raw_path:
        raise DatasetError(f"{where}: empty path.")
    path = Path(raw_path).expanduser()
    path = (path if path.is_absolute() else csv_path.parent / path).resolve()
    if not path.exists():
        raise DatasetError(f"{where}: {path} does not exist. Paths are relative to the CSV's folder.")
    if not (path.is_dir() or path.name.lower().endswith(VOLUME_SUFFIXES)):
        raise DatasetError(
            f"{where}: {path} is not a volume file ({', '.join(VOLUME_SUFFIXES)}) or a DICOM series folder."
        )
    label = normalize_label(raw_label)
    if label is None:
        raise DatasetError(
            f"{where}: unknown label {raw_label!r} for {path}; use one of {', '.join(CLASS_NAMES)}."
        )
    study_id = (row.get("study_id") or "").strip() or study_name(path)
    return Study(study_id, path, label)


@dataclass
class Split:
    """Study ids per subset, with how they were drawn and the fingerprint of the dataset they belong to."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    fractions: tuple[float, float, float]
    dataset_fingerprint: str
    fold: int | None = None  # set for k-fold splits

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        seen: dict[str, str] = {}
        for name in SUBSETS:
            for study_id in getattr(self, name):
                if study_id in seen:
                    raise DatasetError(f"split: study {study_id!r} is in both {seen[study_id]} and {name}.")
                seen[study_id] = name

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "fold": self.fold,
            "dataset_fingerprint": self.dataset_fingerprint,
            **{name: list(getattr(self, name)) for name in SUBSETS},
        }

    @classmethod
    def from_dict(cls, data: dict) -> Split:
        return cls(
            train=list(data["train"]),
            val=list(data["val"]),
            test=list(data["test"]),
            seed=int(data["seed"]),
            fractions=tuple(data["fractions"]),
            dataset_fingerprint=str(data["dataset_fingerprint"]),
            fold=data.get("fold"),
        )

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Split:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise DatasetError(f"{path}: no such split file.") from None
        except (ValueError, KeyError, TypeError) as error:
            raise DatasetError(
                f"{path}: not a valid split file ({type(error).__name__}: {error}). "
                f"Re-create it with make_split."
            ) from None

    def fingerprint(self) -> str:
        """Identifies the subsets' membership and the dataset they were drawn from."""
        data = {name: sorted(getattr(self, name)) for name in SUBSETS}
        data["dataset_fingerprint"] = self.dataset_fingerprint
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def check_matches(self, index: DatasetIndex) -> None:
        """Refuse a split that was made for another dataset, or for this one before its content changed."""
        known = {s.study_id for s in index.studies}
        unknown = [sid for name in SUBSETS for sid in getattr(self, name) if sid not in known]
        if unknown:
            raise DatasetError(
                f"split references {len(unknown)} studies not in {index.source or 'the dataset'} "
                f"(e.g. {', '.join(unknown[:5])}); it was made for another dataset. Use that dataset or "
                f"make a new split."
            )
        actual = index.fingerprint()
        if actual != self.dataset_fingerprint:
            raise DatasetError(
                f"{index.source or 'dataset'}: fingerprint {actual} differs from the split's "
                f"{self.dataset_fingerprint}; studies, labels or files changed since the split was made. "
                f"Restore the original data or make a new split."
            )

    def subset(self, index: DatasetIndex, name: str) -> list[Study]:
        """The studies of subset ``name`` ("train", "val" or "test"), in the split's order."""
        if name not in SUBSETS:
            raise ValueError(f"unknown subset {name!r}; use one of {', '.join(SUBSETS)}.")
        by_id = {s.study_id: s for s in index.studies}
        missing = [sid for sid in getattr(self, name) if sid not in by_id]
        if missing:
            raise DatasetError(
                f"split subset {name} references studies not in {index.source or 'the dataset'}: "
                f"{', '.join(missing[:5])}. Use the dataset the split was made for or make a new split."
            )
        return [by_id[sid] for sid in getattr(self, name)]


def _ids_by_class(index: DatasetIndex) -> list[list[str]]:
    """Study ids per class (in class order), sorted so filesystem listing order cannot matter."""
    return [sorted(s.study_id for s in index.studies if s.label == name) for name in index.classes]


def _shuffled(ids: list[str], seed: int, class_index: int, stream: int) -> list[str]:
    """A reproducible permutation; seeded per class so adding studies of one class leaves others unchanged."""
    order = np.random.default_rng([seed, class_index, stream]).permutation(len(ids))
    return [ids[i] for i in order]


def allocate(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Split ``n`` studies into (train, val, test) counts.

    Largest-remainder rounding of ``n * fractions``; then, filling train first, then val, then
    test, every subset with a positive fraction gets a study from the largest subset that can
    spare one (or, failing that, from a later subset). So a class with >= 3 studies is in all
    three subsets and a class with 1-2 studies is in train.
    """
    exact = [n * f for f in fractions]
    counts = [int(np.floor(x)) for x in exact]
    for i in sorted(range(3), key=lambda i: (counts[i] - exact[i], i))[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if fractions[i] > 0 and counts[i] == 0:
            donors = [j for j in range(3) if counts[j] > 1] or [j for j in range(i + 1, 3) if counts[j] > 0]
            if donors:
                counts[max(donors, key=lambda j: (counts[j], j))] -= 1
                counts[i] += 1
    return counts[0], counts[1], counts[2]


def _check_fractions(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or fractions[0] <= 0:
        raise ValueError(f"fractions {fractions}: need three values (train, val, test) >= 0, train > 0.")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions {fractions}: must sum to 1 (they sum to {sum(fractions):g}).")
    return tuple(float(f) for f in fractions)


def make_split(index: DatasetIndex, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
               seed: int = 0) -> Split:
    """Stratified study-level train/val/test split, identical for the same dataset and seed."""
    fractions = _check_fractions(fractions)
    subsets: list[list[str]] = [[], [], []]
    for class_index, ids in enumerate(_ids_by_class(index)):
        shuffled = _shuffled(ids, seed, class_index, stream=0)
        n_train, n_val, _ = allocate(len(ids), fractions)
        subsets[0].extend(shuffled[:n_train])
        subsets[1].extend(shuffled[n_train:n_train + n_val])
        subsets[2].extend(shuffled[n_train + n_val:])
    for name, subset, fraction in zip(SUBSETS, subsets, fractions, strict=True):
        if fraction > 0 and not subset:
            raise DatasetError(
                f"{index.source or 'dataset'}: too few studies for a {name} subset "
                f"({', '.join(f'{k}: {v}' for k, v in index.counts().items())}); "
                f"add studies or set its fraction to 0."
            )
    return Split(*(sorted(s) for s in subsets), seed=seed, fractions=fractions,
                 dataset_fingerprint=index.fingerprint())


def make_kfold(index: DatasetIndex, k: int = 5, seed: int = 0, test_fraction: float = 0.0) -> list[Split]:
    """Stratified k-fold cross-validation: fold i validates on the i-th part and trains on the rest.

    With ``test_fraction > 0`` a stratified test set is held out first and is the same in every fold.
    """
    if k < 2:
        raise ValueError(f"k={k}: k-fold cross-validation needs k >= 2.")
    test: list[str] = []
    if test_fraction > 0:
        test = make_split(index, (1.0 - test_fraction, 0.0, test_fraction), seed).test
    held_out = set(test)
    folds: list[list[str]] = [[] for _ in range(k)]
    position = 0  # continues across classes so fold sizes stay balanced
    for class_index, ids in enumerate(_ids_by_class(index)):
        for study_id in _shuffled([i for i in ids if i not in held_out], seed, class_index, stream=1):
            folds[position % k].append(study_id)
            position += 1
    if position < k:
        raise DatasetError(f"{index.source or 'dataset'}: {position} studies cannot be split into {k} folds.")
    fingerprint = index.fingerprint()
    fractions = ((1.0 - test_fraction) * (k - 1) / k, (1.0 - test_fraction) / k, test_fraction)
    return [
        Split(sorted(sid for j, fold in enumerate(folds) if j != i for sid in fold), sorted(folds[i]),
              sorted(test), seed=seed, fractions=fractions, dataset_fingerprint=fingerprint, fold=i)
        for i in range(k)
    ]


@dataclass(frozen=True)
class TaskDefinition:
    """What the model predicts: each output class is a group of MosMed classes."""

    name: str
    groups: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        groups = tuple(tuple(group) for group in self.groups)
        if len(groups) < 2 or any(not group for group in groups):
            raise DatasetError(f"task {self.name!r}: needs at least two non-empty groups, got {groups}.")
        seen: set[str] = set()
        for name in (name for group in groups for name in group):
            if name not in CLASS_NAMES:
                raise DatasetError(
                    f"task {self.name!r}: unknown class {name!r}; use {', '.join(CLASS_NAMES)}."
                )
            if name in seen:
                raise DatasetError(f"task {self.name!r}: class {name} is in more than one group.")
            seen.add(name)
        missing = [name for name in CLASS_NAMES if name not in seen]
        if missing:
            raise DatasetError(
                f"task {self.name!r}: class(es) {', '.join(missing)} are in no group; "
                f"every class must be in one."
            )
        object.__setattr__(self, "groups", groups)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Display name per group: "CT-0", a run like "CT-1..4", or "CT-0+CT-2" for other groups."""
        return tuple(_group_display_name(group) for group in self.groups)

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def label_index(self, label: str) -> int:
        """The output class of a MosMed label."""
        canonical = normalize_label(label)
        if canonical is None:
            raise DatasetError(f"unknown label {label!r}; use one of {', '.join(CLASS_NAMES)}.")
        return next(g for g, group in enumerate(self.groups) if canonical in group)

    @classmethod
    def severity(cls) -> TaskDefinition:
        return cls("severity", tuple((name,) for name in CLASS_NAMES))

    @classmethod
    def binary(cls) -> TaskDefinition:
        return cls("binary", (CLASS_NAMES[:1], CLASS_NAMES[1:]))

    @classmethod
    def from_groups(cls, spec: str) -> TaskDefinition:
        """Parse groups like ``"CT-0|CT-1,CT-2|CT-3,CT-4"``: '|' separates groups, ',' classes in a group."""
        groups = tuple(
            tuple(normalize_label(name) or name.strip() for name in part.split(",") if name.strip())
            for part in spec.split("|")
        )
        return cls("|".join(",".join(group) for group in groups), groups)

    @classmethod
    def from_name(cls, name_or_groups: str) -> TaskDefinition:
        """``"severity"``, ``"binary"`` or a groups string (see :meth:`from_groups`)."""
        key = name_or_groups.strip().lower()
        if key == "severity":
            return cls.severity()
        if key == "binary":
            return cls.binary()
        return cls.from_groups(name_or_groups)

    def to_dict(self) -> dict:
        return {"name": self.name, "groups": [list(g) for g in self.groups],
                "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, data: dict) -> TaskDefinition:
        return cls(str(data["name"]), tuple(tuple(g) for g in data["groups"]))


def _group_display_name(group: tuple[str, ...]) -> str:
    if len(group) == 1:
        return group[0]
    ordered = sorted(group, key=CLASS_NAMES.index)
    positions = [CLASS_NAMES.index(name) for name in ordered]
    if positions == list(range(positions[0], positions[0] + len(positions))):
        return f"{ordered[0]}..{positions[-1]}"
    return "+".join(ordered)
