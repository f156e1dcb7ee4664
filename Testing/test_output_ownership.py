"""A command writes only what it owns: the output manifest, stale temporaries, and outputs apart from inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from TwoFiveCNNLib.io.atomic import (
    atomic_path,
    remove_stale_temporaries,
    sweep_stale_temporaries,
    temporary_path,
    writer_is_dead,
)
from TwoFiveCNNLib.io.manifest import MANIFEST_NAME, OutputConflictError, OutputManifest, refuse_overlap


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def renamed_for(path: Path, pid: int) -> Path:
    """``path`` (a temporary of this process) renamed as if written by the process ``pid``."""
    renamed = path.with_name(path.name.replace(f"-{os.getpid()}.", f"-{pid}."))
    path.rename(renamed)
    return renamed


def test_claim_refuses_a_file_it_did_not_write_and_names_it(tmp_path):
    (tmp_path / "ct.png").write_bytes(b"the user's picture")
    manifest = OutputManifest.open(tmp_path, "predict")
    with pytest.raises(OutputConflictError, match=r"ct\.png: this file exists and twofivecnn did not write it"):
        manifest.claim(tmp_path / "ct.json", tmp_path / "ct.png")
    assert (tmp_path / "ct.png").read_bytes() == b"the user's picture"
    assert not manifest.owns(tmp_path / "ct.json"), "a refused claim records nothing"


def test_claims_are_recorded_before_writing_and_survive_a_new_process(tmp_path):
    manifest = OutputManifest.open(tmp_path, "predict")
    manifest.claim(tmp_path / "a.json", tmp_path / "a_data")
    record = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert set(record["entries"]) == {"a.json", "a_data"}
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "a_data").mkdir()
    (tmp_path / "a_data" / "node.nrrd").write_bytes(b"x")
    again = OutputManifest.open(tmp_path, "predict")  # a re-run into its own outputs
    again.claim(tmp_path / "a.json", tmp_path / "a_data" / "node.nrrd")
    assert again.owns(tmp_path / "a_data" / "node.nrrd"), "files inside a claimed folder are owned"


def test_remove_deletes_only_what_is_recorded(tmp_path):
    manifest = OutputManifest.open(tmp_path, "export-onnx")
    manifest.claim(tmp_path / "mine")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "graph.onnx").write_bytes(b"x")
    (tmp_path / "theirs.txt").write_text("keep")
    with pytest.raises(OutputConflictError, match="does not remove it"):
        manifest.remove(tmp_path / "theirs.txt")
    manifest.remove(tmp_path / "mine")
    assert not (tmp_path / "mine").exists() and (tmp_path / "theirs.txt").read_text() == "keep"
    assert not OutputManifest.open(tmp_path, "export-onnx").owns(tmp_path / "mine"), "its record is dropped"


def test_paths_outside_the_folder_and_unreadable_manifests_are_refused(tmp_path):
    manifest = OutputManifest.open(tmp_path / "out", "synth")
    with pytest.raises(OutputConflictError, match="outside the output folder"):
        manifest.claim(tmp_path / "elsewhere.nii.gz")
    with pytest.raises(OutputConflictError, match="outside the output folder"):
        manifest.claim(tmp_path / "out" / ".." / "escape.nii.gz")
    (tmp_path / "out" / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(OutputConflictError, match="cannot be read"):
        OutputManifest.open(tmp_path / "out", "synth")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputConflictError, match="is a file, not a folder"):
        OutputManifest.open(tmp_path / "file", "predict")


def test_concurrent_claims_from_two_processes_keep_both_records(tmp_path):
    script = ("import sys; from TwoFiveCNNLib.io.manifest import OutputManifest\n"
              "m = OutputManifest.open(sys.argv[1], 'predict')\n"
              "for i in range(40): m.claim(f'{sys.argv[1]}/{sys.argv[2]}_{i}.json')\n")
    children = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), tag]) for tag in ("a", "b")]
    assert [child.wait(timeout=120) for child in children] == [0, 0]
    entries = json.loads((tmp_path / MANIFEST_NAME).read_text())["entries"]
    assert len(entries) == 80


def test_overlap_of_outputs_and_inputs_is_refused(tmp_path):
    data = tmp_path / "data"
    (data / "CT-0").mkdir(parents=True)
    model = tmp_path / "models" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(b"x")
    with pytest.raises(OutputConflictError, match="output folder is the input"):
        refuse_overlap([data], [data], "predict")
    with pytest.raises(OutputConflictError, match="contains the input"):
        refuse_overlap([tmp_path / "models"], [data, model], "export-onnx")
    with pytest.raises(OutputConflictError, match="contains the input"):
        refuse_overlap([tmp_path], [model], "predict")
    refuse_overlap([data / "results"], [data], "predict")  # inside an input folder: read one level deep
    with pytest.raises(OutputConflictError, match="is also an input"):
        refuse_overlap([], [model], "train", output_files=[model])
    refuse_overlap([tmp_path / "out"], [data, model, None], "predict")  # apart: fine


def test_temporaries_name_their_writer_and_only_dead_writers_are_swept(tmp_path):
    target = tmp_path / "study.nii.gz"
    mine = temporary_path(target)
    assert mine.name.endswith(".tmp.nii.gz") and f"-{os.getpid()}." in mine.name
    dead = renamed_for(temporary_path(target), dead_pid())
    dead_folder = renamed_for(temporary_path(tmp_path / "export", folder=True), dead_pid())
    (dead_folder / "embed.onnx").write_bytes(b"x")
    foreign = tmp_path / ".study.nii.gz.abc123.tmp.nii.gz"  # an older version's name: no PID, kept
    foreign.write_bytes(b"x")
    assert writer_is_dead(dead) and not writer_is_dead(mine) and not writer_is_dead(foreign)
    assert sorted(sweep_stale_temporaries(tmp_path)) == sorted([dead, dead_folder])
    assert mine.exists() and foreign.exists() and not dead.exists() and not dead_folder.exists()


def test_remove_stale_temporaries_sweeps_one_target_only(tmp_path):
    other = renamed_for(temporary_path(tmp_path / "other.json"), dead_pid())
    model = renamed_for(temporary_path(tmp_path / "model.pt"), dead_pid())
    assert remove_stale_temporaries(tmp_path / "model.pt") == [model]
    assert other.exists()


def test_atomic_path_leaves_nothing_on_error_and_the_claim_sweeps_a_killed_writers_leftovers(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    leftover = renamed_for(temporary_path(tmp_path / "b.json"), dead_pid())
    OutputManifest.open(tmp_path, "predict").claim(tmp_path / "b.json")
    assert not leftover.exists()


# ------------------------------------------------------------------------------------------ predict


def one_phantom_study(phantom_cohort: Path) -> Path:
    return min((phantom_cohort / "studies" / "CT-2").glob("*.nii.gz"))


def test_predict_refuses_an_output_folder_holding_its_input_or_the_model(phantom_cohort, tiny_model, tmp_path,
                                                                         capsys, monkeypatch):
    from TwoFiveCNNLib.app.cli import main

    study = tmp_path / "ct.nii.gz"
    study.write_bytes(one_phantom_study(phantom_cohort).read_bytes())
    (tmp_path / "notes.txt").write_text("the user's")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "ct.nii.gz", "--out", ".", "--engine", "torch"]) == 2
    assert "the output folder contains the input ct.nii.gz" in capsys.readouterr().err
    assert main(["predict", str(study), "--model", str(tiny_model), "--out", str(tiny_model.parent)]) == 2
    assert f"contains the input {tiny_model}" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "notes.txt"], "nothing written"


def test_predict_never_replaces_a_users_file_and_reruns_into_its_own_outputs(phantom_cohort, tmp_path, capsys):
    from TwoFiveCNNLib.app.cli import EXIT_FAILED_STUDIES, main

    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        (inputs / f"{name}.nii.gz").write_bytes(one_phantom_study(phantom_cohort).read_bytes())
    (inputs / "._a.nii.gz").write_bytes(b"\0\5\26\7 macOS resource fork")  # hidden: not a study
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"the user's picture of b")
    assert main(["predict", str(inputs), "--out", str(out)]) == EXIT_FAILED_STUDIES
    captured = capsys.readouterr()
    assert "b.png: this file exists and twofivecnn did not write it" in captured.err
    assert "._a" not in captured.out + captured.err
    assert (out / "b.png").read_bytes() == b"the user's picture of b"
    assert not (out / "b.json").exists() and (out / "a.json").is_file()
    first = (out / "a.json").stat().st_mtime_ns
    (out / "b.png").unlink()  # the user moves the picture away; the same command is run again
    assert main(["predict", str(inputs), "--out", str(out)]) == 0
    assert (out / "b.json").is_file() and (out / "a.json").stat().st_mtime_ns != first, "own outputs replaced"
    assert "2 predicted, 0 failed" in capsys.readouterr().out


def test_predict_refuses_a_user_file_named_summary_tsv(phantom_cohort, tmp_path, capsys):
    from TwoFiveCNNLib.app.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.tsv").write_text("the user's own table\n")
    assert main(["predict", str(one_phantom_study(phantom_cohort)), "--out", str(out)]) == 2
    assert "summary.tsv: this file exists and twofivecnn did not write it" in capsys.readouterr().err
    assert (out / "summary.tsv").read_text() == "the user's own table\n"


def test_demo_refuses_a_folder_holding_a_users_file_of_its_output_names_before_any_work(tmp_path, capsys):
    from TwoFiveCNNLib.app.cli import main

    (tmp_path / "held_out_metrics.json").write_text('{"mine": true}')
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 2
    assert "held_out_metrics.json: this file exists and twofivecnn did not write it" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held_out_metrics.json"], "no work started"


def test_bench_refuses_to_replace_a_users_json_before_measuring(tmp_path, capsys):
    from TwoFiveCNNLib.app.cli import main

    (tmp_path / "results.json").write_text("{}")
    assert main(["bench", "--quick", "--json", str(tmp_path / "results.json")]) == 2
    assert "results.json: this file exists and twofivecnn did not write it" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "{}"


def test_index_writes_a_split_only_over_its_own(phantom_cohort, tmp_path, capsys):
    from TwoFiveCNNLib.app.cli import main

    (tmp_path / "notes.json").write_text("the user's")
    assert main(["index", str(phantom_cohort), "--split", str(tmp_path / "notes.json")]) == 2
    assert "notes.json: this file exists and twofivecnn did not write it" in capsys.readouterr().err
    (tmp_path / "split_fold1.json").write_text("the user's")
    assert main(["index", str(phantom_cohort), "--split", str(tmp_path / "split.json"), "--folds", "3"]) == 2
    assert "split_fold1.json: this file exists" in capsys.readouterr().err
    assert not (tmp_path / "split_fold0.json").exists(), "refused before any fold is written"
    assert (tmp_path / "notes.json").read_text() == (tmp_path / "split_fold1.json").read_text() == "the user's"
    for _ in range(2):  # its own split is replaced on a re-run
        assert main(["index", str(phantom_cohort), "--split", str(tmp_path / "split.json")]) == 0
    assert json.loads((tmp_path / "split.json").read_text())["train"]


def test_train_and_predict_name_a_folder_or_file_given_for_the_other(phantom_cohort, tmp_path, capsys):
    from TwoFiveCNNLib.app.cli import main

    assert main(["train", "--data", str(phantom_cohort), "--out", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder; give the model file to write" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["predict", str(one_phantom_study(phantom_cohort)), "--out", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt: it is a file, not a folder" in capsys.readouterr().err
