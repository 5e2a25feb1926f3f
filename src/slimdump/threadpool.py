"""A small pool of worker threads for the capture path.

The writers hand page work (read, zero-test, compress: C code and system
calls that release the GIL) to one thread per CPU.  The standard
:class:`concurrent.futures.ThreadPoolExecutor` would do, but importing
``concurrent.futures`` pulls in ``logging`` and ``traceback``: about 7 ms of
a capture whose whole budget, on a small dump, is makedumpfile's 200 ms.
This pool offers the part of the ``Executor`` interface the writers use
(``submit``, ``result``, ``shutdown``); an ``Executor`` passed in by a
caller works just as well.
"""

from __future__ import annotations

import os
import threading
from _queue import SimpleQueue  # the C queue itself: module queue costs more to import
from collections.abc import Callable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset
    or a capture kernel's nr_cpus=1): one worker thread each."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Job:
    """The result of one submitted call: :meth:`result` waits for it and
    returns its value or raises its exception."""

    __slots__ = ("_done", "_error", "_value")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()                  # released when the call has run
        self._value: Any = None
        self._error: BaseException | None = None

    def result(self) -> Any:
        with self._done:
            pass
        if self._error is not None:
            raise self._error
        return self._value

    def _finish(self, value: Any, error: BaseException | None) -> None:
        self._value, self._error = value, error
        self._done.release()


class CancelledJob(Exception):
    """The pool was shut down before the job ran."""


class ThreadPool:
    """``workers`` threads, started on the first :meth:`submit`."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a thread pool needs at least one worker")
        self.workers = workers
        self._queue: SimpleQueue[tuple[Job, Callable[..., Any], tuple[Any, ...]] | None] = \
            SimpleQueue()
        self._threads: list[threading.Thread] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Job:
        job = Job()
        self._queue.put((job, fn, args))
        if not self._threads:
            for n in range(self.workers):
                thread = threading.Thread(target=self._run, name=f"slimdump-worker-{n}",
                                          daemon=True)
                thread.start()
                self._threads.append(thread)
        return job

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, fn, args = item
            try:
                value = fn(*args)
            except BaseException as exc:      # handed to whoever waits for the job
                job._finish(None, exc)
            else:
                job._finish(value, None)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the threads once the queued jobs are done (``cancel_futures``:
        jobs not started yet fail with :class:`CancelledJob` instead)."""
        if cancel_futures:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    item[0]._finish(None, CancelledJob())
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        self._threads = []
