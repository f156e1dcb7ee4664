"""Dataset index, splits and task definitions on real (tiny) volume files."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from helpers import make_mosmed, write_study
from TwoFiveCNNLib.data.index import CLASS_NAMES, DatasetError, DatasetIndex, Study
from TwoFiveCNNLib.data.splits import Split, allocate, make_kfold, make_split
from TwoFiveCNNLib.data.tasks import TaskDefinition


@pytest.fixture(scope="module")
def big_index(tmp_path_factory) -> DatasetIndex:
    counts = {"CT-0": 20, "CT-1": 14, "CT-2": 7, "CT-3": 3, "CT-4": 2}
    root = make_mosmed(tmp_path_factory.mktemp("big"), counts)
    return DatasetIndex.from_folder(root)


# --- index -----------------------------------------------------------------------------------------


def test_mosmed_studies_layout(tmp_path):
    root = make_mosmed(tmp_path / "mosmed", {"CT-0": 3, "CT-1": 2})
    series = root / "studies" / "CT-2" / "patient_dicom"
    series.mkdir(parents=True)
    for k in range(3):
        (series / f"IM{k:04d}.dcm").write_bytes(b"x" * 10)
    (root / "masks").mkdir()  # MosMed ships masks and a registry beside studies/
    (root / "dataset_registry.xlsx").write_bytes(b"")
    (root / "studies" / "CT-0" / "notes.txt").write_text("not a study")

    index = DatasetIndex.from_folder(root)

    assert index.classes == CLASS_NAMES
    assert index.counts() == {"CT-0": 3, "CT-1": 2, "CT-2": 1, "CT-3": 0, "CT-4": 0}
    assert [s.study_id for s in index.studies] == [
        "patient_dicom", "study_0001", "study_0002", "study_0003", "study_0004", "study_0005"]
    first = index.studies[1]
    assert first.path.is_absolute() and first.path.name == "study_0001.nii.gz" and first.label == "CT-0"
    assert index.studies[0].path == series.resolve()
    summary = index.summary()
    assert "6 studies" in summary
    for small in ("CT-1", "CT-2", "CT-3", "CT-4"):
        assert f"warning: {small}" in summary
    assert "warning: CT-0" not in summary


def test_flat_layout_and_load_dispatch(tmp_path):
    root = make_mosmed(tmp_path / "flat", {"CT-0": 2, "CT-3": 1}, studies_folder=False)
    index = DatasetIndex.load(root)
    assert index.counts()["CT-3"] == 1 and len(index) == 3
    assert index.source == str(root.resolve())


def test_csv_index(tmp_path):
    data = tmp_path / "data"
    write_study(data / "a.nii.gz", 1)
    write_study(data / "sub" / "b.nrrd", 2)
    absolute = write_study(tmp_path / "elsewhere" / "c.mha", 3)
    csv_path = data / "list.csv"
    csv_path.write_text(
        "\ufeffpath,label,study_id\n"
        "a.nii.gz,CT-0,\n"
        "sub/b.nrrd, ct-2 ,patient_b\n"
        "\n"
        f"{absolute},CT-4,\n",
        encoding="utf-8",
    )
    index = DatasetIndex.load(csv_path)
    assert {s.study_id: s.label for s in index.studies} == {"a": "CT-0", "patient_b": "CT-2", "c": "CT-4"}
    assert {s.study_id: s.path for s in index.studies}["patient_b"] == (data / "sub" / "b.nrrd").resolve()


def test_dict_round_trip(tmp_path):
    index = DatasetIndex.from_folder(make_mosmed(tmp_path, {"CT-0": 2, "CT-1": 1}))
    again = DatasetIndex.from_dict(json.loads(json.dumps(index.to_dict())))
    assert again == index and again.fingerprint() == index.fingerprint()


def test_fingerprint_independent_of_location_but_not_content(tmp_path):
    root = make_mosmed(tmp_path / "one", {"CT-0": 3, "CT-1": 3})
    copy = tmp_path / "elsewhere" / "two"
    shutil.copytree(root, copy)
    original = DatasetIndex.from_folder(root).fingerprint()
    assert DatasetIndex.from_folder(copy).fingerprint() == original

    moved = copy / "studies" / "CT-2"
    moved.mkdir()
    shutil.move(copy / "studies" / "CT-1" / "study_0006.nii.gz", moved)
    assert DatasetIndex.from_folder(copy).fingerprint() != original  # a label changed

    with open(root / "studies" / "CT-0" / "study_0001.nii.gz", "ab") as f:
        f.write(b"\0")
    assert DatasetIndex.from_folder(root).fingerprint() != original  # a file changed


def _bad_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Build a broken MosMed folder; return it and a name the error message must mention."""
    root = make_mosmed(tmp_path / "ds", {"CT-0": 2})
    studies = root / "studies"
    if case == "unknown_class":
        write_study(studies / "CT-7" / "x.nii.gz")
        return root, "CT-7"
    if case == "non_class_folder":
        write_study(studies / "covid" / "x.nii.gz")
        return root, "covid"
    if case == "empty_class":
        (studies / "CT-3").mkdir()
        return root, "CT-3"
    if case == "duplicate":
        write_study(studies / "CT-1" / "study_0001.nrrd")
        return root, "study_0001"
    if case == "nested_series":
        (studies / "CT-1" / "patient" / "series").mkdir(parents=True)
        (studies / "CT-1" / "patient" / "series" / "1.dcm").write_bytes(b"x")
        return root, "patient"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["unknown_class", "non_class_folder", "empty_class", "duplicate", "nested_series"]
)
def test_folder_errors_name_the_culprit(tmp_path, case):
    root, culprit = _bad_folder(tmp_path, case)
    with pytest.raises(DatasetError, match=culprit):
        DatasetIndex.from_folder(root)


def test_empty_dataset_explains_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"empty.*ROOT/studies/CT-0"):
        DatasetIndex.load(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no such folder"):
        DatasetIndex.from_folder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="not a dataset"):
        DatasetIndex.load(tmp_path / "list.txt")


@pytest.mark.parametrize(
    ("content", "culprit"),
    [
        ("file,label\na.nii.gz,CT-0\n", "path"),
        ("path,class\na.nii.gz,CT-0\n", "label"),
        ("path,label\nmissing.nii.gz,CT-0\n", "missing.nii.gz"),
        ("path,label\na.nii.gz,covid\n", "covid"),
        ("path,label\na.nii.gz,CT-0\nb/a.nii.gz,CT-1\n", "duplicate study 'a'"),
        ("path,label\nnotes.txt,CT-0\n", "notes.txt"),
        ("path,label\n", "no studies"),
    ],
)
def test_csv_errors_name_the_culprit(tmp_path, content, culprit):
    write_study(tmp_path / "a.nii.gz")
    write_study(tmp_path / "b" / "a.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "list.csv").write_text(content)
    with pytest.raises(DatasetError, match=culprit) as error:
        DatasetIndex.from_csv(tmp_path / "list.csv")
    assert "list.csv" in str(error.value) or culprit.startswith("duplicate")


# --- split -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (1, 0, 0)), (2, (1, 1, 0)), (3, (1, 1, 1)), (4, (2, 1, 1)), (10, (7, 2, 1)), (20, (14, 3, 3))],
)
def test_allocate(n, expected):
    assert allocate(n, (0.7, 0.15, 0.15)) == expected


def test_allocate_fills_train_first_and_respects_zero_fractions():
    assert allocate(2, (0.2, 0.4, 0.4))[0] == 1
    assert allocate(5, (0.8, 0.0, 0.2)) == (4, 0, 1)


def _label_of(index: DatasetIndex) -> dict[str, str]:
    return {s.study_id: s.label for s in index.studies}


def test_split_is_stratified_and_disjoint(big_index):
    split = make_split(big_index, seed=3)
    subsets = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, subsets)) == len(big_index) == len(set().union(*subsets))
    labels = _label_of(big_index)
    for label, count in big_index.counts().items():
        per_subset = [sum(labels[s] == label for s in subset) for subset in subsets]
        assert per_subset == list(allocate(count, (0.7, 0.15, 0.15)))
        if count >= 3:
            assert min(per_subset) >= 1
    assert [s.study_id for s in split.subset(big_index, "val")] == split.val


def test_split_is_deterministic(big_index):
    assert make_split(big_index, seed=0) == make_split(big_index, seed=0)
    assert make_split(big_index, seed=0).train != make_split(big_index, seed=1).train
    shuffled = list(big_index.studies)
    random.Random(5).shuffle(shuffled)
    relisted = DatasetIndex(shuffled, big_index.classes, big_index.source)
    assert make_split(relisted, seed=0) == make_split(big_index, seed=0)


def test_split_rejects_bad_fractions_and_tiny_datasets(big_index, tmp_path):
    with pytest.raises(ValueError, match="sum to 1"):
        make_split(big_index, (0.5, 0.2, 0.2))
    tiny = DatasetIndex.from_folder(make_mosmed(tmp_path, {"CT-0": 1, "CT-1": 1}))
    with pytest.raises(DatasetError, match="too few studies for a val subset"):
        make_split(tiny)


def test_kfold_partitions(big_index):
    folds = make_kfold(big_index, k=5, seed=1)
    everyone = {s.study_id for s in big_index.studies}
    vals = [set(f.val) for f in folds]
    assert sum(map(len, vals)) == len(everyone) and set().union(*vals) == everyone
    labels = _label_of(big_index)
    for i, fold in enumerate(folds):
        assert fold.fold == i and fold.test == []
        assert set(fold.train) == everyone - vals[i]
    for label, count in big_index.counts().items():
        per_fold = [sum(labels[s] == label for s in val) for val in vals]
        assert max(per_fold) - min(per_fold) <= 1 and sum(per_fold) == count
    assert make_kfold(big_index, k=5, seed=1) == folds


def test_kfold_with_fixed_test_set(big_index):
    folds = make_kfold(big_index, k=3, seed=0, test_fraction=0.2)
    test = set(folds[0].test)
    assert test and all(set(f.test) == test for f in folds)
    assert all(test.isdisjoint(f.train) and test.isdisjoint(f.val) for f in folds)
    assert set().union(*(set(f.val) for f in folds)) | test == {s.study_id for s in big_index.studies}


def test_split_save_load_and_check(big_index, tmp_path):
    split = make_split(big_index, seed=7)
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded == split and loaded.fingerprint() == split.fingerprint()
    loaded.check_matches(big_index)
    assert make_split(big_index, seed=8).fingerprint() != split.fingerprint()


def test_split_detects_another_or_changed_dataset(tmp_path):
    root = make_mosmed(tmp_path / "ds", {"CT-0": 4, "CT-1": 4})
    index = DatasetIndex.from_folder(root)
    split = make_split(index)

    other = DatasetIndex.from_folder(make_mosmed(tmp_path / "other", {"CT-0": 3}))
    renamed = DatasetIndex([Study(f"x_{s.study_id}", s.path, s.label) for s in other.studies], source="other")
    with pytest.raises(DatasetError, match=r"references 8 studies not in other"):
        split.check_matches(renamed)
    with pytest.raises(DatasetError, match="study_0001"):
        split.subset(renamed, "train")

    with open(index.studies[0].path, "ab") as f:
        f.write(b"changed")
    with pytest.raises(DatasetError, match="fingerprint .* differs"):
        split.check_matches(DatasetIndex.from_folder(root))


def test_split_rejects_overlap_and_bad_files(tmp_path):
    with pytest.raises(DatasetError, match="'a' is in both train and test"):
        Split(["a"], [], ["a"], seed=0, fractions=(0.5, 0.0, 0.5), dataset_fingerprint="x")
    (tmp_path / "bad.json").write_text('{"train": []}')
    with pytest.raises(DatasetError, match="bad.json"):
        Split.load(tmp_path / "bad.json")
    with pytest.raises(DatasetError, match="no such split file"):
        Split.load(tmp_path / "missing.json")


# --- tasks -----------------------------------------------------------------------------------------


def test_predefined_tasks():
    severity = TaskDefinition.from_name("severity")
    assert severity.class_names == CLASS_NAMES and severity.label_index("CT-3") == 3
    binary = TaskDefinition.from_name("Binary")
    assert binary.class_names == ("CT-0", "CT-1..4") and binary.num_classes == 2
    assert [binary.label_index(c) for c in CLASS_NAMES] == [0, 1, 1, 1, 1]


def test_task_from_groups_and_round_trip():
    task = TaskDefinition.from_name("CT-0|CT-1,CT-2|CT-3,CT-4")
    assert task.name == "CT-0|CT-1,CT-2|CT-3,CT-4"
    assert task.class_names == ("CT-0", "CT-1..2", "CT-3..4")
    assert [task.label_index(c) for c in CLASS_NAMES] == [0, 1, 1, 2, 2]
    assert TaskDefinition.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    mixed = TaskDefinition.from_groups("CT-2,CT-0|CT-1,CT-3,CT-4")
    assert mixed.class_names == ("CT-0+CT-2", "CT-1+CT-3+CT-4")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("CT-0|CT-1,CT-2,CT-3,CT-9", "unknown class 'CT-9'"),
        ("CT-0|CT-1,CT-2", "CT-3, CT-4 are in no group"),
        ("CT-0,CT-1|CT-1,CT-2,CT-3,CT-4", "CT-1 is in more than one group"),
        ("CT-0,CT-1,CT-2,CT-3,CT-4", "at least two"),
        ("nonsense", "unknown class 'nonsense'|at least two"),
    ],
)
def test_task_errors(spec, message):
    with pytest.raises(DatasetError, match=message):
        TaskDefinition.from_name(spec)


def test_label_index_rejects_unknown_label():
    with pytest.raises(DatasetError, match="covid"):
        TaskDefinition.severity().label_index("covid")
