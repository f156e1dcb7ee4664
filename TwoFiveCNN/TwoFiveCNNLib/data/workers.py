"""Worker processes that make studies side by side: results in order, a bounded queue, no orphans.

``Executor.map`` submits every job at once, so a cohort of a billion studies becomes a billion futures
before the first study is made; here at most a few jobs per worker wait at a time, drawn lazily from
the caller's iterator (which may claim each job's outputs as it yields it). A worker whose parent is
killed (SIGKILL skips the pool's shutdown) would go on computing, holding its memory, for nobody:
each worker watches its parent and exits once it has gone.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any, TypeVar

PARENT_POLL_S = 0.5  # how often a worker checks that its parent is still there
JOBS_WAITING_PER_WORKER = 2  # jobs submitted ahead of the results taken: keeps workers busy, memory bounded

Result = TypeVar("Result")


def exit_with_parent(parent_pid: int) -> None:
    """Pool initializer: a daemon thread ends this process once its parent ``parent_pid`` has gone.

    An orphan is re-parented (to init or a subreaper), so ``os.getppid()`` no longer returns the pid
    it was started by; the parent's pid is passed in rather than read here, in case the parent died
    before the worker started. A study half-written at that moment is a temporary file, which the next
    run sweeps (its writer's pid is dead).
    """

    parent = multiprocessing.parent_process()  # spawned workers hold a sentinel that ends with the parent

    def watch() -> None:
        if parent is not None:
            parent.join()  # returns when the parent has gone; also on Windows, where getppid() keeps its pid
        else:
            while os.getppid() == parent_pid:
                time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def map_in_order(function: Callable[..., Result], jobs: Iterable[tuple[Any, ...]], workers: int) -> Iterator[Result]:
    """``function(*job)`` for each job, in order: in this process for one worker, else in ``workers``
    spawned processes with at most :data:`JOBS_WAITING_PER_WORKER` jobs each submitted ahead.

    ``jobs`` is drawn only as workers become free. Leaving the loop early (an error, Ctrl+C) cancels
    the jobs not yet started and waits for those running.
    """
    jobs = iter(jobs)
    if workers <= 1:
        yield from (function(*job) for job in jobs)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=exit_with_parent,
                               initargs=(os.getpid(),))
    try:
        waiting: deque[Future] = deque(pool.submit(function, *job)
                                       for job in itertools.islice(jobs, JOBS_WAITING_PER_WORKER * workers))
        while waiting:
            result = waiting.popleft().result()
            waiting.extend(pool.submit(function, *job) for job in itertools.islice(jobs, 1))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
