"""Runners: where a batch of measurements executes. Every runner returns results in submission order,
so a session's outcome depends only on its inputs and seed, never on which worker finished first.

* :class:`InlineRunner` measures in this process, one after another.
* :class:`LocalRunner` (the default) uses a ``concurrent.futures`` process pool on this machine.
* :class:`DaskRunner` uses a Dask distributed cluster, given a scheduler address or a ``Client``.

A runner may serve several sessions (one per workload of a model); use it as a context manager or
call :meth:`close`. ``dask.distributed`` is imported only when a :class:`DaskRunner` is made.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from ..schedules.schedule import Schedule
from .errors import ClusterError, TuningError
from .measure import MeasureResult, MeasureTask, measure


class Runner:
    """Measures schedules of a :class:`MeasureTask`; subclasses say where."""

    name = "runner"

    def run(self, task: MeasureTask, schedules: Sequence[Schedule]) -> list[MeasureResult]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InlineRunner(Runner):
    """In this process, sequentially: no start-up cost, for tests and tiny spaces."""

    name = "inline"

    def run(self, task: MeasureTask, schedules: Sequence[Schedule]) -> list[MeasureResult]:
        return [measure(task, s.to_dict()) for s in schedules]


class LocalRunner(Runner):
    """A pool of ``n_parallel`` processes (default: the CPU count), started on first use.

    Workers are spawned, not forked: the tuning process holds XGBoost's OpenMP threads and the
    progress bar's monitor thread, which a forked child would inherit in an undefined state.
    """

    name = "local"

    def __init__(self, n_parallel: int | None = None):
        n = (os.cpu_count() or 1) if n_parallel is None else n_parallel
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise TuningError(f"n_parallel = {n_parallel!r} must be a positive integer")
        self.n_parallel = n
        self._pool: ProcessPoolExecutor | None = None

    def run(self, task: MeasureTask, schedules: Sequence[Schedule]) -> list[MeasureResult]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.n_parallel, mp_context=multiprocessing.get_context("spawn"))
        futures = [self._pool.submit(measure, task, s.to_dict()) for s in schedules]
        return [f.result() for f in futures]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskRunner(Runner):
    """Measurements as Dask tasks on the cluster behind ``scheduler``: a ``tcp://HOST:PORT`` address
    (connected here, within ``timeout`` seconds, and closed by :meth:`close`) or a ``Client`` the
    caller owns. Workers need energon-tvm installed; they receive each task's profile once."""

    name = "dask"

    def __init__(self, scheduler, *, timeout: float = 10.0):
        from distributed import Client  # lazy: dask takes ~1 s to import

        if isinstance(scheduler, Client):
            self.client, self._owned = scheduler, False
        else:
            if not isinstance(scheduler, str) or not scheduler:
                raise TuningError(f"dask scheduler {scheduler!r} must be an address such as "
                                  f"tcp://HOST:PORT or a distributed.Client")
            try:
                self.client = Client(scheduler, timeout=timeout, set_as_default=False)
            except ValueError as err:  # distributed's own check of the address's form
                raise ClusterError(f"dask scheduler address {scheduler!r} is not valid: {err}") from None
            except (OSError, TimeoutError) as err:
                raise ClusterError(f"cannot reach the Dask scheduler at {scheduler} within {timeout:g} s "
                                   f"({err})") from None
            self._owned = True
        self._scattered: dict[str, object] = {}

    def run(self, task: MeasureTask, schedules: Sequence[Schedule]) -> list[MeasureResult]:
        remote = self._scattered.get(task.digest)
        if remote is None:
            # one copy per worker instead of one per measurement (a BERT profile is ~1 MiB packed)
            remote = self.client.scatter(task, broadcast=True, hash=False)
            self._scattered = {task.digest: remote}  # drop the previous session's task
        futures = [self.client.submit(measure, remote, s.to_dict(), pure=False) for s in schedules]
        return list(self.client.gather(futures))

    def close(self) -> None:
        self._scattered.clear()
        if self._owned:
            self.client.close()


def make_runner(*, n_parallel: int | None = None, dask_scheduler=None, dask_timeout: float = 10.0) -> Runner:
    """The runner ``tvmc tune`` options select: Dask when a scheduler (address or Client) is given,
    else a local process pool of ``n_parallel`` workers."""
    if dask_scheduler is not None:
        return DaskRunner(dask_scheduler, timeout=dask_timeout)
    return LocalRunner(n_parallel)
