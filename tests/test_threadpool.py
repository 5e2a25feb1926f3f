"""slimdump.threadpool: results in submission order whatever the timing,
exceptions handed to the waiter, queued jobs cancelled on shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from slimdump.threadpool import CancelledJob, ThreadPool


def test_results_and_errors() -> None:
    pool = ThreadPool(3)
    jobs = [pool.submit(lambda i: (time.sleep(0.001 * (i % 3)), i * i)[1], i)
            for i in range(50)]
    failing = pool.submit(int, "not a number")
    assert [job.result() for job in jobs] == [i * i for i in range(50)]
    with pytest.raises(ValueError):
        failing.result()
    names = {pool.submit(lambda: threading.current_thread().name).result()
             for _ in range(20)}
    assert names <= {f"slimdump-worker-{n}" for n in range(3)}
    pool.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("slimdump-worker")]


def test_shutdown_cancels_queued_jobs() -> None:
    pool = ThreadPool(1)
    gate = threading.Event()
    first = pool.submit(gate.wait, 5)
    queued = [pool.submit(int, "1") for _ in range(5)]
    stopper = threading.Timer(0.05, gate.set)
    stopper.start()
    pool.shutdown(wait=True, cancel_futures=True)
    assert first.result() is True
    for job in queued:
        with pytest.raises(CancelledJob):
            job.result()


def test_needs_a_worker() -> None:
    with pytest.raises(ValueError):
        ThreadPool(0)
