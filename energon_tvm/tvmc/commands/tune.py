"""``tvmc tune``."""

from __future__ import annotations

from ..main import command
from ..target import add_target_arguments, target_options


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model (.onnx) or torch.export program (.pt2)")
    p.add_argument("-o", "--output", required=True, help="tuning records to append to (JSON lines)")
    p.add_argument("--model-format", choices=["onnx", "pytorch"])
    add_target_arguments(p)
    p.add_argument("--input-shapes", help='fix input shapes: "name:[1,128],mask:[1,128]" or, as classic tvmc, '
                   '"name:[1,128] mask:[1,128]"')
    p.add_argument("--trials", type=int, default=64, help="measurements per workload (64)")
    p.add_argument("--tuner", default="xgb", choices=["xgb", "random", "grid"])
    p.add_argument("--early-stopping", type=int, help="stop a workload after N trials without improvement")
    p.add_argument("--calibration", help=".npz of model inputs whose sparsity the tuning measures on "
                                         "(default: random inputs)")
    p.add_argument("--dask-scheduler", help="measure on a Dask cluster (tcp://HOST:PORT) instead of locally")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objective", default="cycles", choices=["cycles", "energy", "edp"],
                   help="what to minimise: cycles, energy (pJ) or edp (cycles x pJ); records keep it (cycles)")


@command("tune", "tune each offloaded attention workload's schedule; writes tuning records")(add_arguments)
def run(args) -> int:
    from ..tuning import tune_model

    result = tune_model(args.model, args.output, model_format=args.model_format, **target_options(args),
                        thresholds=args.target_energon_thresholds, input_shapes=args.input_shapes,
                        trials=args.trials, tuner=args.tuner,
                        early_stopping=args.early_stopping, calibration=args.calibration,
                        dask_scheduler=args.dask_scheduler, seed=args.seed, objective=args.objective,
                        verbose=args.verbose, log=print)
    for site, res in result.results:
        gain = f", {res.speedup:.3f}x over the heuristic" if res.speedup else ""
        best = f"{res.best_cycles:,} cycles"
        if res.best.energy_pj is not None:
            best += f", {res.best.energy_pj / 1e6:,.3f} uJ"
        print(f"  {site}: best {res.objective} at {best} after {len(res.records)} trial(s){gain}: "
              f"{res.best_schedule.to_json()}")
    return 0
