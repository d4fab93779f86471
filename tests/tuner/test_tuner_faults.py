"""Faults around a tuning session: workers that outlive a killed tuner, measurements the bound rules out,
and an interrupted session's records file."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from energon_tvm.tuner import MeasureResult, Runner, best_schedule, read_records, tune

# Creates a LocalRunner pool, warms it with one measurement, prints the workers' pids and SIGKILLs itself:
# no clean-up runs, as for `kill -9` of `tvmc tune`. "thread" makes the pool off the main thread, where the
# workers rely on the watchdog (prctl's parent-death signal follows the thread that started them).
_KILLED_PARENT = textwrap.dedent("""
    import os, signal, sys, threading
    import numpy as np
    from energon_tvm.runtime_sim.profile import SparsityProfile
    from energon_tvm.schedules.schedule import Schedule
    from energon_tvm.schedules.workload import AttentionWorkload
    from energon_tvm.tuner import LocalRunner, MeasureTask

    def main():
        w = AttentionWorkload(1, 1, 8, 8, 8)
        empty = SparsityProfile(tuple(np.zeros((1, 8, 8), bool) for _ in range(len(w.params.rounds) + 1)))
        task = MeasureTask.create(w, "edge", empty)
        runner = LocalRunner(2)

        def warm():
            (result,) = runner.run(task, [Schedule(8, 8)])
            assert result.ok, result.error

        if sys.argv[1] == "thread":
            t = threading.Thread(target=warm)
            t.start()
            t.join()
        else:
            warm()
        print(" ".join(str(pid) for pid in runner._pool._processes), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        main()
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has died; whether anyone reaps it is not ours to wait for


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_local_runner_workers_die_with_a_killed_parent(tmp_path, where):
    script, out, err = tmp_path / "killed_parent.py", tmp_path / "out", tmp_path / "err"
    script.write_text(_KILLED_PARENT)
    # files, not pipes: workers that survived would hold a pipe open and a read of it would wait for them
    with open(out, "w") as stdout, open(err, "w") as stderr:
        returncode = subprocess.run([sys.executable, str(script), where], stdout=stdout, stderr=stderr,
                                    timeout=120).returncode
    assert returncode == -signal.SIGKILL, err.read_text()
    pids = [int(p) for p in out.read_text().split()]
    assert pids
    deadline = time.monotonic() + 10
    try:
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), f"workers {pids} outlived their parent"
    finally:
        for p in pids:  # a failed run must not leave them behind either
            if _alive(p):
                os.kill(p, signal.SIGKILL)


class _FixedRunner(Runner):
    """Reports ``cycles`` for every schedule; raises KeyboardInterrupt on batch ``interrupt_at``."""

    def __init__(self, cycles, interrupt_at=None):
        self.cycles, self.interrupt_at, self.batches = cycles, interrupt_at, 0

    def run(self, task, schedules):
        self.batches += 1
        if self.batches == self.interrupt_at:
            raise KeyboardInterrupt
        return [MeasureResult(self.cycles, 10) for _ in schedules]


def test_measurements_below_the_floor_are_not_recorded(tmp_path, cfg, workload, profile, small_knobs):
    path = tmp_path / "records.jsonl"
    with pytest.warns(UserWarning, match=r"measured 1 cycles, below the 1,073-cycle lower bound"):
        result = tune(workload, cfg, profile, trials=3, tuner="random", runner=_FixedRunner(1), knobs=small_knobs,
                      records=path, batch_size=2, progress=False)
    assert result.best is None and all(r.error.startswith("BoundViolation: measured 1 cycles") for r in result.records)
    assert best_schedule(path, workload, cfg) is None  # the file stays usable: nothing in it is refused


def test_an_interrupted_session_leaves_whole_lines(tmp_path, cfg, workload, profile, small_knobs):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"config":"edge","cyc')  # a torn line from an earlier killed session
    with pytest.warns(UserWarning, match="removed a torn final line"), pytest.raises(KeyboardInterrupt):
        tune(workload, cfg, profile, trials=20, tuner="random", runner=_FixedRunner(5000, interrupt_at=3),
             knobs=small_knobs, records=path, batch_size=4, progress=False)
    text = path.read_text()
    assert text.endswith("\n") and [json.loads(line)["trial"] for line in text.splitlines()] == list(range(5))
    assert len(read_records(path)) == 5 and best_schedule(path, workload, cfg) is not None
