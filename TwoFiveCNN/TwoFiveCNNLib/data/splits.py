"""Patient-level splits: a patient's studies in one subset, stratified per class, deterministic, and tied
to their dataset.

A split carries the dataset's fingerprint, so it can never silently be applied to another dataset;
stage 1, stage 2 and every baseline share one. It records the patients it kept together (studies of
no named patient are their own patients), so a split made for other patients is refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..io.atomic import write_json_atomic
from .index import DatasetError, DatasetIndex, Study

SUBSETS = ("train", "val", "test")


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
    patients: dict[str, str] = field(default_factory=dict)  # study id -> patient, where not the study itself

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        seen: dict[str, str] = {}
        patient_subset: dict[str, tuple[str, str]] = {}  # patient -> (subset, a study of it)
        for name in SUBSETS:
            for study_id in getattr(self, name):
                if study_id in seen:
                    raise DatasetError(f"split: study {study_id!r} is in both {seen[study_id]} and {name}.")
                seen[study_id] = name
                patient = self.patients.get(study_id, study_id)
                other, first = patient_subset.setdefault(patient, (name, study_id))
                if other != name:
                    raise DatasetError(f"split: patient {patient!r} is in both {other} (study {first!r}) and "
                                       f"{name} (study {study_id!r}); a patient's studies must stay in one subset.")

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "fractions": list(self.fractions),
            "fold": self.fold,
            "dataset_fingerprint": self.dataset_fingerprint,
            **{name: list(getattr(self, name)) for name in SUBSETS},
            "patients": dict(sorted(self.patients.items())),
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
            patients={str(k): str(v) for k, v in (data.get("patients") or {}).items()},  # older files: none
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
        """Identifies the subsets' membership, the patients they keep together and the dataset they were
        drawn from (a split of studies that are all their own patients keeps its earlier fingerprint)."""
        data = {name: sorted(getattr(self, name)) for name in SUBSETS}
        data["dataset_fingerprint"] = self.dataset_fingerprint
        if self.patients:
            data["patients"] = self.patients
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
        self._check_patients(index)

    def _check_patients(self, index: DatasetIndex) -> None:
        """Refuse a split made for other patients than the dataset names now; an older split file, which
        records none, is kept when it puts no patient of the dataset in two subsets."""
        now = index.named_patients()
        fix = ("Make a new split (`twofivecnn index DATA --split FILE`, or delete the split file and train), "
               "or restore the patients it was made with (the CSV's patient column, DICOM PatientID, synth.json).")
        if self.patients and self.patients != now:
            changed = min(set(self.patients.items()) ^ set(now.items()))[0]
            raise DatasetError(
                f"{index.source or 'dataset'}: the split was made for other patients (study {changed!r}: "
                f"{self.patients.get(changed, changed)!r} in the split, {now.get(changed, changed)!r} now). {fix}")
        if not self.patients and now:
            try:
                replace(self, patients=now)
            except DatasetError as error:
                raise DatasetError(f"{index.source or 'dataset'}: the split was made without patients (by an "
                                   f"earlier twofivecnn), and {str(error).removeprefix('split: ')} {fix}") from None

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


def _patients_in_order(index: DatasetIndex, seed: int, stream: int,
                       leave_out: frozenset[str] = frozenset()) -> list[tuple[list[str], np.ndarray]]:
    """Each patient's study ids and studies per class (but those of the patients ``leave_out``), in the
    order they are placed: class by class (a
    patient's class is its most frequent grade, the higher on a tie), shuffled within a class, then the
    patients with most studies first (placed while there is most room). When every study is its own
    patient this is the per-class shuffle of study ids an earlier, study-level split drew, so such a
    dataset is split as before."""
    ordered: list[str] = []
    groups = index.patients()
    vectors = {patient: np.bincount([index.classes.index(s.label) for s in studies], minlength=len(index.classes))
               for patient, studies in groups.items() if patient not in leave_out}
    for class_index in range(len(index.classes)):
        ids = sorted(p for p, v in vectors.items() if len(v) - 1 - int(np.argmax(v[::-1])) == class_index)
        ordered.extend(_shuffled(ids, seed, class_index, stream))
    ordered.sort(key=lambda patient: -len(groups[patient]))  # stable: the shuffle decides among equals
    return [([s.study_id for s in groups[patient]], vectors[patient]) for patient in ordered]


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


def _fill_empty_subsets(members: list[list], fractions: tuple[float, float, float]) -> None:
    """Give each subset with a positive fraction a patient (from the subset with most) when there are
    enough patients: with few patients, each of many studies, rounding alone could leave one empty."""
    wanted = [i for i in range(3) if fractions[i] > 0]
    if sum(map(len, members)) < len(wanted):
        return
    for i in wanted:
        if not members[i]:
            donor = max(range(3), key=lambda j: (len(members[j]), -j))
            members[i].append(members[donor].pop())


def make_split(index: DatasetIndex, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
               seed: int = 0) -> Split:
    """Stratified patient-level train/val/test split, identical for the same dataset and seed.

    Each class's studies are to be shared as :func:`allocate` shares them; patients are placed whole,
    in :func:`_patients_in_order`, each into the first subset with most room for its studies (their
    grades counted one by one). A patient with studies of several grades thus goes where most of them
    still fit, and a dataset of single-study patients is split exactly as study by study.
    """
    fractions = _check_fractions(fractions)
    room = np.array([allocate(n, fractions) for n in index.counts().values()]).T  # (subset, class)
    members: list[list[list[str]]] = [[], [], []]
    for study_ids, vector in _patients_in_order(index, seed, stream=0):
        fits = np.minimum(vector, np.maximum(room, 0)).sum(axis=1)
        beyond = np.maximum(vector - room, 0).sum(axis=1)  # how far past its share a subset would go
        best = max((i for i in range(3) if fractions[i] > 0), key=lambda i: (fits[i], -beyond[i], -i))
        room[best] -= vector
        members[best].append(study_ids)
    _fill_empty_subsets(members, fractions)
    for name, subset, fraction in zip(SUBSETS, members, fractions, strict=True):
        if fraction > 0 and not subset:
            raise DatasetError(
                f"{index.source or 'dataset'}: too few studies for a {name} subset "
                f"({', '.join(f'{k}: {v}' for k, v in index.counts().items())}; {len(index.patients())} "
                f"patients, whose studies stay together); add studies of other patients or set its fraction to 0."
            )
    return Split(*(sorted(sid for ids in subset for sid in ids) for subset in members), seed=seed,
                 fractions=fractions, dataset_fingerprint=index.fingerprint(), patients=index.named_patients())


def make_kfold(index: DatasetIndex, k: int = 5, seed: int = 0, test_fraction: float = 0.0) -> list[Split]:
    """Stratified patient-level k-fold cross-validation: fold i validates on the i-th part and trains on
    the rest; each patient's studies are in one part.

    With ``test_fraction > 0`` a stratified test set of patients is held out first and is the same in
    every fold. Patients are placed whole (in :func:`_patients_in_order`) into the part holding fewest
    studies of their grades, then fewest studies: for single-study patients, dealing them round in turn.
    """
    if k < 2:
        raise ValueError(f"k={k}: k-fold cross-validation needs k >= 2.")
    test: list[str] = []
    if test_fraction > 0:
        test = make_split(index, (1.0 - test_fraction, 0.0, test_fraction), seed).test
    held_out = frozenset(index.named_patients().get(sid, sid) for sid in test)
    parts: list[list[str]] = [[] for _ in range(k)]
    per_class = np.zeros((k, len(index.classes)), dtype=int)
    patients = _patients_in_order(index, seed, stream=1, leave_out=held_out)
    if len(patients) < k:
        raise DatasetError(f"{index.source or 'dataset'}: {len(patients)} patients cannot be split into {k} "
                           f"folds (a patient's studies stay in one fold); use fewer folds or add patients.")
    for ids, vector in patients:
        part = min(range(k), key=lambda i: (int(per_class[i] @ vector), int(per_class[i].sum()), i))
        parts[part].extend(ids)
        per_class[part] += vector
    fingerprint, named = index.fingerprint(), index.named_patients()
    fractions = ((1.0 - test_fraction) * (k - 1) / k, (1.0 - test_fraction) / k, test_fraction)
    return [
        Split(sorted(sid for j, part in enumerate(parts) if j != i for sid in part), sorted(parts[i]),
              sorted(test), seed=seed, fractions=fractions, dataset_fingerprint=fingerprint, fold=i, patients=named)
        for i in range(k)
    ]
