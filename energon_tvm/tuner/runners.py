"""Runners: where a batch of measurements executes. Every runner returns results in submission order,
so a session's outcome depends only on its inputs and seed, never on which worker finished first.

* :class:`InlineRunner` measures in this process, one after another.
* :class:`LocalRunner` (the default) uses a ``concurrent.futures`` process pool on this machine.
* :class:`DaskRunner` uses a Dask distributed cluster, given a scheduler address or a ``Client``.

A runner may serve several sessions (one per workload of a model); use it as a context manager or
call :meth:`close`. ``dask.distributed`` is imported only when a :class:`DaskRunner` is made.

A :class:`LocalRunner`'s workers die with the process that started them, even when it is killed with
SIGKILL and runs no clean-up (``kill -9`` of ``tvmc tune``): on Linux the kernel signals them
(``prctl(PR_SET_PDEATHSIG, SIGKILL)``), elsewhere a watchdog thread in each worker polls its parent.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
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


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: seconds between a watchdog's looks at its parent (where prctl is not available)
WATCHDOG_PERIOD = 0.5


def _parent_death_signal() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc or no prctl symbol (another C library)
        return False


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCHDOG_PERIOD)
    os._exit(1)  # orphaned: nobody reads our results, and the pool's clean-up will never come


def _die_with_parent(parent: int, use_prctl: bool) -> None:
    """Process-pool initializer: end this worker when ``parent`` (the pid that made the pool) ends."""
    if not (use_prctl and _parent_death_signal()):
        threading.Thread(target=_watch_parent, args=(parent,), name="energon-parent-watchdog", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


class LocalRunner(Runner):
    """A pool of ``n_parallel`` processes (default: the CPU count), started on first use.

    Workers are spawned, not forked: the tuning process holds XGBoost's OpenMP threads and the
    progress bar's monitor thread, which a forked child would inherit in an undefined state. They die
    with this process (see the module docstring).
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
            # PR_SET_PDEATHSIG fires when the *thread* that started a worker ends, and the pool starts a
            # worker from whichever thread submits when none is idle. Only the main thread lives as long
            # as the process, so prctl is used from it alone, and every worker is started now (n no-ops
            # submitted at once, before any worker is up to take one), not later from another thread.
            on_main = threading.current_thread() is threading.main_thread()
            self._pool = ProcessPoolExecutor(self.n_parallel, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_die_with_parent, initargs=(os.getpid(), on_main))
            if on_main:
                for _ in range(self.n_parallel):
                    self._pool.submit(os.getpid)
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
