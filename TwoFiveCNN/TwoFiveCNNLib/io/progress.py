"""Progress of long work: a terminal bar for people, JSON lines for programs (the Slicer training module)."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any


class ProgressReporter:
    """Reports ``event(stage=..., epoch=..., epochs=..., ...)`` calls.

    JSON lines go to ``json_stream`` (one object per line, flushed at once, so a reading process
    sees each event as it happens); a one-line bar goes to ``terminal`` unless ``quiet``.
    """

    def __init__(self, json_stream: IO[str] | None = None, terminal: IO[str] | None = sys.stderr,
                 quiet: bool = False) -> None:
        self.json_stream = json_stream
        self.terminal = None if quiet else terminal
        self._stage_start: dict[str, float] = {}

    def event(self, stage: str, **fields: Any) -> dict:
        now = time.monotonic()
        start = self._stage_start.setdefault(stage, now)
        record = {"stage": stage, **fields, "elapsed_s": round(now - start, 2)}
        done, total = fields.get("epoch"), fields.get("epochs")
        if isinstance(done, int) and isinstance(total, int) and done > 0:
            record["eta_s"] = round((now - start) / done * (total - done), 1)
        if self.json_stream is not None:
            self.json_stream.write(json.dumps(record) + "\n")
            self.json_stream.flush()
        if self.terminal is not None:
            self.terminal.write(_bar_line(record) + "\n")
            self.terminal.flush()
        return record

    def message(self, text: str) -> None:
        """A free-text note (the JSON stream carries it as a ``log`` event)."""
        if self.json_stream is not None:
            self.json_stream.write(json.dumps({"stage": "log", "message": text}) + "\n")
            self.json_stream.flush()
        if self.terminal is not None:
            self.terminal.write(text + "\n")
            self.terminal.flush()


def _bar_line(record: dict) -> str:
    done, total = record.get("epoch"), record.get("epochs")
    parts = [f"[{record['stage']}]"]
    if isinstance(done, int) and isinstance(total, int) and total > 0:
        filled = int(20 * done / total)
        parts.append(f"|{'#' * filled}{'.' * (20 - filled)}| {done}/{total}")
    for key in ("loss", "val_balanced_accuracy", "val_kappa", "val_loss"):
        if isinstance(record.get(key), float):
            parts.append(f"{key}={record[key]:.3f}")
    if "eta_s" in record:
        parts.append(f"eta {record['eta_s']:.0f}s")
    if "message" in record:
        parts.append(str(record["message"]))
    return " ".join(parts)
