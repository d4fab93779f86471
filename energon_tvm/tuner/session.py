"""A tuning session: tuner proposes, runner measures, records are kept, best-so-far is shown.

:func:`tune` is the Python API behind ``tvmc tune``; every command-line option is one of its keyword
arguments, so the command line only parses, loops over the model's workloads and prints.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..isa.config import HardwareConfig, load_config
from ..runtime_sim.profile import SparsityProfile
from ..schedules.schedule import Schedule
from ..schedules.workload import AttentionWorkload
from .errors import TuningError
from .measure import MeasureResult, MeasureTask
from .objectives import check_objective
from .records import TuningRecord, append_records, cycles_floor
from .runners import Runner, make_runner
from .space import DEFAULT_MAX_INSTRUCTIONS, SearchSpace
from .tuners import TUNERS, make_tuner


@dataclass(frozen=True)
class TuneResult:
    """What a session measured, in trial order, and the best of it."""

    records: tuple[TuningRecord, ...]
    best: TuningRecord | None        # best measured record in the objective (first of equals)
    heuristic: TuningRecord | None   # the heuristic's record, when it was measured
    space_size: int
    stopped_early: bool
    objective: str = "cycles"

    @property
    def best_schedule(self) -> Schedule | None:
        return None if self.best is None else self.best.schedule

    @property
    def best_cycles(self) -> int | None:
        return None if self.best is None else self.best.cycles

    @property
    def best_score(self) -> float | None:
        """The best record's value of the objective."""
        return None if self.best is None else self.best.score

    @property
    def speedup(self) -> float | None:
        """The heuristic's value of the objective over the best one (>= 1 when the heuristic was
        measured): a speedup for ``cycles``, an energy or EDP saving factor otherwise."""
        if self.best is None or self.heuristic is None or not self.heuristic.ok:
            return None
        return self.heuristic.score / self.best.score


def _positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TuningError(f"{name} = {value!r} must be an integer >= 1")


def tune(workload: AttentionWorkload, cfg: HardwareConfig | str | Path,
         profile: SparsityProfile | str | Path, *,
         trials: int = 64, tuner: str = "xgb", early_stopping: int | None = None, seed: int = 0,
         records: str | Path | None = None, batch_size: int = 8, n_parallel: int | None = None,
         dask_scheduler=None, dask_timeout: float = 10.0, runner: Runner | None = None,
         knobs: Mapping[str, Sequence] | None = None, max_instructions: int = DEFAULT_MAX_INSTRUCTIONS,
         include_heuristic: bool = True, tuner_options: Mapping | None = None,
         progress: bool = True, objective: str = "cycles") -> TuneResult:
    """Tune the schedule of ``workload`` on ``cfg``, timing each candidate on ``profile``.

    ``trials``: measurements at most (the heuristic's, when ``include_heuristic``, is the first).
    ``tuner``: ``xgb``, ``random`` or ``grid``. ``early_stopping``: stop once this many trials have
    passed without a new best. ``records``: a JSON-lines file appended to after every batch.
    ``batch_size``: points proposed and measured together (the cost model refits between batches).
    Measurements run on ``runner`` if given (not closed here), else on a Dask cluster when
    ``dask_scheduler`` (``tcp://HOST:PORT`` or a ``distributed.Client``) is given, else in a local
    pool of ``n_parallel`` processes. ``knobs`` overrides knob values of the search space (see
    :class:`SearchSpace`). ``objective``: what is minimised, ``cycles``, ``energy`` (pJ) or ``edp``
    (cycles x pJ); every record states it. The same arguments and seed give the same records on every
    runner.
    """
    check_objective(objective)
    _positive("trials", trials)
    _positive("early_stopping", early_stopping, allow_none=True)
    _positive("batch_size", batch_size)
    if tuner not in TUNERS:
        raise TuningError(f"unknown tuner {tuner!r}; tuners are {', '.join(TUNERS)}")
    cfg = load_config(cfg)
    space = SearchSpace.build(workload, cfg, knobs=knobs, max_instructions=max_instructions)
    task = MeasureTask.create(workload, cfg, profile, max_instructions=max_instructions)
    search = make_tuner(tuner, space, seed, **(tuner_options or {}))
    floor = cycles_floor(workload, cfg)
    own_runner = runner is None
    if own_runner:
        runner = make_runner(n_parallel=n_parallel, dask_scheduler=dask_scheduler, dask_timeout=dask_timeout)

    from tqdm.auto import tqdm  # lazy: keeps `import energon_tvm.tuner` cheap

    meta = {"workload_key": workload.key(), "workload": workload.to_dict(), "config": cfg.name,
            "config_fingerprint": cfg.fingerprint.hex(), "profile": task.profile_digest, "seed": seed,
            "objective": objective}
    kept: list[TuningRecord] = []
    best: TuningRecord | None = None
    best_trial = 0
    heuristic: TuningRecord | None = None
    stopped_early = False
    bar = tqdm(total=min(trials, len(space) + int(include_heuristic)), desc=f"tune {tuner} {_short(workload)}",
               unit="trial", disable=not progress, dynamic_ncols=True)

    def log(schedules: Sequence[Schedule], results: Sequence[MeasureResult], source: str) -> None:
        nonlocal best, best_trial, heuristic
        batch = [TuningRecord(schedule=s, cycles=r.cycles, error=r.error, instructions=r.instructions,
                              energy_pj=r.energy_pj, tuner=source, trial=len(kept) + n, **meta)
                 for n, (s, r) in enumerate(zip(schedules, results))]
        if source == "heuristic":
            heuristic = batch[0]
        for rec in batch:
            if rec.ok and (best is None or rec.score < best.score):
                best, best_trial = rec, rec.trial
        kept.extend(batch)
        if records is not None:
            append_records(records, batch)
        bar.update(len(batch))
        if best is not None:
            postfix = {"best": f"{best.score:,.0f}" + ("" if objective == "cycles" else f" {_UNIT[objective]}")}
            if heuristic is not None and heuristic.ok:
                postfix["vs heuristic"] = f"{heuristic.score / best.score:.3f}x"
            bar.set_postfix(postfix, refresh=False)

    try:
        if include_heuristic:
            h = space.heuristic(objective)  # ranked by what this session minimises
            (result,) = _scored(_within_floor([h], runner.run(task, [h]), floor), objective)
            log([h], [result], "heuristic")
            at = space.index(h)
            if at is not None:  # the tuner learns from it and never proposes it again
                search.update([at], [result])
        while len(kept) < trials and search.has_next():
            picks = search.next_batch(min(batch_size, trials - len(kept)))
            schedules = [space[i] for i in picks]
            results = _scored(_within_floor(schedules, runner.run(task, schedules), floor), objective)
            search.update(picks, results)
            log(schedules, results, tuner)
            if early_stopping is not None and len(kept) - 1 - best_trial >= early_stopping:
                stopped_early = len(kept) < trials and search.has_next()
                break
    finally:
        bar.close()
        if own_runner:
            runner.close()
    return TuneResult(tuple(kept), best, heuristic, len(space), stopped_early, objective)


_UNIT = {"energy": "pJ", "edp": "cycle-pJ"}


def _scored(results: Sequence[MeasureResult], objective: str) -> list[MeasureResult]:
    """Results read in ``objective``: what the tuner learns from and the session keeps the best of."""
    return [replace(r, objective=objective) for r in results]


def _within_floor(schedules: Sequence[Schedule], results: Sequence[MeasureResult], floor) -> list[MeasureResult]:
    """Results with any below ``floor`` (:func:`~.records.cycles_floor`) turned into unmeasurable points.
    Such a figure means the simulator or the bound is wrong; recorded as measured, it would make every
    later read of the records refuse the file, and it would mislead the cost model."""
    out = []
    for s, r in zip(schedules, results):
        if floor is not None and r.ok and r.cycles < floor.cycles:
            why = (f"measured {r.cycles:,} cycles, below the {floor.cycles:,}-cycle lower bound of any schedule "
                   f"of the workload (the simulator or schedules/bounds.py is wrong)")
            warnings.warn(f"schedule {s.to_json()}: {why}; recorded as not measurable", stacklevel=3)
            r = MeasureResult(None, r.instructions, f"BoundViolation: {why}", r.energy_pj)
        out.append(r)
    return out


def _short(w: AttentionWorkload) -> str:
    return f"B{w.batch} H{w.heads} S{w.seq_q}x{w.seq_k} D{w.head_dim}"
