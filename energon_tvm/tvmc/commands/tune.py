"""``tvmc tune``: search each offloaded workload's schedule on the sparsity real inputs produce."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ..main import command
from ..target import OPTIONS


def add_arguments(p) -> None:
    p.add_argument("model", help="ONNX model (.onnx) or torch.export program (.pt2)")
    p.add_argument("-o", "--output", required=True, help="tuning records to append to (JSON lines)")
    p.add_argument("--model-format", choices=["onnx", "pytorch"])
    p.add_argument("--target", default="energon, llvm")
    for kind, options in OPTIONS.items():
        for option, help_text in options.items():
            p.add_argument(f"--target-{kind}-{option}", dest=f"target_{kind}_{option}", help=help_text)
    p.add_argument("--input-shapes", help='"name:[1,128],..."')
    p.add_argument("--trials", type=int, default=64, help="measurements per workload (64)")
    p.add_argument("--tuner", default="xgb", choices=["xgb", "random", "grid"])
    p.add_argument("--early-stopping", type=int, help="stop a workload after N trials without improvement")
    p.add_argument("--calibration", help=".npz of model inputs whose sparsity the tuning measures on "
                                         "(default: random inputs)")
    p.add_argument("--dask-scheduler", help="measure on a Dask cluster (tcp://HOST:PORT) instead of locally")
    p.add_argument("--seed", type=int, default=0)


@command("tune", "tune each offloaded attention workload's schedule; writes tuning records")(add_arguments)
def run(args) -> int:
    from ...schedules.tuner import make_runner, profile_from_arrays, tune
    from ..compiler import compile_model, write
    from ..errors import TVMCError
    from ..runner import PackageSession, make_inputs

    if "energon" not in args.target:
        raise TVMCError("tvmc tune tunes Energon schedules: put energon in --target")
    result = compile_model(args.model, model_format=args.model_format, target=args.target,
                           config=args.target_energon_config, alpha=args.target_energon_alpha,
                           rounds=args.target_energon_rounds, mcpu=args.target_llvm_mcpu,
                           input_shapes=args.input_shapes)
    if not result.calls:
        print("no attention call was offloaded: nothing to tune", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="energon-tune-") as tmp:
        pkg = Path(tmp) / "model.tar"
        write(result, pkg)
        with PackageSession(pkg) as session:
            feeds = make_inputs(session.manifest, args.calibration, "random", args.seed)
            _, calls = session.run(feeds, capture=True, backend="reference")
    # one tuning session per distinct workload, on the sparsity of its first call
    seen, jobs = set(), []
    for call in calls:
        if call.workload.key() not in seen:
            seen.add(call.workload.key())
            i = call.inputs
            profile = profile_from_arrays(call.workload, i["q"], i["k"], i["v"], i["bias"])
            jobs.append((call.site, call.workload, profile))
    cfg = result.target.config
    print(f"tuning {len(jobs)} workload(s) of {len(calls)} offloaded call(s) on {cfg.name} with {args.tuner}, "
          f"{args.trials} trials each; records -> {args.output}")
    runner = make_runner(dask_scheduler=args.dask_scheduler)  # one pool or Dask client for every workload
    try:
        results = [(site, tune(workload, cfg, profile, trials=args.trials, tuner=args.tuner,
                               early_stopping=args.early_stopping, seed=args.seed, records=args.output,
                               runner=runner))
                   for site, workload, profile in jobs]
    finally:
        runner.close()
    for site, res in results:
        gain = f", {res.speedup:.3f}x over the heuristic" if res.speedup else ""
        print(f"  {site}: best {res.best_cycles:,} cycles after {len(res.records)} trial(s){gain}: "
              f"{res.best_schedule.to_json()}")
    return 0
