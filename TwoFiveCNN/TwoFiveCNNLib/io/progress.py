"""Progress of long work, said one way everywhere: the terminal, the Slicer log, and programs.

A progress event is a dict such as ``{"stage": "stage1", "epoch": 2, "epochs": 14, "loss": 0.9}``; a
loop over studies counts them instead, ``{"stage": "predict", "studies_done": 3, "studies": 20}``.
:func:`describe_event` is the one place that turns an event into the line people read: the
terminal, the Slicer training module's log box and status line, and the command line's counters.
:class:`ProgressReporter` writes events as JSON lines for programs (``--progress-json``, which the
Slicer module reads) and shows them on the terminal: as ``tqdm`` bars where tqdm is installed and
the terminal is interactive, else as plain lines (3D Slicer's Python has no tqdm, and a log file
should not fill up with carriage returns). tqdm is imported only when a bar is drawn.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

# Share of the whole training run each stage takes (rough, measured on a CPU), so that one bar,
# such as the Slicer module's, can cover all of them.
STAGE_PROGRESS = {"preprocess": (0, 10), "stage1": (10, 80), "embed": (80, 90), "stage2": (90, 99),
                  "done": (100, 100)}
PREPROCESS_SUBSETS = ("train", "val", "test")  # preprocessed in this order
# Metrics an event may carry, with the short name people read.
METRIC_NAMES = (("loss", "loss"), ("val_loss", "val loss"), ("val_balanced_accuracy", "val bal. acc."),
                ("val_kappa", "val kappa"))
COUNTER_LINES = 10  # plain-line counters print about this many lines per run, not one per item
# What a counted event counts, as its (done, total) fields: a training stage's epochs, the studies of
# a loop over studies (predict's batch, preprocessing, the command line's counters), or stage 2's
# augmented views of the training studies.
COUNT_FIELDS = (("epoch", "epochs"), ("studies_done", "studies"), ("views_done", "views"))
# What an ``exit`` event's ``job`` is called in its text, and what a cancel of it keeps.
JOB_NAMES = {"train": "training", "predict": "batch prediction"}
CANCELLED_TEXT = {
    "train": "cancelled; the last completed epoch is kept in the checkpoint (Resume continues from it)",
    "predict": "cancelled; the studies graded so far keep their complete outputs (no summary.tsv)",
}


# ---------------------------------------------------------------------------------------- text


def subset_title(subset: str, n_studies: int, held_out: str = "data") -> str:
    """What a figure was measured on, and on how many studies, so that a score on a small test split is
    not read against one on a large held-out set as if they were one measurement: ``test split (13
    studies of the training cohort)``, ``held-out phantoms (50 studies, never trained on)``."""
    studies = f"{n_studies} {'study' if n_studies == 1 else 'studies'}"
    titles = {"train": f"training split ({studies})",
              "val": f"validation split ({studies} of the training cohort)",
              "test": f"test split ({studies} of the training cohort)",
              "held_out": f"held-out {held_out} ({studies}, never trained on)"}
    return titles.get(subset, f"{subset} ({studies})")


def format_seconds(seconds: float) -> str:
    """``"45 s"``, ``"1 min 15 s"`` or ``"2 h 05 min"``: as precise as a remaining time deserves."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def event_counts(event: dict) -> tuple[int, int] | None:
    """``(done, total)`` of a counted event, whatever it counts (:data:`COUNT_FIELDS`); None if none."""
    for done_field, total_field in COUNT_FIELDS:
        done, total = event.get(done_field), event.get(total_field)
        if isinstance(done, int) and isinstance(total, int):
            return done, total
    return None


def _title(event: dict) -> str:
    """The stage, with the data subset it works on (``preprocess val``)."""
    return str(event.get("stage", "?")) + (f" {event['subset']}" if "subset" in event else "")


def _details(event: dict, time_left: bool = True) -> list[str]:
    """What an event says besides its stage and count: metrics, time left, a note."""
    parts = [f"{short} {event[key]:.3f}" for key, short in METRIC_NAMES
             if isinstance(event.get(key), (int, float)) and not isinstance(event.get(key), bool)]
    if time_left and isinstance(event.get("eta_s"), (int, float)) and event["eta_s"] > 0:
        parts.append(f"{event.get('stage', '?')} ends in ~{format_seconds(event['eta_s'])}")
    if event.get("message") not in (None, ""):
        parts.append(str(event["message"]))
    if event.get("current") not in (None, ""):
        parts.append(f"now {event['current']}")
    return parts


def describe_event(event: dict) -> str:
    """One line for people: stage, count, metrics and time left, or what a log, exit or done event says.

    ``exit`` events come from :class:`~TwoFiveCNNLib.app.processes.BackgroundProcess` (the child
    process of a ``job``, training when not said, ended); every other stage is one the training or
    a command reports.
    """
    stage = event.get("stage", "?")
    if stage == "log":
        return str(event.get("message", ""))
    if stage == "exit":
        job = str(event.get("job", "train"))
        name = JOB_NAMES.get(job, job)
        if event.get("cancelled"):
            return CANCELLED_TEXT.get(job, "cancelled")
        if event.get("ok", event.get("returncode") == 0):
            failed = " (some studies failed: see summary.tsv)" if job == "predict" and event.get("returncode") else ""
            return f"{name} process finished{failed}"
        return f"{name} failed (exit code {event.get('returncode')}): {event.get('error')}"
    if stage == "done":
        test, n_studies = event.get("test"), event.get("test_studies")
        where = subset_title("test", n_studies) if isinstance(n_studies, int) else "test"
        shown = f", {where} balanced accuracy {test:.3f}" if isinstance(test, float) else ""
        return f"done: model written to {event.get('model')}{shown}"
    counts = event_counts(event)
    return ", ".join([_title(event), *([f"{counts[0]}/{counts[1]}"] if counts else []), *_details(event)])


def progress_percent(event: dict) -> int | None:
    """Overall progress of a training run (0..100) after ``event``; None if the event says nothing of it."""
    stage = event.get("stage")
    if stage not in STAGE_PROGRESS:
        return None
    low, high = STAGE_PROGRESS[stage]
    counts = event_counts(event)
    fraction = counts[0] / counts[1] if counts and counts[1] > 0 else 0.0
    if stage == "preprocess":
        subset = event.get("subset", "train")
        fraction = (PREPROCESS_SUBSETS.index(subset) if subset in PREPROCESS_SUBSETS else 0) + fraction
        fraction /= len(PREPROCESS_SUBSETS)
    return round(low + (high - low) * min(max(fraction, 0.0), 1.0))


# ---------------------------------------------------------------------------------------- terminal


def _tqdm_class() -> Any:
    """tqdm's bar class, or None where tqdm is not installed (3D Slicer's Python)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _is_interactive(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class TerminalProgress:
    """Events shown on a terminal: a tqdm bar per stage (and subset), or one plain line per event.

    ``bars``: True draws bars whenever tqdm is importable, False never does, None (the default)
    only on an interactive terminal. Events without a count (``done``, notes) are always lines,
    written above any bar in progress so that it is not torn.
    """

    def __init__(self, stream: IO[str], bars: bool | None = None) -> None:
        self.stream = stream
        wanted = _is_interactive(stream) if bars is None else bars
        self._tqdm = _tqdm_class() if wanted else None
        self._bar: Any = None
        self._bar_key: tuple[str, str] | None = None

    @property
    def draws_bars(self) -> bool:
        return self._tqdm is not None

    def show(self, event: dict) -> None:
        counts = event_counts(event)
        if self._tqdm is None or counts is None or counts[1] <= 0:
            self.write(describe_event(event))
            return
        done, total = counts
        key = (str(event.get("stage", "?")), str(event.get("subset", "")))
        if self._bar is not None and (key != self._bar_key or self._bar.total != total or done < self._bar.n):
            self.close()  # stages run one after the other: a new one ends the last one's bar
        if self._bar is None:
            # ``initial`` rather than an update: a resumed run's rate counts only the epochs it trains.
            self._bar = self._tqdm(total=total, initial=done, desc=_title(event), file=self.stream,
                                   dynamic_ncols=True, leave=True)
            self._bar_key = key
        else:
            self._bar.update(done - self._bar.n)
        self._bar.set_postfix_str(", ".join(_details(event, time_left=False)))  # tqdm shows its own
        if done >= total:
            self.close()

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._tqdm.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar in progress, if any (it stays on screen)."""
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_key = None, None


class ProgressReporter:
    """Reports ``event(stage=..., epoch=..., epochs=..., ...)`` calls (or ``studies_done=..., studies=...``).

    JSON lines go to ``json_stream`` (one object per line, flushed at once, so a reading process
    sees each event as it happens); people see the events on ``terminal`` unless ``quiet``
    (see :class:`TerminalProgress` for ``bars``).
    """

    def __init__(self, json_stream: IO[str] | None = None, terminal: IO[str] | None = sys.stderr,
                 quiet: bool = False, bars: bool | None = None) -> None:
        self.json_stream = json_stream
        self.terminal = None if quiet else terminal
        self._display = TerminalProgress(self.terminal, bars) if self.terminal is not None else None
        self._stage_start: dict[str, float] = {}

    def event(self, stage: str, **fields: Any) -> dict:
        """Report one event; returns it as written, with ``elapsed_s`` (and ``eta_s`` when counted)."""
        now = time.monotonic()
        start = self._stage_start.setdefault(stage, now)
        record = {"stage": stage, **fields, "elapsed_s": round(now - start, 2)}
        done, total = event_counts(fields) or (0, 0)
        if done > 0:
            record["eta_s"] = round((now - start) / done * (total - done), 1)
        self._write_json(record)
        if self._display is not None:
            if stage == "done":
                self._display.close()
            self._display.show(record)
        return record

    def message(self, text: str) -> None:
        """A free-text note (the JSON stream carries it as a ``log`` event)."""
        self._write_json({"stage": "log", "message": text})
        if self._display is not None:
            self._display.write(text)

    def close(self) -> None:
        """End a terminal bar still in progress (an interrupted stage)."""
        if self._display is not None:
            self._display.close()

    def _write_json(self, record: dict) -> None:
        if self.json_stream is not None:
            self.json_stream.write(json.dumps(record) + "\n")
            self.json_stream.flush()


def counter(stage: str, terminal: IO[str] | None = None, every_call: bool = False,
            bars: bool | None = None) -> Callable[..., None]:
    """A ``progress(done, total, *details)`` callback, as loops over studies take, showing the studies done.

    Plain lines come about :data:`COUNTER_LINES` times per run (every call with ``every_call``,
    e.g. one line per predicted study); a first detail (such as the file at hand) is shown too.
    ``terminal`` defaults to ``sys.stderr`` as it is at the time of the call.
    """
    display: TerminalProgress | None = None

    def report(done: int, total: int, *details: Any) -> None:
        nonlocal display
        if display is None:
            display = TerminalProgress(terminal if terminal is not None else sys.stderr, bars)
        step = max(1, total // COUNTER_LINES)
        if every_call or display.draws_bars or done == total or done % step == 0:
            event = {"stage": stage, "studies_done": done, "studies": total}
            if details:
                event["message"] = str(details[0])
            display.show(event)

    return report


def item_progress(reporter: ProgressReporter, stage: str, names: Sequence[str]) -> Callable[..., None]:
    """A ``progress(done, total, *details)`` callback for a loop over named studies (a batch's).

    Reports one event at once (none done, the first study ``current``) and one after every study, with
    the count (``studies_done`` of ``studies``), the study just done (``finished``) and the one now at
    work (``current``, absent after the last): a program following the events can say "3/20, now
    study_0004" at any time.
    """
    names = list(names)

    def fields(done: int, total: int) -> dict[str, Any]:
        named = {"finished": names[done - 1]} if 0 < done <= len(names) else {}
        if done < min(total, len(names)):
            named["current"] = names[done]
        return {"studies_done": done, "studies": total, **named}

    reporter.event(stage, **fields(0, len(names)))

    def report(done: int, total: int, *details: Any) -> None:
        reporter.event(stage, **fields(done, total))

    return report
