"""Writing a generated cohort (``twofivecnn phantoms``, ``synth``): owned, resumable and bounded.

- The plan is lazy: study n's grade follows from the counts, so asking for 10^11 studies costs no memory
  before the room check refuses it.
- The room a run needs, on disk and in memory, is estimated before the first study and refused with
  the figures when it is not there.
- A journal (``.<summary>.journal.jsonl``: the settings, then one record per study written) lets a
  re-run of the same command, after a kill, skip the studies already made; a run with other settings
  is refused, saying what differs. The summary (``synth.json``, ``phantoms.json``) is written last, so
  its presence still means a whole cohort.
- Every output is claimed in the folder's :class:`~..io.manifest.OutputManifest` before it is written.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ..io.atomic import atomic_path, sweep_stale_temporaries, write_json_atomic
from ..io.manifest import OutputManifest
from ..io.volume import is_hidden

CLAIM_BATCH = 64  # studies whose files are claimed in the output manifest at once (it is rewritten per claim)
RECORD_BYTES = 5000  # memory a study's record holds until the summary is written (a synth record: 4.2 kB measured)


# ------------------------------------------------------------------------------------------ the plan


def numbered_grades(counts: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(n, grade) of every study, n = 1.. across grades in order, made one at a time."""
    n = 0
    for grade, count in enumerate(counts):
        for _ in range(count):
            n += 1
            yield n, grade


def study_number(name: str, prefix: str, suffix: str) -> int | None:
    """n of a file named ``<prefix>_NNNN<suffix>`` as a cohort names it (four digits or more), else None."""
    match = re.fullmatch(re.escape(prefix) + r"_(\d{4,})" + re.escape(suffix), name)
    if match is None or f"{int(match[1]):04d}" != match[1]:
        return None
    return int(match[1])


def grade_of(counts: Sequence[int], n: int) -> int | None:
    """The grade study n has in a cohort of ``counts``, or None when it is not part of it."""
    first = 1
    for grade, count in enumerate(counts):
        if first <= n < first + count:
            return grade
        first += count
    return None


def present_files(out: Path, folders: Sequence[str], planned: Callable[[Path], bool]) -> list[Path]:
    """The files under ``out/<folders>`` that this cohort writes, to claim before any study is made (one
    that twofivecnn did not write is refused, naming it). A file it would not write is refused here: it
    would mix into the data set. Hidden files (temporaries, macOS ``._`` files) are no study of any
    index, so they stay."""
    present, stale = [], []
    for folder in folders:
        if (out / folder).is_dir():
            for path in sorted((out / folder).rglob("*")):
                if path.is_file() and not is_hidden(path):
                    (present if planned(path.relative_to(out)) else stale).append(path)
    if stale:
        raise ValueError(f"{out}: already holds {len(stale)} file(s) this cohort would not replace (e.g. "
                         f"{stale[0]}); they would mix into the data set. Choose an empty output folder "
                         f"or delete them.")
    return present


# ------------------------------------------------------------------------------------------ the room


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1e3:.0f} kB"


def available_memory_bytes() -> int | None:
    """Memory the system can still give (Linux's ``MemAvailable``), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def check_room(out: Path, studies: int, study_bytes: float, basis: str, process_bytes: float,
               processes: int) -> None:
    """Refuse, with the figures, a run whose ``studies`` files (``study_bytes`` each on disk, estimated
    from ``basis``) would not fit on ``out``'s disk, or whose ``processes`` (``process_bytes`` each) and
    records would not fit in the memory available. The fix is in the message: fewer studies, another
    disk, fewer workers."""
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    free = shutil.disk_usage(existing).free
    need = studies * study_bytes
    if need > free:
        fit = int(free // study_bytes)
        raise ValueError(f"{out}: {studies} studies need about {_size(need)} on disk ({_size(study_bytes)} each, "
                         f"estimated from {basis}), and that disk has {_size(free)} free. Ask for at most "
                         f"{fit} studies with --counts, or write to a disk with more room.")
    available = available_memory_bytes()
    records = studies * RECORD_BYTES
    if available is None or processes * process_bytes + records <= available:
        return
    workers = int((available - records) // process_bytes)
    fix = (f"use --workers {workers}" if workers >= 1 else
           f"ask for at most {max(0, int((available - process_bytes) // RECORD_BYTES))} studies with --counts")
    raise ValueError(f"{out}: {studies} studies with {processes} process(es) need about "
                     f"{_size(processes * process_bytes + records)} of memory ({_size(process_bytes)} per process "
                     f"for {basis}, {_size(records)} for the studies' records), and {_size(available)} is "
                     f"available. {fix[0].upper() + fix[1:]}, or free memory.")


# --------------------------------------------------------------------------------------- the journal


def _difference(earlier: Any, now: Any) -> str:
    """``earlier (now now)``; for long lists (a folder of bases) only their first difference."""
    if earlier is None:  # a cohort made before the setting was recorded
        return f"not recorded (now {json.dumps(now)})"
    if isinstance(earlier, list) and isinstance(now, list) and len(json.dumps(earlier) + json.dumps(now)) > 120:
        if len(earlier) != len(now):
            return f"{len(earlier)} entries (now {len(now)})"
        i = next(i for i, (a, b) in enumerate(zip(earlier, now)) if a != b)
        return f"entry {i + 1} {json.dumps(earlier[i])} (now {json.dumps(now[i])})"
    return f"{json.dumps(earlier)} (now {json.dumps(now)})"


class CohortJournal:
    """The settings and study records of a cohort being written, one JSON line each, beside its summary.

    Until the summary is written (last), the journal is what a re-run of the same command resumes from,
    and what a run with other settings is refused by. A line cut short by a kill is ignored: that study
    is made again.
    """

    def __init__(self, out: Path, summary_name: str, settings: dict[str, Any], done: dict[str, dict]) -> None:
        self.summary = out / summary_name
        self.path = out / f".{summary_name}.journal.jsonl"
        self.settings = settings
        self._done = done
        self._file: TextIO | None = None

    @classmethod
    def open(cls, out: Path, summary_name: str, settings: dict[str, Any], compared: Mapping[str, str],
             command: str) -> CohortJournal:
        """Read what an earlier run into ``out`` recorded (its journal, else its summary) and refuse it if
        its settings differ from ``settings`` in one of ``compared`` (setting -> how the user gives it)."""
        journal = cls(out, summary_name, settings, {})
        earlier, records = journal._read_earlier()
        if earlier is not None:
            differ = [f"{option} {_difference(earlier.get(key), settings.get(key))}"
                      for key, option in compared.items() if earlier.get(key) != settings.get(key)]
            if differ:
                if any(key not in earlier for key in compared):  # an older version's: it cannot be resumed
                    other = f"or delete {out}'s cohort (its {summary_name} lists the files) to make it anew"
                else:
                    again = f"`{earlier['command']}`" if earlier.get("command") else "with the earlier settings"
                    other = f"or re-run {again} to finish or repeat that cohort"
                raise ValueError(
                    f"{out}: holds a cohort made with other settings: {'; '.join(differ)}. This one would not "
                    f"replace all its files, and mixed they would not be one data set. Choose another output "
                    f"folder for `{command}`, {other}.")
        journal._done = {record["path"]: record for record in records
                         if isinstance(record, dict) and isinstance(record.get("path"), str)}
        return journal

    def _read_earlier(self) -> tuple[dict | None, list]:
        if self.path.is_file():
            settings, records = None, []
            with open(self.path, encoding="utf-8") as lines:
                for line in lines:
                    try:
                        entry = json.loads(line)
                    except ValueError:  # the last line of a killed run, cut short
                        continue
                    if settings is None:
                        settings = entry.get("settings") if isinstance(entry, dict) else None
                    else:
                        records.append(entry)
            if isinstance(settings, dict):
                return settings, records
        try:
            summary = json.loads(self.summary.read_text(encoding="utf-8"))
            return dict(summary["settings"]), list(summary["studies"])
        except (ValueError, KeyError, TypeError, OSError):  # none, or not ours: claiming it refuses the latter
            return None, []

    def earlier_record(self, path: str, out: Path, files: Sequence[str]) -> dict | None:
        """The record an earlier run of these settings made of the study at ``path``, when it and all
        its ``files`` are still there (a study written whole, masks first); else None."""
        record = self._done.get(path)
        if record is None or not all((out / file).is_file() for file in (path, *files)):
            return None
        return record

    def studies_to_make(self, counts: Sequence[int], manifest: OutputManifest,
                        files_of: Callable[[int, int], Sequence[Path]],
                        kept: Callable[[int, dict], None]) -> Iterator[tuple[int, int]]:
        """(n, grade) of the studies still to make, in order, their files (``files_of(n, grade)``, relative
        to the output folder, the study first) claimed before they are handed out; a study an earlier run
        made is passed to ``kept(n, record)`` instead. Claimed :data:`CLAIM_BATCH` studies at a time: the
        manifest is rewritten once per batch, not once per study."""
        out = self.summary.parent
        plan = numbered_grades(counts)
        while batch := list(itertools.islice(plan, CLAIM_BATCH)):
            to_make = []
            for n, grade in batch:
                files = [Path(file).as_posix() for file in files_of(n, grade)]
                record = self.earlier_record(files[0], out, files[1:])
                if record is None:
                    to_make.append((n, grade, files))
                else:
                    kept(n, record)
            if to_make:
                manifest.claim(*(out / file for *_, files in to_make for file in files))
            yield from ((n, grade) for n, grade, _ in to_make)

    @property
    def done_count(self) -> int:
        """Studies an earlier run of these settings recorded as made."""
        return len(self._done)

    def begin(self, manifest: OutputManifest, present: Sequence[Path], folders: Sequence[Path]) -> None:
        """Claim the journal, the summary and the cohort's files ``present`` (refused, naming the file,
        if twofivecnn did not write one), sweep the temporaries that dead writers left in the output
        folder and in ``folders`` (those of live writers stay), and start a fresh journal holding the
        settings and the records of the studies already made."""
        manifest.claim(self.path, self.summary, *present)
        for folder in (self.path.parent, *folders):
            sweep_stale_temporaries(folder)
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"settings": self.settings}) + "\n")
            f.writelines(json.dumps(record) + "\n" for record in self._done.values())
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by finish()/close()

    def add(self, record: dict) -> None:
        """Record a study once its files are written (flushed to disk: the kill may come next)."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self, records: list[dict]) -> None:
        """Write the summary (the settings and every study's record), then drop the journal."""
        self.close()
        write_json_atomic(self.summary, {"settings": self.settings, "studies": records})
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
