"""``synth`` and ``phantoms`` write only what they own, resume after a kill, and are bounded (issue 25).

What must stay true: an output folder holding a base, or a file the cohort would replace that twofivecnn
did not write, is refused, naming it, with nothing changed; a cohort there made with other settings is
refused, saying what differs; re-running the same command resumes a killed run (the studies already made
kept, a dead writer's temporaries swept, a live writer's left alone) and gives the same bytes as one
uninterrupted run; workers do not outlive a killed main process; a --counts that cannot fit is refused
with the figures before anything is written, and asking for it costs no memory.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from TwoFiveCNNLib.app.cli import main

CLI = [sys.executable, "-m", "TwoFiveCNNLib"]
LIBRARY_ROOT = str(Path(__import__("TwoFiveCNNLib").__file__).parents[1])
GENEROUS_S = 60.0  # a bound on waits that normally take a fraction of a second; never a timing assertion


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.nii.gz"))}


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([LIBRARY_ROOT, os.environ.get("PYTHONPATH", "")])}


def synth_args(base: Path, out: Path, counts: str = "1,1,0,0,0", *extra: str) -> list[str]:
    return ["synth", "--base", str(base), "--out", str(out), "--counts", counts, "--workers", "1", *extra]


def temporary_name(target: str, pid: int) -> str:
    """A temporary file's name as io.atomic gives it: ``.<target>.<host>-<pid>.<random>.tmp<ext>``."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
    return f".{target}.{host}-{pid}.k3j9x2.tmp.nii.gz"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture()
def base_folder(chest_ct_path: Path, tmp_path: Path) -> Path:
    """A folder of one real base CT, and a macOS ``._`` file beside it that is no CT at all."""
    folder = tmp_path / "bases"
    folder.mkdir()
    shutil.copy(chest_ct_path, folder / chest_ct_path.name)
    (folder / f"._{chest_ct_path.name}").write_bytes(b"\x00\x05\x16\x07AppleDouble resource fork")
    return folder


def test_an_output_folder_holding_a_base_is_refused(chest_ct_path, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    base = out / chest_ct_path.name
    shutil.copy(chest_ct_path, base)
    original = base.read_bytes()
    assert main(synth_args(base, out)) == 2
    error = capsys.readouterr().err
    assert str(base) in error and "Choose an output folder outside the inputs" in error
    assert base.read_bytes() == original
    assert sorted(p.name for p in out.iterdir()) == [chest_ct_path.name]


def test_files_it_did_not_write_are_never_replaced(chest_ct_path, tmp_path, capsys):
    out = tmp_path / "out"
    for theirs in (out / "studies" / "CT-1" / "study_0002.nii.gz", out / "masks" / "study_0001_lungs.nii.gz",
                   out / "synth.json"):
        theirs.parent.mkdir(parents=True, exist_ok=True)
        theirs.write_bytes(b"someone's file")
        assert main(synth_args(chest_ct_path, out)) == 2
        error = capsys.readouterr().err
        assert str(theirs) in error and "did not write" in error, error
        assert theirs.read_bytes() == b"someone's file"
        assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == [theirs.relative_to(out)]
        theirs.unlink()  # the user moves it away; the next case is another file


def test_other_settings_are_refused_and_the_same_command_keeps_its_studies(base_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(synth_args(base_folder, out, "1,1,0,0,0", "--seed", "3")) == 0
    made = files_under(out)
    summary = (out / "synth.json").read_text(encoding="utf-8")
    assert '"CTChest4.nrrd"' in summary and "._CTChest4" not in summary  # the hidden file was no base
    capsys.readouterr()
    for changed, differs in ((["--seed", "4"], "--seed 3 (now 4)"), (["--prefix", "synth", "--seed", "3"], "--prefix"),
                             (["--seed", "3"], "--counts")):
        counts = "1,1,1,0,0" if differs == "--counts" else "1,1,0,0,0"
        assert main(synth_args(base_folder, out, counts, *changed)) == 2
        error = capsys.readouterr().err
        assert differs in error and str(out) in error and "--seed 3" in error, error
        assert files_under(out) == made and (out / "synth.json").read_text(encoding="utf-8") == summary
    another_base = base_folder / "other_ct.nrrd"  # the folder of bases changed since
    shutil.copy(base_folder / "CTChest4.nrrd", another_base)
    assert main(synth_args(base_folder, out, "1,1,0,0,0", "--seed", "3")) == 2
    assert "--base (file names)" in capsys.readouterr().err
    another_base.unlink()
    assert main(synth_args(base_folder, out, "1,1,0,0,0", "--seed", "3")) == 0
    assert capsys.readouterr().err.count("kept (made by an earlier run)") == 2
    assert files_under(out) == made and (out / "synth.json").read_text(encoding="utf-8") == summary


def wait_for(condition, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + GENEROUS_S
    while not condition():
        if process is not None and process.poll() is not None:
            pytest.fail(f"the run ended (rc {process.returncode}) before {what}: {process.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_a_killed_run_resumes_sweeping_only_dead_writers_temporaries(chest_ct_path, tmp_path):
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    command = [*CLI, *synth_args(chest_ct_path, out, "4,4,4,0,0", "--seed", "5")]
    run = subprocess.Popen(command, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list((out / "studies").rglob("*.nii.gz"))) >= 3, "three studies", run)
    finally:
        run.kill()
        run.communicate()
    assert not (out / "synth.json").exists()  # killed mid-run
    masks = out / "masks"
    dead = masks / temporary_name("study_0011_lesion.nii.gz", dead_pid())
    live = masks / temporary_name("study_0012_lesion.nii.gz", os.getpid())  # a concurrent writer's
    dead.write_bytes(b"half a mask")
    live.write_bytes(b"being written")

    again = subprocess.run(command, check=False, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("kept (made by an earlier run)") >= 2  # the studies recorded before the kill
    assert not dead.exists() and live.read_bytes() == b"being written"
    live.unlink()
    assert main(synth_args(chest_ct_path, fresh, "4,4,4,0,0", "--seed", "5")) == 0
    assert files_under(out) == files_under(fresh) and len(files_under(out)) == 36
    hidden = sorted(p.name for p in out.rglob(".*") if p.name != ".twofivecnn-manifest.json")
    assert hidden == []  # neither the journal nor a temporary is left


def children_of(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads processes from /proc")
def test_workers_exit_when_the_main_process_is_killed(chest_ct_path, tmp_path):
    out = tmp_path / "out"
    command = [*CLI, "synth", "--base", str(chest_ct_path), "--out", str(out), "--counts", "40,40,40,40,40",
               "--workers", "2"]
    run = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    workers: set[int] = set()
    try:
        def two_workers_busy() -> bool:
            workers.update(children_of(run.pid))
            return len(workers) >= 2 and any((out / "studies").rglob("*.nii.gz"))

        wait_for(two_workers_busy, "two workers making studies", run)
        run.send_signal(signal.SIGKILL)  # the main process alone, as the OOM killer or `kill -9 <pid>` would
        run.wait()
        wait_for(lambda: not any(alive(pid) for pid in workers), "the orphaned workers to exit")
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        run.kill()


def limited_memory() -> None:
    """In the child: 4 GB of address space at most, so an unbounded plan fails fast instead of the machine."""
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="limits the child's memory with setrlimit")
@pytest.mark.parametrize("command", ["synth", "phantoms"])
def test_counts_that_cannot_fit_are_refused_with_the_figures_before_anything(command, chest_ct_path, tmp_path):
    out = tmp_path / "out"
    args = (["synth", "--base", str(chest_ct_path), "--out", str(out)] if command == "synth" else ["phantoms", str(out)])
    run = subprocess.run([*CLI, *args, "--counts", "99999999999,0,0,0,0"], check=False, env=cli_env(),
                         capture_output=True, text=True, timeout=300, preexec_fn=limited_memory)
    assert run.returncode == 2, run.stderr[-2000:]
    error = run.stderr.strip()
    assert error.startswith(f"twofivecnn {command}: error: {out}: 99999999999 studies need about ")
    assert re.search(r"about [\d.]+ (TB|GB) on disk .* has [\d.]+ (TB|GB|MB) free\. Ask for at most \d+ studies",
                     error), error
    assert "Traceback" not in run.stderr and not out.exists()


def test_the_memory_check_says_how_many_workers_fit(tmp_path):
    from TwoFiveCNNLib.data.generated_cohort import available_memory_bytes, check_room

    available = available_memory_bytes()
    if available is None:
        pytest.skip("no MemAvailable on this system")
    with pytest.raises(ValueError, match=r"of memory .* available\. Use --workers 1, or free memory"):
        check_room(tmp_path / "out", 10, 1e3, "the test's bases", available / 1.5, 3)
    check_room(tmp_path / "out", 10, 1e3, "the test's bases", available / 10, 3)  # fits: no error
    assert not (tmp_path / "out").exists()


def test_phantoms_write_only_what_they_own_and_resume(tmp_path, capsys):
    out = tmp_path / "phantoms"
    theirs = out / "studies" / "CT-1" / "study_0002.nii.gz"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"someone's study")
    assert main(["phantoms", str(out), "--counts", "1,1", "--seed", "2"]) == 2
    assert str(theirs) in capsys.readouterr().err and theirs.read_bytes() == b"someone's study"
    theirs.unlink()
    assert main(["phantoms", str(out), "--counts", "1,1", "--seed", "2"]) == 0
    made = files_under(out)
    assert sorted(made) == ["studies/CT-0/study_0001.nii.gz", "studies/CT-1/study_0002.nii.gz"]
    assert main(["phantoms", str(out), "--counts", "1,1", "--seed", "3"]) == 2
    error = capsys.readouterr().err
    assert "--seed 2 (now 3)" in error and "twofivecnn phantoms" in error
    (out / "phantoms.json").unlink()  # as if killed before the end: the studies stay, recorded
    stale = out / "studies" / "CT-0" / temporary_name("study_0001.nii.gz", dead_pid())
    stale.write_bytes(b"half a study")
    assert main(["phantoms", str(out), "--counts", "1,1", "--seed", "2"]) == 0
    assert files_under(out) == made and (out / "phantoms.json").is_file() and not stale.exists()
