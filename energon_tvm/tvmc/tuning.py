"""``tvmc tune``: search each offloaded workload's schedule on the sparsity real inputs produce.

:func:`tune_model` mirrors :func:`~energon_tvm.tvmc.compiler.compile_model` and
:func:`~energon_tvm.tvmc.runner.run_package`: it compiles the model with the same target options, runs
the calibration inputs once on the reference backend to record each call's sparsity, and tunes every
distinct workload on it, appending the records to ``output``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TVMCError


@dataclass
class TuneModelResult:
    """What one ``tune_model`` did: the calls offloaded and, per distinct workload (named by its first
    site), the tuning session's result (:class:`energon_tvm.tuner.TuneResult`)."""

    calls: int
    results: list[tuple[str, object]] = field(default_factory=list)


def tune_model(model_path, output, *, model_format: str | None = None, target: str = "energon, llvm",
               config: str | None = None, alpha: str | None = None, rounds: str | None = None,
               rule: str | None = None, gap: str | None = None, policy: str | None = None,
               topk: str | None = None, sanger: str | None = None, thresholds: str | None = None,
               mcpu: str | None = None, fast_math=None,
               input_shapes: str | None = None, trials: int = 64, tuner: str = "xgb",
               early_stopping: int | None = None, calibration=None, dask_scheduler: str | None = None,
               seed: int = 0, objective: str = "cycles", verbose: int = 0, log=None) -> TuneModelResult:
    """Tune the schedule of every workload the model offloads; records are appended to ``output``.
    ``objective`` is what each session minimises (``cycles``, ``energy`` or ``edp``); the records say it,
    and ``tvmc compile`` picks by it. ``log`` (a callable) receives progress lines. Everything that can
    be checked without the model is checked first: the options, the output file (an existing one must
    hold tuning records: they are appended to, not replaced), the calibration file."""
    from ..tuner import OBJECTIVES, make_runner, profile_from_arrays, read_records, tune
    from .compiler import compile_model, write
    from .errors import open_user_file
    from .package import check_output
    from .runner import PackageSession, make_inputs
    from .shapes import parse_input_shapes
    from .target import parse_target

    say = log or (lambda _msg: None)
    if objective not in OBJECTIVES:
        raise TVMCError(f"--objective {objective!r}: one of {', '.join(OBJECTIVES)}")
    if "energon" not in target:
        raise TVMCError("tvmc tune tunes Energon schedules: put energon in --target")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise TVMCError(f"--seed {seed!r}: must be a non-negative integer")
    parse_target(target, config, alpha, rounds=rounds, mcpu=mcpu, rule=rule, gap=gap, thresholds=thresholds,
                 policy=policy, topk=topk, sanger=sanger, fast_math=fast_math)
    parse_input_shapes(input_shapes)
    if Path(check_output(output, "-o")).exists():
        read_records(output)  # a file that is not tuning records is refused before any work
    if calibration is not None:
        open_user_file(calibration, "--calibration file").close()
    result = compile_model(model_path, model_format=model_format, target=target, config=config, alpha=alpha,
                           rounds=rounds, rule=rule, gap=gap, policy=policy, topk=topk, sanger=sanger,
                           thresholds=thresholds, mcpu=mcpu, fast_math=fast_math,
                           input_shapes=input_shapes, verbose=verbose)
    if not result.calls:
        say("no attention call was offloaded: nothing to tune")
        return TuneModelResult(0)
    with tempfile.TemporaryDirectory(prefix="energon-tune-") as tmp:
        pkg = Path(tmp) / "model.tar"
        write(result, pkg)
        with PackageSession(pkg) as session:
            feeds = make_inputs(session.manifest, calibration, "random", seed)
            _, calls = session.run(feeds, capture=True, backend="reference")
    # one tuning session per distinct workload, on the sparsity of its first call
    seen, jobs = set(), []
    for call in calls:
        if call.workload.key() not in seen:
            seen.add(call.workload.key())
            i = call.inputs
            jobs.append((call.site, call.workload, profile_from_arrays(call.workload, i["q"], i["k"], i["v"],
                                                                       i["bias"])))
    cfg = result.target.config
    say(f"tuning {len(jobs)} workload(s) of {len(calls)} offloaded call(s) on {cfg.name} with {tuner}, "
        f"{trials} trials each, minimising {objective}; records -> {output}")
    runner = make_runner(dask_scheduler=dask_scheduler)  # one pool or Dask client for every workload
    try:
        results = [(site, tune(workload, cfg, profile, trials=trials, tuner=tuner, early_stopping=early_stopping,
                               seed=seed, records=output, runner=runner, objective=objective))
                   for site, workload, profile in jobs]
    finally:
        runner.close()
    return TuneModelResult(len(calls), results)
