"""MetaSchedule (``tvm.s_tir.meta_schedule``) for the host kernels: :func:`tune` writes a database of
tuned kernels (``tvmc tune --host``), :func:`build` builds with it (``tvmc compile --tuning-records
DB_DIR``).

**The database** is a folder holding MetaSchedule's JSON database -- :data:`WORKLOADS` (one kernel per
line) and :data:`RECORDS` (one measured trial per line: the schedule's trace, its run times, the target)
-- and MetaSchedule's logs. :func:`open_database` checks a folder before TVM reads it.

**The kernels** are the PrimFuncs of :func:`energon_tvm.host.kernels`: the host module after the
Energon partition, legalised and fused as a build schedules it, so a database's workloads are the
kernels a build looks up. Each is one MetaSchedule task weighted by its call sites.

**Tuning** measures first, for every kernel the database holds no trial of, the default schedule
(:mod:`energon_tvm.host`) as a trial of its own, so a search that finds nothing faster keeps it.
MetaSchedule's evolutionary search with its XGBoost cost model takes the rest of the budget, over the
kernels worth it (:func:`worth_tuning`: the most expensive in the model first, none under 1% of its
time), and :func:`_verify` re-measures each one's best and default schedules at the end: the build
weighs a schedule by the median of its measurements (:func:`best_schedules`). The budget counts total
trials: the trials of this model's kernels for this ``mcpu`` already in the database count, and a run
adds only the rest, so a second run with a larger budget continues where the first stopped (the
search starts from the database's best schedules). MetaSchedule ends a run in whole rounds, so a run
may end over the budget by less than a round (at most 64 trials, fewer when the budget is small).
Candidates are compiled in this process (:func:`in_process_builder`: MetaSchedule's own builder starts
a fresh process per batch, tens of seconds here) and timed by MetaSchedule's local runner or, given a
Dask client, on the cluster's workers (:func:`dask_runner`).

**The tuned build** applies the records tuned for the build's ``mcpu`` (MetaSchedule's ApplyDatabase,
:func:`energon_tvm.host.pipeline`); the default schedules take every kernel without one, and
:class:`AppliedDatabase` says how many took which.

**Serialisation.** MetaSchedule keeps each kernel through TVM's IR serialiser (``tvm.ir.save_json``),
which segfaults in apache-tvm 0.27.0.post1 with apache-tvm-ffi 0.1.15.post2 (0.1.14.post0 works).
:func:`check_serialization` probes it in a child process, so such an installation gets a one-line error
instead of a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .isa.errors import EnergonError

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
#: trials MetaSchedule measures per round of a task (its default)
TRIALS_PER_ROUND = 64
#: seconds a measurement may take before MetaSchedule's runner gives up on it
RUN_TIMEOUT = 120.0
#: how a candidate is timed (MetaSchedule's EvaluatorConfig): five single runs, each after the caches were
#: flushed of every argument but the first, as a kernel runs inside the model (its weights and output
#: cold, its input just written); timed with warm caches, the search favoured schedules that re-read the
#: weights, slower in the model than the default ones
EVALUATOR = {"number": 1, "repeat": 5, "min_repeat_ms": 0, "enable_cpu_cache_flush": True}
_PROBE = ("import sys; sys.modules['torch'] = None\n"  # torch is not needed to tell, and takes seconds
          "import tvm; tvm.ir.save_json(tvm.tirx.IntImm('int32', 1))")


class HostTuningError(EnergonError):
    """A host database folder that is missing or not a MetaSchedule database, a bad tuning option, or a
    TVM installation that cannot keep one."""


def _versions() -> str:
    from importlib import metadata

    found = []
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} not installed as a distribution")
    return ", ".join(found)


def check_serialization(python: str = sys.executable) -> None:
    """Refuse (:class:`HostTuningError`) a TVM installation whose IR serialiser crashes: MetaSchedule
    stores every kernel with it. Probed in a child process (``python``), about a second and a half."""
    try:
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise HostTuningError(f"cannot probe TVM's IR serialiser in a child process: {err}") from None
    if probe.returncode != 0:
        code = probe.returncode
        how = (f"died of signal {-code}" if code < 0 else "crashed" if code == 139
               else f"failed with exit status {code}")
        raise HostTuningError(f"this TVM cannot serialise its IR, which MetaSchedule's database needs: "
                              f"tvm.ir.save_json {how} in a child process ({_versions()}); install "
                              f"apache-tvm-ffi==0.1.14.post0, with which it works")


# -- the database --------------------------------------------------------------------------------------
def _check_lines(path: Path, arity: int) -> None:
    """Each non-empty line of ``path`` is a JSON list of ``arity`` items (what MetaSchedule writes)."""
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise HostTuningError(f"cannot read host database file {str(path)!r}: {err}") from None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise HostTuningError(f"{path}: line {number} is not JSON; a MetaSchedule database holds one JSON "
                                  f"list per line") from None
        if not isinstance(item, list) or len(item) != arity:
            raise HostTuningError(f"{path}: line {number} is not a MetaSchedule {path.stem.split('_')[-1]} entry "
                                  f"(a JSON list of {arity})")


def check_folder(folder, *, create: bool = False) -> Path:
    """``folder`` as a host database folder: an existing folder holding both files of a MetaSchedule
    JSON database, or (``create``: the output of ``tvmc tune --host``) a folder that may be empty or not
    exist yet, whose parent exists. Checked without TVM."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise HostTuningError(f"host database {str(path)!r} is a file; a host database is a folder "
                              f"(tvmc tune --host -o FOLDER)")
    if not path.exists():
        if not create:
            raise HostTuningError(f"host database folder {str(path)!r} does not exist")
        if not path.parent.is_dir():
            raise HostTuningError(f"host database folder {str(path)!r}: its parent {str(path.parent)!r} does not "
                                  f"exist")
        return path
    files = [path / WORKLOADS, path / RECORDS]
    present = [f.is_file() for f in files]
    if any(present) and not all(present):
        have, lack = (files[0], files[1]) if present[0] else (files[1], files[0])
        raise HostTuningError(f"host database folder {str(path)!r} has {have.name} but not {lack.name}")
    if not any(present):
        if create:
            return path
        raise HostTuningError(f"folder {str(path)!r} holds no host database (no {WORKLOADS} and {RECORDS}; "
                              f"tvmc tune --host -o FOLDER writes one)")
    _check_lines(files[0], 2)
    _check_lines(files[1], 2)
    return path


def open_database(folder, *, create: bool = False):
    """The MetaSchedule JSON database in ``folder`` (:func:`check_folder`; ``create``: made when absent)."""
    path = check_folder(folder, create=create)
    check_serialization()
    from tvm.s_tir import meta_schedule as ms

    if create:
        path.mkdir(exist_ok=True)
    try:
        return ms.database.JSONDatabase(str(path / WORKLOADS), str(path / RECORDS), allow_missing=create)
    except Exception as err:  # TVM's loader: a line of the right form that does not describe a kernel
        raise HostTuningError(f"host database {str(path)!r} is not a MetaSchedule database TVM can read: "
                              f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[-1]}") from None


def _mcpu(target) -> str | None:
    value = target.attrs.get("mcpu") if target is not None else None
    return str(value) if value else None


def tuning_target(mcpu: str | None, cores: int | None = None):
    """The target MetaSchedule tunes for: the host target of ``mcpu`` with the cores it may use."""
    import tvm

    spec = {"kind": "llvm", "num-cores": cores or os.cpu_count() or 1}
    if mcpu:
        spec["mcpu"] = mcpu
    return tvm.target.Target(spec)


# -- the kernels ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """One host kernel: its name in the build, how many call sites it has, and its workload (the
    PrimFunc as MetaSchedule's IRModule ``main``)."""

    name: str
    calls: int
    mod: object


def host_kernels(mod, mcpu: str | None, fast_math: bool = False) -> list[Kernel]:
    """The kernels the host build of ``mod`` for ``mcpu`` (and ``fast_math``) schedules
    (:func:`energon_tvm.host.kernels`)."""
    import tvm
    from tvm import relax, tirx
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    from . import host

    legal = host.kernels(mod, host.host_target(mcpu), fast_math)
    calls: dict[str, int] = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for func in legal.functions.values():
        if not isinstance(func, relax.Function):
            continue
        for block in getattr(func.body, "blocks", ()):
            for binding in block.bindings:
                value = binding.value
                if isinstance(value, relax.Call) and value.op.same_as(call_tir):
                    name = value.args[0].name_hint
                    calls[name] = calls.get(name, 0) + 1
    return [Kernel(gv.name_hint, calls.get(gv.name_hint, 0), _normalize_mod(func))
            for gv, func in legal.functions.items() if isinstance(func, tirx.PrimFunc)]


def _records_of(database, kernels: list[Kernel], mcpu: str | None) -> dict[str, list]:
    """Each kernel's trials in ``database`` made for ``mcpu``, failed ones included."""
    found: dict[str, list] = {k.name: [] for k in kernels}
    workloads = {k.name: database.commit_workload(k.mod) for k in kernels if database.has_workload(k.mod)}
    if not workloads:
        return found
    for record in database.get_all_tuning_records():
        if _mcpu(record.target) != mcpu:
            continue
        for name, workload in workloads.items():
            if record.workload.same_as(workload):
                found[name].append(record)
                break
    return found


#: a kernel taking less than this share of the model's time (calls x best time) is not worth a search
MIN_SHARE = 0.01


def worth_tuning(kernels: list[Kernel], records: dict[str, list]) -> list[Kernel]:
    """The kernels to search, the most expensive in the model first (calls x best time so far; a kernel
    without a trial yet last), without those under :data:`MIN_SHARE` of the model's time (an element-wise
    kernel of microseconds would take a round of trials and give nothing measurable) and those whose
    every trial failed."""
    cost = {}
    for k in kernels:
        times = [t for t in map(_seconds, records.get(k.name, ())) if t is not None]
        cost[k.name] = max(k.calls, 1) * min(times) if times else None
    total = sum(c for c in cost.values() if c is not None)
    # a kernel whose every trial failed (a gather fed random indices) is not searched either
    kept = [k for k in kernels if (cost[k.name] is None and not records.get(k.name))
            or (cost[k.name] is not None and cost[k.name] >= MIN_SHARE * total)]
    return sorted(kept, key=lambda k: (cost[k.name] is None, -(cost[k.name] or 0.0)))


def _seconds(record) -> float | None:
    secs = [float(s) for s in (record.run_secs or ())]
    return sum(secs) / len(secs) if secs and max(secs) < 1e9 else None  # MetaSchedule marks failures 1e10


# -- measuring --------------------------------------------------------------------------------------------
def _build_candidate(mod, target):
    """What MetaSchedule's default builder does to a candidate: drop the weight-layout rewrite blocks,
    compile, export as MetaSchedule does (a tar of the object file, linked when it is loaded); the path."""
    import tvm
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return default_export(tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target))


def _builder_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Each candidate compiled as MetaSchedule's builder does, one after another in this process."""

        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    results.append(BuilderResult(_build_candidate(item.mod, item.target), None))
                except Exception as err:  # noqa: BLE001 - a candidate that does not build is a failed trial
                    results.append(BuilderResult(None, f"{type(err).__name__}: {err}"))
            return results

    return InProcessBuilder


def in_process_builder():
    """A MetaSchedule builder compiling each candidate in this process (the class is made once TVM is
    imported: MetaSchedule's Python builders derive from TVM's)."""
    return _builder_class()()


def _plain(value):
    """An FFI container as plain Python (lists, str, int, float): what crosses to a Dask worker."""
    if isinstance(value, (str, int, float)) or value is None:
        return value
    if hasattr(value, "value") and not hasattr(value, "__len__"):
        return value.value
    try:
        return [_plain(v) for v in value]
    except TypeError:
        return str(value)


def measure_artifact(artifact: bytes, suffix: str, device_type: str, args_info, evaluator: dict) -> list[float]:
    """On a Dask worker: load a built kernel (its bytes), fill its arguments at random and time it as
    MetaSchedule's local runner does; the run times in seconds."""
    import tvm
    from tvm.s_tir.meta_schedule.runner.config import EvaluatorConfig
    from tvm.s_tir.meta_schedule.runner.local_runner import default_alloc_argument, default_run_evaluator

    with tempfile.TemporaryDirectory(prefix="energon-ms-") as tmp:
        path = Path(tmp) / f"kernel{suffix}"
        path.write_bytes(artifact)
        module = tvm.runtime.load_module(str(path))
        device = tvm.runtime.device(device_type, 0)
        args = default_alloc_argument(device, args_info, 1)
        return [float(c) for c in default_run_evaluator(module, device, EvaluatorConfig(**evaluator), args)]


def _dask_classes():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, PyRunnerFuture, RunnerResult

    @derived_object
    class DaskRunnerFuture(PyRunnerFuture):
        def __init__(self, future):
            super().__init__()
            self.future = future

        def done(self) -> bool:
            return self.future.done()

        def result(self):
            try:
                return RunnerResult(self.future.result(), None)
            except Exception as err:  # noqa: BLE001 - a measurement that fails is a failed trial
                return RunnerResult(None, f"DaskRunner: {type(err).__name__}: {err}")

    @derived_object
    class DaskRunner(PyRunner):
        """Each built candidate's bytes sent to the cluster of ``client`` (a ``distributed.Client``) and
        timed there by :func:`measure_artifact`; the workers need TVM (energon-tvm) installed."""

        def __init__(self, client, evaluator: dict | None = None):
            super().__init__()
            self.client = client
            self.evaluator = dict(evaluator or EVALUATOR)

        def run(self, runner_inputs):
            futures = []
            for item in runner_inputs:
                path = Path(str(item.artifact_path))
                futures.append(DaskRunnerFuture(self.client.submit(
                    measure_artifact, path.read_bytes(), path.suffix, str(item.device_type),
                    [_plain(a.as_json()) for a in item.args_info], self.evaluator, pure=False)))
            return futures

    return DaskRunner


def dask_runner(client, evaluator: dict | None = None):
    """A MetaSchedule runner timing candidates on a Dask cluster (``client``: a ``distributed.Client``;
    ``evaluator``: MetaSchedule's EvaluatorConfig fields, default :data:`EVALUATOR`)."""
    return _dask_classes()(client, evaluator)


def _measure(sch, target, builder, runner) -> list[float] | None:
    """The run times of one schedule, built and timed as MetaSchedule measures a candidate (None: it
    failed to build or run)."""
    from tvm.s_tir import meta_schedule as ms

    args_info = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
    built = builder.build([ms.builder.BuilderInput(sch.mod, target)])[0]
    if built.error_msg:
        return None
    try:
        run = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])[0].result()
    finally:
        Path(built.artifact_path).unlink(missing_ok=True)
    return None if run.error_msg else [float(s) for s in run.run_secs]


def _commit(database, kernel: Kernel, sch, secs, target) -> None:
    from tvm.s_tir import meta_schedule as ms

    args_info = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
    database.commit_tuning_record(ms.database.TuningRecord(sch.trace, database.commit_workload(kernel.mod), secs,
                                                           target, args_info))


def _trace_key(trace) -> str:
    """One schedule's identity across its measurements: its trace as JSON text."""
    import json

    return json.dumps(_plain(trace.as_json()))


def _replayed(kernel: Kernel, trace):
    import tvm

    sch = tvm.s_tir.Schedule(kernel.mod)
    trace.apply_to_schedule(sch, remove_postproc=False)
    return sch


def best_schedules(records) -> dict[str, tuple]:
    """Per schedule (trace) among ``records`` of one kernel, (median mean-run-time, a record): a schedule
    measured several times counts by its median, so one lucky measurement on a busy machine does not
    make it the best."""
    import statistics

    groups: dict[str, list] = {}
    for record in records:
        if _seconds(record) is not None:
            groups.setdefault(_trace_key(record.trace), []).append(record)
    return {key: (statistics.median(_seconds(r) for r in rs), rs[-1]) for key, rs in groups.items()}


# -- tuning ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelResult:
    name: str
    calls: int
    trials: int  # in the database, for this mcpu, after the run
    best_ms: float | None  # the best schedule's median run time (best_schedules; None: no trial ran)


@dataclass(frozen=True)
class TuneReport:
    """What :func:`tune` did: the database folder, the ``mcpu``, the budget, the trials of this model's
    kernels before and after the run, and per kernel its trials and best time."""

    folder: str
    mcpu: str | None
    budget: int
    trials_before: int
    trials_after: int
    kernels: tuple[KernelResult, ...]


def check_options(trials, seed=0) -> None:
    """``--host-trials``: a positive integer; ``--seed``: a non-negative one."""
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise HostTuningError(f"--host-trials {trials!r}: must be a positive integer (the total trials of the "
                              f"model's kernels the database is to hold)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise HostTuningError(f"--seed {seed!r}: must be a non-negative integer")


#: MetaSchedule's evolutionary search as ``tvmc tune --host`` runs it (its own defaults)
SEARCH = {"population_size": 512, "init_measured_ratio": 0.2, "init_min_unmeasured": 50, "genetic_num_iters": 4}


def tune(mod, mcpu: str | None, folder, *, trials: int, runner=None, seed: int = 0, search: dict | None = None,
         cores: int | None = None, log=None, fast_math: bool = False) -> TuneReport:
    """Tune the host kernels of ``mod`` (after the Energon partition) for ``mcpu`` into the database in
    ``folder`` until it holds ``trials`` trials of them (module docstring). ``runner``: a MetaSchedule
    runner (default: its local runner; :func:`dask_runner` for a cluster); ``search``: the evolutionary
    search's parameters (default :data:`SEARCH`); ``log`` receives progress lines; ``fast_math``: the
    kernels of the fast-math build (:func:`energon_tvm.host.legalize_passes`)."""
    check_options(trials, seed)
    say = log or (lambda _msg: None)
    database = open_database(folder, create=True)
    from tvm.s_tir import meta_schedule as ms

    from . import host

    build_target, target = host.host_target(mcpu), tuning_target(mcpu, cores)
    kernels = host_kernels(mod, mcpu, fast_math)
    records = _records_of(database, kernels, mcpu)
    before = sum(len(r) for r in records.values())
    remaining = trials - before
    say(f"{len(kernels)} host kernel(s) for {mcpu or 'the generic CPU'}; {before} trial(s) already in {folder}, "
        f"{max(remaining, 0)} to run for a total of {trials}")
    if remaining > 0:
        builder = in_process_builder()
        runner = runner if runner is not None else ms.runner.LocalRunner(
            timeout_sec=RUN_TIMEOUT, evaluator_config=ms.runner.EvaluatorConfig(**EVALUATOR))
        for kernel in kernels:
            if remaining <= 0:
                break
            sch = host.default_schedule(kernel.mod["main"], build_target)
            if records[kernel.name] or sch is None:
                continue
            secs = _measure(sch, target, builder, runner)
            _commit(database, kernel, sch, secs, target)
            remaining -= 1
            say(f"  {kernel.name}: default schedule "
                + (f"{1e3 * sum(secs) / len(secs):.3f} ms" if secs else "failed to build or run"))
    records = _records_of(database, kernels, mcpu)
    tasks = worth_tuning(kernels, records)
    # the kernels re-measured after the search: those with a default schedule and a timed trial
    to_verify = [k for k in tasks if any(_seconds(r) is not None for r in records[k.name])
                 and host.default_schedule(k.mod["main"], build_target) is not None]
    checks = VERIFY_ROUNDS * 2 * len(to_verify)
    search_trials = remaining - checks if remaining > checks + len(tasks) else remaining
    remaining -= search_trials
    if search_trials > 0 and tasks:
        params = dict(SEARCH, **(search or {}))
        contexts = [ms.TuneContext(mod=k.mod, target=target, space_generator="post-order-apply",
                                   search_strategy=ms.search_strategy.EvolutionarySearch(**params),
                                   task_name=k.name, rand_state=seed + i, num_threads=target.attrs["num-cores"])
                    for i, k in enumerate(tasks)]
        # MetaSchedule gives every task one round before it weighs them, and ends a run in whole rounds:
        # rounds small enough for every task to get one, and the run over the budget by less than a round
        per_round = max(1, min(TRIALS_PER_ROUND, search_trials // len(tasks)))
        say(f"tuning {len(tasks)} kernel(s), the most expensive first, {per_round} trial(s) a round")
        ms.tune_tasks(tasks=contexts, task_weights=[float(max(k.calls, 1)) for k in tasks],
                      work_dir=str(Path(folder)), max_trials_global=search_trials, num_trials_per_iter=per_round,
                      builder=builder, runner=runner, database=database, cost_model="xgb", task_scheduler="gradient")
        if remaining >= checks:
            _verify(database, to_verify, mcpu, build_target, target, builder, runner, say)
    records = _records_of(database, kernels, mcpu)
    results = []
    for k in kernels:
        medians = [median for median, _ in best_schedules(records[k.name]).values()]
        results.append(KernelResult(k.name, k.calls, len(records[k.name]), 1e3 * min(medians) if medians else None))
    return TuneReport(str(folder), mcpu, trials, before, sum(r.trials for r in results), tuple(results))


#: how many times :func:`_verify` re-measures each searched kernel's best schedule and its default one
VERIFY_ROUNDS = 2


def _verify(database, kernels: list[Kernel], mcpu, build_target, target, builder, runner, say) -> None:
    """Re-measure, for each kernel, the search's best schedule and the default schedule, alternately,
    :data:`VERIFY_ROUNDS` times each, into the database: the best of hundreds of measurements on a busy
    machine is partly luck (a tuned schedule slower than the default one can win by a quiet moment),
    and the build weighs each schedule by its median (:func:`best_schedules`)."""
    from . import host

    records = _records_of(database, kernels, mcpu)
    for kernel in kernels:
        default = host.default_schedule(kernel.mod["main"], build_target)
        schedules = best_schedules(records[kernel.name])
        if default is None or not schedules:
            continue
        best = min(schedules.values(), key=lambda v: v[0])[1]
        pair = [("default", default), ("tuned", _replayed(kernel, best.trace))]
        if _trace_key(best.trace) == _trace_key(default.trace):
            pair = pair[:1] * 2
        times: dict[str, list[float]] = {}
        for _ in range(VERIFY_ROUNDS):
            for name, sch in pair:
                secs = _measure(sch, target, builder, runner)
                _commit(database, kernel, sch, secs, target)
                if secs:
                    times.setdefault(name, []).append(1e3 * sum(secs) / len(secs))
        say(f"  {kernel.name}: re-measured " + ", ".join(f"{n} {min(t):.4f} ms" for n, t in times.items()))


# -- the tuned build --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppliedDatabase:
    """What a build took from a host database: the folder, the build's kernels, how many of them got a
    tuned schedule, and the records made for another CPU (their mcpu names), which were not used."""

    folder: str
    kernels: int
    tuned: int
    other_cpus: tuple[str, ...] = ()
    other_records: int = 0


def build(mod, mcpu: str | None, database, folder: str = "", fast_math: bool = False):
    """The host build of ``mod`` for ``mcpu`` with the records of ``database`` tuned for that ``mcpu``
    (the default schedules take the other kernels): (executable, :class:`AppliedDatabase`)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    from . import host

    selected = ms.database.MemoryDatabase()
    others: dict[str, int] = {}
    per_workload: dict[int, tuple] = {}  # id of the workload object -> (workload, its records)
    for record in database.get_all_tuning_records():
        if _mcpu(record.target) != mcpu:
            name = _mcpu(record.target) or "the generic CPU"
            others[name] = others.get(name, 0) + 1
            continue
        entry = next((v for v in per_workload.values() if v[0].same_as(record.workload)), None)
        if entry is None:
            entry = per_workload[len(per_workload)] = (record.workload, [])
        entry[1].append(record)
    for workload, records in per_workload.values():
        schedules = best_schedules(records)
        if not schedules:
            continue
        median, record = min(schedules.values(), key=lambda v: v[0])
        selected.commit_tuning_record(ms.database.TuningRecord(record.trace, selected.commit_workload(workload.mod),
                                                               [median], record.target, record.args_info))
    seen: list[int] = []

    def count(legal) -> None:
        from tvm import tirx

        funcs = [f for f in legal.functions.values() if isinstance(f, tirx.PrimFunc)]
        seen.extend([len(funcs), sum(selected.has_workload(_normalize_mod(f)) for f in funcs)])

    executable = host.build(mod, mcpu, database=selected, on_kernels=count, fast_math=fast_math)
    kernels, tuned = seen[:2] if seen else (0, 0)
    return executable, AppliedDatabase(str(folder), kernels, tuned, tuple(sorted(others)), sum(others.values()))
