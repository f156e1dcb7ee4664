"""Training data checked up front: one image never under two study ids, a checkpoint resumed only on the
data it was made on, and every path of `train` and `evaluate` checked before any work. Real phantom
files, real CSV datasets, real (tiny) training runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from helpers import TINY_TRAIN_ARGS, StopAfter
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.data.cache import PreprocessedCache
from TwoFiveCNNLib.data.index import DatasetIndex
from TwoFiveCNNLib.data.splits import Split, make_split
from TwoFiveCNNLib.io.model_file import CHECKPOINT_FORMAT, save_archive
from TwoFiveCNNLib.io.progress import ProgressReporter
from TwoFiveCNNLib.io.volume import read_volume, write_volume
from TwoFiveCNNLib.networks.backbones import build_backbone
from TwoFiveCNNLib.training.checkpoint import Checkpoint
from TwoFiveCNNLib.training.config import TrainConfig
from TwoFiveCNNLib.training.run import train
from TwoFiveCNNLib.transforms.preprocess import PreprocessConfig

TINY_CONFIG = TrainConfig(preprocess=PreprocessConfig(in_plane=48, n_slices=12), stage1_epochs=2,
                          stage2_epochs=2, stage2_views=2, lesion_epochs=0)


def studies_of(phantom_cohort: Path, label: str) -> list[Path]:
    return sorted((phantom_cohort / "studies" / label).iterdir())


def write_csv(path: Path, rows: list[tuple[Path, str, str]]) -> Path:
    """A ``path,label,study_id`` dataset file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label,study_id\n" + "".join(f"{p},{label},{sid}\n" for p, label, sid in rows),
                    encoding="utf-8")
    return path


def normal_rows(phantom_cohort: Path) -> list[tuple[Path, str, str]]:
    """The three CT-0 phantoms: the smallest dataset a split (one study each for train, val, test) holds."""
    return [(p, "CT-0", p.name.split(".")[0]) for p in studies_of(phantom_cohort, "CT-0")]


def two_class_rows(phantom_cohort: Path) -> list[tuple[Path, str, str]]:
    """The CT-0 and CT-1 phantoms: a dataset a (tiny) training run completes on."""
    return [(p, label, p.name.split(".")[0]) for label in ("CT-0", "CT-1") for p in studies_of(phantom_cohort, label)]


def resaved(study: Path, out: Path) -> Path:
    """The same voxels in another file: another format, so other bytes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.ReadImage(str(study)), str(out))
    assert out.read_bytes() != study.read_bytes()
    return out


def refused(capsys, argv: list[str], *words: str) -> str:
    """Run the command line; it must refuse (rc 2, no traceback) with a message holding every word."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


# ------------------------------------------------------------------------------- one image, two studies


def test_one_file_under_two_ids_is_refused_by_index_train_and_evaluate(phantom_cohort, tmp_path, capsys):
    study = studies_of(phantom_cohort, "CT-0")[0]
    data = write_csv(tmp_path / "data.csv", [*normal_rows(phantom_cohort), (study, "CT-4", "patient_b")])
    words = (str(study), "study_0001", "patient_b", "CT-0", "CT-4")
    refused(capsys, ["index", str(data)], *words)
    refused(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--cache",
                     str(tmp_path / "cache"), *TINY_TRAIN_ARGS], *words)
    refused(capsys, ["evaluate", "--data", str(data), "--subset", "all", "--cache", str(tmp_path / "cache")], *words)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("v*/*.npz")), "refused before work"
    # Through a symbolic link, it is still one file.
    (tmp_path / "link.nii.gz").symlink_to(study)
    linked = write_csv(tmp_path / "linked.csv", [*normal_rows(phantom_cohort),
                                                 (tmp_path / "link.nii.gz", "CT-4", "patient_b")])
    refused(capsys, ["index", str(linked)], "study_0001", "patient_b")


def test_a_copy_of_a_study_is_refused_before_any_study_is_read(phantom_cohort, tmp_path, capsys):
    study = studies_of(phantom_cohort, "CT-0")[0]
    copy = tmp_path / "elsewhere" / "patient_b.nii.gz"
    copy.parent.mkdir()
    shutil.copyfile(study, copy)
    data = write_csv(tmp_path / "data.csv", [*normal_rows(phantom_cohort), (copy, "CT-4", "patient_b")])
    refused(capsys, ["index", str(data)], "byte-for-byte copy", "study_0001", "patient_b", "CT-0", "CT-4")
    # Across datasets trained together: the copy as a train-only study of the same patient.
    extra = write_csv(tmp_path / "extra.csv", [(copy, "CT-0", "synth_b")])
    refused(capsys, ["train", "--data", str(write_csv(tmp_path / "clean.csv", normal_rows(phantom_cohort))),
                     "--train-only", str(extra), "--out", str(tmp_path / "m.pt"), "--cache", str(tmp_path / "cache"),
                     *TINY_TRAIN_ARGS], "byte-for-byte copy", "synth_b")
    # Or scored as a held-out study, which it is not.
    held = write_csv(tmp_path / "held.csv", [(copy, "CT-4", "held_b")])
    refused(capsys, ["train", "--data", str(tmp_path / "clean.csv"), "--held-out", str(held), "--out",
                     str(tmp_path / "m.pt"), "--cache", str(tmp_path / "cache"), *TINY_TRAIN_ARGS],
            "byte-for-byte copy", "held_b")
    assert not any((tmp_path / "cache").glob("v*/*.npz")), "refused before any study was preprocessed"


def test_the_same_voxels_in_another_file_are_refused_by_index_train_and_evaluate(phantom_cohort, tmp_path, capsys):
    study = studies_of(phantom_cohort, "CT-0")[0]
    again = resaved(study, tmp_path / "other" / "patient_b.nrrd")
    data = write_csv(tmp_path / "data.csv", [*normal_rows(phantom_cohort), (again, "CT-4", "patient_b")])
    cache = str(tmp_path / "cache")
    # index compares files by default (cheap on a big folder); --read-images compares the voxels.
    assert main(["index", str(data), "--cache", cache]) == 0
    assert "voxels not compared" in capsys.readouterr().out
    words = ("same image", str(again), "study_0001", "patient_b", "CT-0", "CT-4")
    refused(capsys, ["index", str(data), "--read-images", "--cache", cache], *words)
    refused(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--cache", cache,
                     *TINY_TRAIN_ARGS], *words)
    assert not (tmp_path / "m.pt").exists() and not (tmp_path / "m.pt.ckpt").exists()
    small = write_csv(tmp_path / "small.csv", [(study, "CT-0", "study_0001"), (again, "CT-4", "patient_b")])
    refused(capsys, ["evaluate", "--data", str(small), "--subset", "all", "--cache", cache], *words)


def test_voxel_hashes_are_recorded_once_and_old_cache_entries_still_work(phantom_cohort, tmp_path):
    study = studies_of(phantom_cohort, "CT-0")[0]
    again = resaved(study, tmp_path / "again.nrrd")
    cache = PreprocessedCache(tmp_path / "cache")
    cache.get_study(study, TINY_CONFIG.preprocess)
    records = list((tmp_path / "cache").glob("voxels-*/*.sha256"))
    assert len(records) == 1, "preprocessing records the voxel hash of what it read"
    assert cache.image_hash(again) == cache.image_hash(study)
    assert cache.image_hash(studies_of(phantom_cohort, "CT-0")[1]) != cache.image_hash(study)
    # An entry from before the records (or a damaged record): the study is read again, the entry still hits.
    for record in (tmp_path / "cache").glob("voxels-*/*.sha256"):
        record.write_text("garbage")
    hits = cache.hits
    cache.get_study(study, TINY_CONFIG.preprocess)
    assert cache.hits == hits + 1
    assert cache.image_hash(study) == cache.image_hash(again)


def test_hidden_files_are_skipped_in_folders_and_csv_files(phantom_cohort, tmp_path, capsys):
    folder = tmp_path / "folder"
    shutil.copytree(phantom_cohort, folder)
    apple_double = b"\x00\x05\x16\x07" + bytes(60)  # what macOS writes beside a copy: no image
    (folder / "studies" / "CT-0" / "._study_0001.nii.gz").write_bytes(apple_double)
    (folder / "studies" / "CT-0" / ".study_0099.nii.gz").write_bytes(apple_double)
    assert len(DatasetIndex.load(folder)) == 15
    rows = normal_rows(folder)
    data = write_csv(tmp_path / "data.csv", [*[r for r in rows if not r[0].name.startswith(".")],
                                             (folder / "studies" / "CT-0" / "._study_0001.nii.gz", "CT-0", "")])
    index = DatasetIndex.load(data)
    assert [s.study_id for s in index.studies] == ["study_0001", "study_0002", "study_0003"]
    assert main(["index", str(data)]) == 0
    assert "skipped 1 hidden file" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- resume


def test_resume_on_other_data_or_another_split_is_refused(phantom_cohort, cache_dir, tmp_path):
    cache = PreprocessedCache(cache_dir)
    rows = two_class_rows(phantom_cohort)
    edited = resaved(rows[-1][0], tmp_path / "study_0006.nii")  # uncompressed: edits keep its size
    rows[-1] = (edited, "CT-1", "study_0006")
    data = write_csv(tmp_path / "data.csv", rows)
    out = tmp_path / "m.pt"
    with pytest.raises(KeyboardInterrupt):
        train(data, out, TINY_CONFIG, StopAfter(1), cache, split_path=tmp_path / "first.json")
    checkpoint = Path(str(out) + ".ckpt")
    assert checkpoint.exists()
    quiet = ProgressReporter(quiet=True)
    # Another dataset (one study fewer), with a split of its own: the checkpoint was not made on it.
    other = write_csv(tmp_path / "other.csv", rows[:-1])
    with pytest.raises(ValueError, match="made on other data: the dataset") as error:
        train(other, out, TINY_CONFIG, quiet, cache, split_path=tmp_path / "other.json", resume=True)
    assert str(checkpoint) in str(error.value) and "without --resume" in str(error.value)
    # The same dataset under another split: its validation studies trained in the checkpoint's stage 1.
    second = make_split(DatasetIndex.load(data), TINY_CONFIG.fractions, seed=5)
    assert second.fingerprint() != Split.load(tmp_path / "first.json").fingerprint()
    second.save(tmp_path / "second.json")
    with pytest.raises(ValueError, match="made on other data: the split"):
        train(data, out, TINY_CONFIG, quiet, cache, split_path=tmp_path / "second.json", resume=True)
    assert checkpoint.exists(), "a refused resume keeps the checkpoint"
    # A study replaced by another image of the same size: the same ids, labels and sizes, other data.
    original = edited.read_bytes()
    image = sitk.ReadImage(str(edited))
    sitk.WriteImage(sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[::-1].copy()), str(edited))
    assert edited.stat().st_size == len(original) and edited.read_bytes() != original
    with pytest.raises(ValueError, match="made on other data: the studies' files"):
        train(data, out, TINY_CONFIG, quiet, cache, split_path=tmp_path / "first.json", resume=True)
    edited.write_bytes(original)
    # On its own data, the run resumes into the outputs it recorded, and removes its checkpoint at the end.
    from TwoFiveCNNLib.io.manifest import OutputManifest

    assert OutputManifest.open(tmp_path, "train").owns(checkpoint)
    model = train(data, out, TINY_CONFIG, quiet, cache, split_path=tmp_path / "first.json", resume=True)
    assert out.exists() and not checkpoint.exists() and model.metadata["split"]["train"]


def test_a_checkpoint_that_records_no_dataset_is_not_resumed(tmp_path):
    path = tmp_path / "run.pt.ckpt"
    save_archive(path, CHECKPOINT_FORMAT, {"w": torch.zeros(1)},
                 {"stage": "stage1", "epoch": 1, "history": [], "config": TINY_CONFIG.to_dict()})
    data = {"dataset_fingerprint": "a", "split_fingerprint": "b", "train_only_fingerprint": None}
    with pytest.raises(ValueError, match="does not record the dataset"):
        Checkpoint(path, TINY_CONFIG, data).load()


# ------------------------------------------------------------------------- every path before any work


def no_work_done(cache: Path) -> bool:
    """Nothing preprocessed: the cache holds no entry."""
    return not any(cache.glob("v*/*.npz"))


def masked_cohort(phantom_cohort: Path, root: Path) -> tuple[Path, Path]:
    """A MosMed-style folder of the CT-0 and CT-1 phantoms with lesion and lung masks beside it (masks/), as
    `synth` lays them out: lungs 1 right, 2 left (here: by side of the image), the lesion inside them."""
    data = root / "data"
    masks = data / "masks"
    for study, label, _ in two_class_rows(phantom_cohort):
        (data / "studies" / label).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(study, data / "studies" / label / study.name)
        volume = read_volume(study)
        lungs = (volume.array < -400).astype(np.uint8)  # the air, lungs or not: a lung mask of the right kind
        lungs[:, :, lungs.shape[2] // 2:] *= 2
        lesion = np.zeros_like(lungs)
        lesion[lungs > 0] = np.arange(int((lungs > 0).sum())) % 7 == 0
        name = study.name.split(".")[0]
        for suffix, mask in (("_lesion", lesion), ("_lungs", lungs)):
            write_volume(volume.to_original(mask), volume.geometry, masks / f"{name}{suffix}.nii.gz")
    return data, masks


def rewrite_mask(path: Path, change) -> None:
    """Rewrite a mask with ``change(array)`` applied, on its own grid."""
    image = sitk.ReadImage(str(path))
    array = change(sitk.GetArrayFromImage(image).copy())
    changed = sitk.GetImageFromArray(array)
    changed.CopyInformation(image)
    sitk.WriteImage(changed, str(path))


@pytest.mark.parametrize(("case", "words"), [
    ("label 5 in the lesion mask", ("study_0001_lesion.nii.gz", "label(s) 5", "0 background, 1 lesion")),
    ("lungs labelled 255", ("study_0001_lungs.nii.gz", "label(s) 255", "1 right lung, 2 left lung")),
    ("lesion mask all ones", ("study_0001_lesion.nii.gz", "outside its lung mask")),
    ("lung mask all ones", ("study_0001_lungs.nii.gz", "covers the whole image")),
    ("lung mask on another grid", ("study_0001_lungs.nii.gz", "grid differs")),
    ("no lung mask", ("study_0001_lungs.nii.gz", "no lungs mask")),
])
def test_evaluate_refuses_bad_masks_before_any_work(phantom_cohort, tmp_path, capsys, case, words):
    data, masks = masked_cohort(phantom_cohort, tmp_path)
    lesion, lungs = masks / "study_0001_lesion.nii.gz", masks / "study_0001_lungs.nii.gz"
    if case == "label 5 in the lesion mask":
        rewrite_mask(lesion, lambda a: np.where(a > 0, 5, 0).astype(a.dtype))
    elif case == "lungs labelled 255":
        rewrite_mask(lungs, lambda a: np.where(a > 0, 255, 0).astype(a.dtype))
    elif case == "lesion mask all ones":
        rewrite_mask(lesion, np.ones_like)
    elif case == "lung mask all ones":
        rewrite_mask(lungs, np.ones_like)
    elif case == "lung mask on another grid":
        sitk.WriteImage(sitk.ReadImage(str(lungs))[:, :, 1:], str(lungs))
    else:
        lungs.unlink()
    cache = tmp_path / "cache"
    report = tmp_path / "report.json"
    refused(capsys, ["evaluate", "--data", str(data), "--masks", str(masks), "--subset", "all", "--cache", str(cache),
                     "--json", str(report)], *words)
    assert no_work_done(cache) and not report.exists()


def test_the_masks_as_synth_labels_them_are_accepted(phantom_cohort, tmp_path):
    from TwoFiveCNNLib.data.masks import check_masks

    data, masks = masked_cohort(phantom_cohort, tmp_path)
    assert check_masks(DatasetIndex.load(data).studies, masks) == 6
    assert check_masks(DatasetIndex.load(data).studies) == 6, "found beside the studies (ROOT/masks)"


def test_evaluate_checks_every_output_path_before_any_work(phantom_cohort, tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", normal_rows(phantom_cohort))
    cache = tmp_path / "cache"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    evaluate = ["evaluate", "--data", str(data), "--subset", "all", "--cache", str(cache)]
    refused(capsys, [*evaluate, "--masks", str(tmp_path / "no_such_masks")], "no_such_masks", "no such folder")
    refused(capsys, [*evaluate, "--json", str(blocker / "report.json")], "cannot write to the output folder")
    refused(capsys, [*evaluate, "--confusion", str(blocker / "matrix.png")], "cannot write to the output folder")
    refused(capsys, [*evaluate, "--confusion", str(tmp_path / "matrix.json")], "matrix.json", ".png")
    refused(capsys, [*evaluate, "--json", str(tmp_path / "x.png"), "--confusion", str(tmp_path / "x.png")], "one file")
    refused(capsys, [*evaluate, "--cache", str(blocker)], "a_file")
    assert no_work_done(cache)


def test_train_checks_every_path_before_any_work(phantom_cohort, tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", two_class_rows(phantom_cohort))
    cache = tmp_path / "cache"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    train_args = ["train", "--data", str(data), "--cache", str(cache), *TINY_TRAIN_ARGS]
    out = ["--out", str(tmp_path / "m.pt")]
    refused(capsys, [*train_args, *out, "--held-out", str(tmp_path / "no_such_folder")], "no_such_folder")
    refused(capsys, [*train_args, *out, "--train-only", str(tmp_path / "none.csv")], "none.csv")
    refused(capsys, [*train_args, *out, "--pretrained", str(tmp_path / "none.pt")], "none.pt")
    refused(capsys, [*train_args, "--out", str(blocker / "m.pt")], "cannot write to the output folder")
    refused(capsys, [*train_args, *out, "--split", str(blocker / "split.json")], "cannot write to the output folder")
    refused(capsys, [*train_args, *out, "--split", str(tmp_path / "m.pt")], "m.pt", "one file")
    refused(capsys, ["train", "--data", str(data), "--cache", str(blocker), *TINY_TRAIN_ARGS, *out], "a_file")
    assert no_work_done(cache) and not (tmp_path / "m.pt.ckpt").exists()


@pytest.mark.parametrize("case", ["labels", "half a pair"])
def test_train_refuses_bad_masks_beside_its_studies_before_any_work(phantom_cohort, tmp_path, capsys, case):
    data, masks = masked_cohort(phantom_cohort, tmp_path)
    if case == "labels":
        rewrite_mask(masks / "study_0002_lungs.nii.gz", lambda a: (a * 3).astype(a.dtype))
        words = ("study_0002_lungs.nii.gz", "label(s) 3, 6")
    else:
        (masks / "study_0002_lesion.nii.gz").unlink()
        words = ("study_0002_lesion.nii.gz", "missing", "in pairs")
    cache = tmp_path / "cache"
    refused(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "m.pt"), "--cache", str(cache),
                     *TINY_TRAIN_ARGS], *words)
    assert no_work_done(cache)
    assert not (tmp_path / ".twofivecnn-manifest.json").exists(), "a refused run records no output as its own"


# ------------------------------------------------------------------------------------- output ownership


def test_train_replaces_only_what_it_wrote_and_never_an_input(phantom_cohort, tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", two_class_rows(phantom_cohort))
    cache = tmp_path / "cache"
    train_args = ["train", "--data", str(data), "--cache", str(cache), *TINY_TRAIN_ARGS]
    mine = tmp_path / "model.pt"
    mine.write_bytes(b"the user's own model")
    refused(capsys, [*train_args, "--out", str(mine)], str(mine), "did not write it")
    assert mine.read_bytes() == b"the user's own model"
    # A checkpoint of the name train would write, which train did not write: refused too, and kept.
    checkpoint = tmp_path / "other.pt.ckpt"
    checkpoint.write_bytes(b"someone's")
    refused(capsys, [*train_args, "--out", str(tmp_path / "other.pt"), "--resume"], str(checkpoint), "did not write")
    assert checkpoint.read_bytes() == b"someone's"
    # Outputs that are inputs.
    refused(capsys, [*train_args, "--out", str(data)], "data.csv", "also an input")
    pretrained = tmp_path / "backbone.pt"
    torch.save(build_backbone("compact_resnet").state_dict(), pretrained)
    weights = pretrained.read_bytes()
    refused(capsys, [*train_args, "--out", str(pretrained), "--pretrained", str(pretrained)], "also an input")
    assert pretrained.read_bytes() == weights and no_work_done(cache)


def test_evaluate_reports_replace_only_what_evaluate_wrote(phantom_cohort, cache_dir, tmp_path, capsys):
    study = studies_of(phantom_cohort, "CT-0")[0]
    data = write_csv(tmp_path / "data.csv", [(study, "CT-0", "study_0001"),
                                             (studies_of(phantom_cohort, "CT-4")[0], "CT-4", "study_0013")])
    cache = str(cache_dir)
    notes = tmp_path / "notes.json"
    notes.write_text("the user's notes")
    evaluate = ["evaluate", "--data", str(data), "--subset", "all", "--cache", cache]
    refused(capsys, [*evaluate, "--json", str(notes)], str(notes), "did not write it")
    assert notes.read_text() == "the user's notes"
    refused(capsys, [*evaluate, "--json", str(data)], "also an input")
    refused(capsys, [*evaluate, "--confusion", str(study.with_name("x.png")), "--json", str(study)], "also an input")
    report, picture = tmp_path / "out" / "report.json", tmp_path / "out" / "matrix.png"
    for _ in range(2):  # a re-run into its own reports
        assert main([*evaluate, "--json", str(report), "--confusion", str(picture)]) == 0
        assert report.stat().st_size > 0 and picture.read_bytes().startswith(b"\x89PNG")


def test_training_studies_of_one_class_are_refused_naming_the_data(tmp_path, capsys):
    """Three CT-0 studies leave one to train on: refused in words, not a NaN in the metrics."""
    from TwoFiveCNNLib.data.phantoms import write_cohort

    write_cohort(tmp_path / "ct0", [3, 0, 0, 0, 0], seed=3)
    assert main(["train", "--data", str(tmp_path / "ct0"), "--out", str(tmp_path / "m.pt"), "--cache",
                 str(tmp_path / "cache"), *TINY_TRAIN_ARGS]) == 2
    error = capsys.readouterr().err
    assert "ct0: the split leaves 1 training study of 1 class (CT-0)" in error and "NaN" not in error
    assert not (tmp_path / "m.pt").exists()
