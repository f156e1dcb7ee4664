"""Background processes end as a whole tree: real process trees, real signals, no mocks.

A launcher-like parent script starts a Python child, as PythonSlicer starts the real Python, and
waits for it; either may ignore SIGTERM. Cancel must leave no process of the tree running, blocking
or not, and the exit event must say what happened. How long a cancel took is printed, never asserted.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import live_members
from TwoFiveCNNLib.app import cli
from TwoFiveCNNLib.app.module_settings import DEVICE_CHOICES, device_option
from TwoFiveCNNLib.app.processes import (
    FAILED_STUDIES_RETURNCODE,
    BackgroundProcess,
    PredictionProcess,
    TrainingProcess,
    popen_options,
    prediction_arguments,
)
from TwoFiveCNNLib.io.manifest import MANIFEST_NAME, OutputManifest

posix_with_proc = pytest.mark.skipif(os.name == "nt" or not Path("/proc/self/stat").is_file(),
                                     reason="process groups are checked through Linux's /proc")
EVENT_TIMEOUT_S = 60  # a safety net for a broken test, not a measurement

LAUNCHER = textwrap.dedent("""
    # Like PythonSlicer: starts the real work as its own child and waits for it.
    import json, os, signal, subprocess, sys
    if "--launcher-ignores-term" in sys.argv:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    print(json.dumps({"stage": "launcher", "pid": os.getpid()}), flush=True)
    sys.exit(child.wait())
""")
CHILD = textwrap.dedent("""
    import json, os, signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN if "--child-ignores-term" in sys.argv else signal.SIG_DFL)
    print(json.dumps({"stage": "child", "pid": os.getpid()}), flush=True)
    print("a line that is not JSON", flush=True)
    while True:
        time.sleep(1)
""")


def launch_tree(tmp_path: Path, *flags: str) -> BackgroundProcess:
    launcher = tmp_path / "launcher.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    return BackgroundProcess([sys.executable, str(launcher), CHILD, *flags], cwd=tmp_path).start()


def events_until(process: BackgroundProcess, done, timeout: float = EVENT_TIMEOUT_S) -> list[dict]:
    """Poll as a GUI timer does until ``done(events)``."""
    events, deadline = [], time.monotonic() + timeout
    while not done(events):
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise AssertionError(f"no such events in {timeout} s: {events}; stderr: {process.stderr_tail}")
        events += process.poll()
        time.sleep(0.02)
    return events


def both_running(events: list[dict]) -> bool:
    return {"launcher", "child"} <= {e["stage"] for e in events}


def has_exit(events: list[dict]) -> bool:
    return any(e["stage"] == "exit" for e in events)


def exit_event(events: list[dict]) -> dict:
    exits = [e for e in events if e["stage"] == "exit"]
    assert len(exits) == 1 and events[-1] is exits[0], events
    return exits[0]


@posix_with_proc
def test_the_child_leads_a_group_of_its_own(tmp_path):
    process = launch_tree(tmp_path)
    events = events_until(process, both_running)
    pids = {e["stage"]: e["pid"] for e in events if "pid" in e}
    assert pids["launcher"] == process.pid
    assert os.getpgid(process.pid) == process.pid != os.getpgrp()  # never Slicer's group
    assert os.getpgid(pids["child"]) == process.pid  # the launcher's child shares it
    assert {"stage": "log", "message": "a line that is not JSON"} in events
    process.cancel()
    assert live_members(process.pid) == []


@posix_with_proc
@pytest.mark.parametrize("flags", [(), ("--launcher-ignores-term",)], ids=["obeys", "launcher-ignores"])
def test_cancel_ends_the_launcher_and_its_child(tmp_path, flags):
    """SIGTERM reaches the whole group: the child ends even when the launcher would not pass it on."""
    process = launch_tree(tmp_path, *flags)
    events = events_until(process, both_running)
    child = next(e["pid"] for e in events if e["stage"] == "child")
    started = time.monotonic()
    returncode = process.cancel(timeout=30)
    print(f"cancel took {time.monotonic() - started:.2f} s")
    assert live_members(process.pid) == [] and child not in live_members(process.pid)
    assert not process.is_running
    end = exit_event(events + process.poll())
    assert end["cancelled"] and not end["ok"] and end["error"] is None
    assert end["returncode"] == returncode
    if not flags:
        assert returncode == -signal.SIGTERM  # stopped by the request, not killed after the timeout


@posix_with_proc
def test_a_grandchild_that_ignores_sigterm_is_killed(tmp_path):
    """The Python child keeps the pipe open and ignores SIGTERM: after the timeout, SIGKILL ends it."""
    process = launch_tree(tmp_path, "--launcher-ignores-term", "--child-ignores-term")
    events = events_until(process, both_running)
    child = next(e["pid"] for e in events if e["stage"] == "child")
    started = time.monotonic()
    process.cancel(timeout=1)
    print(f"cancel took {time.monotonic() - started:.2f} s")
    assert live_members(process.pid) == []
    assert not Path(f"/proc/{child}").exists() or child not in live_members(process.pid)
    end = exit_event(events + process.poll())
    assert end["cancelled"] and end["returncode"] == -signal.SIGKILL


@posix_with_proc
def test_cancel_without_waiting_returns_at_once_and_the_exit_event_follows(tmp_path):
    """What the GUI does: cancel(wait=False), then the timer polls until the exit event."""
    process = launch_tree(tmp_path, "--launcher-ignores-term", "--child-ignores-term")
    events_until(process, both_running)
    process.cancel(wait=False, timeout=600)
    # Nothing but the 600 s escalation can end a tree that ignores SIGTERM: the call did not wait.
    assert process.is_running and process.cancelling
    assert live_members(process.pid) != []
    process.cancel(wait=False)  # a second click changes nothing
    os.killpg(process.pid, signal.SIGKILL)  # stands in for the escalation, 600 s early
    end = exit_event(events_until(process, has_exit))
    assert end["cancelled"] and end["returncode"] == -signal.SIGKILL
    process.wait()
    assert live_members(process.pid) == [] and not process.is_running


@posix_with_proc
def test_escalation_without_waiting_also_leaves_nothing(tmp_path):
    process = launch_tree(tmp_path, "--launcher-ignores-term", "--child-ignores-term")
    events_until(process, both_running)
    process.cancel(wait=False, timeout=1)
    end = exit_event(events_until(process, has_exit))
    assert end["cancelled"] and end["returncode"] == -signal.SIGKILL
    assert live_members(process.pid) == []  # the exit event comes once the whole tree has gone


def test_a_finished_run_reports_its_end_and_cancel_leaves_it_alone(tmp_path):
    code = "import json, sys; print(json.dumps({'stage': 'work', 'epoch': 1, 'epochs': 1})); sys.exit(0)"
    process = BackgroundProcess([sys.executable, "-c", code]).start()
    process.wait()
    assert process.cancel() == 0  # already over: nothing to signal, not marked cancelled
    events = process.poll()
    assert events[0] == {"stage": "work", "epoch": 1, "epochs": 1}
    assert exit_event(events) == {"stage": "exit", "job": "process", "returncode": 0, "cancelled": False,
                                  "ok": True, "error": None}

    failing = BackgroundProcess([sys.executable, "-c", "import sys; sys.exit('error: no such thing')"]).start()
    failing.wait()
    end = exit_event(failing.poll())
    assert end["returncode"] == 1 and not end["ok"] and end["error"] == "error: no such thing"


def test_popen_options_keep_slicer_out_of_the_childs_group():
    options = popen_options()
    if os.name == "nt":  # pragma: no cover - Windows: a group of its own and no console window
        import subprocess

        assert options["creationflags"] & subprocess.CREATE_NEW_PROCESS_GROUP
        assert options["creationflags"] & subprocess.CREATE_NO_WINDOW
        assert options["startupinfo"].wShowWindow == subprocess.SW_HIDE
    else:
        assert options == {"start_new_session": True}


def test_commands_of_the_two_jobs(tmp_path):
    training = TrainingProcess(tmp_path / "data.csv", tmp_path / "m.pt", ["--quiet"], python="py")
    assert training.command(resume=True) == ["py", "-m", "TwoFiveCNNLib", "train", "--data",
                                             str(tmp_path / "data.csv"), "--out", str(tmp_path / "m.pt"),
                                             "--progress-json", "--quiet", "--resume"]
    args = prediction_arguments(tmp_path / "m.pt", device_option("GPU"), scene=True)
    assert args == ["--model", str(tmp_path / "m.pt"), "--device", "cuda", "--scene"]
    assert prediction_arguments() == []
    batch = PredictionProcess([tmp_path / "in"], tmp_path / "out", args, python="py")
    assert batch.command() == ["py", "-m", "TwoFiveCNNLib", "predict", str(tmp_path / "in"), "--out",
                               str(tmp_path / "out"), "--progress-json", *args]
    assert batch.summary_path == tmp_path / "out" / "summary.tsv"
    # A batch that ran to its end with some failed studies did its work: its summary is there.
    assert FAILED_STUDIES_RETURNCODE == cli.EXIT_FAILED_STUDIES
    assert PredictionProcess.ok_returncodes == (0, FAILED_STUDIES_RETURNCODE)


def test_a_killed_batch_leaves_complete_studies_only(tmp_path):
    """After a SIGKILL (no clean stop), the parent removes temporaries and the study cut short."""
    batch = PredictionProcess([tmp_path / "in"], tmp_path)
    for event in ({"stage": "predict", "studies_done": 0, "studies": 3, "current": "a"},
                  {"stage": "predict", "studies_done": 1, "studies": 3, "finished": "a", "current": "b[1]"}):
        batch.observe(event)
    complete = [tmp_path / name for name in ("a.json", "a.png", "a_lesion_map.nii.gz")]
    cut_short = [tmp_path / name for name in ("b[1].png", "b[1]_lesion_map.nii.gz", ".b[1].json.x1.tmp.json")]
    others = [tmp_path / name for name in ("c.png", "notes.txt", "summary.tsv")]  # not this batch's
    users = [tmp_path / "d.png"]  # the user's, with the output name of a study the batch reached: never removed
    batch.observe({"stage": "predict", "studies_done": 2, "studies": 3, "finished": "b[1]", "current": "d"})
    OutputManifest.open(tmp_path, "predict").claim(*complete, *cut_short[:2], tmp_path / "b[1]_data")
    for path in complete + cut_short + others + users + [tmp_path / ".summary.tsv.x2.tmp.tsv"]:
        path.write_text("x")
    (tmp_path / "b[1]_data").mkdir()
    removed = batch.remove_leftovers()
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted([*(p.name for p in complete + others + users), MANIFEST_NAME])
    assert len(removed) == len(cut_short) + 2


def test_legacy_lesion_map_of_a_cut_short_study_is_removed_too(tmp_path):
    """legacy: remove after 0.3. An output folder of 0.2 calls the lesion map ``<name>_evidence<format>``."""
    batch = PredictionProcess([tmp_path / "in"], tmp_path)
    for event in ({"stage": "predict", "studies_done": 0, "studies": 2, "current": "a"},
                  {"stage": "predict", "studies_done": 1, "studies": 2, "finished": "a", "current": "b"}):
        batch.observe(event)
    complete = [tmp_path / name for name in ("a.json", "a_evidence.nii.gz")]
    cut_short = [tmp_path / name for name in ("b.png", "b_evidence.nrrd")]
    OutputManifest.open(tmp_path, "predict").claim(*complete, *cut_short)
    for path in complete + cut_short:
        path.write_text("x")
    assert sorted(batch.remove_leftovers()) == sorted(cut_short)
    assert all(path.is_file() for path in complete)


def test_device_words_are_the_same_in_both_panels():
    assert DEVICE_CHOICES == ("auto", "CPU", "GPU")
    assert [device_option(choice) for choice in DEVICE_CHOICES] == ["auto", "cpu", "cuda"]
    # Scenes saved by earlier training panels hold the command line's words.
    assert [device_option(word) for word in ("cpu", "cuda", "gpu", "Auto", None)] == \
        ["cpu", "cuda", "cuda", "auto", "auto"]
    with pytest.raises(ValueError, match="auto, CPU, GPU"):
        device_option("tpu")


def test_the_exit_event_reads_as_its_job():
    from TwoFiveCNNLib.io.progress import describe_event

    assert describe_event({"stage": "exit", "job": "predict", "returncode": 3, "ok": True}) == \
        "batch prediction process finished (some studies failed: see summary.tsv)"
    assert describe_event({"stage": "exit", "job": "predict", "returncode": 130, "cancelled": True,
                           "ok": False}).startswith("cancelled; the studies graded so far keep")
    assert describe_event({"stage": "exit", "job": "predict", "returncode": 2, "ok": False,
                           "error": "no such file"}) == "batch prediction failed (exit code 2): no such file"
    assert describe_event({"stage": "predict", "studies_done": 2, "studies": 20, "finished": "s01",
                           "current": "s02"}) == "predict, 2/20, now s02"
