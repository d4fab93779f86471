"""``tvmc tune``: the Energon schedules of the offloaded attention (records, a file), or with ``--host``
the host kernels with MetaSchedule (a database, a folder)."""

from __future__ import annotations

from ...schedules.cost import OBJECTIVES
from ..errors import TVMCError
from ..main import command
from ..target import add_target_arguments, target_options

#: the Energon tuning options (not --host) and their defaults
ENERGON_DEFAULTS = {"trials": 64, "tuner": "xgb", "early_stopping": None, "calibration": None, "objective": "cycles"}


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model (.onnx) or torch.export program (.pt2)")
    p.add_argument("-o", "--output", required=True, help="tuning records to append to (JSON lines); with --host, "
                   "the MetaSchedule database folder to write or continue")
    p.add_argument("--model-format", choices=["onnx", "pytorch"])
    add_target_arguments(p)
    p.add_argument("--input-shapes", help='fix input shapes: "name:[1,128],mask:[1,128]" or, as classic tvmc, '
                   '"name:[1,128] mask:[1,128]"')
    p.add_argument("--host", action="store_true", help="tune the host kernels (everything Energon does not run) "
                   "with TVM's MetaSchedule instead; tvmc compile --tuning-records FOLDER applies the database")
    p.add_argument("--host-trials", type=int, metavar="N", help="with --host: the total trials of this model's "
                   "kernels the database is to hold; a second run adds only the rest (required with --host)")
    p.add_argument("--trials", type=int, help="measurements per workload (64)")
    p.add_argument("--tuner", choices=["xgb", "random", "grid"], help="search of the Energon schedules (xgb)")
    p.add_argument("--early-stopping", type=int, help="stop a workload after N trials without improvement")
    p.add_argument("--calibration", help=".npz of model inputs whose sparsity the tuning measures on "
                                         "(default: random inputs)")
    p.add_argument("--dask-scheduler", help="measure on a Dask cluster (tcp://HOST:PORT) instead of locally")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", choices=list(OBJECTIVES),
                   help="what to minimise: cycles, energy (pJ) or edp (cycles x pJ); records keep it (cycles)")


def _energon_options(args) -> dict:
    return {k: ENERGON_DEFAULTS[k] if getattr(args, k) is None else getattr(args, k) for k in ENERGON_DEFAULTS}


@command("tune", "tune each offloaded attention workload's schedule (records), or the host kernels with "
                 "MetaSchedule (--host: a database)")(add_arguments)
def run(args) -> int:
    if args.host:
        return _tune_host(args)
    if args.host_trials is not None:
        raise TVMCError("--host-trials applies to tvmc tune --host")
    from ..tuning import tune_model

    o = _energon_options(args)
    result = tune_model(args.model, args.output, model_format=args.model_format, **target_options(args),
                        thresholds=args.target_energon_thresholds, input_shapes=args.input_shapes,
                        trials=o["trials"], tuner=o["tuner"],
                        early_stopping=o["early_stopping"], calibration=o["calibration"],
                        dask_scheduler=args.dask_scheduler, seed=args.seed, objective=o["objective"],
                        verbose=args.verbose, log=print)
    for site, res in result.results:
        gain = f", {res.speedup:.3f}x over the heuristic" if res.speedup else ""
        best = f"{res.best_cycles:,} cycles"
        if res.best.energy_pj is not None:
            best += f", {res.best.energy_pj / 1e6:,.3f} uJ"
        print(f"  {site}: best {res.objective} at {best} after {len(res.records)} trial(s){gain}: "
              f"{res.best_schedule.to_json()}")
    return 0


def _tune_host(args) -> int:
    from ..compiler import tune_host_model

    given = [f"--{k.replace('_', '-')}" for k in ENERGON_DEFAULTS if getattr(args, k) is not None]
    if given:
        raise TVMCError(f"{given[0]} applies to the Energon schedules, not to tvmc tune --host (whose budget is "
                        f"--host-trials)")
    if args.host_trials is None:
        raise TVMCError("tvmc tune --host needs --host-trials N: the total trials of the model's host kernels the "
                        "database is to hold")
    report = tune_host_model(args.model, args.output, trials=args.host_trials, model_format=args.model_format,
                             **target_options(args), input_shapes=args.input_shapes,
                             thresholds=args.target_energon_thresholds, dask_scheduler=args.dask_scheduler,
                             seed=args.seed, verbose=args.verbose, log=print)
    added = report.trials_after - report.trials_before
    print(f"host kernels for {report.mcpu or 'the generic CPU'}: {added} trial(s) run, {report.trials_after} in "
          f"{report.folder} (budget {report.budget})")
    for k in report.kernels:
        best = f"best {k.best_ms:.4f} ms" if k.best_ms is not None else "no trial ran"
        print(f"  {k.name} (x{k.calls}): {best} after {k.trials} trial(s)")
    return 0
