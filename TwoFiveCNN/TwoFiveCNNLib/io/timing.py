"""Wall time per stage of one piece of work, for the benchmark's profile of a prediction.

The stages are timed where the work is done (``predict_volume``, ``write_prediction``), so the profile
is of the code users run, not of a copy of it. Without a :class:`StageTimes`, timing costs nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext


class StageTimes(dict):
    """Seconds per stage name, summed when a stage runs more than once."""

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


def timed(times: StageTimes | None, name: str) -> AbstractContextManager[None]:
    """``times.stage(name)``, or nothing when no one is timing."""
    return nullcontext() if times is None else times.stage(name)
