"""Progress said one way: one text per event, JSON lines for programs, tqdm bars or plain lines for people.

The JSON lines are an interface (the Slicer training module parses them), so they are pinned here
byte for byte; the terminal may draw tqdm bars, but must work without tqdm, as in 3D Slicer's Python.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from TwoFiveCNNLib.io import progress
from TwoFiveCNNLib.io.progress import (
    ProgressReporter,
    counter,
    describe_event,
    event_counts,
    format_seconds,
    item_progress,
    subset_title,
)

# What ``--progress-json`` wrote before tqdm came in; it must not change.
EXPECTED_JSON_LINES = [
    '{"stage": "stage1", "epoch": 0, "epochs": 4, "elapsed_s": 0.0}',
    '{"stage": "log", "message": "resuming"}',
    ('{"stage": "stage1", "epoch": 2, "epochs": 4, "loss": 1.5, "val_balanced_accuracy": 0.25, '
     '"elapsed_s": 30.0, "eta_s": 30.0}'),
    '{"stage": "stage1", "epoch": 4, "epochs": 4, "loss": 1.25, "elapsed_s": 60.0, "eta_s": 0.0}',
    '{"stage": "done", "model": "m.pt", "test": 0.5, "elapsed_s": 0.0}',
]


class Clock:
    """A monotonic clock the test moves by hand, so elapsed and ETA figures are exact."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_events(reporter: ProgressReporter, clock: Clock) -> list[dict]:
    records = [reporter.event("stage1", epoch=0, epochs=4)]
    reporter.message("resuming")
    clock.now += 30
    records.append(reporter.event("stage1", epoch=2, epochs=4, loss=1.5, val_balanced_accuracy=0.25))
    clock.now += 30
    records.append(reporter.event("stage1", epoch=4, epochs=4, loss=1.25))
    clock.now += 1
    records.append(reporter.event("done", model="m.pt", test=0.5))
    return records


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    return clock


@pytest.fixture
def no_tqdm(monkeypatch) -> None:
    """As in 3D Slicer's Python: ``import tqdm`` fails."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    with pytest.raises(ImportError):
        import tqdm  # noqa: F401


# ---------------------------------------------------------------------------------------- text


def test_a_batch_counts_studies_and_gets_its_time_left_like_epochs(clock):
    """predict's events count studies under their own name; the time left comes from them as from epochs."""
    stream = io.StringIO()
    report = item_progress(ProgressReporter(stream, terminal=None), "predict", ["a", "b", "c", "d"])
    clock.now += 10
    report(1, 4)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {"stage": "predict", "studies_done": 0, "studies": 4, "current": "a", "elapsed_s": 0.0}
    assert second == {"stage": "predict", "studies_done": 1, "studies": 4, "finished": "a", "current": "b",
                      "elapsed_s": 10.0, "eta_s": 30.0}
    assert event_counts(second) == (1, 4) and event_counts({"stage": "log", "message": "x"}) is None


def test_one_text_for_every_kind_of_event():
    event = {"stage": "stage1", "epoch": 2, "epochs": 4, "loss": 1.5, "val_balanced_accuracy": 0.4,
             "val_kappa": 0.125, "eta_s": 75}
    assert describe_event(event) == ("stage1, 2/4, loss 1.500, val bal. acc. 0.400, val kappa 0.125, "
                                     "stage1 ends in ~1 min 15 s")
    preprocess = {"stage": "preprocess", "subset": "val", "studies_done": 5, "studies": 5}
    assert describe_event(preprocess) == "preprocess val, 5/5"
    predict = {"stage": "predict", "studies_done": 1, "studies": 3, "message": "a.nrrd"}
    assert describe_event(predict) == "predict, 1/3, a.nrrd"
    assert describe_event({"stage": "log", "message": "hello"}) == "hello"
    assert describe_event({"stage": "done", "model": "m.pt", "test": 0.5}) == (
        "done: model written to m.pt, test balanced accuracy 0.500")
    assert describe_event({"stage": "exit", "returncode": 0}) == "training process finished"
    assert describe_event({"stage": "exit", "returncode": 1, "error": "no such CSV"}) == (
        "training failed (exit code 1): no such CSV")
    assert describe_event({"stage": "exit", "returncode": -15, "cancelled": True}).startswith("cancelled")
    assert [format_seconds(s) for s in (45, 75, 7500)] == ["45 s", "1 min 15 s", "2 h 05 min"]


def test_a_figure_says_which_split_and_how_many_studies_it_was_measured_on():
    """The demo's test figure (a small split of the training cohort) and its held-out figure (other
    phantoms) once read as contradicting each other: each now names its split and its size."""
    done = {"stage": "done", "model": "m.pt", "test": 0.567, "test_studies": 13}
    assert describe_event(done) == (
        "done: model written to m.pt, test split (13 studies of the training cohort) balanced accuracy 0.567")
    assert subset_title("held_out", 50, held_out="phantoms") == "held-out phantoms (50 studies, never trained on)"
    assert subset_title("val", 1) == "validation split (1 study of the training cohort)"
    assert subset_title("held_out", 7) == "held-out data (7 studies, never trained on)"


# ---------------------------------------------------------------------------------------- JSON lines


@pytest.mark.parametrize("bars", [False, True])
def test_json_lines_stay_exactly_as_they_were(clock, bars):
    stream, terminal = io.StringIO(), io.StringIO()
    records = run_events(ProgressReporter(stream, terminal, bars=bars), clock)
    assert stream.getvalue().splitlines() == EXPECTED_JSON_LINES
    assert [json.loads(line) for line in EXPECTED_JSON_LINES if '"log"' not in line] == records


def test_json_lines_without_tqdm(clock, no_tqdm):
    stream = io.StringIO()
    run_events(ProgressReporter(stream, io.StringIO(), bars=True), clock)
    assert stream.getvalue().splitlines() == EXPECTED_JSON_LINES


def test_quiet_writes_json_only(clock, capsys):
    stream = io.StringIO()
    run_events(ProgressReporter(stream, quiet=True), clock)
    assert stream.getvalue().splitlines() == EXPECTED_JSON_LINES
    assert capsys.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------- terminal


def test_without_tqdm_the_terminal_gets_plain_lines(clock, no_tqdm):
    terminal = io.StringIO()
    records = run_events(ProgressReporter(None, terminal, bars=True), clock)
    expected = [describe_event(r) for r in records]
    expected.insert(1, "resuming")
    assert terminal.getvalue().splitlines() == expected
    assert expected[2] == "stage1, 2/4, loss 1.500, val bal. acc. 0.250, stage1 ends in ~30 s"


def test_a_file_or_pipe_gets_plain_lines_even_with_tqdm(clock):
    """Carriage-return animations would clutter a log file or the stderr a parent process reads."""
    terminal = io.StringIO()  # not a TTY
    records = run_events(ProgressReporter(None, terminal), clock)
    assert "\r" not in terminal.getvalue()
    assert terminal.getvalue().splitlines()[0] == describe_event(records[0])


def test_with_tqdm_the_terminal_gets_a_bar(clock):
    pytest.importorskip("tqdm")
    terminal = io.StringIO()
    run_events(ProgressReporter(None, terminal, bars=True), clock)
    shown = terminal.getvalue()
    assert "\r" in shown and "4/4" in shown and "loss 1.250" in shown
    assert "resuming" in shown.splitlines()
    assert shown.rstrip().endswith("done: model written to m.pt, test balanced accuracy 0.500")


def test_progress_imports_without_tqdm_and_loads_it_only_for_a_bar():
    code = ("import sys\n"
            "sys.modules['tqdm'] = None\n"
            "from TwoFiveCNNLib.io.progress import ProgressReporter\n"
            "ProgressReporter(None, sys.stdout, bars=True).event('stage1', epoch=1, epochs=2)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stage1, 1/2")
    code = "import sys, TwoFiveCNNLib.io.progress\nprint('tqdm' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------------------------------- counters


def test_counter_prints_about_ten_lines_without_tqdm(no_tqdm, capsys):
    report = counter("phantoms", bars=True)  # bars asked for, but there is no tqdm
    for done in range(1, 96):
        report(done, 95)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "phantoms, 9/95" and lines[-1] == "phantoms, 95/95"
    assert 9 <= len(lines) <= 12


def test_counter_for_every_call_shows_the_item(capsys):
    report = counter("predict", every_call=True)
    for done, path in enumerate(["a.nrrd", "b.nii.gz"], start=1):
        report(done, 2, path)
    assert capsys.readouterr().err.splitlines() == ["predict, 1/2, a.nrrd", "predict, 2/2, b.nii.gz"]


def test_counter_draws_a_bar_with_tqdm():
    pytest.importorskip("tqdm")
    terminal = io.StringIO()
    report = counter("evaluate", terminal=terminal, bars=True)
    for done in range(1, 31):
        report(done, 30)
    assert "evaluate" in terminal.getvalue() and "30/30" in terminal.getvalue()
