"""What twofivecnn wrote in a folder, so that a command replaces and removes only its own files.

Each command that writes outputs records them in ``<root>/.twofivecnn-manifest.json`` before it writes
them. A file that exists and is not recorded belongs to someone else: the command refuses to replace
it and names it, and nothing unrecorded is ever removed. Re-running a command into its own earlier
outputs (a resumed run, the Slicer batch) stays allowed, since they are recorded.

The manifest is read, merged and rewritten under a lock (where the platform has ``fcntl``), so
commands writing into one folder side by side do not lose each other's records.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .atomic import sweep_stale_temporaries, write_json_atomic

MANIFEST_NAME = ".twofivecnn-manifest.json"
MANIFEST_FORMAT = "twofivecnn-manifest"
MANIFEST_VERSION = 1


class OutputConflictError(ValueError):
    """An output would replace, remove or overlap something twofivecnn did not write."""


def _absolute(path: str | os.PathLike) -> Path:
    """The path made absolute and normalised, symlinks resolved: two names of one file compare equal."""
    return Path(os.path.realpath(os.path.abspath(path)))


class OutputManifest:
    """The record of what twofivecnn wrote under ``root``; :meth:`claim` before writing a file."""

    def __init__(self, root: Path, command: str) -> None:
        self.root, self.command = root, command
        self.path = root / MANIFEST_NAME
        self._entries: dict[str, dict] = {}
        self._swept: set[Path] = set()
        self._lock = threading.Lock()  # the batch writes a study's files in a background thread

    @classmethod
    def open(cls, root: str | os.PathLike, command: str) -> OutputManifest:
        """The manifest of the folder ``root`` (created if missing), for the command ``command``."""
        root = Path(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise OutputConflictError(f"{root}: is a file, not a folder; give a folder for the outputs of "
                                      f"twofivecnn {command}.") from None
        manifest = cls(root, command)
        manifest._entries = manifest._read()
        return manifest

    def _read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            record = json.loads(self.path.read_text(encoding="utf-8"))
            if record.get("format") != MANIFEST_FORMAT or not isinstance(record.get("entries"), dict):
                raise ValueError("not a twofivecnn manifest")
            return {str(k): v for k, v in record["entries"].items() if isinstance(v, dict)}
        except (OSError, ValueError, AttributeError) as error:
            raise OutputConflictError(
                f"{self.path}: cannot be read ({error}). It records which files in {self.root} twofivecnn wrote "
                f"and may replace. Choose another output folder, or delete it: the files it listed are then "
                f"treated as someone else's and never replaced.") from None

    def _key(self, path: str | os.PathLike) -> str:
        """``path`` relative to the root, with forward slashes; refused outside the root."""
        absolute, root = Path(os.path.abspath(path)), Path(os.path.abspath(self.root))
        try:
            relative = absolute.relative_to(root)
        except ValueError:
            raise OutputConflictError(f"{path}: lies outside the output folder {self.root}; twofivecnn "
                                      f"{self.command} writes only inside it.") from None
        if not relative.parts or relative.name == MANIFEST_NAME:
            raise OutputConflictError(f"{path}: is the output folder or its manifest, not an output file.")
        return relative.as_posix()

    def owns(self, path: str | os.PathLike) -> bool:
        """True when ``path`` (or a folder it lies in) is recorded as written by twofivecnn."""
        key = self._key(path)
        parts = key.split("/")
        with self._lock:
            return any("/".join(parts[:n]) in self._entries for n in range(1, len(parts) + 1))

    def claim(self, *paths: str | os.PathLike) -> None:
        """Record ``paths`` (files or folders under the root) as this command's, before writing them.

        Refused, naming the file, when one exists and is not recorded: it is someone else's. The
        first claim in a folder also sweeps the temporaries that killed runs left there.
        """
        keys = {self._key(p): Path(p) for p in paths}
        for path in keys.values():
            if (path.exists() or path.is_symlink()) and not self.owns(path):
                kind = "folder" if path.is_dir() else "file"
                raise OutputConflictError(
                    f"{path}: this {kind} exists and twofivecnn did not write it (it is not in {self.path}); "
                    f"twofivecnn {self.command} never replaces what it did not write. Move or rename it, or "
                    f"choose another output folder.")
        new = {key: {"command": self.command} for key, path in keys.items() if not self.owns(path)}
        if new:
            with self._locked():
                self._entries = {**self._read(), **new}
                write_json_atomic(self.path, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                              "entries": self._entries})
        for path in keys.values():
            parent = _absolute(path.parent)
            if parent not in self._swept:
                self._swept.add(parent)
                sweep_stale_temporaries(parent)

    def remove(self, path: str | os.PathLike) -> None:
        """Delete a recorded file or folder (and drop its record); anything unrecorded is refused."""
        path = Path(path)
        if not self.owns(path):
            raise OutputConflictError(f"{path}: twofivecnn did not write it (it is not in {self.path}), so "
                                      f"twofivecnn {self.command} does not remove it.")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        key = self._key(path)
        with self._locked():
            self._entries = {k: v for k, v in self._read().items() if k != key}
            write_json_atomic(self.path, {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
                                          "entries": self._entries})

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This thread alone, and this process alone where ``fcntl`` exists, reads and rewrites the record."""
        with self._lock:
            try:
                import fcntl
            except ImportError:  # Windows: threads of this process are serialised, processes are not
                yield
                return
            fd = os.open(self.root, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock


def refuse_overlap(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None],
                   command: str, output_files: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse output folders that are or contain an input, and output files that are inputs.

    ``outputs`` are folders a command writes into, ``output_files`` single files; ``inputs`` are the
    files and folders it reads (the model included; None entries are skipped). Writing into an input
    folder would mix outputs into what the next run reads; an output folder holding an input would
    put the input among files the command may replace. A folder inside an input folder is allowed
    (``in/results``): the commands read input folders one level deep.
    """
    sources = [(_absolute(p), Path(p)) for p in inputs if p is not None]
    for output in outputs:
        folder = _absolute(output)
        for source, given in sources:
            if source == folder or folder in source.parents:
                what = "is" if source == folder else "contains"
                raise OutputConflictError(
                    f"{output}: the output folder {what} the input {given}; twofivecnn {command} would write "
                    f"among the files it reads. Choose an output folder outside the inputs.")
    for output in output_files:
        file = _absolute(output)
        for source, given in sources:
            if source == file:
                raise OutputConflictError(f"{output}: is also an input of twofivecnn {command} ({given}); "
                                          f"choose another output file.")
