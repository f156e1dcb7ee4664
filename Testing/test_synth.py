"""``twofivecnn synth``: lesions inserted into slicerio's real chest CT, written and read back as files.

What must stay true: the same seed gives the same bytes; the masks lie on their study in every stored
orientation; involvement falls in each grade's MosMed range; no mask lies where a dataset index would
take it for a study; bad arguments are refused with a message naming them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from TwoFiveCNNLib.app.cli import main
from TwoFiveCNNLib.data.index import DatasetIndex
from TwoFiveCNNLib.data.synth import (
    INVOLVEMENT_RANGES,
    ORIENTATIONS,
    load_base,
    synthesize_study,
    write_synth_cohort,
)
from TwoFiveCNNLib.io.volume import read_volume, write_volume
from TwoFiveCNNLib.transforms.lungs import LEFT_LUNG, RIGHT_LUNG, segment_lungs

# MosMed's ranges of the involved share of the lungs, per grade (CT-0: none).
MOSMED_RANGES = ((0.0, 0.0), (0.05, 0.25), (0.25, 0.50), (0.50, 0.75), (0.75, 1.0))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def base(chest_ct_path: Path):
    return load_base(chest_ct_path)


@pytest.fixture(scope="module")
def cohort(chest_ct_path: Path, tmp_path_factory) -> Path:
    """One study per grade, made by the command line with two worker processes."""
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", "--base", str(chest_ct_path), "--out", str(out), "--counts", "1,1,1,1,1",
                 "--seed", "3", "--workers", "2"]) == 0
    return out


def test_same_seed_same_bytes_another_seed_other_studies(cohort, chest_ct_path, tmp_path):
    # The base given as a folder (as a user's own normal CTs would be), made in this process alone,
    # gives the same cohort as two workers did.
    folder = tmp_path / "bases"
    folder.mkdir()
    shutil.copy(chest_ct_path, folder / chest_ct_path.name)
    again = write_synth_cohort([folder], tmp_path / "again", [1, 1, 1, 1, 1], seed=3)
    assert len(again) == 5
    first, second = files_under(cohort), files_under(tmp_path / "again")
    assert len(first) == 15 and first == second  # 5 studies, 5 lesion masks, 5 lung masks
    write_synth_cohort([chest_ct_path], tmp_path / "other", [1, 1, 1, 1, 1], seed=4)
    other = files_under(tmp_path / "other")
    assert sorted(other) == sorted(first)
    assert all(other[name] != first[name] for name in first if name.startswith("studies/"))


def test_masks_lie_on_their_study_in_every_orientation(base, tmp_path):
    canonical = {}
    for orientation, flips_kji in ORIENTATIONS.items():
        study = synthesize_study(base, 2, seed=11, orientation=orientation)
        free = synthesize_study(base, 2, seed=11, orientation=orientation, insert_lesions=False)
        paths = {name: write_volume(array, study.geometry, tmp_path / f"{orientation}_{name}.nii.gz")
                 for name, array in (("study", study.array_kji), ("lesion", study.lesion_kji),
                                     ("lungs", study.lungs_kji), ("free", free.array_kji))}
        volumes = {name: read_volume(path) for name, path in paths.items()}
        geometries = {volume.geometry for volume in volumes.values()}
        assert len(geometries) == 1  # same size, spacing, origin and direction
        geometry = geometries.pop()
        assert np.diag(geometry.direction_matrix).tolist() == [-1.0 if f else 1.0 for f in flips_kji[::-1]]
        assert volumes["study"].array.dtype == np.int16 and volumes["lesion"].array.dtype == np.uint8

        hu, free_hu = volumes["study"].array, volumes["free"].array
        lesion, lungs = volumes["lesion"].array > 0, volumes["lungs"].array
        assert set(np.unique(lungs)) == {0, RIGHT_LUNG, LEFT_LUNG}
        assert lesion.any() and not (lesion & (lungs == 0)).any()
        # The lesion changes the study where it lies and, for its blended edge, a voxel or two around.
        changed = hu != free_hu
        assert changed[lesion].mean() > 0.8
        near = ndimage.binary_dilation(lesion, structure=np.ones((3, 5, 5), dtype=bool))
        assert not (changed & ~near).any()
        # The lung mask is where TwoFiveCNN's own segmentation finds the lungs of the lesion-free study,
        # right on the right (a flipped mask would swap them), and most of the lesion lies on the lungs
        # it finds in the study itself (dense lesions at the lung's edge may escape it: README).
        found = segment_lungs(free_hu, volumes["free"].spacing_zyx)
        for side in (RIGHT_LUNG, LEFT_LUNG):
            assert dice(found == side, lungs == side) > 0.9, (orientation, side)
        on_lungs = segment_lungs(hu, volumes["study"].spacing_zyx) > 0
        assert (lesion & on_lungs).sum() > 0.6 * lesion.sum()
        canonical[orientation] = (hu, lesion, lungs)
    # The same study stored otherwise: the canonical arrays are the very same.
    reference = canonical["LPS"]
    for arrays in canonical.values():
        for a, b in zip(arrays, reference):
            np.testing.assert_array_equal(a, b)


def test_involvement_lies_in_each_grade_range(cohort, base):
    record = json.loads((cohort / "synth.json").read_text(encoding="utf-8"))
    assert record["settings"]["seed"] == 3 and "--seed 3" in record["settings"]["command"]
    for study in record["studies"]:
        grade = study["grade"]
        lesion = read_volume(cohort / study["lesion_mask"]).array > 0
        lungs = read_volume(cohort / study["lung_mask"]).array > 0
        share = lesion.sum() / lungs.sum()
        low, high = MOSMED_RANGES[grade]
        assert low <= share <= high, (study["path"], share)
        assert share == pytest.approx(study["involved_share_mask"], abs=1e-6)
        assert share == pytest.approx(study["involved_share_drawn"], abs=1e-4)  # the drawn share, hit exactly
        assert study["base"] == "CTChest4.nrrd" and study["orientation"] in ORIENTATIONS
        if grade == 0:
            assert not lesion.any()
    # More draws, straight from the library: always within the grade's range.
    for grade in range(1, 5):
        for seed in range(3):
            study = synthesize_study(base, grade, seed)
            share = study.info["involved_share_mask"]
            assert INVOLVEMENT_RANGES[grade][0] - 1e-3 <= share <= INVOLVEMENT_RANGES[grade][1] + 1e-3
            assert MOSMED_RANGES[grade][0] < share < MOSMED_RANGES[grade][1]
            assert study.lesion_kji.sum() == study.info["lesion_voxels"] > 0


def test_masks_stay_outside_studies_and_the_folder_indexes(cohort):
    studies = sorted(p.relative_to(cohort).as_posix() for p in (cohort / "studies").rglob("*") if p.is_file())
    assert studies == [f"studies/CT-{k}/study_{k + 1:04d}.nii.gz" for k in range(5)]
    masks = sorted(p.name for p in (cohort / "masks").iterdir())
    assert masks == sorted(f"study_{n:04d}_{kind}.nii.gz" for n in range(1, 6) for kind in ("lesion", "lungs"))
    index = DatasetIndex.load(cohort)  # what `twofivecnn index` and `train` read
    assert len(index) == 5
    for study in index.studies:
        assert study.label == study.path.parent.name
    record = json.loads((cohort / "synth.json").read_text(encoding="utf-8"))
    root = Path(index.source)
    assert {s["path"]: s["label"] for s in record["studies"]} == \
        {study.path.relative_to(root).as_posix(): study.label for study in index.studies}


def test_bad_arguments_are_refused_with_their_name(chest_ct_path, tmp_path, capsys):
    missing = tmp_path / "no_such_ct.nii.gz"
    assert main(["synth", "--base", str(missing), "--out", str(tmp_path / "a"), "--counts", "1"]) == 2
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["synth", "--base", str(empty), "--out", str(tmp_path / "b")]) == 2
    assert f"--base {empty}" in capsys.readouterr().err
    not_a_volume = tmp_path / "notes.txt"
    not_a_volume.write_text("not a CT")
    assert main(["synth", "--base", str(not_a_volume), "--out", str(tmp_path / "c")]) == 2
    assert str(not_a_volume) in capsys.readouterr().err
    assert main(["synth", "--base", str(chest_ct_path), "--out", str(tmp_path / "d"), "--counts", "1,x"]) == 2
    assert "'1,x'" in capsys.readouterr().err
    assert main(["synth", "--base", str(chest_ct_path), "--out", str(tmp_path / "e"), "--counts", "0,0"]) == 2
    assert "nothing to generate" in capsys.readouterr().err
    assert main(["synth", "--base", str(chest_ct_path), "--out", str(tmp_path / "f"), "--prefix", "a/b"]) == 2
    assert "--prefix 'a/b'" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcdef")


def test_a_prefix_keeps_study_ids_apart(chest_ct_path, tmp_path):
    """With --prefix, a synth cohort and another with MosMed's study_NNNN names index together."""
    from TwoFiveCNNLib.data.index import DatasetIndex

    assert main(["synth", "--base", str(chest_ct_path), "--out", str(tmp_path), "--counts", "1,1,0,0,0",
                 "--prefix", "synth"]) == 0
    names = sorted(p.name for p in (tmp_path / "studies").rglob("*.nii.gz"))
    assert names == ["synth_0001.nii.gz", "synth_0002.nii.gz"]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        "synth_0001_lesion.nii.gz", "synth_0001_lungs.nii.gz", "synth_0002_lesion.nii.gz", "synth_0002_lungs.nii.gz"]
    assert [study.study_id for study in DatasetIndex.load(tmp_path).studies] == ["synth_0001", "synth_0002"]


def test_synth_help_imports_neither_torch_nor_scipy():
    code = ("import sys\nfrom TwoFiveCNNLib.app.cli import main\ntry:\n    main(['synth', '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'scipy' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "False False", run.stderr[-2000:]
