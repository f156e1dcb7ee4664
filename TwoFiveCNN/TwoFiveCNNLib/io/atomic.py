"""Atomic file writes: a reader never sees a half-written file, a crash leaves none behind.

Temporary files and folders are named ``.<target>.<host>-<pid>.<random>.tmp<ext>``: the writer's host
and process ID in the name let a later run tell a killed writer's leftovers (swept) from a concurrent
writer's work in progress (kept).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp")


def _compound_suffix(path: Path) -> str:
    """The suffix a writer chooses its format by (``.nii.gz`` rather than ``.gz``)."""
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return path.suffix


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _host() -> str:
    """This machine's name as it appears in temporary names (no dots, so a name parses back)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def temporary_path(target: str | os.PathLike, folder: bool = False) -> Path:
    """Create a temporary file (or folder) beside ``target``, named for this process, and return it.

    It keeps the target's extension, so format-by-extension writers (SimpleITK, PIL, torch) still work.
    The caller renames it onto ``target`` or removes it. Ordinary permissions, not mkstemp's owner-only.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{_host()}-{os.getpid()}."
    suffix = ".tmp" + ("" if folder else _compound_suffix(target))
    if folder:
        path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
        os.chmod(path, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
        os.close(fd)
        path = Path(name)
        os.chmod(path, 0o666 & ~_umask())
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    On any error the temporary file is removed; after SIGKILL, :func:`sweep_stale_temporaries` does.
    """
    target = Path(path)
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _process_alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT there: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, another user's (EPERM)
        return True
    return True


def writer_is_dead(temporary: Path) -> bool:
    """True for a temporary file or folder of ours whose writer, on this host, no longer runs.

    Names without a host and PID (another program's, or an older version's) are never judged dead.
    """
    match = _TEMPORARY.match(temporary.name)
    return bool(match) and match["host"] == _host() and not _process_alive(int(match["pid"]))


def sweep_stale_temporaries(folder: str | os.PathLike, target_name: str | None = None) -> list[Path]:
    """Delete the temporaries in ``folder`` (only those of ``target_name``, if given) whose writer is
    dead: SIGKILL skips the cleanup of :func:`atomic_path`. Not recursive; a concurrent run's survive."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = ".*.tmp*" if target_name is None else f".{glob_escape(target_name)}.*.tmp*"
    stale = [p for p in folder.glob(pattern) if writer_is_dead(p)]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries a killed writer of ``path`` left behind."""
    target = Path(path)
    return sweep_stale_temporaries(target.parent, target.name)


def glob_escape(text: str) -> str:
    """``text`` matched literally by :meth:`Path.glob` (model and study names may hold ``[`` or ``*``)."""
    return re.sub(r"([*?\[])", r"[\1]", text)
