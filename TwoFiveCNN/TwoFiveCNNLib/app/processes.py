"""Background processes: a training run in a child process that a GUI watches without ever waiting.

The training runs as ``python -m TwoFiveCNNLib train --progress-json``; threads read its output into
a queue and :meth:`TrainingProcess.poll`, called from a GUI timer, takes what has arrived. A child
process rather than a thread, so that the GUI stays responsive, Cancel can stop it at once, and a
crash in training cannot take Slicer with it. Standard library only: no torch, no Qt, no MRML.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

STDERR_TAIL_LINES = 40  # kept for the error message and the details of a failed run
# The folder holding the TwoFiveCNNLib package (.../TwoFiveCNNLib/app/processes.py -> ...).
LIBRARY_PARENT = Path(__file__).resolve().parents[2]


def train_arguments(stage1_epochs: int | None = None, stage2_epochs: int | None = None,
                    seed: int | None = None, device: str | None = None,
                    cache: str | os.PathLike | None = None) -> list[str]:
    """Command-line options of ``twofivecnn train`` for the settings the training panel offers."""
    args = []
    for option, value in (("--stage1-epochs", stage1_epochs), ("--stage2-epochs", stage2_epochs),
                          ("--seed", seed), ("--device", device), ("--cache", cache)):
        if value is not None and value != "":
            args += [option, str(value)]
    return args


def glob_escape(text: str) -> str:
    """``text`` matched literally by :meth:`Path.glob` (model names may hold ``[`` or ``*``)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def atomic_leftovers(out: str | os.PathLike) -> list[Path]:
    """Temporary files an interrupted run may leave beside its model (model, checkpoint, split)."""
    out = Path(out)
    targets = (out.name, out.name + ".ckpt", out.with_suffix(".split.json").name)
    return sorted(p for name in targets for p in out.parent.glob(f".{glob_escape(name)}.*.tmp*"))


class TrainingProcess:
    """``python -m TwoFiveCNNLib train ... --progress-json`` in a child process, read without blocking.

    :meth:`poll` returns the progress events that arrived since the last call (dicts with ``stage``
    etc., as :mod:`TwoFiveCNNLib.io.progress` writes them; other output lines as ``log`` events).
    After the last one, exactly one ``{"stage": "exit", "returncode": ..., "cancelled": ...,
    "error": ...}`` event follows, so a poller needs no other way to learn that the run ended.
    """

    def __init__(self, data: str | os.PathLike, out: str | os.PathLike, args: Sequence[str] = (),
                 python: str | os.PathLike | None = None) -> None:
        self.data, self.out = Path(data), Path(out)
        self.args = [str(a) for a in args]
        self.python = str(python or sys.executable)
        self._process: subprocess.Popen | None = None
        self._events: queue.Queue[dict] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._reader: threading.Thread | None = None
        self._cancelled = False

    @property
    def checkpoint_path(self) -> Path:
        return self.out.with_name(self.out.name + ".ckpt")

    def command(self, resume: bool = False) -> list[str]:
        return [self.python, "-m", "TwoFiveCNNLib", "train", "--data", str(self.data), "--out", str(self.out),
                "--progress-json", *self.args, *(["--resume"] if resume else [])]

    @staticmethod
    def environment() -> dict[str, str]:
        """The child's environment: unbuffered UTF-8 output, and this library importable.

        PythonSlicer does not see Slicer's scripted-modules folder, where the library is installed,
        so the library's parent folder goes first on its ``PYTHONPATH``.
        """
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
        env["PYTHONPATH"] = os.pathsep.join([str(LIBRARY_PARENT), *filter(None, [env.get("PYTHONPATH")])])
        return env

    def start(self, resume: bool = False) -> TrainingProcess:
        """Start the run (``resume``: continue from its checkpoint); returns at once."""
        if self.is_running:
            raise RuntimeError("training is already running; cancel it first.")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._cancelled = False
        self._stderr.clear()
        self._process = subprocess.Popen(
            self.command(resume), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, env=self.environment(),
            cwd=str(self.out.parent))
        stderr_reader = threading.Thread(target=self._read_stderr, args=(self._process,), daemon=True)
        stderr_reader.start()
        self._reader = threading.Thread(target=self._read_stdout, args=(self._process, stderr_reader),
                                        daemon=True)
        self._reader.start()
        return self

    def resume(self) -> TrainingProcess:
        """Start again with ``--resume``: continues after the last epoch the checkpoint holds."""
        return self.start(resume=True)

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
            self._events.put(event)
        stderr_reader.join()  # the exit event's error message needs all of stderr
        returncode = process.wait()
        if returncode != 0:
            self.remove_leftovers()
        self._events.put({"stage": "exit", "returncode": returncode, "cancelled": self._cancelled,
                          "error": None if returncode == 0 or self._cancelled else self.error_message()})

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
        """Block until the process has ended and its output is read (scripts and tests; not the GUI)."""
        if self._reader is not None:
            self._reader.join(timeout)
        return self.returncode

    def cancel(self, timeout: float = 10.0) -> int | None:
        """Stop the run: SIGTERM, then kill after ``timeout`` s. The last epoch's checkpoint stays."""
        process = self._process
        if process is None or process.poll() is not None:
            return self.returncode
        self._cancelled = True
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.wait(timeout)
        self.remove_leftovers()
        return process.returncode

    def remove_leftovers(self) -> list[Path]:
        """Delete the temporary files a killed run left beside its outputs (only when it is not running)."""
        if self._process is not None and self._process.poll() is None:
            return []
        leftovers = atomic_leftovers(self.out)
        for path in leftovers:
            path.unlink(missing_ok=True)
        return leftovers
