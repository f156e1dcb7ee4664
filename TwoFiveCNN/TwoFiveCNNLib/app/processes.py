"""Background processes: long work in a child process that a GUI watches without ever waiting.

Training (``python -m TwoFiveCNNLib train --progress-json``) and batch prediction (``... predict
--progress-json``) run as child processes; threads read their output into a queue and
:meth:`BackgroundProcess.poll`, called from a GUI timer, takes what has arrived. A child process
rather than a thread: the GUI stays responsive, Cancel can stop it at once, a crash cannot take
Slicer with it, and the memory (GPU memory included) it used is released when it exits.

The child leads a process group of its own (a new session on POSIX), never Slicer's, and Cancel
ends that whole group: PythonSlicer is a launcher that starts the real Python as its own child, so
ending the launcher alone would leave that Python running, holding the pipe open. POSIX: SIGTERM
to the group (the command line turns it into a clean stop), SIGKILL to whatever is left after a
timeout; Windows: ``taskkill /F /T``, with no console window ever shown. Standard library only:
no psutil (Slicer does not bundle it), no torch, no Qt, no MRML.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..io.atomic import glob_escape

STDERR_TAIL_LINES = 40  # kept for the error message and the details of a failed run
CANCEL_TIMEOUT_S = 10.0  # how long a cancelled tree may take to stop by itself before it is killed
GROUP_POLL_S = 0.05  # how often a cancel checks whether the tree has gone
# ``twofivecnn predict``'s exit code when the batch ran to its end but some studies failed
# (cli.EXIT_FAILED_STUDIES, not imported: the command line pulls in numpy; a test keeps them equal).
FAILED_STUDIES_RETURNCODE = 3
# The folder holding the TwoFiveCNNLib package (.../TwoFiveCNNLib/app/processes.py -> ...).
LIBRARY_PARENT = Path(__file__).resolve().parents[2]


def _options(pairs: Sequence[tuple[str, Any]]) -> list[str]:
    """``[option, value, ...]`` for the pairs whose value is set (None and "" are left out)."""
    return [text for option, value in pairs if value is not None and value != "" for text in (option, str(value))]


def train_arguments(stage1_epochs: int | None = None, stage2_epochs: int | None = None,
                    seed: int | None = None, device: str | None = None,
                    cache: str | os.PathLike | None = None) -> list[str]:
    """Command-line options of ``twofivecnn train`` for the settings the training panel offers."""
    return _options((("--stage1-epochs", stage1_epochs), ("--stage2-epochs", stage2_epochs),
                     ("--seed", seed), ("--device", device), ("--cache", cache)))


def prediction_arguments(model: str | os.PathLike | None = None, device: str | None = None,
                         scene: bool = False) -> list[str]:
    """Command-line options of ``twofivecnn predict`` for the settings the batch panel offers."""
    return [*_options((("--model", model), ("--device", device))), *(["--scene"] if scene else [])]


def atomic_leftovers(out: str | os.PathLike) -> list[Path]:
    """Temporary files an interrupted run may leave beside its model (model, checkpoint, split)."""
    out = Path(out)
    targets = (out.name, out.name + ".ckpt", out.with_suffix(".split.json").name)
    return sorted(p for name in targets for p in out.parent.glob(f".{glob_escape(name)}.*.tmp*"))


# ---------------------------------------------------------------------------------------- process trees


def popen_options() -> dict[str, Any]:
    """Popen arguments that put the child in a group of its own, away from Slicer's.

    POSIX: a new session, so that one signal reaches the launcher and everything it started, and a
    Ctrl-C in Slicer's terminal does not. Windows: a new process group, no console window (hidden
    the way ``slicer.util.launchConsoleProcess`` hides it: startup info with ``SW_HIDE``).
    """
    if os.name != "nt":
        return {"start_new_session": True}
    info = subprocess.STARTUPINFO()
    info.dwFlags |= subprocess.STARTF_USESHOWWINDOW
    info.wShowWindow = subprocess.SW_HIDE
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW,
            "startupinfo": info}


def live_group_members(pgid: int) -> list[int] | None:
    """PIDs of the processes of group ``pgid`` that still run, from Linux's /proc (None elsewhere).

    Zombies do not count: they have ended and only wait for a parent to collect their exit status,
    which for an orphan is init's business, not ours.
    """
    if not os.path.isfile("/proc/self/stat"):
        return None
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(os.path.join(entry.path, "stat"), encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue  # ended while we looked
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (command)": state, ppid, pgrp, ...
        if len(fields) > 2 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def process_group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (POSIX)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    members = live_group_members(pgid)
    return members is None or bool(members)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # the group has gone


def _taskkill(pid: int) -> None:
    """End a process and every process it started (Windows; no console window flashes up)."""
    subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, **popen_options())


def end_process_tree(process: subprocess.Popen, timeout: float = CANCEL_TIMEOUT_S) -> None:
    """Stop ``process`` and everything it started; returns once none of them runs.

    POSIX: SIGTERM to its group (it leads one: :func:`popen_options`), so that it can stop
    cleanly, then SIGKILL to whatever is left after ``timeout`` s. Windows has no such request for
    a process without a console: ``taskkill /F /T`` ends the tree at once.
    """
    if os.name == "nt":
        _taskkill(process.pid)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
        return
    pgid = process.pid  # a session leader's group has its own PID as its ID
    _signal_group(pgid, signal.SIGTERM)
    deadline, killed = time.monotonic() + timeout, False
    while process_group_alive(pgid):
        if time.monotonic() >= deadline:
            if killed:
                return  # SIGKILL not obeyed within another timeout (a process stuck in the kernel)
            _signal_group(pgid, signal.SIGKILL)
            deadline, killed = time.monotonic() + timeout, True
        time.sleep(GROUP_POLL_S)


# ---------------------------------------------------------------------------------------- processes


class BackgroundProcess:
    """A child process in a group of its own, read without blocking, cancelled as a whole tree.

    :meth:`poll` returns the events that arrived since the last call: the JSON objects with a
    ``stage`` the child writes on stdout (``--progress-json``, see :mod:`TwoFiveCNNLib.io.progress`),
    any other output line as a ``log`` event. After the last one, exactly one ``{"stage": "exit",
    "job": ..., "returncode": ..., "cancelled": ..., "ok": ..., "error": ...}`` event follows once the
    child has ended and its output is read (after a cancel: once no process of its tree is left), so a
    poller needs no other way to learn the end. ``ok``: the run did its work (see ``ok_returncodes``).

    Give ``command`` for any program, or subclass and build it in :meth:`command` (as
    :class:`TrainingProcess` and :class:`PredictionProcess` do).
    """

    job = "process"  # names the work in the exit event: "train", "predict"
    ok_returncodes: tuple[int, ...] = (0,)  # exit codes of a run that did its work

    def __init__(self, command: Sequence[str | os.PathLike] | None = None,
                 cwd: str | os.PathLike | None = None, python: str | os.PathLike | None = None) -> None:
        self._command = [str(c) for c in command] if command is not None else None
        self.cwd = Path(cwd) if cwd is not None else None
        self.python = str(python or sys.executable)
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._reader: threading.Thread | None = None
        self._ender: threading.Thread | None = None
        self._lock = threading.Lock()  # the reader's "process ended" against a cancel's "end it now"
        self._exited = False
        self._cancelled = False

    def command(self) -> list[str]:
        if self._command is None:
            raise NotImplementedError("give a command, or build it in a subclass")
        return list(self._command)

    @staticmethod
    def environment() -> dict[str, str]:
        """The child's environment: unbuffered UTF-8 output, and this library importable.

        PythonSlicer does not see Slicer's scripted-modules folder, where the library is installed,
        so the library's parent folder goes first on its ``PYTHONPATH``.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        env["PYTHONPATH"] = os.pathsep.join([str(LIBRARY_PARENT), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def start(self) -> BackgroundProcess:
        """Start the child; returns at once."""
        return self._launch(self.command())

    def _launch(self, command: list[str]) -> BackgroundProcess:
        if self.is_running:
            raise RuntimeError(f"{self.job} is already running; cancel it first.")
        self._stderr.clear()
        self._ender, self._exited, self._cancelled = None, False, False
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.environment(),
            cwd=str(self.cwd) if self.cwd is not None else None, **popen_options())
        stderr_reader = threading.Thread(target=self._read_stderr, args=(self._process,), daemon=True)
        stderr_reader.start()
        self._reader = threading.Thread(target=self._read_stdout, args=(self._process, stderr_reader),
                                        daemon=True)
        self._reader.start()
        return self

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip("\n"))

    def _read_stdout(self, process: subprocess.Popen, stderr_reader: threading.Thread) -> None:
        for line in process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            if not isinstance(event, dict) or "stage" not in event:
                event = {"stage": "log", "message": line}
            self.observe(event)
            self._events.put(event)
        stderr_reader.join()  # the exit event's error message needs all of stderr
        returncode = process.wait()
        with self._lock:
            self._exited = True
            ender = self._ender
        if ender is not None:
            ender.join()  # a cancelled tree: leftovers go only once nothing can write any more
        ok = returncode in self.ok_returncodes and not self._cancelled
        if not ok:
            self.remove_leftovers()
        self._events.put({"stage": "exit", "job": self.job, "returncode": returncode,
                          "cancelled": self._cancelled, "ok": ok,
                          "error": None if ok or self._cancelled else self.error_message()})

    def observe(self, event: dict) -> None:
        """Called (on the reader thread) with every event as it arrives; subclasses note what they need."""

    def poll(self) -> list[dict]:
        """The events that arrived since the last call; never blocks."""
        events = []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return events

    @property
    def is_running(self) -> bool:
        """True until the process has ended and all its output has been read."""
        return self._reader is not None and self._reader.is_alive()

    @property
    def cancelling(self) -> bool:
        """Cancel was asked and the tree has not ended yet."""
        return self._cancelled and self.is_running

    @property
    def pid(self) -> int | None:
        """The child's PID, which on POSIX is also its process group's ID."""
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def error_message(self) -> str:
        """The reason a run failed, from the last lines the process wrote to stderr."""
        lines = list(self._stderr)
        errors = [line for line in lines if "error" in line.lower()]
        return (errors[-1] if errors else "\n".join(lines[-5:])) or f"exit code {self.returncode}"

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the tree has ended and its output is read (scripts and tests; never the GUI)."""
        if self._reader is not None:
            self._reader.join(timeout)
        ender = self._ender
        if ender is not None and not self.is_running:
            ender.join()
        return self.returncode

    def cancel(self, wait: bool = True, timeout: float = CANCEL_TIMEOUT_S) -> int | None:
        """Stop the whole process tree: asked to stop, then killed after ``timeout`` s.

        ``wait=False`` (the GUI) returns at once: a thread ends the tree, and the exit event arrives
        through :meth:`poll` as usual. ``wait=True`` returns once no process of the tree remains.
        A process that has already ended is left alone. Returns the exit code (None if not known yet).
        """
        process = self._process
        if process is None:
            return None
        with self._lock:
            if not self._exited and self._ender is None:
                self._cancelled = process.poll() is None  # else only strays are ended: the run had its own end
                self._ender = threading.Thread(target=end_process_tree, args=(process, timeout), daemon=True)
                self._ender.start()
        if wait:
            self.wait()
        return self.returncode

    def remove_leftovers(self) -> list[Path]:
        """Delete what a stopped run left half-written (temporary files); nothing while it runs."""
        return []

    def _still_running(self) -> bool:
        return self._process is not None and self._process.poll() is None


class TrainingProcess(BackgroundProcess):
    """``python -m TwoFiveCNNLib train ... --progress-json`` in a child process (see :class:`BackgroundProcess`).

    Cancel keeps the checkpoint of the last completed epoch; :meth:`resume` continues from it.
    """

    job = "train"

    def __init__(self, data: str | os.PathLike, out: str | os.PathLike, args: Sequence[str] = (),
                 python: str | os.PathLike | None = None) -> None:
        super().__init__(cwd=Path(out).parent, python=python)
        self.data, self.out = Path(data), Path(out)
        self.args = [str(a) for a in args]

    @property
    def checkpoint_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt")

    def command(self, resume: bool = False) -> list[str]:
        return [self.python, "-m", "TwoFiveCNNLib", "train", "--data", str(self.data), "--out", str(self.out),
                "--progress-json", *self.args, *(["--resume"] if resume else [])]

    def start(self, resume: bool = False) -> TrainingProcess:
        """Start the run (``resume``: continue from its checkpoint); returns at once."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        return self._launch(self.command(resume))

    def resume(self) -> TrainingProcess:
        """Start again with ``--resume``: continues after the last epoch the checkpoint holds."""
        return self.start(resume=True)

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files a killed run left beside its outputs (only when it is not running)."""
        if self._still_running():
            return []
        leftovers = atomic_leftovers(self.out)
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers


class PredictionProcess(BackgroundProcess):
    """``python -m TwoFiveCNNLib predict INPUT... --out OUT --progress-json`` in a child process.

    Its ``predict`` events count the studies (``studies_done`` of ``studies``) and name the one being graded
    (``current``). Each study's outputs are complete or absent: the command line removes a
    half-written study when it is asked to stop, and :meth:`remove_leftovers` when it was killed.
    ``summary.tsv`` is written when the batch has run to its end (also when some studies failed:
    exit code :data:`FAILED_STUDIES_RETURNCODE`).
    """

    job = "predict"
    ok_returncodes = (0, FAILED_STUDIES_RETURNCODE)

    def __init__(self, inputs: Sequence[str | os.PathLike], out: str | os.PathLike, args: Sequence[str] = (),
                 python: str | os.PathLike | None = None) -> None:
        self.inputs = [Path(p).absolute() for p in inputs]  # the child runs in the output folder
        self.out = Path(out).absolute()
        super().__init__(cwd=self.out, python=python)
        self.args = [str(a) for a in args]
        self.studies: list[str] = []  # output names of the studies the batch has reached, in order

    @property
    def summary_path(self) -> Path:
        return self.out / "summary.tsv"

    def command(self) -> list[str]:
        return [self.python, "-m", "TwoFiveCNNLib", "predict", *map(str, self.inputs), "--out", str(self.out),
                "--progress-json", *self.args]

    def start(self) -> PredictionProcess:
        """Start the batch; returns at once."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.studies = []
        return self._launch(self.command())

    def observe(self, event: dict) -> None:
        name = event.get("current") if event.get("stage") == "predict" else None
        if isinstance(name, str) and name not in self.studies:
            self.studies.append(name)

    def remove_leftovers(self) -> list[Path]:
        """Delete temporary files, and the outputs of a study left without its JSON record.

        ``<name>.json`` is written last, so a study without it was cut short; only the studies this
        batch reached are looked at (the output folder may hold other runs' results), and of their
        outputs only those the batch's manifest records (``io.manifest``): never a file of the user's
        that merely carries a study's output name.
        """
        if self._still_running():
            return []
        from ..inference.output_names import lesion_map_files
        from ..io.manifest import OutputConflictError, OutputManifest

        try:
            manifest = OutputManifest.open(self.out, "predict")
        except OutputConflictError:
            return []
        removed = sorted(self.out.glob(".summary.tsv.*.tmp*"))
        for name in self.studies:
            pattern = glob_escape(name)
            removed += sorted(self.out.glob(f".{pattern}*.tmp*"))
            if not (self.out / f"{name}.json").exists():
                outputs = [self.out / f"{name}.png", self.out / f"{name}.mrml", self.out / f"{name}_data",
                           *lesion_map_files(self.out, name)]
                removed += sorted(p for p in outputs if p.exists() and manifest.owns(p))
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return removed
