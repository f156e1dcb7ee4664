"""Patient-level splits: a study names its patient (CSV column, DICOM PatientID, synth's base), and no
split, fold, train-only set or validation puts one patient on two sides. Real files written and read back.

What must stay true: no patient is in two subsets (several seeds, k-fold, a fixed test set); the split
file records the patients and refuses others; an older split file (no patients) still loads; a synth
cohort's base is the patient of all its studies; ``index`` reports patients per class.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY_TRAIN_ARGS, make_mosmed, write_dicom_series, write_study
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.data.index import DatasetError, DatasetIndex
from TwoFiveCNNLib.data.splits import Split, make_kfold, make_split

PATIENTS, STUDIES_PER_PATIENT = 12, 4


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def patient_csv(tmp_path_factory) -> Path:
    """12 patients of 4 studies each (follow-ups: grades drawn per study), listed by a CSV."""
    root = tmp_path_factory.mktemp("patients")
    rng = np.random.default_rng(0)
    rows = []
    for patient in range(PATIENTS):
        for visit in range(STUDIES_PER_PATIENT):
            path = write_study(root / "files" / f"p{patient:02d}_v{visit}.nii.gz", seed=patient * 10 + visit)
            rows.append({"path": path.relative_to(root).as_posix(), "label": f"CT-{int(rng.integers(0, 3))}",
                         "patient": f"P{patient:02d}"})
    return write_csv(root / "dataset.csv", rows)


def subset_of_patients(index: DatasetIndex, split: Split) -> dict[str, set[str]]:
    """Each patient's subsets under ``split``."""
    patient = {s.study_id: s.patient_id for s in index.studies}
    found: dict[str, set[str]] = {}
    for name in ("train", "val", "test"):
        for study_id in getattr(split, name):
            found.setdefault(patient[study_id], set()).add(name)
    return found


def test_a_csv_names_patients_and_no_split_puts_one_in_two_subsets(patient_csv, tmp_path):
    index = DatasetIndex.load(patient_csv)
    assert len(index.patients()) == PATIENTS
    assert all(len(studies) == STUDIES_PER_PATIENT for studies in index.patients().values())
    for seed in range(6):
        split = make_split(index, seed=seed)
        subsets = subset_of_patients(index, split)
        assert all(len(names) == 1 for names in subsets.values()), subsets
        assert len(subsets) == PATIENTS and split.train and split.val and split.test
        assert split.patients == {s.study_id: s.patient for s in index.studies}
    for test_fraction in (0.0, 0.2):
        folds = make_kfold(index, k=4, seed=1, test_fraction=test_fraction)
        validated = [subset_of_patients(index, fold) for fold in folds]
        for fold in validated:
            assert all(len(names) == 1 for names in fold.values())
        # every patient outside the fixed test set validates in exactly one fold
        in_val = [p for fold in validated for p, names in fold.items() if names == {"val"}]
        in_test = {p for p, names in validated[0].items() if names == {"test"}}
        assert sorted(in_val) == sorted(set(in_val)) and set(in_val) | in_test == set(index.patients())
        assert bool(in_test) == (test_fraction > 0)


def test_the_split_file_records_patients_and_refuses_others(patient_csv, tmp_path):
    index = DatasetIndex.load(patient_csv)
    split = make_split(index, seed=2)
    split.save(tmp_path / "split.json")
    loaded = Split.load(tmp_path / "split.json")
    assert loaded == split and loaded.fingerprint() == split.fingerprint()
    loaded.check_matches(index)
    # train --resume compares this fingerprint: the same studies kept together for other patients differ.
    assert replace(split, patients={}).fingerprint() != split.fingerprint()
    # The same subsets for other patients: another split, refused where it is applied.
    regrouped = [{**row, "patient": "one"}
                 for row in csv.DictReader(patient_csv.read_text(encoding="utf-8").splitlines())]
    other = DatasetIndex.load(write_csv(patient_csv.with_name("regrouped.csv"), regrouped))
    with pytest.raises(DatasetError, match="made for other patients"):
        loaded.check_matches(other)
    # A patient in two subsets is refused, naming it.
    patient = split.patients[split.train[0]]
    with pytest.raises(DatasetError, match=f"patient '{patient}' is in both train"):
        Split([sid for sid in split.train if sid != split.train[0]], split.val, [*split.test, split.train[0]],
              seed=0, fractions=split.fractions, dataset_fingerprint="x", patients=split.patients)


def test_an_older_split_file_without_patients_still_loads(patient_csv, tmp_path):
    index = DatasetIndex.load(patient_csv)
    split = make_split(index, seed=3)
    older = split.to_dict()
    del older["patients"]
    (tmp_path / "older.json").write_text(json.dumps(older), encoding="utf-8")
    loaded = Split.load(tmp_path / "older.json")
    assert loaded.patients == {} and loaded.train == split.train
    loaded.check_matches(index)  # it keeps every patient in one subset: accepted as it is
    # One that spreads a patient over two subsets (as study-level splits did) is refused, saying why.
    older["test"], older["train"] = [*older["test"], older["train"][0]], older["train"][1:]
    (tmp_path / "spread.json").write_text(json.dumps(older), encoding="utf-8")
    with pytest.raises(DatasetError, match="made without patients .* is in both train .* and test"):
        Split.load(tmp_path / "spread.json").check_matches(index)


def test_dicom_patient_id_is_the_patient(tmp_path):
    """Two series of one PatientID ("TEST", as conftest writes it) are one patient; a CSV's column wins."""
    root = make_mosmed(tmp_path / "ds", {"CT-0": 3, "CT-1": 3})
    values = np.full((3, 8, 8), 1000, dtype=np.uint16)
    write_dicom_series(root / "studies" / "CT-0" / "series_a", values, -1024.0, 1.0)
    write_dicom_series(root / "studies" / "CT-1" / "series_b", values, -1024.0, 1.0)
    index = DatasetIndex.load(root)
    by_id = {s.study_id: s for s in index.studies}
    assert by_id["series_a"].patient == by_id["series_b"].patient == "TEST"
    assert by_id["study_0001"].patient == "" and by_id["study_0001"].patient_id == "study_0001"
    subsets = subset_of_patients(index, make_split(index, seed=0))
    assert subsets["TEST"] in ({"train"}, {"val"}, {"test"})
    listed = write_csv(tmp_path / "list.csv", [
        {"path": "ds/studies/CT-0/series_a", "label": "CT-0", "patient": ""},
        {"path": "ds/studies/CT-1/series_b", "label": "CT-1", "patient": "named"}])
    assert [s.patient for s in DatasetIndex.load(listed).studies] == ["TEST", "named"]


def test_a_synth_cohorts_base_is_its_patient(chest_ct_path, phantom_cohort, tmp_path):
    out = tmp_path / "synth"
    assert main(["synth", "--base", str(chest_ct_path), "--out", str(out), "--counts", "1,1,1,1,1",
                 "--seed", "5", "--prefix", "rs"]) == 0
    summary = json.loads((out / "synth.json").read_text(encoding="utf-8"))
    assert {record["patient"] for record in summary["studies"]} == {"CTChest4"}
    assert {s.patient for s in DatasetIndex.load(out).studies} == {"CTChest4"}
    # A cohort made before synth recorded patients: its base names the same patient.
    for record in summary["studies"]:
        del record["patient"]
    (out / "synth.json").write_text(json.dumps(summary), encoding="utf-8")
    together = DatasetIndex.load_all([phantom_cohort, out])
    assert {s.patient_id for s in together.studies if s.study_id.startswith("rs_")} == {"CTChest4"}
    for seed in range(3):
        assert len(subset_of_patients(together, make_split(together, seed=seed))["CTChest4"]) == 1


def test_index_reports_patients_per_class_and_warns(patient_csv, tmp_path, capsys):
    assert main(["index", str(patient_csv), "--split", str(tmp_path / "split.json"), "--cache",
                 str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out
    index = DatasetIndex.load(patient_csv)
    assert f"{len(index)} studies of {PATIENTS} patients" in printed
    for name, count in index.patient_counts().items():
        assert f"{name}: {index.counts()[name]} studies of {count} patients" in printed
    assert "patient(s), fewer than" not in printed and " patients -> " in printed
    assert main(["index", str(patient_csv), "--folds", str(PATIENTS + 1), "--cache", str(tmp_path / "cache")]) == 0
    warned = capsys.readouterr().out
    assert f"fewer than the {PATIENTS + 1} subsets" in warned


def test_train_only_studies_of_a_patient_in_the_split_are_refused(patient_csv, tmp_path, capsys):
    extra = write_csv(tmp_path / "extra.csv", [{"path": str(write_study(tmp_path / "extra.nii.gz", seed=99)),
                                                "label": "CT-1", "patient": "P03"}])
    code = main(["train", "--data", str(patient_csv), "--train-only", str(extra), "--out", str(tmp_path / "m.pt"),
                 "--cache", str(tmp_path / "cache"), *TINY_TRAIN_ARGS])
    assert code != 0 and not (tmp_path / "m.pt").exists()
    message = capsys.readouterr().err
    assert "patient 'P03'" in message and "extra.nii.gz" in message and "--data instead" in message


def test_validation_held_out_of_train_only_studies_is_other_patients(patient_csv):
    from TwoFiveCNNLib.training.run import hold_out_patients

    studies = DatasetIndex.load(patient_csv).studies
    train, val = hold_out_patients(studies)
    assert {s.patient_id for s in train}.isdisjoint(s.patient_id for s in val)
    assert val and len(train) + len(val) == len(studies)
