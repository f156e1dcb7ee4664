"""Patient-level splits: stratified per class, deterministic, and tied to their dataset.

A split carries the dataset's fingerprint, so it can never silently be applied to another dataset;
stage 1, stage 2 and every baseline share one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
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
